"""Intervals on every reported number: Clopper–Pearson for rates, percentile bootstrap for means.

Hand-computed values and closed forms, a cross-check against scipy's exact binomial interval, the bootstrap's
width and coverage, and the metric suites end to end (every finite metric has an interval around exactly its
reported value, over the right denominator).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from repro.metrics import (
    ATTACK_KEYS, ATTACK_RATE_KEYS, DEFENCE_KEYS, DEFENCE_RATE_KEYS, attack_utility, bootstrap_mean, clopper_pearson,
    defence_utility, interval_records, success_mask,
)

from .test_metrics import DEF, DEF_Y, RAW, TableModel, log_probs, table_images


# ------------------------------------------------------------------------------------------------ Clopper–Pearson
def test_clopper_pearson_of_cw2_mr_294_of_300():
    # The issue's example: CW2's MR 98.0 % = 294/300 → exact 95 % interval (0.957, 0.993).
    low, high = clopper_pearson(294, 300)
    assert (round(low, 3), round(high, 3)) == (0.957, 0.993)
    assert low < 294 / 300 < high


@pytest.mark.parametrize("n", [1, 10, 300])
def test_clopper_pearson_edges_have_closed_forms(n):
    # k = 0: lower 0 and P(X = 0 | p) = (1 − p)^n = α/2 at the upper bound, so upper = 1 − (α/2)^(1/n).
    # k = n: upper 1 and p^n = α/2 at the lower bound, so lower = (α/2)^(1/n). For n = 10: 1 − 0.6915 and 0.6915.
    low, high = clopper_pearson(0, n)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-9)
    low, high = clopper_pearson(n, n)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / n), rel=1e-9)
    if n == 10:
        assert round(0.025 ** 0.1, 4) == 0.6915


def test_clopper_pearson_level_widens_the_interval():
    narrow, wide = clopper_pearson(30, 100, level=0.9), clopper_pearson(30, 100, level=0.99)
    assert wide[0] < narrow[0] < 0.3 < narrow[1] < wide[1]


def test_clopper_pearson_matches_scipy_binomtest():
    binomtest = pytest.importorskip("scipy.stats").binomtest
    for n in (1, 2, 7, 50, 300, 10_000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
            assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9), (k, n)


def test_clopper_pearson_covers_at_least_the_level_exactly():
    # The exact coverage sum over k of P(k | n, p) · [p in CP(k, n)] is ≥ 0.95 for every p (conservative).
    stats = pytest.importorskip("scipy.stats")
    n = 40
    intervals = [clopper_pearson(k, n) for k in range(n + 1)]
    for p in (0.02, 0.1, 0.3, 0.5, 0.77, 0.98):
        coverage = sum(stats.binom.pmf(k, n, p) for k, (lo, hi) in enumerate(intervals) if lo <= p <= hi)
        assert 0.95 <= coverage <= 1.0, p


# ------------------------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_contains_the_mean_and_single_value_is_degenerate():
    values = np.random.default_rng(1).exponential(size=50)
    low, high = bootstrap_mean(values)
    assert low < values.mean() < high
    assert bootstrap_mean([0.25]) == (0.25, 0.25)
    # Constant values: every resample has the same mean.
    low, high = bootstrap_mean(np.full(20, 0.5))
    assert low == high == 0.5


def test_bootstrap_is_deterministic_for_a_seed_and_takes_tensors():
    values = np.random.default_rng(2).normal(size=100)
    first = bootstrap_mean(values, seed=7)
    assert bootstrap_mean(values, seed=7) == first
    assert bootstrap_mean(torch.from_numpy(values), seed=7) == first
    assert bootstrap_mean(torch.from_numpy(values).float(), seed=7) == pytest.approx(first, abs=1e-6)
    assert bootstrap_mean(values, seed=8) != first


@pytest.mark.parametrize("n", [100, 400, 1600])
def test_bootstrap_width_shrinks_like_one_over_sqrt_n(n):
    # For a mean, the 95 % percentile interval is about ±1.96 standard errors: width ≈ 3.92 · sd / √n, so
    # width · √n / sd is the same constant for every n (within the resampling noise of 2,000 resamples).
    values = np.random.default_rng(n).normal(loc=3.0, scale=2.0, size=n)
    low, high = bootstrap_mean(values, seed=0)
    assert (high - low) * math.sqrt(n) / values.std() == pytest.approx(3.92, rel=0.1)


def test_bootstrap_coverage_sanity():
    # 200 simulated samples each: the 95 % interval covers the true mean in roughly 90–99 % of them (the
    # percentile bootstrap slightly undercovers at small n). Normal data n = 30 and Bernoulli(0.3) data n = 60.
    rng = np.random.default_rng(2024)
    trials = 200
    normal = sum(lo <= 1.0 <= hi for lo, hi in (
        bootstrap_mean(rng.normal(1.0, 1.0, size=30), n_resamples=1000, seed=t) for t in range(trials)))
    bernoulli = sum(lo <= 0.3 <= hi for lo, hi in (
        bootstrap_mean(rng.random(60) < 0.3, n_resamples=1000, seed=t) for t in range(trials)))
    assert 0.88 * trials <= normal <= 0.99 * trials
    assert 0.88 * trials <= bernoulli <= 0.99 * trials


def test_interval_records_keep_the_point_of_constant_values_inside():
    # The point is summed in a different order from the resampled means; rounding must not push it outside.
    for value in (0.1, 1 / 3, 0.7):
        for n in (3, 7, 10, 1000):
            values = torch.full((n,), value, dtype=torch.float64)
            point = float(values.sum() / n)
            record = interval_records({"A": values}, {"A": point}, rate_keys=())["A"]
            assert record["low"] <= point <= record["high"] and record["high"] - record["low"] < 1e-12


# ------------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("k, n, level, message", [
    (5, 4, 0.95, r"k must be an integer count of successes in 0\.\.n = 0\.\.4, got 5"),
    (-1, 4, 0.95, r"k must be .* got -1"),
    (2.0, 4, 0.95, r"k must be .* got 2\.0"),
    (True, 4, 0.95, r"k must be .* got True"),
    (0, 0, 0.95, r"n must be an integer >= 1 \(the number of trials; .*\), got 0"),
    (1, 4.0, 0.95, r"n must be an integer >= 1 .* got 4\.0"),
    (1, 4, 1.0, r"level must be a confidence level strictly between 0 and 1 \(e\.g\. 0\.95\), got 1\.0"),
    (1, 4, 95, r"level must be .* got 95"),
    (1, 4, 0.0, r"level must be .* got 0\.0"),
])
def test_clopper_pearson_refuses_bad_input(k, n, level, message):
    with pytest.raises(ValueError, match=message):
        clopper_pearson(k, n, level=level)


@pytest.mark.parametrize("values, kwargs, message", [
    ([], {}, "values is empty; a mean needs at least one value"),
    (np.zeros((3, 2)), {}, r"values has shape \(3, 2\); the bootstrap needs a 1-D array"),
    ([1.0, math.nan], {}, r"values contains a non-finite entry \(nan\)"),
    ([1.0, math.inf], {}, r"values contains a non-finite entry \(inf\)"),
    (["a", "b"], {}, "values has dtype <U1; the bootstrap needs numbers"),
    ([1.0, 2.0], {"n_resamples": 999}, r"n_resamples must be an integer >= 1000 .* got 999"),
    ([1.0, 2.0], {"n_resamples": 2000.0}, r"n_resamples must be an integer >= 1000 .* got 2000\.0"),
    ([1.0, 2.0], {"seed": -1}, r"seed must be an integer >= 0 .* got -1"),
    ([1.0, 2.0], {"level": 1.5}, r"level must be a confidence level strictly between 0 and 1 .* got 1\.5"),
])
def test_bootstrap_refuses_bad_input(values, kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_mean(values, **kwargs)


def test_suites_refuse_bad_interval_settings_before_computing():
    model = TableModel(5 * torch.eye(3) - 1)
    x = table_images(3)
    y = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="n_resamples must be an integer >= 1000"):
        attack_utility(model, x, x, y, intervals=True, n_resamples=100)
    with pytest.raises(ValueError, match="level must be a confidence level"):
        defence_utility(model, model, x, y, intervals=True, level=95)


# ---------------------------------------------------------------------------------------------- suites end to end
def _check_records(metrics: dict, records: dict, rate_keys: tuple, denominators: dict) -> None:
    assert tuple(records) == tuple(metrics)
    for key, point in metrics.items():
        record = records[key]
        if math.isnan(point):
            assert record is None, key
            continue
        assert set(record) == {"low", "high", "method", "n"}, key
        assert record["method"] == ("clopper-pearson" if key in rate_keys else "bootstrap"), key
        assert record["n"] == denominators[key], key
        assert record["low"] <= point <= record["high"], key


def test_attack_utility_intervals_end_to_end():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    x = torch.rand(40, 3, 8, 8)
    x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    y = torch.randint(0, 4, (40,))
    plain = attack_utility(model, x, x_adv, y, jpeg_workers=1)
    metrics, records = attack_utility(model, x, x_adv, y, jpeg_workers=1, intervals=True)
    assert metrics == plain  # the same code path: the points are exactly the reported values

    with torch.no_grad():
        logits = model(x_adv)
    success = success_mask(logits, y)
    n = int(success.sum())
    assert 0 < n < 40 and all(math.isfinite(v) for v in metrics.values())
    _check_records(metrics, records, ATTACK_RATE_KEYS, {key: 40 if key == "MR" else n for key in ATTACK_KEYS})
    # MR: k = n successes of N = 40; RGB: k = RGB · n still successful of the n successful AEs.
    assert (records["MR"]["low"], records["MR"]["high"]) == clopper_pearson(n, 40)
    k_rgb = round(metrics["RGB"] * n)
    assert (records["RGB"]["low"], records["RGB"]["high"]) == clopper_pearson(k_rgb, n)
    # ACAC: the bootstrap of the max softmax of the n successful AEs, computed here independently.
    acac_values = torch.softmax(logits.double(), 1).amax(1)[success]
    assert (records["ACAC"]["low"], records["ACAC"]["high"]) == pytest.approx(bootstrap_mean(acac_values), abs=1e-12)
    # Another seed moves the bootstrap intervals, not the exact ones, nor the points.
    metrics_7, records_7 = attack_utility(model, x, x_adv, y, jpeg_workers=1, intervals=True, seed=7)
    assert metrics_7 == plain and records_7["MR"] == records["MR"] and records_7["RIC"] == records["RIC"]
    assert records_7["ACAC"] != records["ACAC"]


def test_attack_utility_intervals_without_successful_aes():
    # Every prediction equals its label: MR = 0 with an exact interval [0, 1 − 0.025^(1/4)]; nothing else has one.
    model = TableModel(torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [0.0, 5.0, 0.0]]))
    x = table_images(4)
    metrics, records = attack_utility(model, x, x, torch.tensor([0, 1, 2, 1]), intervals=True)
    assert metrics["MR"] == 0.0
    assert records["MR"] == {"low": 0.0, "high": pytest.approx(1 - 0.025 ** 0.25), "method": "clopper-pearson", "n": 4}
    assert all(records[key] is None for key in ATTACK_KEYS if key != "MR")


def test_defence_utility_intervals_hand_computed():
    # N = 5 (test_metrics' table): raw right on 0, 1, 3; defended right on 0, 2, 3, 4; both right on 0 and 3.
    raw, defended = TableModel(log_probs(RAW)), TableModel(log_probs(DEF))
    plain = defence_utility(raw, defended, table_images(5), DEF_Y)
    metrics, records = defence_utility(raw, defended, table_images(5), DEF_Y, intervals=True)
    assert metrics == plain and tuple(records) == DEFENCE_KEYS
    _check_records(metrics, records, DEFENCE_RATE_KEYS, {"ACC_raw": 5, "ACC_defended": 5, "CAV": 5, "CRR": 5,
                                                         "CSR": 5, "CCV": 2, "COS": 2})
    assert (records["ACC_raw"]["low"], records["ACC_raw"]["high"]) == clopper_pearson(3, 5)
    assert (records["ACC_defended"]["low"], records["ACC_defended"]["high"]) == clopper_pearson(4, 5)
    assert (records["CRR"]["low"], records["CRR"]["high"]) == clopper_pearson(2, 5)
    assert (records["CSR"]["low"], records["CSR"]["high"]) == clopper_pearson(1, 5)
    # CAV: paired differences defended − raw per image = [0, −1, +1, 0, +1], mean 0.2, resampled as pairs.
    assert metrics["CAV"] == 0.2
    assert (records["CAV"]["low"], records["CAV"]["high"]) == bootstrap_mean([0.0, -1.0, 1.0, 0.0, 1.0])
    # CCV: |max P_def − max P_raw| on images 0 and 3 = [0.2, 0.0].
    assert (records["CCV"]["low"], records["CCV"]["high"]) == pytest.approx(bootstrap_mean([0.2, 0.0]), abs=1e-6)


def test_defence_utility_intervals_when_no_image_is_right_for_both():
    # The raw model always says class 0, the defended one always class 1; labels 0 and 1: nobody right for both.
    raw, defended = TableModel(torch.tensor([[5.0, 0.0, 0.0]] * 4)), TableModel(torch.tensor([[0.0, 5.0, 0.0]] * 4))
    metrics, records = defence_utility(raw, defended, table_images(4), torch.tensor([0, 1, 0, 1]), intervals=True)
    assert math.isnan(metrics["CCV"]) and records["CCV"] is None and records["COS"] is None
    assert records["CAV"]["n"] == 4 and records["CAV"]["low"] <= 0.0 <= records["CAV"]["high"]
