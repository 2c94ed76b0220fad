"""DeepSec's defence utility metrics (Ling et al., S&P 2019, §III-C; code ``Evaluations/DefenseEvaluations.py``).

A defended model is compared with the raw (undefended) one on the same clean test images (SPEC §6: the whole test
set). All values are fractions; DeepSec prints CAV, CRR, CSR and CCV as percent — formatting is the caller's job.
Inputs are validated as in :mod:`.attack`: no samples (N = 0), probabilities where logits are expected, mismatched
lengths and labels outside ``0..K-1`` raise ValueError; no image right for both models gives NaN (CCV, COS).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .checks import (check_class_range, check_device, check_eval_mode, check_image_batch, check_labels,
                     check_logits, device_of, looks_like_probabilities, mean_over, no_samples, predict_logits,
                     rate_of, softmax64)
from .uncertainty import DEFAULT_LEVEL, DEFAULT_RESAMPLES, check_interval_args, interval_records

KEYS = ("ACC_raw", "ACC_defended", "CAV", "CRR", "CSR", "CCV", "COS")
# The rates among KEYS, counts over all N test images (Clopper–Pearson interval). CAV is a difference of two paired
# rates, the mean of per-image differences in {−1, 0, 1} (paired bootstrap over N); CCV and COS are means over the
# images both models classify correctly (bootstrap over those).
RATE_KEYS = ("ACC_raw", "ACC_defended", "CRR", "CSR")
# The values each metric can take (closed bounds): CAV a difference of two rates, COS a Jensen–Shannon divergence
# in nats (at most ln 2). A stored result outside them is refused on load.
RANGES = {"ACC_raw": (0.0, 1.0), "ACC_defended": (0.0, 1.0), "CAV": (-1.0, 1.0), "CRR": (0.0, 1.0),
          "CSR": (0.0, 1.0), "CCV": (0.0, 1.0), "COS": (0.0, math.log(2))}


def _check_correct(raw_correct: Tensor, defended_correct: Tensor) -> None:
    for name, t in (("raw_correct", raw_correct), ("defended_correct", defended_correct)):
        if not isinstance(t, Tensor) or t.dtype != torch.bool or t.dim() != 1:
            desc = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} is {desc}; it must be a 1-D bool tensor (prediction == label)")
        if len(t) == 0:
            raise no_samples(name)
    if raw_correct.shape != defended_correct.shape:
        raise ValueError(f"raw_correct has shape {tuple(raw_correct.shape)} but defended_correct has "
                         f"{tuple(defended_correct.shape)}; both models must be scored on the same images")


def cav(raw_correct: Tensor, defended_correct: Tensor) -> float:
    """CAV, classification accuracy variance: acc(defended) − acc(raw), over all N test images.

    Reference: DeepSec paper §III-C; code ``DefenseEvaluations``. Denominator: all N. Equals CRR − CSR. Computed as
    the mean of the paired per-image differences ``defended_correct − raw_correct`` (each −1, 0 or 1), which is
    (k_defended − k_raw)/N rounded once.

    Args:
        raw_correct, defended_correct: bool (N,), each model's prediction equals the label.

    Returns:
        A difference of fractions, in [−1, 1].

    Raises:
        ValueError: a mask is empty (no samples) or not 1-D bool, or the two differ in shape.
    """
    _check_correct(raw_correct, defended_correct)
    return mean_over(_cav_values(raw_correct, defended_correct))


def _cav_values(raw_correct: Tensor, defended_correct: Tensor) -> Tensor:
    return defended_correct.double() - raw_correct.double()


def crr(raw_correct: Tensor, defended_correct: Tensor) -> float:
    """CRR, classification rectify ratio: #(raw wrong ∧ defended right) / N.

    Reference: DeepSec paper §III-C. Denominator: all N.

    Args:
        raw_correct, defended_correct: bool (N,), each model's prediction equals the label.

    Returns:
        A fraction in [0, 1].

    Raises:
        ValueError: a mask is empty (no samples) or not 1-D bool, or the two differ in shape.
    """
    _check_correct(raw_correct, defended_correct)
    return rate_of(~raw_correct & defended_correct)


def csr(raw_correct: Tensor, defended_correct: Tensor) -> float:
    """CSR, classification sacrifice ratio: #(raw right ∧ defended wrong) / N.

    Reference: DeepSec paper §III-C. Denominator: all N.

    Args:
        raw_correct, defended_correct: bool (N,), each model's prediction equals the label.

    Returns:
        A fraction in [0, 1].

    Raises:
        ValueError: a mask is empty (no samples) or not 1-D bool, or the two differ in shape.
    """
    _check_correct(raw_correct, defended_correct)
    return rate_of(raw_correct & ~defended_correct)


def _check_outputs(raw_logits: Tensor, defended_logits: Tensor, raw_correct: Tensor, defended_correct: Tensor) -> None:
    """CCV's and COS's inputs: two logit tables of one shape (N, K), N ≥ 1, and two correctness masks of N entries."""
    check_logits(raw_logits, name="raw_logits")
    check_logits(defended_logits, name="defended_logits")
    if raw_logits.shape != defended_logits.shape:
        raise ValueError(f"raw_logits has shape {tuple(raw_logits.shape)} but defended_logits has "
                         f"{tuple(defended_logits.shape)}; both models must score the same N images over the same K "
                         "classes")
    _check_correct(raw_correct, defended_correct)
    if len(raw_correct) != len(raw_logits):
        raise ValueError(f"raw_correct and defended_correct have {len(raw_correct)} entries but the logits have "
                         f"{len(raw_logits)} rows; they must describe the same images")


def _both_right(values: Tensor, raw_correct: Tensor, defended_correct: Tensor) -> Tensor:
    """``values`` of the images both models classify correctly (CCV's and COS's denominator)."""
    return values[raw_correct.to(values.device) & defended_correct.to(values.device)]


def _js_divergence(p: Tensor, q: Tensor) -> Tensor:
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)

    def kl_to_m(a: Tensor) -> Tensor:
        return (torch.special.xlogy(a, a) - torch.special.xlogy(a, m)).sum(1)

    # Rounding can push a mathematically non-negative divergence a hair below 0.
    return (0.5 * kl_to_m(p) + 0.5 * kl_to_m(q)).clamp_min(0.0)


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen–Shannon divergence per row, natural log: ½ KL(p‖m) + ½ KL(q‖m) with m = (p + q)/2.

    Reference: DeepSec code (COS via ``scipy.stats.entropy``, natural log). Terms with p_k = 0 contribute 0
    (``xlogy``), so zero probabilities never produce log(0); m_k > 0 wherever p_k > 0.

    Takes **probabilities**, not logits (a divergence is between distributions; logits would give log of negative
    numbers, NaN): apply softmax first, as :func:`cos` does.

    Args:
        p, q: probability rows (N, K), N ≥ 1, each row in [0, 1] summing to 1 (within 1e-4), same shape.

    Returns:
        float64 tensor (N,) in [0, ln 2].

    Raises:
        ValueError: shapes differ or are not (N, K), N = 0 (no samples), or a row is not a probability distribution.
    """
    for name, t in (("p", p), ("q", q)):
        if not isinstance(t, Tensor) or t.dim() != 2:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} has shape {shape}; expected probability rows (N, K)")
        if len(t) == 0:
            raise no_samples(name)
        if not looks_like_probabilities(t):
            lo, hi = torch.stack(torch.aminmax(t.detach().double())).tolist()
            raise ValueError(f"{name} is not a probability distribution per row (values in [{lo:.4g}, {hi:.4g}]; each "
                             "row must lie in [0, 1] and sum to 1): js_divergence takes probabilities, so pass "
                             "softmax(logits), as cos() does")
    if p.shape != q.shape:
        raise ValueError(f"p has shape {tuple(p.shape)} but q has {tuple(q.shape)}; they must be equal")
    return _js_divergence(p, q)


