"""Verdicts are computed by one rule from intervals; every reported number has an interval; the null defence is
exactly zero where it must be; the README's results at a glance are generated from the committed results."""
from __future__ import annotations

import math

import pytest

from repro import results
from repro.metrics import ATTACK_KEYS, DEFENCE_KEYS
from repro.report import pages
from repro.study import plan
from repro.study.profiles import get_profile
from repro.study.verdicts import ALLOWANCES, Verdict, noncomparable, verdict

ROOT = results.repo_root()
PARTIAL = {"cifar10": {"dataset": "cifar10", "official": False, "train": 8068, "full_train": 50000}}


def test_the_rule_on_hand_computed_cells():
    # MR: allowance 0.5 pp. Interval [0.957, 0.993] (294/300): 0.997 lies 0.4 pp above → consistent; 0.999 → not.
    assert verdict(low=0.957, high=0.993, published=0.997, metric="MR") == Verdict.CONSISTENT
    assert verdict(low=0.957, high=0.993, published=0.999, metric="MR") == Verdict.INCONSISTENT
    # NTE: small values are judged relatively: 0.009 against a published 0.001 is a ninefold gap, not "close".
    assert verdict(low=0.008, high=0.010, published=0.001, metric="NTE") == Verdict.INCONSISTENT
    assert verdict(low=0.0009, high=0.0011, published=0.001, metric="NTE") == Verdict.CONSISTENT
    # A departure that changes the metric wins over the numbers; no interval or no published value: no verdict.
    assert verdict(low=0.9, high=1.0, published=0.95, metric="MR", reason="width 2") == Verdict.NOT_COMPARABLE
    assert verdict(low=None, high=None, published=0.95, metric="MR") is None
    assert verdict(low=0.9, high=1.0, published=None, metric="MR") is None
    assert set(ALLOWANCES) == set(ATTACK_KEYS) | set(DEFENCE_KEYS)


def test_what_is_not_comparable_follows_the_departures():
    quick, paper = get_profile("quick"), get_profile("paper")
    # CW2's cut search budget changes every attack metric; under paper nothing departs.
    assert set(noncomparable(plan.column("cw2_mnist"), quick)) == set(ATTACK_KEYS)
    assert noncomparable(plan.column("cw2_mnist"), paper) == {}
    # PGD on DeepSec's own model: fewer candidates and a partial test split only cost precision.
    assert noncomparable(plan.column("pgd_resnet20"), quick, datasets=PARTIAL) == {}
    # A fine-tuned defence: every metric that depends on the defended model, but not the raw accuracy.
    pat = noncomparable(plan.column("pat_resnet20"), quick, datasets=PARTIAL)
    assert set(pat) == set(DEFENCE_KEYS) - {"ACC_raw"}
    assert "initialisation" in pat["CAV"]  # the reason names the departure that moves it
    # The wide columns: a narrower, shorter-trained network changes everything.
    assert set(noncomparable(plan.column("pgd_eps8_wide"), quick)) == set(ATTACK_KEYS)
    # Under paper, training on a partial CIFAR-10 copy still makes trained models not comparable.
    assert set(noncomparable(plan.column("pat_resnet20"), paper, datasets=PARTIAL)) == set(DEFENCE_KEYS) - {"ACC_raw"}


COMMITTED = [(profile, col) for profile in ("smoke", "quick") for col in plan.columns_for(profile)
             if col.table in ("1", "2", "corrected") and (ROOT / "results" / profile / f"{col.id}.json").exists()]


@pytest.mark.parametrize("profile, col", COMMITTED, ids=lambda v: v if isinstance(v, str) else v.id)
def test_every_reported_metric_has_an_interval_around_it(profile, col):
    result = results.load(ROOT / "results" / profile / f"{col.id}.json")
    for metric in col.metric_keys:
        value = result.metrics.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        interval = result.intervals.get(metric)
        assert interval, f"{profile}/{col.id}: {metric} = {value} has no interval"
        assert interval["low"] - 1e-9 <= value <= interval["high"] + 1e-9, (metric, value, interval)
        assert interval["n"] >= 1 and interval["method"] in ("clopper-pearson", "bootstrap")
    if col.defence:
        null = result.extra["null_defence"]["metrics"]
        for metric in ("CAV", "CRR", "CSR", "CCV", "COS"):
            assert null[metric] == 0.0, (metric, null[metric])
        assert null["ACC_defended"] == null["ACC_raw"] == result.metrics["ACC_raw"]


@pytest.mark.skipif(not (ROOT / "results" / "quick").exists(), reason="no committed quick results")
def test_readme_results_at_a_glance_match_the_committed_results():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    expected = pages.readme_with_glance(readme, "quick", pages.load_found("quick"))
    assert readme == expected, "README's results at a glance are stale: run python -m repro.pipeline --update-readme"
