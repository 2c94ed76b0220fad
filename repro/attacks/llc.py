"""Least-likely class method (Kurakin et al., ICLR 2017), the one-step targeted attack NAT trains on."""
from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_image_batch, check_images, check_labels
from ._common import as_eps, input_gradient

# DeepSec's evaluation parameters (SPEC §4; DeepSec's Attacks/LLC_Test.py defaults).
LLC_CONFIGS: dict[str, dict] = {
    "deepsec_mnist": dict(eps=0.3),
    "deepsec_cifar10": dict(eps=0.1),
}


def llc(model: torch.nn.Module, x: Tensor, target: Tensor, *, eps: float | Tensor, validate: bool = True) -> Tensor:
    """Targeted one-step L∞ attack towards ``target``: x − eps·sign(∇ₓ CE(model(x), target)), clipped to [0, 1].

    Reference: Kurakin, Goodfellow and Bengio, "Adversarial machine learning at scale", ICLR 2017 (the "step l.l."
    method). The caller supplies the target, normally the model's least-likely class on the clean image
    (``repro.data.Candidates.least_likely``, or the current model's argmin during NAT training).

    Args:
        model: maps images in [0, 1] to logits ``(N, K)``; its mode (train/eval) is the caller's choice.
        x: images ``(N, C, H, W)`` (or ``(N, D)``), floating point, in [0, 1].
        target: target classes ``(N,)``, int64 in ``0..K-1``, on ``x``'s device.
        eps: L∞ budget in [0, 1] pixel units: a float ≥ 0, or a per-sample tensor ``(N,)`` (NAT's per-image ε).
            ε ≥ 1 is allowed but warns.
        validate: check input values (host synchronisations); ``False`` for callers that checked their data once
            per run, as :func:`repro.attacks.pgd.pgd`.

    Returns:
        Adversarial images, a new detached tensor shaped like ``x`` on its device, with ‖x_adv − x‖∞ ≤ eps.
        Leaves ``model.training`` and parameter gradients untouched.

    Raises:
        ValueError: invalid images, targets, eps, or a model that returns probabilities instead of logits.
    """
    (check_images if validate else check_image_batch)(x)
    check_labels(target, x, name="target")
    eps = as_eps(eps, x, check_values=validate)
    grad = input_gradient(model, x, target, check=validate, name="target")
    return (x.detach() - eps * grad.sign_()).clamp_(0.0, 1.0)
