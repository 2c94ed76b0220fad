"""Attacks: threat model, no side effects, batch consistency, step direction, determinism, strength, errors, and
differential checks against torchattacks. Tiny models on CPU; real data only where marked."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from repro.attacks import (ATTACKS, Attack, bim, cw2, cw_margin, fgsm, get_config, illc, labels_field, llc,
                           pgd, run_attack)

from repro.data import load

from .conftest import needs_deepsec, random_bn_statistics

N, SIDE, CLASSES = 16, 8, 10
EPS = 0.1
TOL = 1e-6  # float32 rounding of x ± eps



def _small(name: str) -> dict:
    """A registered attack's DeepSec setting at test budgets (ε, step and iterations capped), so that each test runs
    in milliseconds and a new attack is tested without an entry here."""
    caps = {"eps": EPS, "step_size": 0.03, "steps": 5}
    return {k: caps.get(k, v) for k, v in ATTACKS[name].default_setting("cifar10").items()}


# CW2 needs a larger constant and learning rate to succeed on the tiny models within 3 × 30 iterations.
SMALL = {name: _small(name) for name in ATTACKS} | {
    "cw2": dict(binary_search_steps=3, max_iterations=30, initial_const=1.0, lr=0.05)}
LINF = tuple(name for name in ATTACKS if "eps" in ATTACKS[name].rules)  # the L∞-bounded attacks


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def tiny_convnet() -> nn.Module:
    """1×8×8 images → 10 logits, with batch norm and dropout so that train and eval modes differ."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * 6 * 6, CLASSES),
    )


def batch(n: int = N):
    x = torch.rand(n, 1, SIDE, SIDE)
    y = torch.randint(0, CLASSES, (n,))
    return x, y


def attack_labels(name: str, y: torch.Tensor) -> torch.Tensor:
    """True labels for untargeted attacks; a different class for targeted ones."""
    return (y + 1) % CLASSES if labels_field(name) != "y" else y


def deterministic(name: str) -> dict:
    params = dict(SMALL[name])
    if name == "pgd":
        params["random_start"] = False
    return params


# ---------------------------------------------------------------------------------------------- threat model
@pytest.mark.parametrize("name", list(ATTACKS))
def test_threat_model_eps_ball_and_box(name):
    model = tiny_convnet().eval()
    x, y = batch()
    x[0] = 0.0  # pixels at the box's edges
    x[1] = 1.0
    x_adv = ATTACKS[name].fn(model, x, attack_labels(name, y), **SMALL[name])
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    if name in LINF:
        assert (x_adv - x).abs().max() <= EPS + TOL
        assert (x_adv - x).abs().max() >= EPS - TOL  # the budget is used, not ignored


@pytest.mark.parametrize("name", ["fgsm", "llc", "pgd"])
def test_per_sample_eps(name):
    model = tiny_convnet().eval()
    x, y = batch()
    eps = torch.linspace(0.0, 0.2, N)
    x_adv = ATTACKS[name].fn(model, x, attack_labels(name, y), **{**SMALL[name], "eps": eps})
    per_sample = (x_adv - x).abs().flatten(1).amax(1)
    assert torch.all(per_sample <= eps + TOL)
    assert per_sample[0] == 0.0


def test_pgd_per_sample_step_size_equals_one_call_per_sample():
    """A per-sample (ε, step) pair, as the optimality benchmark's ε bisection uses, gives each image exactly what a
    call with its own scalar ε and step gives it (no random start: the comparison is exact)."""
    model = tiny_convnet().eval()
    x, y = batch()
    eps = torch.linspace(0.02, 0.2, N)
    step = 2.5 * eps / 5
    together = pgd(model, x, y, eps=eps, step_size=step, steps=5, random_start=False)
    for i in range(N):
        alone = pgd(model, x[i:i + 1], y[i:i + 1], eps=float(eps[i]), step_size=float(step[i]), steps=5,
                    random_start=False)
        torch.testing.assert_close(together[i:i + 1], alone, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="step_size"):
        pgd(model, x, y, eps=eps, step_size=-step, steps=5)


