"""Verdicts are computed by one rule from intervals; every reported number has an interval; the null defence is
exactly zero where it must be; the README's results at a glance are generated from the committed results."""
from __future__ import annotations

import dataclasses
import math

import pytest

from repro import results
from repro.metrics import ATTACK_KEYS, DEFENCE_KEYS
from repro.report import pages
from repro.study import plan
from repro.study.profiles import budget_differences, get_profile
from repro.study import verdicts
from repro.study.verdicts import ALLOWANCES, Effect, Verdict, judge, noncomparable, verdict

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
    quick, paper, smoke = get_profile("quick"), get_profile("paper"), get_profile("smoke")
    # CW2's cut search budget (smoke) changes every attack metric; quick runs DeepSec's budget on fewer candidates,
    # which only costs precision; under paper nothing departs.
    assert set(noncomparable(plan.column("cw2_mnist"), smoke)) == set(ATTACK_KEYS)
    assert noncomparable(plan.column("cw2_mnist"), quick) == {}
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


# -------------------------------------------------------------------------------------- measured departure effects
def test_a_measured_effect_within_the_allowance_shifts_the_interval_and_beyond_it_blocks():
    # MR, allowance 0.5 pp. Interval [0.90, 0.92]; published 0.95 is 3 pp above: inconsistent without effects.
    assert judge(low=0.90, high=0.92, published=0.95, metric="MR").verdict == Verdict.INCONSISTENT
    # A departure measured to lower MR by 0.004 (within 0.005): the paper setting's value is ours + 0.004 → still
    # inconsistent; by −0.004 for a published 0.924 → [0.904, 0.924] ± 0.005 holds it: consistent.
    small = Effect("d", "MR", -0.004, -0.004, "paired")
    assert judge(low=0.90, high=0.92, published=0.928, metric="MR").verdict == Verdict.INCONSISTENT
    assert judge(low=0.90, high=0.92, published=0.928, metric="MR", effects=[small]).verdict == Verdict.CONSISTENT
    # Beyond the allowance on either side: not comparable, and the cell says which effect blocked it.
    big = Effect("d", "MR", -0.03, -0.01, "paired")
    cell = judge(low=0.90, high=0.92, published=0.95, metric="MR", effects=[big])
    assert cell.verdict == Verdict.NOT_COMPARABLE and cell.blocking == (big,)
    # Unmeasured: not comparable whatever the numbers.
    cell = judge(low=0.90, high=0.92, published=0.91, metric="MR", effects=[Effect("d", "MR")])
    assert cell.verdict == Verdict.NOT_COMPARABLE and not cell.blocking[0].measured


@pytest.mark.skipif(not (ROOT / "results" / "quick").exists(), reason="no committed quick results")
def test_the_released_checkpoint_counts_against_deepsecs_paper_by_the_follow_ups_run_on_it():
    """Before: DeepSec's paper values were compared with our runs on the released (retrained) checkpoint as if it
    were the paper's model, and "inconsistent: ALD L2, ASS, PSD" appeared unexplained."""
    found = pages.load_found("quick")
    col = plan.column("pgd_resnet20")
    rows = {r["metric"]: r for r in verdicts.comparison_rows(col, found[col.id], "quick", found)}
    l2 = rows["ALD_L2"]
    assert l2["verdict_followup"] == Verdict.CONSISTENT  # the follow-up also ran the released checkpoint
    [effect] = l2["cell_deepsec"].blocking
    assert effect.departure == verdicts.RELEASED_CHECKPOINT and effect.kind == "published pair"
    assert effect.low == pytest.approx(l2["followup"] - l2["deepsec"])  # 3.38 − 3.682
    assert l2["verdict_deepsec"] == Verdict.NOT_COMPARABLE
    # Where the follow-up's and DeepSec's values agree, the shift is inside the allowance and the verdict stands.
    assert rows["ALD_L0"]["verdict_deepsec"] == Verdict.CONSISTENT and rows["ALD_L0"]["cell_deepsec"].effects
    # If our raw accuracy showed the follow-up's raw model to differ from the released checkpoint, the pair would
    # not measure the departure: unmeasured.
    pat = found["pat_resnet20"]
    planted = dict(found, pat_resnet20=dataclasses.replace(
        pat, intervals={**pat.intervals, "ACC_raw": {**pat.intervals["ACC_raw"], "low": 0.70, "high": 0.72}}))
    rows = {r["metric"]: r for r in verdicts.comparison_rows(col, found[col.id], "quick", planted)}
    assert not rows["ALD_L0"]["cell_deepsec"].blocking[0].measured
    assert rows["ALD_L0"]["verdict_deepsec"] == Verdict.NOT_COMPARABLE


