"""Closed-form oracles for the attacks' strength: affine classifiers whose minimal L2 and L∞ adversarial
perturbations are known exactly, and a ReLU network with an adversarial point exhibited by construction.

The affine problem (:func:`affine_oracle`). Images are 2×4×4 (32 pixels). Class 0 has logit 0 (the target of the
targeted attacks); each competitor j ≥ 1 has logit z_j = u_j·x + b_j, with the u_j on *disjoint* blocks of pixels.
Some pixels are "blocked": set to the box edge that the attack would need to push them past (0 where u > 0, 1 where
u < 0), so the box constrains the optimum. With m_j = max(z_j(x), 0) and u_j^F the free (unblocked) part of u_j:

* minimal L2 to make class 0 win:  ‖δ*‖₂ = sqrt(Σ_j (m_j / ‖u_j^F‖₂)²),  δ* = −Σ_j (m_j / ‖u_j^F‖₂²) u_j^F;
* minimal L∞ (one competitor, or all at once): ε* = max_j m_j / ‖u_j^F‖₁, reached at clip(x − ε·sign u).

Why exactly: the constraints z_j(x + δ) ≤ 0 touch disjoint pixels, so the problem splits into one half-space
projection per block; a blocked pixel can only move in the direction that raises z_j, so the optimum leaves it alone,
and the free optimum lies strictly inside the box (asserted when the problem is built). Success is strict (the target
logit must beat every other), so no successful point can be closer than the optimum; a point a hair beyond it (×1.001
for L2, ×1.02 for L∞) succeeds and one a hair short does not (:func:`test_the_affine_oracle_is_exact`).
"""
from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn

from repro.attacks import ATTACKS, cw2, get_config, labels_field, pgd

SHAPE = (2, 4, 4)
PIXELS = 32
BLOCKED_FRACTION = 0.25
# Float32 logits carry ~1e-6 relative error; as a distance on these problems (‖u‖ ≥ 3) that is < 1e-5.
DISTANCE_TOL = 1e-5
# The stated strength bound for CW2: found L2 ≤ 1.05 × the exact optimum (adv-lib's own tests accept 1.25×).
CW2_FACTOR = 1.05
# Adam steps per search step: DeepSec's 10,000 are a GPU job; 200 already land within 1.2% of the optimum here.
CW2_ITERATIONS = 200
CW2_CONFIG_OF_RULE = {"deepsec": "deepsec", "carlini": "carlini_wagner"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


class Affine(nn.Module):
    """f(x) = W·flatten(x) + b on NCHW images in [0, 1]."""

    def __init__(self, weight: Tensor, bias: Tensor):
        super().__init__()
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float())

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


class AffineOracle(NamedTuple):
    model: Affine
    x: Tensor  # (n, 2, 4, 4) float32 in [0, 1]
    y: Tensor  # the clean prediction (a competitor), int64
    target: Tensor  # class 0, int64
    l2: Tensor  # (n,) float64, the minimal L2 distance to class 0
    delta: Tensor  # (n, 2, 4, 4) float64, the L2-optimal perturbation
    linf: Tensor  # (n,) float64, the minimal L∞ distance to class 0
    corner_sign: Tensor  # (1, 2, 4, 4) float32, sign(Σ_j u_j): clip(x − ε·sign) is L∞-optimal

    def labels(self, attack: str) -> Tensor:
        """The labels ``attack`` takes (``repro.attacks.labels_field``); with two classes, target = least likely."""
        field = labels_field(attack)
        if field == "y":
            return self.y
        with torch.no_grad():
            least_likely = self.model(self.x).argmin(1)
        assert field == "target" or torch.equal(least_likely, self.target)
        return self.target

    def corner(self, eps: Tensor) -> Tensor:
        """clip(x − eps·sign u, 0, 1), the L∞-optimal point for per-sample budgets ``eps`` (n,)."""
        return (self.x - eps.float().view(-1, 1, 1, 1) * self.corner_sign).clamp(0.0, 1.0)


def affine_oracle(n: int, n_classes: int, seed: int) -> AffineOracle:
    """An affine problem with n samples, n_classes − 1 competitors on disjoint pixel blocks and blocked pixels.

    Each sample's distance to competitor j's boundary (free coordinates) is drawn in [0.05, 0.25]; with more than one
    competitor, odd samples have competitor 1 already below the target (an inactive constraint the optimum ignores).
    """
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    competitors = n_classes - 1
    block = PIXELS // competitors
    weight = torch.zeros(n_classes, PIXELS, **f64)
    for j in range(competitors):
        weight[j + 1, j * block : (j + 1) * block] = torch.randn(block, generator=g, **f64)
    weight = weight.float().double()  # the oracle uses exactly the model's float32 weights
    u = weight[1:]
    column = u.sum(0)  # each pixel belongs to at most one block
    blocked = (torch.rand(PIXELS, generator=g) < BLOCKED_FRACTION) & (column != 0)
    free_u = u * ~blocked
    free_l2, free_l1 = free_u.norm(dim=1), free_u.abs().sum(1)
    # Blocked pixels sit at the edge the attack would push them past; free pixels around the centre of the box.
    start = torch.where(blocked, (column < 0).double(), 0.4 + 0.2 * torch.rand(n, PIXELS, generator=g, **f64))
    bias = torch.zeros(n_classes, **f64)
    bias[1:] = -(start @ u.T).mean(0)
    bias = bias.float().double()
    distance = 0.05 + 0.2 * torch.rand(n, competitors, generator=g, **f64)
    if competitors > 1:
        distance[1::2, 0] = -0.1
    # Move each sample along its free u_j so that its margin to competitor j is distance·‖u_j^F‖ exactly.
    margin_start = start @ u.T + bias[1:]
    x = (start + ((distance * free_l2 - margin_start) / free_l2.square()) @ free_u).float().double()
    margin = (x @ u.T + bias[1:]).clamp(min=0.0)  # (n, competitors); the oracle uses the float32 image
    assert (margin > 0).any(1).all(), "every sample must start outside the target class"
    l2 = (margin / free_l2).square().sum(1).sqrt()
    delta = -(margin / free_l2.square()) @ free_u
    linf = (margin / free_l1).amax(1)
    # The closed forms hold only if the free optimum stays inside the box.
    free_x, free_opt = x[:, ~blocked], (x + delta)[:, ~blocked]
    assert x.min() >= 0 and x.max() <= 1 and free_opt.min() > 0 and free_opt.max() < 1
    assert (free_x - 1.02 * linf[:, None]).min() > 0 and (free_x + 1.02 * linf[:, None]).max() < 1
    with torch.no_grad():
        model = Affine(weight, bias)
        y = model(x.float().view(n, *SHAPE)).argmax(1)
    assert (y != 0).all()
    return AffineOracle(model, x.float().view(n, *SHAPE), y, torch.zeros(n, dtype=torch.int64), l2,
                        delta.view(n, *SHAPE), linf, column.sign().float().view(1, *SHAPE))


