"""The metrics' input checks and reductions, in one home for the attack and the defence metrics: images, labels,
success masks and logits are checked here (every refusal a ValueError naming the value and what is allowed), and
batched prediction and the two reductions (a mean over the successful examples, a rate) live here. The image,
device, class-range and evaluation-mode checks are the library's (:mod:`repro.checks`), so an input an attack
refuses, a metric refuses too."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import (check_class_range, check_device, check_eval_mode, check_images,
                               looks_like_probabilities)

__all__ = ["check_class_range", "check_device", "check_eval_mode", "check_image_batch", "check_labels",
           "check_logits", "check_pair", "check_success", "device_of", "looks_like_probabilities", "mean_over",
           "no_samples", "predict_logits", "rate_of", "softmax64"]


# ------------------------------------------------------------------------------------------------------ validation
def no_samples(name: str) -> ValueError:
    return ValueError(f"{name} has no samples (N = 0); a metric needs at least one (N > 0 samples with no successful "
                      "adversarial example give NaN instead)")


def check_image_batch(name: str, x: Tensor) -> None:
    check_images(x, name=name)
    if x.dim() != 4:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; images must be 4-D (N, C, H, W)")


def check_pair(x: Tensor, x_adv: Tensor) -> None:
    check_image_batch("x", x)
    check_image_batch("x_adv", x_adv)
    if x.shape != x_adv.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but x_adv has shape {tuple(x_adv.shape)}; "
                         "they must be equal (one adversarial example per clean image)")


def check_labels(name: str, labels: Tensor, n: int, *, n_classes: int | None = None) -> None:
    """``labels`` must be ``n`` integer class indices, and in ``0..n_classes-1`` when ``n_classes`` is given."""
    if not isinstance(labels, Tensor) or labels.shape != (n,):
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{name} has shape {shape}; it must be a 1-D tensor of {n} class indices")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{name} has dtype {labels.dtype}; class indices must be integers (int64)")
    if n_classes is not None:
        check_class_range(labels, n_classes, name=name)


def check_success(success: Tensor, n: int | None = None) -> None:
    """``success`` must be a bool tensor ``(n,)`` from :func:`success_mask` (any N ≥ 1 when ``n`` is None)."""
    if (not isinstance(success, Tensor) or success.dtype != torch.bool or success.dim() != 1
            or (n is not None and len(success) != n)):
        desc = f"{success.dtype} {tuple(success.shape)}" if isinstance(success, Tensor) else type(success).__name__
        raise ValueError(f"success is {desc}; it must be a bool tensor of shape ({'N' if n is None else n},), "
                         "from success_mask()")
    if len(success) == 0:
        raise no_samples("success")


def check_logits(logits: Tensor, *, name: str, n: int | None = None) -> None:
    """Logits ``(N, K)``, N ≥ 1 (``n`` if given), K ≥ 2, no NaN or +inf, and not softmax output.

    Every metric here applies its own softmax, so probabilities would be softmaxed twice into a wrong number.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"{name} has shape {shape}; expected logits (N, K) with K >= 2 classes")
    if len(logits) == 0:
        raise no_samples(name)
    if n is not None and len(logits) != n:
        raise ValueError(f"{name} has {len(logits)} rows for {n} images; one row of logits per image is needed")
    if not logits.is_floating_point():
        raise ValueError(f"{name} has dtype {logits.dtype}; logits must be floating point")
    # NaN fails `< inf` too; -inf is a legitimate logit (a class ruled out), +inf makes softmax NaN.
    if not bool((logits < math.inf).all()):
        raise ValueError(f"{name} contains NaN or +inf; logits must be finite (or -inf for a class ruled out)")
    ruled_out = torch.isneginf(logits).all(dim=1)
    if bool(ruled_out.any()):
        raise ValueError(f"{name}: row {int(ruled_out.nonzero()[0])} is -inf for every class, so it has no "
                         "softmax (every class ruled out); at least one logit per row must be finite")
    if looks_like_probabilities(logits):
        raise ValueError(f"{name}: every row lies in [0, 1] and sums to 1, so these are probabilities, not logits; the "
                         "metrics apply softmax themselves and need logits: drop the final softmax, or pass "
                         "log(probabilities)")


def device_of(model: torch.nn.Module, fallback: torch.device) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return fallback


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: Tensor, *, batch_size: int, device: torch.device, who: str) -> Tensor:
    """Logits (float32) of ``model`` on ``x`` (N ≥ 1) in batches on ``device``; checked by :func:`check_logits`."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    out = [model(x[i : i + batch_size].to(device)).float() for i in range(0, len(x), batch_size)]
    logits = torch.cat(out)
    check_logits(logits, name=f"{who}'s outputs", n=len(x))
    return logits


def softmax64(logits: Tensor) -> Tensor:
    # float64 so that confidences near 1 (ACAC, NTE) are not rounded to exactly 1.0 by float32.
    return torch.softmax(logits.double(), dim=1)


def mean_over(values: Tensor) -> float:
    """Mean of per-AE values (n,), the reduction of every averaged metric; NaN when n = 0 (nothing to average)."""
    n = len(values)
    if n == 0:
        return math.nan
    return float(values.double().sum() / n)


def rate_of(outcomes: Tensor) -> float:
    """Fraction of True among bool outcomes (n,), the reduction of every rate; NaN when n = 0."""
    if len(outcomes) == 0:
        return math.nan
    return float(outcomes.double().mean())