# -------------------------------------------------------------------------------------------- no side effects
@pytest.mark.parametrize("name", list(ATTACKS))
def test_no_side_effects(name):
    model = tiny_convnet().eval()
    params_before = [p.detach().clone() for p in model.parameters()]
    x, y = batch()
    labels = attack_labels(name, y)
    x_copy, labels_copy = x.clone(), labels.clone()
    x_adv = ATTACKS[name].fn(model, x, labels, **SMALL[name])
    assert torch.equal(x, x_copy) and torch.equal(labels, labels_copy)
    assert not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params_before))
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert x_adv.data_ptr() != x.data_ptr() and x_adv.device == x.device


@pytest.mark.parametrize("name", list(ATTACKS))
def test_a_model_in_training_mode_is_refused_and_left_untouched(name):
    """Attacked in train() mode, batch norm would use the batch's statistics and update the caller's running
    buffers: every attack refuses, naming the fix, and the caller's buffers and mode stay as they were."""
    model = tiny_convnet().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = batch()
    with pytest.raises(ValueError, match=r"training mode.*\.eval\(\)"):
        ATTACKS[name].fn(model, x, attack_labels(name, y), **SMALL[name])
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


# --------------------------------------------------------------------------------------- batch consistency
@pytest.mark.parametrize("name", list(ATTACKS))
def test_batch_consistency(name):
    model = tiny_convnet().eval()
    x, y = batch(8)
    labels = attack_labels(name, y)
    params = deterministic(name)
    whole = ATTACKS[name].fn(model, x, labels, **params)
    rows = torch.cat([ATTACKS[name].fn(model, x[i : i + 1], labels[i : i + 1], **params) for i in range(len(x))])
    torch.testing.assert_close(whole, rows, rtol=0, atol=1e-5)


def test_runner_batches_equal_one_call_and_times_the_attack():
    model = tiny_convnet().eval()
    x, y = batch(10)
    params = SMALL["bim"]
    run = run_attack("bim", model, x, y, params=params, batch_size=3, progress=False)
    torch.testing.assert_close(run.x_adv, bim(model, x, y, **params), rtol=0, atol=1e-5)
    assert run.n == 10 and run.x_adv.device.type == "cpu" and run.device.startswith("cpu")
    assert run.seconds > 0 and run.seconds_per_example == pytest.approx(run.seconds / 10)


def test_runner_seed_reproducible_and_cuda_options_refused_on_cpu():
    model = tiny_convnet().eval()
    x, y = batch()
    params = SMALL["pgd"]
    first = run_attack("pgd", model, x, y, params=params, batch_size=5, progress=False, seed=7)
    torch.manual_seed(123)  # the global RNG must not matter when a seed is given
    second = run_attack("pgd", model, x, y, params=params, batch_size=5, progress=False, seed=7)
    assert torch.equal(first.x_adv, second.x_adv)
    with pytest.raises(ValueError, match="CUDA-only"):
        run_attack("pgd", model, x, y, params=params, progress=False, autocast_bf16=True, device="cpu")
    with pytest.raises(ValueError, match="unknown attack 'pdg'"):
        run_attack("pdg", model, x, y, params=params, progress=False)


