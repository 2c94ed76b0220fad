"""L∞ projected gradient descent with a random start (Madry et al., ICLR 2018), with DeepSec's semantics."""
from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_image_batch, check_images, check_labels, check_nonnegative, check_steps
from ._common import as_eps, box_bounds, input_gradient

# Named settings; ε and step sizes in [0, 1] pixel units.
PGD_CONFIGS: dict[str, dict] = {
    # DeepSec's evaluation parameters (SPEC §4; DeepSec's Attacks/PGD_Test.py).
    "deepsec_mnist": dict(eps=0.3, step_size=0.05, steps=15),
    "deepsec_cifar10": dict(eps=0.1, step_size=0.01, steps=15),
    # Madry et al. (ICLR 2018) CIFAR-10: 8/255, step 2/255; 7 steps for training, 20 for evaluation. DeepSec's PAT
    # uses the 7-step one (SPEC §5).
    "madry_cifar10_train": dict(eps=8 / 255, step_size=2 / 255, steps=7),
    "madry_cifar10_eval": dict(eps=8 / 255, step_size=2 / 255, steps=20),
    # Madry et al. (ICLR 2018) MNIST: ε 0.3, step 0.01; 40 steps for training (also DeepSec's MNIST PAT), 100 for
    # evaluation.
    "madry_mnist_train": dict(eps=0.3, step_size=0.01, steps=40),
    "madry_mnist_eval": dict(eps=0.3, step_size=0.01, steps=100),
    # The follow-up study's literal "ε=8" attack (SPEC §5, §8.1): on [0, 1] images no constraint beyond the box. It
    # gives ε = 8 and ε_iter = 0.875 but not the number of steps; we keep DeepSec's 15.
    "followup_eps8": dict(eps=8.0, step_size=0.875, steps=15),
}


def _uniform(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """U[0, 1) noise shaped like ``x`` on ``x``'s device, from ``generator`` (on that device or the CPU) if given."""
    if generator is None:
        return torch.rand(x.shape, dtype=x.dtype, device=x.device)
    if generator.device == x.device:
        return torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    if generator.device.type == "cpu":
        return torch.rand(x.shape, dtype=x.dtype, generator=generator).to(x.device)
    raise ValueError(f"generator is on {generator.device}; it must be on x's device ({x.device}) or the CPU")


def pgd(
    model: torch.nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Tensor,
    step_size: float | Tensor,
    steps: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    validate: bool = True,
) -> Tensor:
    """Untargeted L∞ projected gradient ascent on the cross-entropy, from one random start.

    Reference: Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards deep learning models resistant to adversarial
    attacks", ICLR 2018. Semantics of DeepSec's implementation (SPEC §4): x⁰ = x + U(−eps, eps), *not* clipped to
    [0, 1] before the first step; then ``steps`` times xᵗ⁺¹ = Π(xᵗ + step_size·sign ∇ CE(model(xᵗ), y)), where Π
    projects onto the ε-ball around x and then onto [0, 1]. No early stopping: all samples take all steps, and the
    last iterate is returned. With ``random_start=False`` this is BIM (Kurakin et al.).

    Args:
        model: maps images in [0, 1] to logits ``(N, K)``; its mode is the caller's choice (``eval()`` to attack,
            as DeepSec and PAT do).
        x: images ``(N, C, H, W)`` (or ``(N, D)``), floating point, in [0, 1].
        y: true labels ``(N,)``, int64 in ``0..K-1``, on ``x``'s device.
        eps: L∞ budget in [0, 1] pixel units, a float ≥ 0 or a per-sample tensor ``(N,)``. ε ≥ 1 is allowed but
            warns: only the [0, 1] box constrains then (the follow-up's "ε=8").
        step_size: L∞ size of each step, ≥ 0, same units; a float or a per-sample tensor ``(N,)`` (a minimal-ε
            search scales each sample's step with its ε: ``benchmarks/optimality.py``).
        steps: number of gradient steps, ≥ 1.
        random_start: start from x + U(−eps, eps) (DeepSec, Madry); ``False`` starts from x.
        generator: source of the random start (on ``x``'s device or the CPU); ``None`` uses the global RNG, so
            ``torch.manual_seed`` makes the result reproducible.
        validate: check the values of the inputs (images in [0, 1], labels within the logits' classes, logits not
            probabilities, a per-sample ε finite and ≥ 0), which costs a few host synchronisations per call.
            ``False`` is for callers that checked their data once per run (the training loop): the attack then runs
            without waiting on the device. Shapes, dtypes and devices are checked either way.

    Returns:
        Adversarial images, a new detached tensor shaped like ``x`` on its device, in the ε-ball ∩ [0, 1].
        Leaves ``model.training``, the inputs and parameter gradients untouched.

    Raises:
        ValueError: invalid images, labels, eps, step_size, steps, generator device, or a model that returns
            probabilities instead of logits.
    """
    (check_images if validate else check_image_batch)(x)
    check_labels(y, x, name="y")
    eps = as_eps(eps, x, check_values=validate)
    if isinstance(step_size, Tensor):
        step_size = as_eps(step_size, x, name="step_size", check_values=validate)
    else:
        step_size = check_nonnegative(step_size, name="step_size")
    steps = check_steps(steps)
    x = x.detach()
    lower, upper = box_bounds(x, eps)
    if random_start:
        # DeepSec adds U(−ε, ε) and feeds it to the model unclipped; the first projection happens after step 1.
        x_adv = x + _uniform(x, generator).mul_(2.0).sub_(1.0).mul_(eps)
    else:
        x_adv = x
    for step in range(steps):
        grad = input_gradient(model, x_adv, y, check=validate and step == 0, name="y")
        # One clamp to precomputed bounds = ε-ball projection followed by [0, 1] clipping (x is in [0, 1]).
        # step_size·sign is exact (sign ∈ {−1, 0, 1}), for a float and a per-sample (N, 1, …, 1) tensor alike.
        x_adv = (x_adv + grad.sign_().mul_(step_size)).clamp_(min=lower, max=upper)
    return x_adv
