"""The follow-up study's claims, each decided from our results and the published tables: confirmed, refuted or not
tested here (with the reason). Nothing is typed by hand but the claim itself and the rule that decides it.

Every claim is one decision function registered with :func:`claim`; it finds the columns it needs by what they run
(attack or defence, ε, model), never by id, and returns a :class:`Decision` whose ``numbers`` are what the book quotes
(fractions, as in the results). The wording lives in the report's template (``repro/report/templates/claims.md.j2``);
a decision's ``reason`` is a key of that template's reasons.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable

from ..metrics.uncertainty import mcnemar_exact
from .lookup import columns_running
from .plan import Column, columns_for
from .profiles import get_profile
from .verdicts import ALLOWANCES, Verdict, comparison_rows, verdict

MADRY_EPS = 8 / 255  # Madry et al.'s CIFAR-10 budget, 8 on the 0…255 scale, on [0, 1] images
# The follow-up's text on NAT (§4.2): CRR 44 %, CSR 20 %.
NAT_TEXT = {"CRR": 0.44, "CSR": 0.20}
SLIGHT = 2.0  # a ratio beyond which a change in a distance is not "slight"


class Status(str, enum.Enum):
    CONFIRMED = "confirmed"
    REFUTED = "refuted"
    INCONCLUSIVE = "inconclusive"  # tested, and the measured difference is within its noise
    UNTESTED = "not tested here"


SIGNIFICANCE = 0.05  # two-sided level of the paired tests that decide a claim comparing two models


@dataclass(frozen=True)
class Decision:
    """One claim decided: ``status``; ``reason`` (a key of the template's reasons: what decided it, or why it could
    not be tested); ``numbers`` quoted by the book; ``columns``: the ids of the results it used."""

    claim: str
    status: Status
    reason: str
    numbers: dict = field(default_factory=dict)
    columns: tuple[str, ...] = ()


CLAIMS: dict[str, Callable] = {}


def claim(name: str):
    """Register a decision function ``f(view) -> Decision`` under ``name`` (its order is the scorecard's)."""
    def register(f):
        if name in CLAIMS:
            raise ValueError(f"claim {name!r} is registered twice")
        CLAIMS[name] = f
        return f
    return register


class View:
    """The results of one profile as the decisions read them: columns found by what they run."""

    def __init__(self, profile: str, found: dict):
        self.profile = get_profile(profile).name
        self.found = found
        self.columns = [c for c in columns_for(self.profile) if c.replicate_of is None]

    def column(self, **criteria) -> Column | None:
        """The first column with a result among :func:`repro.study.lookup.columns_running` ``(**criteria)``."""
        return next((c for c in columns_running(self.profile, **criteria) if c.id in self.found), None)

    def rows(self, col: Column) -> dict[str, dict]:
        return {r["metric"]: r for r in comparison_rows(col, self.found[col.id], self.profile, self.found)}

    def interval(self, col: Column, metric: str) -> dict:
        r = self.rows(col)[metric]
        return {"value": r["ours"], "low": r["low"], "high": r["high"]}


def _missing(name: str, what: str) -> Decision:
    return Decision(name, Status.UNTESTED, "no_result", {"what": what})


@claim("eps8_is_madry")
def _eps8_is_madry(v: View) -> Decision:
    """"ε = 8, as Madry et al.": refuted when the literal ε = 8 attack moves pixels (mean L∞) beyond Madry's 8/255 —
    in our run and in the follow-up's own table."""
    col = v.column(attack="pgd", literal_eps=True, table="1")
    if col is None:
        return _missing("eps8_is_madry", "the literal ε = 8 PGD column")
    r = v.rows(col)["ALD_Linf"]
    margin = ALLOWANCES["ALD_Linf"].width(MADRY_EPS)
    beyond = r["low"] is not None and r["low"] > MADRY_EPS + margin and (r["followup"] or 0) > MADRY_EPS + margin
    return Decision("eps8_is_madry", Status.REFUTED if beyond else Status.UNTESTED,
                    "linf_beyond_madry" if beyond else "linf_within_madry",
                    {"ours": r["ours"], "low": r["low"], "high": r["high"], "followup": r["followup"],
                     "madry": MADRY_EPS, "ratio": None if r["ours"] is None else r["ours"] / MADRY_EPS}, (col.id,))


@claim("ass_zero_is_a_mistake")
def _ass_zero(v: View) -> Decision:
    """"ASS ≈ 0 under ε = 8 is a computational mistake": refuted when our independent implementation gives an ASS
    consistent with the follow-up's (the value is what the metric gives for the attack's output, whatever the model:
    the departures in the model are not taken into account here, and the book says so)."""
    col = v.column(attack="pgd", literal_eps=True, table="1")
    if col is None:
        return _missing("ass_zero_is_a_mistake", "the literal ε = 8 PGD column")
    r = v.rows(col)["ASS"]
    findings = v.column(table="findings")
    eps8 = {} if findings is None else v.found[findings.id].extra.get("eps8", {}).get("eps8", {})
    same = verdict(low=r["low"], high=r["high"], published=r["followup"], metric="ASS")
    status = {Verdict.CONSISTENT: Status.REFUTED, Verdict.INCONSISTENT: Status.CONFIRMED}.get(same, Status.UNTESTED)
    return Decision("ass_zero_is_a_mistake", status, {Status.REFUTED: "ass_reproduced",
                                                      Status.CONFIRMED: "ass_differs"}.get(status, "no_interval"),
                    {"ours": r["ours"], "low": r["low"], "high": r["high"], "followup": r["followup"],
                     "saturated": eps8.get("saturated")}, (col.id,))


def _similar_to_deepsec(v: View, name: str, col: Column | None, what: str) -> Decision:
    """Our run of the column against DeepSec's paper: refuted by an inconsistent informative cell, confirmed by at
    least one consistent informative cell and no inconsistent one, else not tested."""
    if col is None:
        return _missing(name, what)
    rows = v.rows(col).values()
    cells = [r for r in rows if r["verdict_deepsec"] is not None]
    informative = [r["metric"] for r in cells if r["verdict_deepsec"] == Verdict.CONSISTENT and not r["power_deepsec"]]
    bounded = [r["metric"] for r in cells if r["verdict_deepsec"] == Verdict.CONSISTENT and r["power_deepsec"]]
    bad = [r["metric"] for r in cells if r["verdict_deepsec"] == Verdict.INCONSISTENT]
    nc = [r["metric"] for r in cells if r["verdict_deepsec"] == Verdict.NOT_COMPARABLE]
    status = Status.REFUTED if bad else Status.CONFIRMED if informative else Status.UNTESTED
    reason = "inconsistent_cells" if bad else "consistent_cells" if informative else "no_comparable_cell"
    return Decision(name, status, reason, {"informative": informative, "at_bound": bounded, "inconsistent": bad,
                                          "not_comparable": nc, "cells": len(cells)}, (col.id,))


@claim("pgd_similar_to_deepsec")
def _pgd_similar(v: View) -> Decision:
    """"PGD's values are in a very similar range to DeepSec's" (DeepSec's own ε = 0.1 setting)."""
    return _similar_to_deepsec(v, "pgd_similar_to_deepsec", v.column(attack="pgd", literal_eps=False, table="1"),
                               "the PGD column at DeepSec's ε")


@claim("cw2_similar_to_deepsec")
def _cw2_similar(v: View) -> Decision:
    """"CW2's values are in a very similar range to DeepSec's"."""
    return _similar_to_deepsec(v, "cw2_similar_to_deepsec", v.column(attack="cw2", table="1"), "the CW2 column")


@claim("eps8_slightly_worse")
def _eps8_worse(v: View) -> Decision:
    """"With ε = 8 the values are just slightly worse (except ASS and PSD)": refuted when the mean L2 and L∞
    distances of the literal ε = 8 attack are more than :data:`SLIGHT` times those at DeepSec's ε — in our runs and in
    the follow-up's own table."""
    lit = v.column(attack="pgd", literal_eps=True, table="1")
    base = v.column(attack="pgd", literal_eps=False, table="1")
    if lit is None or base is None:
        return _missing("eps8_slightly_worse", "both PGD columns")
    a, b = v.rows(lit), v.rows(base)
    ratios = {}
    for m in ("ALD_L2", "ALD_Linf"):
        ours = None if not a[m]["ours"] or not b[m]["ours"] else a[m]["ours"] / b[m]["ours"]
        theirs = None if not a[m]["followup"] or not b[m]["followup"] else a[m]["followup"] / b[m]["followup"]
        ratios[m] = {"ours": ours, "followup": theirs}
    far = all(r["ours"] and r["ours"] > SLIGHT and r["followup"] and r["followup"] > SLIGHT for r in ratios.values())
    return Decision("eps8_slightly_worse", Status.REFUTED if far else Status.UNTESTED,
                    "distances_multiply" if far else "distances_close", {"ratios": ratios, "slight": SLIGHT},
                    (lit.id, base.id))


@claim("nat_increases_accuracy")
def _nat_accuracy(v: View) -> Decision:
    """"NAT increases accuracy (positive CAV)": decided by our CAV interval (above 0: confirmed, below: refuted)
    only where our NAT column is comparable with a published one; the follow-up's own printed CAV is quoted."""
    col = v.column(defence="nat", table="2")
    if col is None:
        return _missing("nat_increases_accuracy", "the NAT column")
    r = v.rows(col)["CAV"]
    numbers = {"ours": r["ours"], "low": r["low"], "high": r["high"], "followup": r["followup"],
               "deepsec": r["deepsec"], "why": [e.departure for k in ("followup", "deepsec")
                                                for e in r[f"cell_{k}"].blocking if not e.measured]}
    comparable = any(r[f"verdict_{k}"] in (Verdict.CONSISTENT, Verdict.INCONSISTENT) for k in ("followup", "deepsec"))
    if not comparable or r["low"] is None:
        return Decision("nat_increases_accuracy", Status.UNTESTED, "not_comparable", numbers, (col.id,))
    status = Status.CONFIRMED if r["low"] > 0 else Status.REFUTED if r["high"] < 0 else Status.INCONCLUSIVE
    reason = {Status.CONFIRMED: "cav_positive", Status.REFUTED: "cav_negative"}.get(status, "cav_spans_zero")
    return Decision("nat_increases_accuracy", status, reason, numbers, (col.id,))


@claim("nat_crr_csr_text")
def _nat_crr_csr(v: View) -> Decision:
    """"CRR 44 %, CSR 20 %" (the follow-up's text on NAT): refuted when every published CRR and CSR of the NAT column
    (both tables) is below a tenth of the claimed value — the text reads percentages printed as 0.44 % and 0.20 % as
    44 % and 20 %. Our own values are quoted."""
    col = v.column(defence="nat", table="2")
    if col is None:
        return _missing("nat_crr_csr_text", "the NAT column")
    rows = v.rows(col)
    printed = {m: {k: rows[m][k] for k in ("followup", "deepsec")} for m in NAT_TEXT}
    ours = {m: {"value": rows[m]["ours"], "low": rows[m]["low"], "high": rows[m]["high"]} for m in NAT_TEXT}
    tenth = all(v_ is not None and v_ < NAT_TEXT[m] / 10 for m in NAT_TEXT for v_ in printed[m].values())
    return Decision("nat_crr_csr_text", Status.REFUTED if tenth else Status.UNTESTED,
                    "tables_print_hundredfold_less" if tenth else "tables_agree",
                    {"claimed": NAT_TEXT, "printed": printed, "ours": ours,
                     "hundredfold_deepsec": all(printed[m]["deepsec"] is not None
                                                and abs(NAT_TEXT[m] / 100 - printed[m]["deepsec"]) < 1e-9
                                                for m in NAT_TEXT)},
                    (col.id,))


@claim("pat_drop_like_madry")
def _pat_drop(v: View) -> Decision:
    """"PAT's accuracy drop is in line with Madry's 47.1 % / 50 %": the follow-up sets its PAT "ε = 8" model's
    accuracy on clean images (its Table 2) beside Madry et al.'s accuracies under PGD attack. Compared like with
    like, refuted when the printed clean accuracy lies below the clean accuracy of Madry et al.'s adversarially
    trained model by more than the allowance; our literal ε = 8 PAT model's clean and worst-case robust accuracy
    (the security evaluation) are quoted beside it."""
    from .plan import anchor

    col = v.column(defence="pat", literal_eps=True, table="2")
    if col is None:
        return _missing("pat_drop_like_madry", "the literal ε = 8 PAT column")
    r = v.rows(col)["ACC_defended"]
    madry = anchor("madry_wrn")
    cited = {size: anchor(f"followup_cites_madry_{size}").pgd for size in ("standard", "wide")}
    numbers = {"followup": r["followup"], "cited": cited, "madry_clean": madry.clean,
               "madry_pgd": madry.pgd, "ours": None}
    sec = next((c for c in v.columns if c.table == "security" and c.parameters.get("dataset") == "cifar10"
                and c.id in v.found), None)
    models = {} if sec is None else v.found[sec.id].extra.get("security", {}).get("models", {})
    ours = next((m for m in models.values() if m.get("column") == col.id and m.get("role") == "defended"
                 and m.get("arm") is None), None)  # the column's own model, not an ablation arm of it
    if ours is not None:
        numbers["ours"] = {"clean": ours["clean"], "robust": ours["robust"]}
    if r["followup"] is None:
        return Decision("pat_drop_like_madry", Status.UNTESTED, "no_result", {"what": "the follow-up's PAT value"})
    below = r["followup"] < madry.clean - ALLOWANCES["ACC_defended"].width(madry.clean)
    return Decision("pat_drop_like_madry", Status.REFUTED if below else Status.UNTESTED,
                    "clean_vs_robust" if below else "clean_like_madry", numbers,
                    (col.id,) + (() if sec is None or ours is None else (sec.id,)))


@claim("wider_is_more_robust")
def _wider(v: View) -> Decision:
    """"A wider ResNet gives more accuracy and a more robust model": decided on the width ladder of the security
    evaluation (the wide ResNet's PAT ε = 8/255 model at the profile's width and at each ladder width, same recipe,
    budget and test images): confirmed when the wider model's clean and worst-case robust accuracy are both higher
    by McNemar's exact test at :data:`SIGNIFICANCE`, refuted when either is lower, inconclusive otherwise; not tested
    while the profile has no ladder."""
    sec = next((c for c in v.columns if c.table == "security" and c.parameters.get("dataset") == "cifar10"
                and c.id in v.found), None)
    if sec is None:
        return _missing("wider_is_more_robust", "the CIFAR-10 security evaluation")
    from .roster import evaluated_models

    models = v.found[sec.id].extra.get("security", {}).get("models", {})
    specs = evaluated_models("cifar10", v.profile)
    rung = max((s for s in specs if s.width and s.role == "defended" and s.id in models), default=None,
               key=lambda s: s.width)
    base = rung and next((s for s in specs if s.column == rung.column and s.role == rung.role and s.width is None
                          and s.id in models), None)
    if rung is None or base is None:
        if any(s.width for s in specs):  # the profile has a ladder, the result does not: computed before it
            return _missing("wider_is_more_robust", "the width ladder's models in the CIFAR-10 security evaluation")
        return Decision("wider_is_more_robust", Status.UNTESTED, "width_one",
                        {"widths": [v.found[sec.id].parameters.get("width")]}, (sec.id,))
    narrow, wide = models[base.id], models[rung.id]
    rungs = {}
    for measure in ("clean", "robust"):
        test = mcnemar_exact(narrow[measure]["correct"], wide[measure]["correct"])
        rungs[measure] = {"narrow": narrow[measure], "wide": wide[measure], "n": narrow[measure]["n"], **test}
    sources = (sec.id,)
    # The training column measures the same two models on all its test images (clean, and PGD-20 from one start, a
    # weaker attack than the worst case): clean accuracy is decided on the larger of the two paired samples, the
    # robustness on the worst case; the PGD-20 comparison is shown beside it.
    trained = _width_pair(v, rung.id)
    if trained is not None:
        tid, pair = trained
        paired = {what: {"narrow": {"rate": pair[what]["base"]}, "wide": {"rate": pair[what]["arm"]},
                         "n": pair[what]["n"], "p": pair[what]["p"]} for what in ("clean", "pgd")}
        if paired["clean"]["n"] > rungs["clean"]["n"]:
            rungs["clean"] = paired["clean"]
        rungs["pgd"] = paired["pgd"]
        sources += (tid,)
    decisive = [rungs["clean"], rungs["robust"]]
    better = all(r["wide"]["rate"] > r["narrow"]["rate"] and r["p"] < SIGNIFICANCE for r in decisive)
    worse = any(r["wide"]["rate"] < r["narrow"]["rate"] and r["p"] < SIGNIFICANCE for r in decisive)
    status, reason = ((Status.CONFIRMED, "wider_better") if better else (Status.REFUTED, "wider_worse") if worse
                      else (Status.INCONCLUSIVE, "wider_within_noise"))
    numbers = {"narrow_label": narrow["label"], "wide_label": wide["label"], "alpha": SIGNIFICANCE, **rungs}
    return Decision("wider_is_more_robust", status, reason, numbers, sources)


def _width_pair(v: View, model_id: str) -> tuple[str, dict] | None:
    """The CIFAR-10 training column's paired comparison of the ladder model ``model_id`` with its base
    (:func:`repro.study.ablation.paired_widths`), with the column's id; ``None`` without it."""
    from .ablation import paired_widths

    col = next((c for c in v.columns if c.table == "training" and c.parameters.get("dataset") == "cifar10"
                and c.id in v.found), None)
    if col is None:
        return None
    evaluation = v.found[col.id].extra.get("training")
    pair = next((p for p in paired_widths(evaluation) if p["model"] == model_id), None) if evaluation else None
    return None if pair is None else (col.id, pair)


def scorecard(profile: str, found: dict) -> list[Decision]:
    """Every registered claim decided from ``found`` (column id → result) under ``profile``, in registration order."""
    view = View(profile, found)
    return [decide(view) for decide in CLAIMS.values()]
