"""Tiny helpers shared by the attacks: the ε budget check and its ε ≥ 1 warning, projection onto the ε-ball ∩
[0, 1], and the input gradient. Nothing else is shared between attacks (STYLE: one file per attack); the input
checks are the library's (:mod:`repro.checks`).
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..checks import check_eval_mode, check_logits, check_nonnegative


def warn_large_eps(eps_max: float, *, stacklevel: int) -> None:
    """Warn (UserWarning) that ε ≥ 1 leaves only the [0, 1] box as a constraint.

    Python's default warning filter shows it once per calling line, so a loop over batches warns once.
    """
    if eps_max >= 1.0:
        warnings.warn(
            f"eps={eps_max:g} >= 1 on images in [0, 1]: the eps-ball contains the whole box, so the only constraint "
            "left is [0, 1] (an unbounded attack). Madry et al.'s eps=8 means 8/255 ~ 0.0314 on [0, 1] images.",
            UserWarning, stacklevel=stacklevel + 1)


def as_eps(eps, x: Tensor, *, name: str = "eps", stacklevel: int = 3, check_values: bool = True) -> float | Tensor:
    """Validate a perturbation budget: a float ≥ 0, or a per-sample tensor of shape ``(N,)`` with values ≥ 0.

    Returns the float, or the tensor as ``x``'s dtype and device shaped ``(N, 1, ..., 1)`` to broadcast over ``x``.
    Warns once per call site when the budget is ≥ 1 (see :func:`warn_large_eps`). ``check_values=False`` skips the
    range check of a per-sample tensor (two host synchronisations) and its warning, for callers that built the
    tensor within range (NAT's ε draw).
    """
    if isinstance(eps, Tensor):
        if eps.dim() == 0:
            return as_eps(eps.item(), x, name=name, stacklevel=stacklevel + 1)
        if eps.shape != (x.shape[0],):
            raise ValueError(f"a per-sample {name} must have shape ({x.shape[0]},) to match x {tuple(x.shape)}, "
                             f"got {tuple(eps.shape)}")
        if not eps.is_floating_point():
            raise ValueError(f"a per-sample {name} must be a floating-point tensor, got dtype {eps.dtype}")
        if not check_values:
            return eps.detach().to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
        lo, hi = eps.min().item(), eps.max().item()
        if not (lo >= 0.0 and hi < float("inf")):
            raise ValueError(f"{name} must be finite and >= 0, found values in [{lo:.4g}, {hi:.4g}]")
        warn_large_eps(hi, stacklevel=stacklevel)
        return eps.detach().to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
    value = check_nonnegative(eps, name=name)
    warn_large_eps(value, stacklevel=stacklevel)
    return value


def box_bounds(x: Tensor, eps: float | Tensor) -> tuple[Tensor, Tensor]:
    """Per-element bounds of {x' : ‖x' − x‖∞ ≤ eps} ∩ [0, 1], as ``(lower, upper)`` tensors shaped like ``x``.

    Because x ∈ [0, 1], clamping to these bounds equals projecting onto the ε-ball and then clipping to [0, 1]
    (DeepSec's order), in one pass per step.
    """
    return (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)


def project(x_adv: Tensor, x: Tensor, eps: float | Tensor) -> Tensor:
    """Project ``x_adv`` onto the ε-ball around ``x`` (L∞), then onto [0, 1]. Returns a new tensor."""
    lower, upper = box_bounds(x, eps)
    return torch.maximum(torch.minimum(x_adv, upper), lower)


def input_gradient(model, x: Tensor, labels: Tensor, *, check: bool, name: str) -> Tensor:
    """Gradient of the summed cross-entropy of ``model(x)`` w.r.t. ``x`` (a fresh leaf), via ``torch.autograd.grad``.

    ``reduction='sum'`` makes each sample's gradient independent of the batch size (batch consistency); only its
    sign is used by the L∞ attacks. Parameter ``.grad`` fields are never touched. ``check`` validates the logits
    (first forward pass only), and the model's mode (:func:`check_eval_mode`) then too.
    """
    if check:
        check_eval_mode(model)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        if check:
            check_logits(logits, labels, name=name)
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad
