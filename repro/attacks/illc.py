"""Iterative least-likely class method (Kurakin et al., ICLR 2017 workshop), as DeepSec runs it."""
from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_images, check_labels, check_nonnegative, check_steps
from ._common import as_eps, box_bounds, input_gradient

# DeepSec's evaluation parameters (SPEC §4; DeepSec's Attacks/ILLC_Test.py).
ILLC_CONFIGS: dict[str, dict] = {
    "deepsec_mnist": dict(eps=0.3, step_size=0.05, steps=10),
    "deepsec_cifar10": dict(eps=0.1, step_size=0.01, steps=10),
}


def illc(
    model: torch.nn.Module, x: Tensor, target: Tensor, *, eps: float | Tensor, step_size: float, steps: int
) -> Tensor:
    """Targeted iterative L∞ attack: repeated LLC steps towards ``target``, projected onto the ε-ball and [0, 1].

    Reference: Kurakin, Goodfellow and Bengio, "Adversarial examples in the physical world", ICLR 2017 workshop.
    xᵗ⁺¹ = clip₀¹(clip_ε(xᵗ − step_size·sign ∇ CE(model(xᵗ), target))), x⁰ = x, ``steps`` steps, the last iterate
    returned. The caller supplies the target, normally the raw model's least-likely class on the clean image.

    Args:
        model: maps images in [0, 1] to logits ``(N, K)``; its mode is the caller's choice.
        x: images ``(N, C, H, W)`` (or ``(N, D)``), floating point, in [0, 1].
        target: target classes ``(N,)``, int64 in ``0..K-1``, on ``x``'s device.
        eps: L∞ budget in [0, 1] pixel units, a float ≥ 0 or a per-sample tensor ``(N,)``; ε ≥ 1 warns.
        step_size: L∞ size of each step, ≥ 0.
        steps: number of steps, ≥ 1.

    Returns:
        Adversarial images, a new detached tensor shaped like ``x`` on its device, in the ε-ball ∩ [0, 1].
        Leaves ``model.training``, the inputs and parameter gradients untouched.

    Raises:
        ValueError: invalid images, targets, eps, step_size, steps, or a model that returns probabilities.
    """
    check_images(x)
    check_labels(target, x, name="target")
    eps = as_eps(eps, x)
    step_size = check_nonnegative(step_size, name="step_size")
    steps = check_steps(steps)
    x = x.detach()
    lower, upper = box_bounds(x, eps)
    x_adv = x
    for step in range(steps):
        grad = input_gradient(model, x_adv, target, check=step == 0, name="target")
        x_adv = torch.sub(x_adv, grad.sign_(), alpha=step_size).clamp_(min=lower, max=upper)
    return x_adv
