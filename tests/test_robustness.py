"""The library's robustness evaluation (repro.metrics.robustness): worst cases, intervals, the AutoAttack wrapper,
transfer versus white-box and the gradient-masking rule. Tiny models on CPU; no data needed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from repro.metrics import clopper_pearson, robustness

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread

N, SIDE, CLASSES = 24, 8, 10
EPS = 0.05


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 32), nn.ReLU(), nn.Linear(32, CLASSES)).eval()


class ZeroGradient(nn.Module):
    """A linear classifier on images rounded to a coarse grid: its input gradient is zero everywhere (a model whose
    gradients tell an attacker nothing, the textbook case of gradient masking)."""

    def __init__(self, side: int = SIDE):
        super().__init__()
        torch.manual_seed(1)
        self.linear = nn.Linear(side * side, CLASSES)

    def forward(self, x):
        return self.linear(torch.round(x * 4).flatten(1) / 4)


def images(model: nn.Module, n: int = N):
    """Random images labelled by ``model`` (so each is clean-correct), plus one mislabelled image."""
    torch.manual_seed(2)
    x = torch.rand(n, 1, SIDE, SIDE)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[-1] = (y[-1] + 1) % CLASSES
    return x, y


# ------------------------------------------------------------------------------------------------------ rates
def test_rate_has_the_exact_interval_its_n_and_recomputable_outcomes():
    correct = torch.tensor([True, False, True, True, False])
    r = robustness.rate(correct)
    assert (r["k"], r["n"], r["rate"]) == (3, 5, 0.6)
    assert (r["low"], r["high"]) == pytest.approx(clopper_pearson(3, 5))
    assert r["level"] == 0.95 and r["correct"] == "10110"
    assert robustness.rate_of(r["correct"]) == r
    assert torch.equal(robustness.unpack(robustness.pack(correct)), correct)


# ----------------------------------------------------------------------------------------------- worst cases
def test_worst_case_over_restarts_and_attacks_is_at_most_each():
    model = tiny_model()
    x, y = images(model)
    # few short steps, so that the random start matters and later restarts break more images
    one = robustness.pgd_worst_case(model, x, y, eps=EPS, step_size=EPS / 4, steps=3, restarts=1, seed=3)
    many = robustness.pgd_worst_case(model, x, y, eps=EPS, step_size=EPS / 4, steps=3, restarts=4, seed=3)
    assert many["rate"] < one["rate"]
    assert many["after_restart"] == sorted(many["after_restart"], reverse=True)
    assert many["after_restart"][0] == one["k"]  # the first start is the same
    clean = robustness.predict_correct(model, x, y)
    assert not clean[-1] and many["correct"][-1] == "0"  # a misclassified image is never robust
    aa = robustness.autoattack_eval(model, x, y, eps=EPS, version="custom", attacks=("apgd-ce",), iterations=5, seed=3)
    robust = robustness.rate(robustness.unpack(many["correct"]) & robustness.unpack(aa["correct"]))
    assert robust["rate"] <= min(many["rate"], aa["rate"], robustness.rate(clean)["rate"])
    worst = robustness.unpack(robust["correct"])
    assert not (worst & ~robustness.unpack(many["correct"])).any() and not (worst & ~robustness.unpack(aa["correct"])).any()


# ------------------------------------------------------------------------------------------------ AutoAttack
def test_autoattack_wrapper_runs_and_returns_per_image_results():
    model = tiny_model()
    x, y = images(model)
    out = robustness.autoattack_eval(model, x, y, eps=EPS, version="custom", attacks=("apgd-ce", "apgd-t"),
                                   target_classes=2, iterations=5, seed=0)
    assert len(out["correct"]) == N and out["n"] == N
    assert [s["attack"] for s in out["stages"]] == ["apgd-ce", "apgd-t"]
    assert (out["target_classes"], out["iterations"]) == (2, 5)
    assert out["stages"][0]["attacked"] == N - 1  # the mislabelled image is not attacked: already wrong
    assert out["stages"][-1]["robust_after"] == out["k"]
    assert out["stages"][1]["attacked"] == out["stages"][0]["robust_after"]  # the cascade: only survivors go on
    assert out["seconds_per_image"] == pytest.approx(out["seconds"] / N)
    # AutoAttack is deterministic for a seed; robust images are classified correctly on their clean version
    again = robustness.autoattack_eval(model, x, y, eps=EPS, version="custom", attacks=("apgd-ce", "apgd-t"),
                                     target_classes=2, iterations=5, seed=0)
    assert again["correct"] == out["correct"]
    assert not (robustness.unpack(out["correct"]) & ~robustness.predict_correct(model, x, y)).any()


def test_standard_autoattack_runs_its_four_attacks():
    model = tiny_model()
    x, y = images(model, n=6)
    out = robustness.autoattack_eval(model, x, y, eps=0.01, version="standard", target_classes=1, iterations=2,
                                   square_queries=5, seed=0)
    assert out["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert len(out["stages"]) == 4 and len(out["correct"]) == 6


# --------------------------------------------------------------------------------------- transfer vs white-box
def test_transfer_from_the_model_itself_gives_the_white_box_number_exactly():
    model = tiny_model()
    x, y = images(model)
    attacks = {"fgsm": dict(eps=EPS), "pgd": dict(eps=EPS, step_size=EPS / 4, steps=5)}
    out = robustness.transfer_vs_white_box(model, model, x, y, attacks=attacks, seed=5)
    for name in attacks:
        assert out[name]["transfer"] == out[name]["white_box"]


def test_transfer_scores_examples_crafted_on_the_source_model():
    source, target = tiny_model(0), tiny_model(1)
    x, y = images(target)
    targets = robustness.random_targets(y, seed=0)
    assert (targets != y).all()
    attacks = {"fgsm": dict(eps=EPS), "cw2": dict(binary_search_steps=1, max_iterations=5, initial_const=1.0)}
    crafted: dict = {}
    out = robustness.transfer_vs_white_box(source, target, x, y, attacks=attacks, targets=targets, seed=0,
                                         crafted_on_source=crafted)
    from repro.attacks import run_attack

    on_source = run_attack("fgsm", source, x, y, params=attacks["fgsm"], progress=False, seed=0).x_adv
    assert torch.equal(crafted["fgsm"], on_source)
    assert out["fgsm"]["transfer"]["correct"] == robustness.pack(robustness.predict_correct(target, on_source, y))
    # a second defence of the same raw model reuses the crafted examples
    again = robustness.transfer_vs_white_box(source, target, x, y, attacks=attacks, targets=targets, seed=0,
                                           crafted_on_source=crafted)
    assert again["fgsm"]["transfer"] == out["fgsm"]["transfer"]


# ----------------------------------------------------------------------------------------- gradient masking
@pytest.mark.parametrize("case, expected", [
    (dict(white_box=0.40, square=0.30, steps_accuracy={1: 0.6, 100: 0.4}, large_eps_accuracy=0.0),
     ["square_beats_gradient"]),
    (dict(white_box=0.40, square=0.41, steps_accuracy={1: 0.6, 100: 0.4}, large_eps_accuracy=0.2),
     ["large_eps_not_zero"]),
    (dict(white_box=0.40, square=0.45, steps_accuracy={1: 0.4, 5: 0.5, 100: 0.43}, large_eps_accuracy=0.0),
     ["steps_hurt"]),
    # one step already as strong as 100 (a nearly linear loss): not a sign of masking
    (dict(white_box=0.24, square=0.32, steps_accuracy={1: 0.24, 5: 0.24, 100: 0.24}, large_eps_accuracy=0.0), []),
    (dict(white_box=0.40, square=0.45, steps_accuracy={1: 0.4, 100: 0.42}, large_eps_accuracy=0.0), []),
    # one step leaving 30 points more than 100 steps: single-step masking
    (dict(white_box=0.40, square=0.45, steps_accuracy={1: 0.7, 20: 0.45, 100: 0.4}, large_eps_accuracy=0.01),
     ["single_step_gap"]),
    # NAT on MNIST under quick (1 step 90 %, 100 steps 22 %) and Madry et al.'s CIFAR-10 model (FGSM 56.1 %, PGD
    # 45.8 %): the first is flagged, the second is not
    (dict(white_box=0.12, square=0.84, steps_accuracy={1: 0.90, 5: 0.6, 20: 0.3, 100: 0.22}, large_eps_accuracy=0.0),
     ["single_step_gap"]),
    (dict(white_box=0.458, square=0.47, steps_accuracy={1: 0.561, 100: 0.458}, large_eps_accuracy=0.0), []),
    (dict(white_box=0.40, square=0.45, steps_accuracy={1: 0.64, 100: 0.40}, large_eps_accuracy=0.0), []),
    (dict(white_box=0.0, square=0.0, steps_accuracy={1: 0.0, 100: 0.0}, large_eps_accuracy=0.0), []),
])
def test_masking_verdict_rule(case, expected):
    verdict = robustness.masking_verdict(**case)
    assert verdict["reasons"] == expected
    assert verdict["suspected"] is bool(expected)
    assert verdict["verdict"] == robustness.VERDICTS[bool(expected)]
    assert set(verdict["reasons"]) <= set(robustness.MASKING_RULES)


def test_a_model_whose_gradient_is_zero_everywhere_is_flagged():
    model = ZeroGradient().eval()
    x, y = images(model)
    x_probe = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x_probe), y), x_probe)
    assert (grad == 0).all()
    white = robustness.pgd_worst_case(model, x, y, eps=EPS, step_size=EPS / 4, steps=5, restarts=2, seed=0)
    out = robustness.masking_checks(model, x, y, eps=EPS, white_box=robustness.unpack(white["correct"]),
                                  steps_list=(1, 5, 20), eps_list=(EPS, 0.5, 1.0), eps_steps=5, square_queries=50)
    assert out["verdict"]["suspected"] and out["verdict"]["verdict"] == "masking suspected"
    assert "large_eps_not_zero" in out["verdict"]["reasons"]
    assert [r["steps"] for r in out["steps"]] == [1, 5, 20] and out["eps"][-1]["eps"] == 1.0


def test_random_targets_follow_the_one_rule_of_the_candidates_uniform_over_the_wrong_classes():
    """Before: the security chapter drew targets as (y + U{1..9}) mod 10 from torch, the candidates by skipping the
    true label with Python's random: two rules. Now one (repro.data.wrong_classes)."""
    import random

    from repro import data

    y = torch.arange(10).repeat(500)
    targets = robustness.random_targets(y, seed=3)
    assert torch.equal(targets, data.wrong_classes(y, random.Random(3)))
    assert (targets != y).all() and set(targets.tolist()) == set(range(10))
    for label in range(10):  # each of the 9 wrong classes about 1/9 of the time (500 draws per label)
        counts = torch.bincount(targets[y == label], minlength=10)
        assert counts[label] == 0 and counts.sum() == 500
        assert counts[torch.arange(10) != label].min() >= 30
