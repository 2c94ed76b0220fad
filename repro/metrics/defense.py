"""DeepSec's defence utility metrics (Ling et al., S&P 2019, §III-C; code ``Evaluations/DefenseEvaluations.py``).

A defended model is compared with the raw (undefended) one on the same clean test images (SPEC §6: the whole test
set). All values are fractions; DeepSec prints CAV, CRR, CSR and CCV as percent — formatting is the caller's job.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .attack import _check_images, _check_labels, _device_of, _predict, _softmax

KEYS = ("ACC_raw", "ACC_defended", "CAV", "CRR", "CSR", "CCV", "COS")


def _check_correct(raw_correct: Tensor, defended_correct: Tensor) -> None:
    for name, t in (("raw_correct", raw_correct), ("defended_correct", defended_correct)):
        if not isinstance(t, Tensor) or t.dtype != torch.bool or t.dim() != 1 or len(t) == 0:
            raise ValueError(f"{name} must be a non-empty 1-D bool tensor (prediction == label)")
    if raw_correct.shape != defended_correct.shape:
        raise ValueError(f"raw_correct has shape {tuple(raw_correct.shape)} but defended_correct has "
                         f"{tuple(defended_correct.shape)}; both models must be scored on the same images")


def cav(raw_correct: Tensor, defended_correct: Tensor) -> float:
    """CAV, classification accuracy variance: acc(defended) − acc(raw), over all N test images.

    Reference: DeepSec paper §III-C; code ``DefenseEvaluations``. Denominator: all N. Equals CRR − CSR.

    Args:
        raw_correct, defended_correct: bool (N,), each model's prediction equals the label.

    Returns:
        A difference of fractions, in [−1, 1].
    """
    _check_correct(raw_correct, defended_correct)
    return float(defended_correct.double().mean() - raw_correct.double().mean())


def crr(raw_correct: Tensor, defended_correct: Tensor) -> float:
    """CRR, classification rectify ratio: #(raw wrong ∧ defended right) / N.

    Reference: DeepSec paper §III-C. Denominator: all N.

    Args:
        raw_correct, defended_correct: bool (N,), each model's prediction equals the label.

    Returns:
        A fraction in [0, 1].
    """
    _check_correct(raw_correct, defended_correct)
    return float((~raw_correct & defended_correct).double().mean())


def csr(raw_correct: Tensor, defended_correct: Tensor) -> float:
    """CSR, classification sacrifice ratio: #(raw right ∧ defended wrong) / N.

    Reference: DeepSec paper §III-C. Denominator: all N.

    Args:
        raw_correct, defended_correct: bool (N,), each model's prediction equals the label.

    Returns:
        A fraction in [0, 1].
    """
    _check_correct(raw_correct, defended_correct)
    return float((raw_correct & ~defended_correct).double().mean())


def _both_right_mean(values: Tensor, raw_correct: Tensor, defended_correct: Tensor) -> float:
    both = raw_correct & defended_correct
    n = int(both.sum())
    if n == 0:
        return math.nan
    return float(values[both].sum() / n)


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen–Shannon divergence per row, natural log: ½ KL(p‖m) + ½ KL(q‖m) with m = (p + q)/2.

    Reference: DeepSec code (COS via ``scipy.stats.entropy``, natural log). Terms with p_k = 0 contribute 0
    (``xlogy``), so zero probabilities never produce log(0); m_k > 0 wherever p_k > 0.

    Args:
        p, q: probability rows (N, K), each summing to 1.

    Returns:
        float64 tensor (N,) in [0, ln 2].
    """
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)

    def kl_to_m(a: Tensor) -> Tensor:
        return (torch.special.xlogy(a, a) - torch.special.xlogy(a, m)).sum(1)

    # Rounding can push a mathematically non-negative divergence a hair below 0.
    return (0.5 * kl_to_m(p) + 0.5 * kl_to_m(q)).clamp_min(0.0)