def test_runner_attacks_a_folded_channels_last_copy_and_leaves_the_model_alone():
    model = random_bn_statistics(tiny_convnet())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = batch(64)
    params = dict(eps=EPS, step_size=0.03, steps=1, random_start=False)
    exact = run_attack("pgd", model, x, y, params=params, progress=False, fold_batchnorm=False, channels_last=False)
    fast = run_attack("pgd", model, x, y, params=params, progress=False)
    assert exact.options == dict(autocast_bf16=False, channels_last=False, fold_batchnorm=False, compiled=False)
    assert fast.options == dict(autocast_bf16=False, channels_last=True, fold_batchnorm=True, compiled=False)
    assert torch.equal(exact.x_adv, pgd(model, x, y, **params))
    # The same function up to float32 rounding: a sign flips only where a gradient component is within rounding of 0.
    assert (fast.x_adv != exact.x_adv).float().mean() < 1e-3 and fast.x_adv.is_contiguous()
    assert (fast.x_adv - x).abs().max() <= EPS + TOL
    assert not model.training and all(p.is_contiguous() and p.requires_grad and p.grad is None
                                      for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_runner_folding_follows_the_mode_and_says_why_it_cannot_fold():
    x, y = batch()
    params = SMALL["fgsm"]
    training = tiny_convnet().train()
    with pytest.raises(ValueError, match=r"training mode.*\.eval\(\)"):
        run_attack("fgsm", training, x, y, params=params, progress=False)
    assert training.training

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_convnet()

        def forward(self, x):
            return self.net(x) if x.shape[0] > 0 else x

    model = Untraceable().eval()
    with pytest.warns(UserWarning, match="without BatchNorm folding"):
        run = run_attack("fgsm", model, x, y, params=params, progress=False)
    assert run.options["fold_batchnorm"] is False and torch.equal(run.x_adv, fgsm(model, x, y, **params))
    with pytest.raises(ValueError, match="cannot trace Untraceable"):
        run_attack("fgsm", model, x, y, params=params, progress=False, fold_batchnorm=True)
    flat = nn.Sequential(nn.Linear(SIDE * SIDE, CLASSES)).eval()
    run = run_attack("fgsm", flat, x.flatten(1), y, params=params, progress=False)
    assert run.options == dict(autocast_bf16=False, channels_last=False, fold_batchnorm=False, compiled=False)
    with pytest.raises(ValueError, match="channels_last needs NCHW"):
        run_attack("fgsm", flat, x.flatten(1), y, params=params, progress=False, channels_last=True)


@needs_deepsec
def test_folded_channels_last_pgd_gives_deepsec_resnet_the_same_metrics(deepsec_cifar10):
    # Iterated sign steps amplify rounding: after 15 steps many pixels differ, but not MR or the mean distortion.
    x, y = load("cifar10", split="test", n=200)
    params = get_config("pgd", "deepsec_cifar10")
    exact = run_attack("pgd", deepsec_cifar10, x, y, params=params, batch_size=100, progress=False, seed=0,
                       fold_batchnorm=False, channels_last=False)
    fast = run_attack("pgd", deepsec_cifar10, x, y, params=params, batch_size=100, progress=False, seed=0)
    assert fast.options["fold_batchnorm"] and fast.options["channels_last"]
    assert misclassified(deepsec_cifar10, fast.x_adv, y).sum() == misclassified(deepsec_cifar10, exact.x_adv, y).sum()
    l2 = [float((run.x_adv - x).flatten(1).norm(dim=1).mean()) for run in (exact, fast)]
    assert l2[1] == pytest.approx(l2[0], rel=0.01)
    assert (fast.x_adv - x).abs().max() <= params["eps"] + TOL


# ------------------------------------------------------------------------------------ one step, linear model
def two_class_linear() -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(2, SIDE * SIDE))
    return model.eval()


def test_pgd_one_step_moves_along_sign_of_weight_difference():
    model = two_class_linear()
    w = model[1].weight.detach()
    direction = torch.sign(w[1] - w[0]).view(1, 1, SIDE, SIDE)  # ∇ₓ CE(y=0) = p₁·(w₁ − w₀)
    assert torch.all(direction != 0)
    x = torch.full((4, 1, SIDE, SIDE), 0.5)
    y = torch.tensor([0, 0, 1, 1])
    step = 0.05
    x_adv = pgd(model, x, y, eps=0.2, step_size=step, steps=1, random_start=False)
    sign = torch.tensor([1.0, 1.0, -1.0, -1.0]).view(4, 1, 1, 1)
    torch.testing.assert_close(x_adv - x, step * sign * direction, rtol=0, atol=1e-7)
    # LLC descends towards its target: the same direction for target 1.
    torch.testing.assert_close(llc(model, x, torch.ones(4, dtype=torch.int64), eps=step) - x,
                               step * direction.expand_as(x), rtol=0, atol=1e-7)