def test_a_defence_with_seed_replicates_gets_its_allowance_from_their_range():
    col = plan.column("nat_mnist")
    quick = get_profile("paper")  # NAT's seed replicates run under paper (under quick: its full recipe, one seed)

    def res(cid, cav, seed):
        return results.Result(column=cid, kind="defence", notebook="defence.ipynb", profile="paper",
                              parameters={"seed": seed}, metrics={"CAV": cav, "ACC_raw": 0.99})

    found = {"nat_mnist": res("nat_mnist", -0.0030, 100), "nat_mnist_seed101": res("nat_mnist_seed101", -0.0024, 101),
             "nat_mnist_seed102": res("nat_mnist_seed102", -0.0020, 102)}
    a = verdicts.allowance(col, "CAV", quick, found)
    assert a.basis == "measured" and a.width(0.0024) == pytest.approx(0.0010) and "100, 101, 102" in a.why
    assert verdicts.allowance(col, "ACC_raw", quick, found).basis == "assumed"  # the raw model is not retrained
    assert verdicts.allowance(col, "CAV", quick, {"nat_mnist": found["nat_mnist"]}).basis == "assumed"


def test_a_consistent_verdict_at_a_bound_is_marked_uninformative():
    col = plan.column("pgd_resnet20")
    assert "upper bound" in verdicts.power(col, "MR", 1.0, low=0.996, high=1.0)
    assert "ε" in verdicts.power(col, "ALD_Linf", 0.1, low=0.1, high=0.1, params={"eps": 0.1})
    assert verdicts.power(col, "ALD_L0", 0.978, low=0.977, high=0.978) is None
    assert verdicts.power(col, "MR", 0.80, low=0.78, high=0.82) is None


def _attack_result(cid, values: dict, profile="quick"):
    """A result with ``metric → (value, low, high)``."""
    return results.Result(column=cid, kind="attack", notebook="pgd.ipynb", profile=profile, parameters={"seed": 100},
                          metrics={m: v for m, (v, _, _) in values.items()},
                          intervals={m: {"low": lo, "high": hi, "method": "bootstrap", "n": 900}
                                     for m, (_, lo, hi) in values.items()})


def test_a_measurement_column_turns_its_departure_into_a_measured_effect():
    quick = get_profile("quick")
    col = plan.column("pgd_eps8_wide")
    ours = {"ALD_Linf": (0.971, 0.970, 0.972), "ALD_L2": (28.98, 28.90, 29.06)}
    # converged ResNet-20 and ×2 wide ResNet: the L∞ distance does not move (a property of the [0, 1] box); L2 moves
    same = {"ALD_Linf": (0.973, 0.972, 0.974), "ALD_L2": (26.00, 25.90, 26.10)}
    found = {"pgd_eps8_wide": _attack_result("pgd_eps8_wide", ours),
             "pgd_eps8_resnet20": _attack_result("pgd_eps8_resnet20", same),
             "pgd_eps8_wide_x2": _attack_result("pgd_eps8_wide_x2", same)}
    got = verdicts.effects(col, quick, reference="followup", found=found)
    linf = [e for e in got["ALD_Linf"] if e.kind == "measurement column"]
    # one effect per varied part (the epochs, subset and partial-data departures are one training part)
    assert sorted(e.detail["column"] for e in linf) == ["pgd_eps8_resnet20", "pgd_eps8_wide_x2"]
    assert all(e.low == pytest.approx(0.970 - 0.974) and e.high == pytest.approx(0.972 - 0.972) for e in linf)
    cell = judge(low=0.970, high=0.972, published=0.975, metric="ALD_Linf", effects=got["ALD_Linf"])
    assert cell.verdict == Verdict.CONSISTENT and not cell.blocking  # measured small: no longer "not comparable"
    l2 = judge(low=28.90, high=29.06, published=29.23, metric="ALD_L2", effects=got["ALD_L2"])
    assert l2.verdict == Verdict.NOT_COMPARABLE and l2.blocking  # measured large: still counts
    # without the measurement columns, the same departures are unmeasured and block every cell
    bare = verdicts.effects(col, quick, reference="followup", found={"pgd_eps8_wide": found["pgd_eps8_wide"]})
    assert all(not e.measured for e in bare["ALD_Linf"])
    # consistent, but the converged and the ×2 models are consistent with the published value too: uninformative
    # about the model (the attack fills the [0, 1] box whatever the model)
    why = verdicts.model_insensitive(col, "ALD_Linf", 0.975, quick, found)
    assert why == ("the same attack on CIFAR-10 ResNet-20 (DeepSec's) and on CIFAR-10 wide ResNet-20 ×2 is "
                   "consistent with it too")
    assert verdicts.model_insensitive(col, "ALD_L2", 29.23, quick, found) is None  # 26.0 is not consistent
    text = pages.effect_text(linf[0])
    assert "measured by the same attack on CIFAR-10 ResNet-20 (DeepSec's) (0.973 against our 0.971)" in text
    rows = verdicts.measurement_rows("quick", found)
    assert [b["column"] for b in rows] == ["pgd_eps8_resnet20", "pgd_eps8_wide_x2"]
    assert {r["metric"]: r["within"] for r in rows[0]["rows"]} == {"ALD_Linf": True, "ALD_L2": False}


def test_allowances_are_checked_against_the_seed_spread_and_the_retrained_model():
    """Before: the allowances said "another retrained raw model moves it by about this much", which the published
    pairs contradict (PGD's ALD L2 differs by 0.30 between the two papers' runs, allowance 0.18)."""
    def run(column, seed, mr, l2):
        return results.Result(column=column, kind="attack", notebook="pgd.ipynb", profile="quick",
                              parameters={"seed": seed}, metrics={"MR": mr, "ALD_L2": l2})

    found = {"pgd_resnet20": run("pgd_resnet20", 100, 1.0, 3.30), "pgd_resnet20_seed101": run("x", 101, 1.0, 3.31),
             "pgd_resnet20_seed102": run("x", 102, 0.98, 3.30)}
    rows = {r["metric"]: r for r in verdicts.allowance_evidence("quick", found)}
    mr, l2 = rows["MR"], rows["ALD_L2"]
    (spread,) = mr["seed_spread"]
    assert spread["range"] == pytest.approx(0.02) and spread["seeds"] == [100, 101, 102]
    assert not spread["within"] and not mr["covers_seeds"]  # 2 points against ±0.5
    assert l2["covers_seeds"] and l2["seed_spread"][0]["range"] == pytest.approx(0.01)
    (pair,) = [e for e in l2["retrain"] if "PGD" in e["column"]]
    assert pair["shift"] == pytest.approx(pair["followup"] - pair["deepsec"]) and not pair["within"]
    text = pages._allowance_evidence("quick", found)
    assert "Our seed spread exceeds the allowance for MR" in text and "retrained" in text
    assert "another retrained raw model" not in " ".join(a.why for a in verdicts.ALLOWANCES.values())


def test_seed_spread_is_the_mean_and_sample_std_of_the_replicates():
    col = plan.column("pgd_resnet20")
    found = {cid: dataclasses.replace(_attack_result(cid, {"MR": (mr, mr, mr), "ALD_L2": (l2, l2, l2)}),
                                      parameters={"seed": seed})
             for cid, mr, l2, seed in (("pgd_resnet20", 0.90, 1.0, 100), ("pgd_resnet20_seed101", 0.92, 2.0, 101),
                                       ("pgd_resnet20_seed102", 0.94, None, 102))}
    spread = verdicts.seed_spread(col, "quick", found)
    assert spread["seeds"] == [100, 101, 102]
    assert spread["mean"]["MR"] == pytest.approx(0.92) and spread["std"]["MR"] == pytest.approx(0.02)
    assert "ALD_L2" not in spread["mean"]  # undefined in one run: no spread
    assert verdicts.seed_spread(col, "quick", {"pgd_resnet20": found["pgd_resnet20"]}) == {}


def test_cell_totals_add_up_the_columns_verdicts_against_both_references():
    from repro.report.pages import load_found

    found = load_found("smoke")
    cells = verdicts.table_cells("smoke", found)
    totals = verdicts.cell_totals("smoke", found)
    assert sum(totals.values()) == sum(1 for rows in cells.values() for r in rows for _, k in verdicts.REFERENCES
                                       if r[f"verdict_{k}"] is not None)
    assert set(cells) <= {c.id for c in plan.columns_for("smoke") if c.table in ("1", "2") and not c.replicate_of}


def test_every_unmeasured_departure_says_what_measuring_it_would_take():
    """Issue: every remaining n/c shows its measured effect or says it is unmeasured *and why*. Each kind of budget
    departure has its reason (one table keyed as AFFECTS), and the quick profile's unmeasured effects carry it."""
    from repro.report.pages import load_found

    assert set(verdicts.AFFECTS) | {verdicts.PARTIAL_DATA} == set(verdicts.UNMEASURED_WHY)
    found = load_found("quick")
    unmeasured = [e for rows in verdicts.table_cells("quick", found).values() for r in rows
                  for _, key in verdicts.REFERENCES for e in r[f"cell_{key}"].blocking
                  if not e.measured and e.departure != verdicts.RELEASED_CHECKPOINT]
    assert unmeasured and all(e.why for e in unmeasured), [e.departure for e in unmeasured if not e.why]
    partial = [e for e in unmeasured if e.departure.startswith("trained on ")]
    assert partial and all(e.why == verdicts.UNMEASURED_WHY[verdicts.PARTIAL_DATA] for e in partial)


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_every_budget_departure_counts_against_a_verdict_or_only_changes_how_many_images_are_measured(profile):
    """Before: quick's PAT recipe took the JPEG copies and an ε ramp (budget departures listed under the columns),
    but AFFECTS knew neither, so no verdict counted them; the "trained on 8,068 of 50,000" departure stayed for a
    defence that had seen every training image."""
    prof = get_profile(profile)
    for col in plan.columns_for(profile):
        changed = budget_differences(prof, uses=col.uses, attack=col.attack, dataset=col.parameters.get("dataset"))
        unknown = {(part, name) for part, name, _, _ in changed} - set(verdicts.AFFECTS) - verdicts.MEASUREMENT_ONLY
        assert not unknown, f"{col.id}: departures no verdict counts: {sorted(unknown)}"
    if profile == "quick":
        partial = {"cifar10": {"official": False, "train": 8068, "full_train": 50000}}
        labels = lambda cid: {w for ws in verdicts.budget_departures(plan.COLUMNS[cid], prof,  # noqa: E731
                                                                     datasets=partial).values() for w in ws}
        assert not [w for w in labels("pat_resnet20") if w.startswith("trained on")]
        assert "defence parameters eps_ramp = 0.4 instead of the papers' (none)" in labels("pat_resnet20")
        assert any(w.startswith("trained on 8,068") for w in labels("pat_8_255_wide"))  # its raw model's data


def test_the_table_summary_adds_up_to_the_cell_totals():
    from repro.report.pages import load_found

    found = load_found("quick")
    summary = verdicts.table_summary("quick", found)
    # counted here independently, cell by cell, from the comparison rows
    direct = {}
    for cid, rows in verdicts.table_cells("quick", found).items():
        for r in rows:
            for _, key in verdicts.REFERENCES:
                if r[f"verdict_{key}"] is not None:
                    cell = (plan.COLUMNS[cid].table, r[f"verdict_{key}"])
                    direct[cell] = direct.get(cell, 0) + 1
    for table, t in summary.items():
        assert t["consistent"] == direct.get((table, verdicts.Verdict.CONSISTENT), 0)
        assert t["inconsistent"] == direct.get((table, verdicts.Verdict.INCONSISTENT), 0)
        assert t["not_comparable"] == direct.get((table, verdicts.Verdict.NOT_COMPARABLE), 0)
    assert sum(verdicts.cell_totals("quick", found).values()) == sum(direct.values()) == 85
    for t in summary.values():
        assert t["total"] == t["consistent"] + t["inconsistent"] + t["not_comparable"]
        assert 0 <= t["unmeasured_only"] <= t["not_comparable"]
        cells = [b["cells"] for b in t["blocking"]]
        assert cells == sorted(cells, reverse=True) and all(0 < c <= t["not_comparable"] for c in cells)


def test_the_spread_over_seeds_is_the_sample_standard_deviation():
    assert verdicts.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # hand-computed: variance (1 + 0 + 1) / 2
    with pytest.raises(ValueError, match="at least two values, got 1"):
        verdicts.mean_std([1.0])
