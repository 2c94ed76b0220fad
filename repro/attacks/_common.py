"""Tiny helpers shared by the attacks: input validation, the ε ≥ 1 warning, projection onto the ε-ball ∩ [0, 1].

Nothing else is shared between attacks (STYLE: one file per attack). Every check raises :class:`ValueError` naming
the offending value and what is allowed.
"""
from __future__ import annotations

import numbers
import warnings

import torch
from torch import Tensor

# A model that already applies softmax returns rows in [0, 1] that sum to 1; attacks need logits.
PROBABILITY_ROW_SUM_TOL = 1e-4


def check_images(x: Tensor) -> None:
    """Raise ValueError unless ``x`` is a floating-point batch ``(N, ...)`` with every value in [0, 1]."""
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor of images in [0, 1], got dtype {x.dtype}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (N, C, H, W) (or (N, D)), got shape {tuple(x.shape)}")
    lo, hi = x.min().item(), x.max().item()
    # NaN fails both comparisons below, so test it first.
    if lo != lo or hi != hi:
        raise ValueError("x contains NaN; images must lie in [0, 1]")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"x must lie in [0, 1] (no mean/std normalisation; put it inside the model), "
                         f"found values in [{lo:.4g}, {hi:.4g}]")


def check_labels(labels: Tensor, x: Tensor, *, name: str) -> None:
    """Raise ValueError unless ``labels`` is an int64 tensor of shape ``(N,)`` on ``x``'s batch size.

    The class range is checked against the logits by :func:`check_logits` after the first forward pass.
    """
    if not isinstance(labels, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of int64 class indices, got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise ValueError(f"{name} must hold int64 class indices, got dtype {labels.dtype}")
    if labels.shape != (x.shape[0],):
        raise ValueError(f"{name} must have shape ({x.shape[0]},) to match the batch of x {tuple(x.shape)}, "
                         f"got {tuple(labels.shape)}")
    if labels.device != x.device:
        raise ValueError(f"{name} is on {labels.device} but x is on {x.device}; put both on the same device")


def check_logits(logits: Tensor, labels: Tensor, *, name: str) -> None:
    """Check the model's first output: logits ``(N, K)``, not probabilities, and ``labels`` in ``0..K-1``."""
    if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"the model must return logits of shape (N, K) = ({labels.shape[0]}, K), "
                         f"got {tuple(logits.shape)}")
    with torch.no_grad():
        rows = logits.detach().float()
        in_unit = bool(((rows >= 0) & (rows <= 1)).all())
        if in_unit and bool(((rows.sum(1) - 1).abs() <= PROBABILITY_ROW_SUM_TOL).all()):
            raise ValueError("the model's outputs lie in [0, 1] and every row sums to 1: it returns probabilities, "
                             "but attacks need logits (remove the final softmax)")
        n_classes = logits.shape[1]
        lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"{name} must be class indices in 0..{n_classes - 1} (the model has {n_classes} outputs), "
                         f"found values in [{lo}, {hi}]")


def check_nonnegative(value, *, name: str) -> float:
    """Return ``value`` as a float; raise ValueError unless it is a finite real number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number >= 0, got {value!r}")
    value = float(value)
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def check_steps(steps, *, name: str = "steps") -> int:
    """Return ``steps`` as an int; raise ValueError unless it is an integer ≥ 1."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {steps!r}")
    return int(steps)


def warn_large_eps(eps_max: float, *, stacklevel: int) -> None:
    """Warn (UserWarning) that ε ≥ 1 leaves only the [0, 1] box as a constraint.

    Python's default warning filter shows it once per calling line, so a loop over batches warns once.
    """
    if eps_max >= 1.0:
        warnings.warn(
            f"eps={eps_max:g} >= 1 on images in [0, 1]: the eps-ball contains the whole box, so the only constraint "
            "left is [0, 1] (an unbounded attack). Madry et al.'s eps=8 means 8/255 ~ 0.0314 on [0, 1] images.",
            UserWarning, stacklevel=stacklevel + 1)


def as_eps(eps, x: Tensor, *, name: str = "eps", stacklevel: int = 3) -> float | Tensor:
    """Validate a perturbation budget: a float ≥ 0, or a per-sample tensor of shape ``(N,)`` with values ≥ 0.

    Returns the float, or the tensor as ``x``'s dtype and device shaped ``(N, 1, ..., 1)`` to broadcast over ``x``.
    Warns once per call site when the budget is ≥ 1 (see :func:`warn_large_eps`).
    """
    if isinstance(eps, Tensor):
        if eps.dim() == 0:
            return as_eps(eps.item(), x, name=name, stacklevel=stacklevel + 1)
        if eps.shape != (x.shape[0],):
            raise ValueError(f"a per-sample {name} must have shape ({x.shape[0]},) to match x {tuple(x.shape)}, "
                             f"got {tuple(eps.shape)}")
        if not eps.is_floating_point():
            raise ValueError(f"a per-sample {name} must be a floating-point tensor, got dtype {eps.dtype}")
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
    (first forward pass only).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        if check:
            check_logits(logits, labels, name=name)
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad
