"""Uncertainty of the reported numbers: exact intervals for rates, bootstrap intervals for means.

The study's rule (STYLE, "Numbers with their uncertainty"): a rate k/n is reported with its exact Clopper–Pearson
interval and its n; a mean over images with a percentile-bootstrap interval (the images resampled with replacement,
fixed seed, at least :data:`MIN_RESAMPLES` resamples). Both are pure functions of the counts or the per-image
values; the metric suites (:func:`repro.metrics.attack_utility`, :func:`repro.metrics.defence_utility`) call them
with the per-image values they already computed, so the point value is never computed twice.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

# The issue "intervals on every reported number" asks for at least 1,000 bootstrap resamples; 2,000 by default.
MIN_RESAMPLES = 1000
DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95
# Resample indices are drawn in blocks of at most this many entries (rows × n), so that N = 10,000 test images ×
# 2,000 resamples never needs a 20M-entry index matrix at once. The block height depends on n only, so the numbers
# drawn for a given seed do not depend on the machine.
_BLOCK_ENTRIES = 1 << 22
# Relative gap between a reported mean and a bootstrap bound that is rounding, not statistics (see _mean_interval).
_ROUNDING = 1e-12


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be a confidence level strictly between 0 and 1 (e.g. 0.95), got {level!r}")
    return float(level)


def _check_int(name: str, value, *, minimum: int, why: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} ({why}), got {value!r}")
    return int(value)


def clopper_pearson(k: int, n: int, *, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Exact (Clopper–Pearson) two-sided confidence interval for a binomial proportion k/n.

    Reference: Clopper & Pearson (1934), "The use of confidence or fiducial limits illustrated in the case of the
    binomial", Biometrika 26(4). With α = 1 − level: lower = Beta⁻¹(α/2; k, n − k + 1), upper =
    Beta⁻¹(1 − α/2; k + 1, n − k); lower is 0 when k = 0 and upper is 1 when k = n. The same interval as
    ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``. Conservative: its coverage is at least ``level``
    for every true proportion.

    Args:
        k: number of successes (an integer, 0 ≤ k ≤ n).
        n: the denominator, the number of trials (an integer ≥ 1): all N attacked images for MR, the n successful
            adversarial examples for RGB and RIC, all N test images for the defence rates.
        level: confidence level, strictly between 0 and 1.

    Returns:
        ``(low, high)`` with 0 ≤ low ≤ k/n ≤ high ≤ 1, Python floats.

    Raises:
        ValueError: k or n not an integer, n < 1, k outside 0..n, or level outside (0, 1); the message names the value.
    """
    from scipy.stats import beta  # here, not at module level: scipy.stats takes a second to import

    n = _check_int("n", n, minimum=1, why="the number of trials; a rate needs at least one")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k <= n:
        raise ValueError(f"k must be an integer count of successes in 0..n = 0..{n}, got {k!r}")
    k = int(k)
    alpha = 1.0 - _check_level(level)
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def mcnemar_exact(a: str, b: str) -> dict:
    """McNemar's exact test of two classifiers (or two settings) on the same images, from their per-image outcome
    bits (``"1"``: correct).

    Reference: McNemar (1947), "Note on the sampling error of the difference between correlated proportions or
    percentages", Psychometrika 12; the exact form is the two-sided binomial test of the discordant pairs at 1/2
    (scipy's ``binomtest``).

    Returns:
        ``{"only_a", "only_b", "p"}``: the images only ``a`` (only ``b``) gets right and the two-sided p-value;
        ``p`` is 1.0 without any discordant pair.

    Raises:
        ValueError: outcome strings of different lengths or with characters other than ``0`` and ``1``.
    """
    from scipy.stats import binomtest

    if not isinstance(a, str) or not isinstance(b, str) or len(a) != len(b):
        raise ValueError(f"paired outcomes need bit strings over the same images, got lengths "
                         f"{len(a) if isinstance(a, str) else a!r} and {len(b) if isinstance(b, str) else b!r}")
    if set(a + b) - {"0", "1"}:
        raise ValueError(f"outcome bits must be 0 or 1, got {sorted(set(a + b) - {'0', '1'})}")
    only_a = sum(x == "1" and y == "0" for x, y in zip(a, b))
    only_b = sum(x == "0" and y == "1" for x, y in zip(a, b))
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_b, only_a + only_b, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p": p}