def ccv(raw_logits: Tensor, defended_logits: Tensor, raw_correct: Tensor, defended_correct: Tensor) -> float:
    """CCV, classification confidence variance: mean |max P_def − max P_raw| over images both models get right.

    Reference: DeepSec paper §III-C. Denominator: the images both classify correctly (NaN if none).

    Args:
        raw_logits, defended_logits: (N, K) logits of the two models on the same images.
        raw_correct, defended_correct: bool (N,).

    Returns:
        A value in [0, 1]; NaN when no image is classified correctly by both.
    """
    _check_correct(raw_correct, defended_correct)
    gap = (_softmax(defended_logits).amax(1) - _softmax(raw_logits).amax(1)).abs()
    return _both_right_mean(gap, raw_correct.to(gap.device), defended_correct.to(gap.device))


def cos(raw_logits: Tensor, defended_logits: Tensor, raw_correct: Tensor, defended_correct: Tensor) -> float:
    """COS, classification output stability: mean JS divergence of the two softmax outputs over images both get right.

    Reference: DeepSec paper §III-C; natural log (see :func:`js_divergence`). Denominator: the images both classify
    correctly (NaN if none).

    Args:
        raw_logits, defended_logits: (N, K) logits of the two models on the same images.
        raw_correct, defended_correct: bool (N,).

    Returns:
        A value in [0, ln 2]; NaN when no image is classified correctly by both.
    """
    _check_correct(raw_correct, defended_correct)
    divergence = js_divergence(_softmax(raw_logits), _softmax(defended_logits))
    return _both_right_mean(divergence, raw_correct.to(divergence.device), defended_correct.to(divergence.device))


def defense_utility(
    raw_model: torch.nn.Module,
    defended_model: torch.nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = 256,
    device=None,
) -> dict[str, float]:
    """DeepSec's five defence utility metrics plus both accuracies, on clean images.

    Reference: DeepSec paper §III-C; code ``Evaluations/DefenseEvaluations.py`` (SPEC §6). DeepSec evaluates on the
    whole test set.

    Args:
        raw_model: the undefended model, returning logits (caller sets ``eval()``).
        defended_model: the defended model, returning logits, on the same device.
        x: clean test images (N, C, H, W) float in [0, 1].
        y: labels (N,), int64.
        batch_size: images per forward pass.
        device: where both models run; default the raw model's device.

    Returns:
        ``{"ACC_raw", "ACC_defended", "CAV", "CRR", "CSR", "CCV", "COS"}`` → Python floats, fractions (not percent);
        CAV = CRR − CSR; CCV and COS are NaN if no image is classified correctly by both models.

    Raises:
        ValueError: images not 4-D or outside [0, 1], labels of the wrong shape, or a model returns probabilities.
    """
    _check_images("x", x)
    _check_labels("y", y, len(x))
    device = torch.device(device) if device is not None else _device_of(raw_model, x.device)
    raw_logits = _predict(raw_model, x, batch_size=batch_size, device=device, who="raw_model")
    defended_logits = _predict(defended_model, x, batch_size=batch_size, device=device, who="defended_model")
    if raw_logits.shape != defended_logits.shape:
        raise ValueError(f"raw_model gives {tuple(raw_logits.shape)} outputs but defended_model "
                         f"{tuple(defended_logits.shape)}; both must classify the same K classes")
    y = y.to(device)
    raw_correct = raw_logits.argmax(1) == y
    defended_correct = defended_logits.argmax(1) == y
    return {
        "ACC_raw": float(raw_correct.double().mean()),
        "ACC_defended": float(defended_correct.double().mean()),
        "CAV": cav(raw_correct, defended_correct),
        "CRR": crr(raw_correct, defended_correct),
        "CSR": csr(raw_correct, defended_correct),
        "CCV": ccv(raw_logits, defended_logits, raw_correct, defended_correct),
        "COS": cos(raw_logits, defended_logits, raw_correct, defended_correct),
    }


__all__ = ["KEYS", "defense_utility", "cav", "crr", "csr", "ccv", "cos", "js_divergence"]