def test_pgd_random_start_reaches_the_model_unclipped_as_in_deepsec():
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append((x.min().item(), x.max().item()))
            return x.flatten(1)[:, :CLASSES] * 3.0

    x = torch.zeros(N, 1, SIDE, SIDE)
    x[:, :, :4] = 1.0
    pgd(Recorder().eval(), x, torch.zeros(N, dtype=torch.int64), eps=0.3, step_size=0.01, steps=2)
    (first_lo, first_hi), (second_lo, second_hi) = seen
    assert first_lo < 0.0 and first_hi > 1.0  # U(−ε, ε) start, not clipped before step 1
    assert second_lo >= 0.0 and second_hi <= 1.0  # projected after each step


# ----------------------------------------------------------------------------------------------- determinism
def test_pgd_deterministic_under_a_seed():
    model = tiny_convnet().eval()
    x, y = batch()
    params = SMALL["pgd"]
    torch.manual_seed(5)
    a = pgd(model, x, y, **params)
    torch.manual_seed(5)
    b = pgd(model, x, y, **params)
    assert torch.equal(a, b)
    c = pgd(model, x, y, **params, generator=torch.Generator().manual_seed(1))
    d = pgd(model, x, y, **params, generator=torch.Generator().manual_seed(1))
    e = pgd(model, x, y, **params, generator=torch.Generator().manual_seed(2))
    assert torch.equal(c, d) and not torch.equal(c, e)


# ------------------------------------------------------------------------------------------------ strength
@pytest.fixture(scope="module")
def mnist_candidates(deepsec_mnist):
    from repro.data import candidates

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: runs before the per-test thread fixture
    try:
        return candidates(deepsec_mnist, "mnist", n=100, seed=100)
    finally:
        torch.set_num_threads(before)


def misclassified(model, x_adv, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


@needs_deepsec
def test_deepsec_mnist_pgd_deepsec_params_mr_at_least_99_percent(deepsec_mnist, mnist_candidates):
    c = mnist_candidates
    x_adv = pgd(deepsec_mnist, c.x, c.y, **get_config("pgd", "deepsec_mnist"))
    assert misclassified(deepsec_mnist, x_adv, c.y).float().mean() >= 0.99


@needs_deepsec
def test_pgd_at_least_as_strong_as_fgsm_on_a_trained_model(deepsec_mnist, mnist_candidates):
    c = mnist_candidates
    eps = 0.15  # small enough that neither attack saturates
    mr_fgsm = misclassified(deepsec_mnist, fgsm(deepsec_mnist, c.x, c.y, eps=eps), c.y).float().mean()
    mr_pgd = misclassified(deepsec_mnist, pgd(deepsec_mnist, c.x, c.y, eps=eps, step_size=0.025, steps=15),
                           c.y).float().mean()
    assert mr_pgd >= mr_fgsm
    assert mr_pgd > 0.5


# --------------------------------------------------------------------------------------------------- CW2
def test_cw_margin_with_negative_logits():
    logits = torch.tensor([[-5.0, -1.0, -3.0], [-2.0, -9.0, -0.5]])
    target = torch.tensor([0, 2])
    torch.testing.assert_close(cw_margin(logits, target), torch.tensor([4.0, -1.5]))


def test_cw2_separable_problem_succeeds_with_margin_and_beats_pgd_l2():
    model = nn.Sequential(two_class_linear(), ShiftLogits()).eval()  # all logits ≤ 0, as DeepSec's models return
    x = torch.rand(N, 1, SIDE, SIDE) * 0.5 + 0.25
    with torch.no_grad():
        y = model(x).argmax(1)
    target = 1 - y
    kappa = 0.5
    x_adv = cw2(model, x, target, confidence=kappa, initial_const=0.1, binary_search_steps=6, max_iterations=100,
                lr=0.05)
    with torch.no_grad():
        logits = model(x_adv)
    assert torch.all(-cw_margin(logits, target) >= kappa - 1e-4)
    x_pgd = pgd(model, x, y, eps=0.5, step_size=0.05, steps=15)
    pgd_ok = misclassified(model, x_pgd, y)
    assert pgd_ok.sum() >= N // 2
    l2_cw = (x_adv - x).flatten(1).norm(dim=1)
    l2_pgd = (x_pgd - x).flatten(1).norm(dim=1)
    assert torch.all(l2_cw[pgd_ok] < l2_pgd[pgd_ok])


class ShiftLogits(nn.Module):
    def forward(self, logits):
        return logits - logits.amax(1, keepdim=True)


def test_cw2_returns_the_clean_image_when_never_successful():
    model = two_class_linear()
    x = torch.rand(4, 1, SIDE, SIDE)
    with torch.no_grad():
        target = 1 - model(x).argmax(1)
    x_adv = cw2(model, x, target, binary_search_steps=1, max_iterations=1, initial_const=1e-6)
    assert torch.equal(x_adv, x)


# ------------------------------------------------------------------------------------- differential tests
def test_pgd_and_fgsm_equal_torchattacks():
    torchattacks = pytest.importorskip("torchattacks")
    model = tiny_convnet().eval()
    x, y = batch()  # a power-of-two batch: torchattacks' mean-reduced gradient is ours scaled exactly
    ours = pgd(model, x, y, eps=EPS, step_size=0.02, steps=7, random_start=False)
    theirs = torchattacks.PGD(model, eps=EPS, alpha=0.02, steps=7, random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    ours = fgsm(model, x, y, eps=EPS)
    theirs = torchattacks.FGSM(model, eps=EPS)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert not model.training


def test_fgsm_without_value_checks_computes_the_same_and_skips_them():
    """``validate=False`` (a training loop that checked its data once) changes nothing of the result; it skips the
    value checks only: an image outside [0, 1] is then the caller's responsibility, not refused."""
    model = tiny_convnet().eval()
    x, y = batch()
    assert torch.equal(fgsm(model, x, y, eps=EPS, validate=False), fgsm(model, x, y, eps=EPS))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        fgsm(model, x + 1.5, y, eps=EPS)
    fgsm(model, x + 1.5, y, eps=EPS, validate=False)
    with pytest.raises(ValueError, match="int64"):  # shapes and dtypes are always checked
        fgsm(model, x, y.int(), eps=EPS, validate=False)


# ---------------------------------------------------------------------------------------------- bad input
def probability_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, CLASSES), nn.Softmax(dim=1)).eval()