def _as_values(values) -> np.ndarray:
    """``values`` as a 1-D float64 numpy array with at least one entry, all finite."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"values has shape {array.shape}; the bootstrap needs a 1-D array of per-image values")
    if len(array) == 0:
        raise ValueError("values is empty; a mean needs at least one value (a metric over no image is NaN and has "
                         "no interval)")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"values has dtype {array.dtype}; the bootstrap needs numbers")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        bad = array[~np.isfinite(array)][0]
        raise ValueError(f"values contains a non-finite entry ({bad}); the bootstrap of a mean needs finite values")
    return array


def bootstrap_mean(
    values,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval for the mean of per-image values.

    Reference: Efron & Tibshirani (1993), *An Introduction to the Bootstrap*, ch. 13 (the percentile interval).
    ``n_resamples`` resamples of the n values, drawn with replacement (the images are resampled); the interval is the
    α/2 and 1 − α/2 quantiles (numpy's default linear interpolation) of the resampled means, α = 1 − level.
    The denominator is the length of ``values``: the caller passes the values the metric averages (the n successful
    adversarial examples, the images both models classify correctly, or all N images for a paired difference such
    as CAV). Vectorised; the same ``values``, ``n_resamples`` and ``seed`` always give the same interval
    (``numpy.random.default_rng(seed)``).

    Args:
        values: 1-D array or tensor of n ≥ 1 finite numbers.
        n_resamples: number of bootstrap resamples, at least :data:`MIN_RESAMPLES` (1,000).
        seed: seed of the resampling, a non-negative integer.
        level: confidence level, strictly between 0 and 1.

    Returns:
        ``(low, high)``, Python floats; ``(v, v)`` for a single value v.

    Raises:
        ValueError: values empty, not 1-D, not numeric or not finite; n_resamples < 1000; seed not a non-negative
            integer; level outside (0, 1). The message names the value.
    """
    array = _as_values(values)
    n_resamples = _check_int("n_resamples", n_resamples, minimum=MIN_RESAMPLES,
                             why="the study's protocol asks for at least 1,000 bootstrap resamples")
    seed = _check_int("seed", seed, minimum=0, why="numpy's default_rng seed")
    alpha = 1.0 - _check_level(level)
    n = len(array)
    if n == 1:
        return float(array[0]), float(array[0])
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK_ENTRIES // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        means[start:stop] = array[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# ------------------------------------------------------------------------ interval records for the metric suites
def check_interval_args(*, n_resamples: int, seed: int, level: float) -> None:
    """Validate the suites' interval settings up front, before any expensive metric is computed."""
    _check_int("n_resamples", n_resamples, minimum=MIN_RESAMPLES,
               why="the study's protocol asks for at least 1,000 bootstrap resamples")
    _check_int("seed", seed, minimum=0, why="numpy's default_rng seed")
    _check_level(level)


def _rate_interval(outcomes: torch.Tensor, *, level: float) -> dict | None:
    """Clopper–Pearson record ``{"low", "high", "method": "clopper-pearson", "n"}`` for the rate of a bool mask.

    k = the number of True entries, n = the mask's length (the denominator); None when the mask is empty (n = 0:
    the rate is NaN, there is no interval).
    """
    n = int(outcomes.numel())
    if n == 0:
        return None
    low, high = clopper_pearson(int(outcomes.sum()), n, level=level)
    return {"low": low, "high": high, "method": "clopper-pearson", "n": n}


def _mean_interval(values: torch.Tensor, *, point: float, n_resamples: int, seed: int, level: float) -> dict | None:
    """Bootstrap record ``{"low", "high", "method": "bootstrap", "n"}`` for the mean of ``values`` (n = its length).

    ``point`` is the reported mean of the same values; None when there are no values (the mean is NaN). Where
    rounding alone puts ``point`` outside the percentile interval (the resampled means and the reported mean are
    summed in different orders, so for constant values they can differ in the last bits), the bound is moved onto
    ``point``; a larger miss, which the percentile method allows in principle, is left as it is.
    """
    n = int(values.numel())
    if n == 0:
        return None
    low, high = bootstrap_mean(values, n_resamples=n_resamples, seed=seed, level=level)
    tolerance = _ROUNDING * max(1.0, abs(point))
    if point < low <= point + tolerance:
        low = point
    if point - tolerance <= high < point:
        high = point
    return {"low": low, "high": high, "method": "bootstrap", "n": n}


def interval_records(
    per_sample: dict[str, torch.Tensor],
    points: dict[str, float],
    *,
    rate_keys: tuple[str, ...],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, dict | None]:
    """One interval record per metric, from the per-image values the metric's point was computed from.

    Keys in ``rate_keys`` hold bool outcomes whose mean is the reported rate: Clopper–Pearson over their length
    (:func:`clopper_pearson`). The others hold the values whose mean is the reported number: percentile bootstrap
    over their length (:func:`bootstrap_mean`), every metric with the same ``seed``, so metrics averaged over the
    same images are resampled with the same image indices.

    Args:
        per_sample: metric key → 1-D tensor (bool outcomes for a rate, numbers for a mean); its length is the
            metric's denominator.
        points: metric key → the reported value (the mean of ``per_sample[key]``).
        rate_keys: the keys that are rates.
        n_resamples, seed, level: as :func:`bootstrap_mean` (level also for :func:`clopper_pearson`).

    Returns:
        key → ``{"low", "high", "method": "clopper-pearson" | "bootstrap", "n": denominator}``, or None where the
        denominator is 0 (the metric is NaN).
    """
    check_interval_args(n_resamples=n_resamples, seed=seed, level=level)
    return {
        key: _rate_interval(values, level=level) if key in rate_keys
        else _mean_interval(values, point=points[key], n_resamples=n_resamples, seed=seed, level=level)
        for key, values in per_sample.items()
    }


__all__ = ["clopper_pearson", "bootstrap_mean", "interval_records", "check_interval_args", "MIN_RESAMPLES",
           "DEFAULT_RESAMPLES", "DEFAULT_LEVEL"]