def ccv(raw_logits: Tensor, defended_logits: Tensor, raw_correct: Tensor, defended_correct: Tensor) -> float:
    """CCV, classification confidence variance: mean |max P_def − max P_raw| over images both models get right.

    Reference: DeepSec paper §III-C. Denominator: the images both classify correctly (NaN if none).

    Args:
        raw_logits, defended_logits: (N, K) logits of the two models on the same images.
        raw_correct, defended_correct: bool (N,).

    Returns:
        A value in [0, 1]; NaN when no image is classified correctly by both.

    Raises:
        ValueError: no samples, probabilities instead of logits, or shapes/lengths that disagree (named).
    """
    _check_outputs(raw_logits, defended_logits, raw_correct, defended_correct)
    return mean_over(_ccv_values(raw_logits, defended_logits, raw_correct, defended_correct))


def _ccv_values(raw_logits: Tensor, defended_logits: Tensor, raw_correct: Tensor, defended_correct: Tensor) -> Tensor:
    gap = (softmax64(defended_logits).amax(1) - softmax64(raw_logits).amax(1)).abs()
    return _both_right(gap, raw_correct, defended_correct)


def cos(raw_logits: Tensor, defended_logits: Tensor, raw_correct: Tensor, defended_correct: Tensor) -> float:
    """COS, classification output stability: mean JS divergence of the two softmax outputs over images both get right.

    Reference: DeepSec paper §III-C; natural log (see :func:`js_divergence`). Denominator: the images both classify
    correctly (NaN if none).

    Args:
        raw_logits, defended_logits: (N, K) logits of the two models on the same images.
        raw_correct, defended_correct: bool (N,).

    Returns:
        A value in [0, ln 2]; NaN when no image is classified correctly by both.

    Raises:
        ValueError: no samples, probabilities instead of logits, or shapes/lengths that disagree (named).
    """
    _check_outputs(raw_logits, defended_logits, raw_correct, defended_correct)
    return mean_over(_cos_values(raw_logits, defended_logits, raw_correct, defended_correct))