def predict(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def l2_distance(x_adv: Tensor, x: Tensor) -> Tensor:
    return (x_adv.double() - x.double()).flatten(1).norm(dim=1)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_the_affine_oracle_is_exact(n_classes):
    """Self-check of the closed forms (so that an attack test failure blames the attack, not the oracle).

    x + 1.001·δ* is classified as the target and x + 0.999·δ* is not, with ‖δ*‖₂ = sqrt(Σ_j (m_j/‖u_j^F‖₂)²);
    the corner clip(x − ε·sign u) succeeds at ε = 1.02·ε* and fails at 0.98·ε*, with ε* = max_j m_j/‖u_j^F‖₁.
    Fails if the construction (blocks, blocked pixels, margins) does not have the optimum it claims.
    """
    oracle = affine_oracle(8, n_classes, seed=n_classes)
    torch.testing.assert_close(oracle.delta.flatten(1).norm(dim=1), oracle.l2, rtol=1e-12, atol=0)
    assert torch.all(predict(oracle.model, (oracle.x + 1.001 * oracle.delta).float()) == oracle.target)
    assert torch.all(predict(oracle.model, (oracle.x + 0.999 * oracle.delta).float()) != oracle.target)
    assert torch.all(predict(oracle.model, oracle.corner(1.02 * oracle.linf)) == oracle.target)
    assert torch.all(predict(oracle.model, oracle.corner(0.98 * oracle.linf)) != oracle.target)


# ------------------------------------------------------------------------------------------- CW2 vs the L2 optimum
@pytest.mark.parametrize("n_classes", [2, 4], ids=["1-competitor", "3-competitors"])
@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("search", ["deepsec", "carlini"])
def test_cw2_reaches_the_closed_form_l2_optimum(search, n, n_classes):
    """CW2 finds, for every sample, a success with optimum ≤ ‖x' − x‖₂ ≤ 1.05 × optimum.

    Optimum: sqrt(Σ_j (m_j/‖u_j^F‖₂)²) (module docstring); with three competitors all constraints are active at the
    optimum (the non-smooth max of CW's margin switches between them), and the blocked pixels sit at the box edges.
    Each search rule runs its own named configuration (DeepSec: c₀ 1e-3, lr 0.02, 10 search steps, no early abort;
    Carlini–Wagner: c₀ 1e-3, lr 0.01, 9 search steps, early abort) with 200 Adam steps per search step instead of
    10,000. Achieved (deterministic), worst sample per batch size 1 / 3 / 8: DeepSec rule 1.005 / 1.005 / 1.003 with
    one competitor, 1.005 / 1.008 / 1.011 with three; Carlini–Wagner rule 1.004 / 1.003 / 1.002 and
    1.007 / 1.002 / 1.006 (100 Adam steps: still ≤ 1.024). Fails if a sample never succeeds (the clean image comes
    back), if the success rule accepts a point short of the boundary (a κ or strictness bug), if the best iterate is
    not the one returned (returning the last success gives up to 1.075 under the DeepSec rule), or if the result
    leaves the [0, 1] box. It cannot check the c search: the hinge is an exact penalty, so on an affine model every c
    above a threshold has the optimum itself as its minimiser (a search that only multiplies c by 10 still passes).
    """
    oracle = affine_oracle(n, n_classes, seed=100 * n_classes + n)
    params = get_config("cw2", CW2_CONFIG_OF_RULE[search])
    assert params["search"] == search
    params["max_iterations"] = CW2_ITERATIONS
    x_adv = cw2(oracle.model, oracle.x, oracle.target, **params)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert torch.all(predict(oracle.model, x_adv) == oracle.target)
    found = l2_distance(x_adv, oracle.x)
    assert torch.all(found >= oracle.l2 - DISTANCE_TOL), (found / oracle.l2).tolist()
    assert torch.all(found <= CW2_FACTOR * oracle.l2), (found / oracle.l2).tolist()


# --------------------------------------------------------------------------------------- L∞ attacks vs ε*
LINF_CASES = {
    "fgsm": ("fgsm", {}),
    "llc": ("llc", {}),
    "bim": ("bim", {}),
    "illc": ("illc", {}),
    "pgd-random-start": ("pgd", dict(random_start=True)),
    "pgd-no-random-start": ("pgd", dict(random_start=False)),
}


@pytest.mark.parametrize("case", list(LINF_CASES))
def test_linf_attacks_flip_exactly_at_the_closed_form_eps(case):
    """At per-sample ε = 1.02·ε* every L∞ attack succeeds, at 0.98·ε* none does; the result is the optimal corner.

    ε* = m/‖u^F‖₁ (two classes, so untargeted = targeted at the other class = least likely), 8 samples, each with its
    own ε, and DeepSec's CIFAR-10 step size (0.01) and step counts, enough to reach the corner of every ball. On an
    affine model the sign of the cross-entropy gradient is the same everywhere (−sign u), so every one of these
    attacks must end exactly at clip(x − ε·sign u), the maximiser of the margin over the ε-ball ∩ [0, 1]. Fails if an
    attack moves the wrong way, loses part of its budget (e.g. projects onto the ball before stepping, clips the
    random start's ball wrongly, returns an earlier iterate), ignores a per-sample ε, or leaves the ball or the box.
    """
    attack, extra = LINF_CASES[case]
    oracle = affine_oracle(8, 2, seed=7)
    params = {**get_config(attack, "deepsec_cifar10"), **extra}
    if "steps" in params:
        # The walk from x (or from the far side of the ball, after a random start) to the corner must fit.
        reach = 2 if params.get("random_start", attack == "pgd") else 1
        assert params["steps"] * params["step_size"] >= reach * 1.02 * float(oracle.linf.max())
    labels = oracle.labels(attack)
    for factor, should_succeed in ((1.02, True), (0.98, False)):
        eps = (factor * oracle.linf).float()
        x_adv = ATTACKS[attack].fn(oracle.model, oracle.x, labels, **{**params, "eps": eps})
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        assert torch.all((x_adv - oracle.x).abs().flatten(1).amax(1) <= eps + 1e-6)
        torch.testing.assert_close(x_adv, oracle.corner(eps), rtol=0, atol=1e-6)
        succeeded = predict(oracle.model, x_adv) == oracle.target
        assert torch.all(succeeded == should_succeed), (factor, succeeded.tolist())


# ------------------------------------------------------------------------- a ReLU network with a known adversarial
HIDDEN, MLP_CLASSES, ADVERSARIAL_CLASS = 8, 3, 1
EXHIBIT_SLACK = 1.05


class ReluOracle(NamedTuple):
    model: nn.Module
    x: Tensor  # (n, 2, 4, 4)
    y: Tensor  # class 0 at every x
    linf_point: Tensor  # an adversarial point (class 1) per sample, x + ε·sign g
    linf: Tensor  # (n,) its L∞ distance
    l2_point: Tensor  # an adversarial point (class 1) per sample, x + ρ·g/‖g‖₂
    l2: Tensor  # (n,) its L2 distance


def relu_oracle(n: int, seed: int) -> ReluOracle:
    """A 32 → 10 → 3 ReLU network in which class 1's logit contains g·x exactly, through two hidden units
    ReLU(g·x) − ReLU(−g·x); eight random hidden units, centred so that they switch on and off inside the balls below,
    bend every decision boundary. The exhibited points lie on the rays x + t·sign g and x + t·g/‖g‖₂, at 1.05× the
    first t (bisection) where class 1 wins — so an adversarial example is known to exist within that distance.
    """
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.4 * torch.rand(n, PIXELS, generator=g)
    direction = torch.randn(PIXELS, generator=g)
    hidden_weight = 0.5 * torch.randn(HIDDEN, PIXELS, generator=g)
    hidden_bias = -(x @ hidden_weight.T).mean(0) + 0.1 * torch.randn(HIDDEN, generator=g)
    out_weight = 0.1 * torch.randn(MLP_CLASSES, HIDDEN, generator=g)
    first, second = nn.Linear(PIXELS, HIDDEN + 2), nn.Linear(HIDDEN + 2, MLP_CLASSES)
    passthrough = torch.zeros(MLP_CLASSES, 2)
    passthrough[ADVERSARIAL_CLASS] = torch.tensor([1.0, -1.0])
    model = nn.Sequential(nn.Flatten(), first, nn.ReLU(), second).eval()
    with torch.no_grad():
        first.weight.copy_(torch.cat([hidden_weight, direction[None], -direction[None]]))
        first.bias.copy_(torch.cat([hidden_bias, torch.zeros(2)]))
        second.weight.copy_(torch.cat([out_weight, passthrough], 1))
        second.bias.zero_()
        logits = model(x)
        # Class 0 wins at every x, class 1 by at least 0.5, class 2 by at least 0.3.
        second.bias[1] = -(logits[:, 1] - logits[:, 0]).max() - 0.5
        second.bias[2] = -(logits[:, 2] - logits[:, 0]).max() - 0.3
    x = x.view(n, *SHAPE)
    y = torch.zeros(n, dtype=torch.int64)
    assert torch.all(predict(model, x) == y)

    def exhibit(unit: Tensor) -> tuple[Tensor, Tensor]:
        lo, hi = torch.zeros(n), torch.full((n,), 2.0)
        assert torch.all(predict(model, (x + hi.view(-1, 1, 1, 1) * unit).clamp(0, 1)) == ADVERSARIAL_CLASS)
        for _ in range(40):
            mid = (lo + hi) / 2
            adversarial = predict(model, (x + mid.view(-1, 1, 1, 1) * unit).clamp(0, 1)) == ADVERSARIAL_CLASS
            lo, hi = torch.where(adversarial, lo, mid), torch.where(adversarial, mid, hi)
        point = (x + EXHIBIT_SLACK * hi.view(-1, 1, 1, 1) * unit).clamp(0, 1)
        assert torch.all(predict(model, point) == ADVERSARIAL_CLASS)
        return point, hi

    linf_point, _ = exhibit(direction.sign().view(1, *SHAPE))
    l2_point, _ = exhibit((direction / direction.norm()).view(1, *SHAPE))
    linf = (linf_point - x).abs().flatten(1).amax(1)
    return ReluOracle(model, x, y, linf_point, linf, l2_point, l2_distance(l2_point, x).float())


@pytest.mark.parametrize("random_start", [True, False], ids=["random-start", "no-random-start"])
def test_pgd_finds_the_exhibited_adversarial_of_a_relu_network(random_start):
    """With ε = the L∞ distance of an exhibited adversarial point (≈ 1.05× the first success on the ray x + t·sign g),
    PGD misclassifies every sample.

    Step ε_min/5 and enough steps to cross the largest ball twice. The point proves an adversarial example exists in
    the ball; the ReLU units switching inside the ball make the loss non-linear, so this fails if PGD's ascent,
    projection or random start lose the budget (ignoring the ball, or stepping along the raw gradient, fails it).
    Seeded, PGD still succeeds at 1.01× the first success on the ray; with coarse steps (ε_max/4, 8 steps) and a
    random start it then ends on the wrong side for one sample, because it returns its last iterate (DeepSec's PGD).
    """
    oracle = relu_oracle(4, seed=0)
    step_size = float(oracle.linf.min()) / 5
    steps = int(2 * float(oracle.linf.max()) / step_size) + 5
    x_adv = pgd(oracle.model, oracle.x, oracle.y, eps=oracle.linf, step_size=step_size, steps=steps,
                random_start=random_start)
    assert torch.all((x_adv - oracle.x).abs().flatten(1).amax(1) <= oracle.linf + 1e-6)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert torch.all(predict(oracle.model, x_adv) != oracle.y)


@pytest.mark.parametrize("search", ["deepsec", "carlini"])
def test_cw2_finds_the_exhibited_adversarial_of_a_relu_network(search):
    """CW2 (target = class 1, the class of the exhibited point) succeeds on every sample with an L2 no larger than
    the exhibited point's (≈ 1.05× the first success on the ray x + t·g/‖g‖₂).

    Named configuration of each search rule with 200 Adam steps per search step; achieved 0.93–0.95× the exhibited
    distance (both rules). Fails if CW2 stalls in the non-linear landscape, mis-tracks its best iterate or its c search.
    """
    oracle = relu_oracle(4, seed=0)
    params = get_config("cw2", CW2_CONFIG_OF_RULE[search])
    params["max_iterations"] = CW2_ITERATIONS
    target = torch.full_like(oracle.y, ADVERSARIAL_CLASS)
    x_adv = cw2(oracle.model, oracle.x, target, **params)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert torch.all(predict(oracle.model, x_adv) == target)
    found = l2_distance(x_adv, oracle.x)
    assert torch.all(found <= oracle.l2), (found / oracle.l2).tolist()