BAD_CASES = {
    "negative eps": (lambda m, x, y: pgd(m, x, y, eps=-0.1, step_size=0.01, steps=2), "eps must be"),
    "negative step": (lambda m, x, y: bim(m, x, y, eps=0.1, step_size=-0.01, steps=2), "step_size must be"),
    "zero steps": (lambda m, x, y: illc(m, x, y, eps=0.1, step_size=0.01, steps=0), "steps must be an integer"),
    "float steps": (lambda m, x, y: pgd(m, x, y, eps=0.1, step_size=0.01, steps=2.0), "steps must be an integer"),
    "image > 1": (lambda m, x, y: fgsm(m, x * 255, y, eps=0.1), r"must lie in \[0, 1\]"),
    "image < 0": (lambda m, x, y: fgsm(m, x - 0.5, y, eps=0.1), r"must lie in \[0, 1\]"),
    "batch mismatch": (lambda m, x, y: pgd(m, x, y[:-1], eps=0.1, step_size=0.01, steps=2), "must have shape"),
    "int32 labels": (lambda m, x, y: fgsm(m, x, y.int(), eps=0.1), "int64"),
    "label out of range": (lambda m, x, y: llc(m, x, y + CLASSES, eps=0.1), r"0\.\.9"),
    "per-sample eps shape": (lambda m, x, y: llc(m, x, y, eps=torch.full((3,), 0.1)), r"per-sample eps"),
    "integer images": (lambda m, x, y: fgsm(m, (x * 255).to(torch.uint8), y, eps=0.1), "floating-point"),
    "cw2 search rule": (lambda m, x, y: cw2(m, x, y, search="bisect", max_iterations=1), "unknown search rule"),
    "cw2 zero lr": (lambda m, x, y: cw2(m, x, y, lr=0.0, max_iterations=1), "lr must be > 0"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_raises_value_error(case):
    call, message = BAD_CASES[case]
    x, y = batch(4)
    with pytest.raises(ValueError, match=message):
        call(tiny_convnet().eval(), x, y)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_probabilities_instead_of_logits_raise(name):
    x, y = batch(4)
    with pytest.raises(ValueError, match="returns probabilities"):
        ATTACKS[name].fn(probability_model(), x, attack_labels(name, y), **SMALL[name])


def test_eps_of_one_or_more_warns_and_small_eps_does_not():
    model = tiny_convnet().eval()
    x, y = batch(4)
    with pytest.warns(UserWarning, match="8/255"):
        x_adv = pgd(model, x, y, **get_config("pgd", "followup_eps8"))
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pgd(model, x, y, **get_config("pgd", "madry_cifar10_train"))


def test_registry_and_configs():
    assert all(entry.name == name and entry.configs for name, entry in ATTACKS.items())
    assert labels_field("illc") == "least_likely" and labels_field("cw2") == "target" and labels_field("pgd") == "y"
    assert get_config("pgd", "deepsec_cifar10") == dict(eps=0.1, step_size=0.01, steps=15)
    assert get_config("cw2", "carlini_wagner")["binary_search_steps"] == 9
    # The named no-abort configuration is Carlini–Wagner's with that one switch flipped, nothing else.
    assert get_config("cw2", "carlini_wagner_no_abort") == {**get_config("cw2", "carlini_wagner"), "abort_early": False}
    with pytest.raises(ValueError, match="unknown pgd configuration"):
        get_config("pgd", "madry")


def _toy(model, x, y, *, eps: float, decay: float = 1.0, generator=None):
    """A throwaway attack with one hyper-parameter more than its rules below (``generator`` is plumbing)."""
    return x


def test_an_attack_without_a_rule_for_a_parameter_cannot_register():
    from repro.checks import number

    # MI-FGSM's decay left without a rule: before the registry, decay="banana" ran with every test green.
    with pytest.raises(ValueError, match=r"attack 'toy'.*without a rule: \['decay'\]"):
        Attack("toy", _toy, {}, {"eps": number()}, cost=lambda p: 1)
    with pytest.raises(ValueError, match=r"rule without a parameter: \['steps'\]"):
        Attack("toy", _toy, {}, {"eps": number(), "decay": number(), "steps": number()}, cost=lambda p: 1)
    with pytest.raises(ValueError, match=r"toy configuration 'bad'.*decay must be a finite number >= 0, got 'banana'"):
        Attack("toy", _toy, {"bad": {"eps": 0.1, "decay": "banana"}}, {"eps": number(), "decay": number()},
               cost=lambda p: 1)
    with pytest.raises(ValueError, match="labels 'true'; allowed: 'y', 'target', 'least_likely'"):
        Attack("toy", _toy, {}, {"eps": number(), "decay": number()}, cost=lambda p: 1, labels="true")
    entry = Attack("toy", _toy, {"a": {"eps": 0.1}}, {"eps": number(), "decay": number()}, cost=lambda p: 1)
    assert entry.parameters == ("eps", "decay")
    with pytest.raises(ValueError, match="attack 'toy' has no parameter 'steps'"):
        entry.check({"steps": 3})


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_registered_parameter_is_checked_by_its_rule(name):
    """Each hyper-parameter of each attack refuses a value of the wrong kind, by its registry rule."""
    entry = ATTACKS[name]
    for param, rule in entry.rules.items():
        with pytest.raises(ValueError, match=param):
            rule.check(param, "banana" if rule.kind != "choice" else 3)
        with pytest.raises(ValueError, match=param):
            rule.check(param, -1 if rule.kind in ("number", "count") else "banana")
