"""Fast gradient sign method (Goodfellow et al., ICLR 2015), as DeepSec runs it."""
from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_image_batch, check_images, check_labels
from ._common import as_eps, input_gradient

# DeepSec's evaluation parameters (SPEC §4; DeepSec's Attacks/FGSM_Test.py defaults).
FGSM_CONFIGS: dict[str, dict] = {
    "deepsec_mnist": dict(eps=0.3),
    "deepsec_cifar10": dict(eps=0.1),
}


def fgsm(model: torch.nn.Module, x: Tensor, y: Tensor, *, eps: float | Tensor, validate: bool = True) -> Tensor:
    """Untargeted one-step L∞ attack: x + eps·sign(∇ₓ CE(model(x), y)), clipped to [0, 1].

    Reference: Goodfellow, Shlens and Szegedy, "Explaining and harnessing adversarial examples", ICLR 2015.

    Args:
        model: maps images in [0, 1] to logits ``(N, K)``; its mode (train/eval) is the caller's choice.
        x: images ``(N, C, H, W)`` (or ``(N, D)``), floating point, in [0, 1].
        y: true labels ``(N,)``, int64 in ``0..K-1``, on ``x``'s device.
        eps: L∞ budget in [0, 1] pixel units: a float ≥ 0, or a per-sample tensor ``(N,)`` (NAT's per-image ε).
            ε ≥ 1 is allowed but warns (only the [0, 1] box constrains then).
        validate: check input values (host synchronisations); ``False`` for callers that checked their data once
            (a training loop crafting every batch). Shapes and dtypes are always checked.

    Returns:
        Adversarial images, a new detached tensor shaped like ``x`` on its device, with ‖x_adv − x‖∞ ≤ eps.
        Leaves ``model.training`` and parameter gradients untouched.

    Raises:
        ValueError: invalid images, labels, eps, or a model that returns probabilities instead of logits.
    """
    (check_images if validate else check_image_batch)(x)
    check_labels(y, x, name="y")
    eps = as_eps(eps, x, check_values=validate)
    grad = input_gradient(model, x, y, check=validate, name="y")
    return (x.detach() + eps * grad.sign_()).clamp_(0.0, 1.0)
