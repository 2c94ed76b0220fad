"""Basic iterative method (Kurakin et al., ICLR 2017 workshop), as DeepSec runs it."""
from __future__ import annotations

import torch
from torch import Tensor

from .pgd import pgd

# DeepSec's evaluation parameters (SPEC §4; DeepSec's Attacks/BIM_Test.py).
BIM_CONFIGS: dict[str, dict] = {
    "deepsec_mnist": dict(eps=0.3, step_size=0.05, steps=15),
    "deepsec_cifar10": dict(eps=0.1, step_size=0.01, steps=15),
}


def bim(
    model: torch.nn.Module, x: Tensor, y: Tensor, *, eps: float | Tensor, step_size: float, steps: int
) -> Tensor:
    """Untargeted iterative L∞ attack: repeated FGSM steps from x, each projected onto the ε-ball and [0, 1].

    Reference: Kurakin, Goodfellow and Bengio, "Adversarial examples in the physical world", ICLR 2017 workshop.
    xᵗ⁺¹ = clip₀¹(clip_ε(xᵗ + step_size·sign ∇ CE(model(xᵗ), y))), x⁰ = x, no random start, ``steps`` steps, the
    last iterate returned (DeepSec's loop). Equal to :func:`repro.attacks.pgd.pgd` with ``random_start=False``.

    Args:
        model: maps images in [0, 1] to logits ``(N, K)``; its mode is the caller's choice.
        x: images ``(N, C, H, W)`` (or ``(N, D)``), floating point, in [0, 1].
        y: true labels ``(N,)``, int64 in ``0..K-1``, on ``x``'s device.
        eps: L∞ budget in [0, 1] pixel units, a float ≥ 0 or a per-sample tensor ``(N,)``; ε ≥ 1 warns.
        step_size: L∞ size of each step, ≥ 0.
        steps: number of steps, ≥ 1.

    Returns:
        Adversarial images, a new detached tensor shaped like ``x`` on its device, in the ε-ball ∩ [0, 1].
        Leaves ``model.training``, the inputs and parameter gradients untouched.

    Raises:
        ValueError: invalid images, labels, eps, step_size, steps, or a model that returns probabilities.
    """
    # DeepSec's BIM loop is PGD's without the random start: one implementation, so the two cannot drift apart.
    return pgd(model, x, y, eps=eps, step_size=step_size, steps=steps, random_start=False)