def _cos_values(raw_logits: Tensor, defended_logits: Tensor, raw_correct: Tensor, defended_correct: Tensor) -> Tensor:
    divergence = _js_divergence(softmax64(raw_logits), softmax64(defended_logits))
    return _both_right(divergence, raw_correct, defended_correct)


def defence_utility(
    raw_model: torch.nn.Module,
    defended_model: torch.nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = 256,
    device=None,
    intervals: bool = False,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, float] | tuple[dict[str, float], dict[str, dict | None]]:
    """DeepSec's five defence utility metrics plus both accuracies, on clean images, optionally with intervals.

    Reference: DeepSec paper §III-C; code ``Evaluations/DefenseEvaluations.py`` (SPEC §6). DeepSec evaluates on the
    whole test set.

    Args:
        raw_model: the undefended model, returning logits (caller sets ``eval()``).
        defended_model: the defended model, returning logits, on the same device.
        x: clean test images (N, C, H, W) float in [0, 1].
        y: labels (N,), int64.
        batch_size: images per forward pass.
        device: where both models run; default the raw model's device.
        intervals: also return a 95 % (``level``) interval for every metric, computed from the same per-image
            values as the point (:mod:`.uncertainty`): Clopper–Pearson over all N for ACC_raw, ACC_defended, CRR
            and CSR; a paired percentile bootstrap over the N images for CAV (the mean of the per-image differences
            ``defended_correct − raw_correct``); a percentile bootstrap over the images both models classify
            correctly for CCV and COS.
        n_resamples: bootstrap resamples (≥ 1,000).
        seed: bootstrap seed (the same for every bootstrapped metric).
        level: confidence level of the intervals.

    Returns:
        ``{"ACC_raw", "ACC_defended", "CAV", "CRR", "CSR", "CCV", "COS"}`` → Python floats, fractions (not percent);
        CAV = CRR − CSR; CCV and COS are NaN if no image is classified correctly by both models. With
        ``intervals=True``, the pair ``(metrics, intervals)``: ``intervals[key]`` is ``{"low", "high", "method":
        "clopper-pearson" | "bootstrap", "n": denominator}`` (n = N, or for CCV and COS the number of images both
        models get right), or None where the metric is NaN.

    Raises:
        ValueError: images empty, not float32 (N, C, H, W) or outside [0, 1], labels of the wrong shape or outside
            ``0..K-1``, a model returns probabilities, a device this machine lacks, or bad interval settings
            (n_resamples < 1000, seed, level).
    """
    check_image_batch("x", x)
    check_eval_mode(raw_model, name="raw_model")
    check_eval_mode(defended_model, name="defended_model")
    check_labels("y", y, len(x))
    if intervals:
        check_interval_args(n_resamples=n_resamples, seed=seed, level=level)
    device = check_device(device) if device is not None else device_of(raw_model, x.device)
    raw_logits = predict_logits(raw_model, x, batch_size=batch_size, device=device, who="raw_model")
    defended_logits = predict_logits(defended_model, x, batch_size=batch_size, device=device, who="defended_model")
    if raw_logits.shape != defended_logits.shape:
        raise ValueError(f"raw_model gives {tuple(raw_logits.shape)} outputs but defended_model "
                         f"{tuple(defended_logits.shape)}; both must classify the same K classes")
    y = y.to(device)
    # Out-of-range labels would just count as wrong predictions: a silently wrong accuracy.
    check_class_range(y, raw_logits.shape[1], name="y")
    raw_correct = raw_logits.argmax(1) == y
    defended_correct = defended_logits.argmax(1) == y
    # One vector per metric, from which both the point and its interval are computed: outcomes over all N for the
    # rates, per-image differences over all N for CAV, per-image values over the images both get right for CCV, COS.
    per_sample = {
        "ACC_raw": raw_correct,
        "ACC_defended": defended_correct,
        "CAV": _cav_values(raw_correct, defended_correct),
        "CRR": ~raw_correct & defended_correct,
        "CSR": raw_correct & ~defended_correct,
        "CCV": _ccv_values(raw_logits, defended_logits, raw_correct, defended_correct),
        "COS": _cos_values(raw_logits, defended_logits, raw_correct, defended_correct),
    }
    metrics = {key: rate_of(values) if key in RATE_KEYS else mean_over(values) for key, values in per_sample.items()}
    if not intervals:
        return metrics
    return metrics, interval_records(per_sample, metrics, rate_keys=RATE_KEYS, n_resamples=n_resamples, seed=seed,
                                     level=level)


__all__ = ["KEYS", "RATE_KEYS", "RANGES", "defence_utility", "cav", "crr", "csr", "ccv", "cos", "js_divergence"]
