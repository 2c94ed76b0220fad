"""Generate the book's data-driven pages from the result JSONs of one profile and the published CSVs.

:func:`generate` writes Markdown pages, figures, copies of the executed notebooks and the MyST substitutions
(numbers quoted in the hand-written chapters) into a staging folder that ``repro.pipeline`` then hands to jupyter-book.
The comparison logic is :func:`comparison_rows`: ours, the follow-up's and DeepSec's value per metric, the
differences, and the verdict of :mod:`repro.study.verdicts` on our interval.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import yaml

from .. import data as data_mod
from .. import results as results_mod
from ..study.plan import (COLUMNS, METRIC_LABELS, PRINTED_UNIT, TABLE_METRICS, Column, columns_for, fingerprint,
                          published, published_value, replicates, to_printed_unit)
from ..study.profiles import get_profile, learning_rate_after
from ..study.models import ModelSource
from ..study import verdicts
from ..study.claims import Status, scorecard
from ..study.security import study_models, threat_model
from .security import masking_summary
from ..train.config import DEEPSEC_RECIPE, RECIPES
from ..study.lookup import column_running, columns_running
from . import markdown
from .markdown import NOT_COMPUTED
from .markdown import eps_text
from .templates import phrase, render
from ..study.verdicts import ALLOWANCES, Verdict, verdict, verdict_counts



# ------------------------------------------------------------------------------------------------- comparison
SOURCES = (("follow-up", "followup"), ("deepsec", "deepsec"))
MARK = {Verdict.CONSISTENT: "✓", Verdict.INCONSISTENT: "✗", Verdict.NOT_COMPARABLE: "n/c"}


def comparison_rows(col: Column, result: results_mod.Result | None, profile: str | None = None,
                    found: dict | None = None) -> list[dict]:
    """The study's comparison of ``col`` (:func:`repro.study.verdicts.comparison_rows`), for rendering."""
    return verdicts.comparison_rows(col, result, profile, found)


def _signed(metric: str, value: float) -> str:
    text = _fmt(metric, abs(value))
    return ("−" if value < 0 else "+") + text


def effect_text(effect: verdicts.Effect, allowance: float | None = None) -> str:
    """One departure's effect on one metric, in words with its numbers (printed units)."""
    m, d = effect.metric, effect.detail
    if effect.kind == "published pair":
        beyond = allowance is not None and abs(effect.low) > allowance
        return phrase("effect_published_pair", departure=effect.departure, followup=_fmt(m, d["followup"]),
                      deepsec=_fmt(m, d["deepsec"]), shift=_signed(m, effect.low),
                      beyond=_fmt(m, allowance) if beyond else None)
    if effect.kind == "measurement column":
        return phrase("effect_measurement_column", departure=effect.departure, model=d["model"],
                      theirs=_fmt(m, d["theirs"]), ours=_fmt(m, d["ours"]), low=_signed(m, effect.low),
                      high=_signed(m, effect.high))
    if effect.measured:
        return phrase("effect_measured", departure=effect.departure, low=_signed(m, effect.low),
                      high=_signed(m, effect.high))
    if effect.departure == verdicts.RELEASED_CHECKPOINT:
        raw = d.get("raw_accuracy")
        if raw and not raw["matches_followup"]:
            return phrase("effect_released_checkpoint", departure=effect.departure,
                          **{k: _fmt("ACC_raw", raw[k]) for k in ("followup", "ours", "low", "high")})
        return phrase("effect_no_model", departure=effect.departure)
    return phrase("effect_unmeasured", departure=effect.departure, why=effect.why)


def _why_short(rows: list[dict], key: str) -> list[str]:
    """One phrase per departure that makes cells against ``key`` not comparable: "(effect not measured)", or the
    metrics its measured effect moves beyond their allowances."""
    unmeasured, beyond, why = [], {}, {}
    for r in rows:
        for e in r[f"cell_{key}"].blocking:
            if e.measured:
                beyond.setdefault(e.departure, []).append(METRIC_LABELS[e.metric])
            elif e.departure not in unmeasured:
                unmeasured.append(e.departure)
                why[e.departure] = e.why
    return ([phrase("effect_unmeasured", departure=d, why=why.get(d)) for d in unmeasured] +
            [phrase("moves_beyond", departure=d, metrics=ms) for d, ms in beyond.items()])


def _why(rows: list[dict], key: str) -> list[str]:
    """The distinct reasons, over ``rows``, why cells against reference ``key`` are not comparable: a measured
    effect once per metric (with its numbers), an unmeasured departure once for the column."""
    out = []
    for r in rows:
        cell = r[f"cell_{key}"]
        for e in cell.blocking:
            text = effect_text(e, cell.allowance)
            out.append(f"{_label(e.metric)}: {text}" if e.measured else text)
    return list(dict.fromkeys(out))


def _counts_text(counts: dict) -> str:
    if not any(counts.values()):
        return phrase("nothing_published")
    return ", ".join(f"{n} {v.value}" for v, n in counts.items())


def _fmt_interval(metric: str, row: dict) -> str:
    if row["ours"] is None:
        return NOT_COMPUTED
    if row["low"] is None:
        return _fmt(metric, row["ours"])
    return f"{_fmt(metric, row['ours'])} [{_fmt(metric, row['low'])}, {_fmt(metric, row['high'])}]"


def _fmt(metric: str, value) -> str:
    printed = to_printed_unit(metric, value)
    if printed is None:
        return NOT_COMPUTED
    if metric == "COS":
        return f"{printed:.4f}"
    if PRINTED_UNIT.get(metric) == "%":
        return f"{printed:.2f}"
    return f"{printed:.1f}" if abs(printed) >= 100 else f"{printed:.3f}"


def _mark(v) -> str:
    return "" if v is None else MARK[v]


def _label(metric: str) -> str:
    unit = " (%)" if PRINTED_UNIT.get(metric) == "%" else ""
    return METRIC_LABELS.get(metric, metric) + unit


# ------------------------------------------------------------------------------------------------------- pages
def _column_section(col: Column, result: results_mod.Result | None, profile: str, fresh: bool,
                    figures_dir: Path, found: dict | None = None) -> str:
    if result is None:
        return phrase("not_computed_column", anchor=col.id, title=col.title, profile=profile) + "\n"
    prov = result.provenance
    device = prov.get("device", {})
    git = prov.get("git", {})
    commit = (git.get("commit") or "no commit")[:10] + (" (uncommitted changes)" if git.get("dirty") else "")
    rows = comparison_rows(col, result, profile, found)
    spread = seed_spread(col, found, profile) if found is not None else {}
    header = ["metric", "ours [95 % CI]", "n", "follow-up", "verdict", "DeepSec", "verdict"]
    has_null = any(r["null"] is not None for r in rows)
    if has_null:
        header += ["null defence", "its verdicts (follow-up / DeepSec)"]
    if spread:
        header += [f"mean ± std over seeds {', '.join(map(str, spread['seeds']))}"]
    table = []
    for r in rows:
        m = r["metric"]
        line = [_label(m), _fmt_interval(m, r), "" if r["n"] is None else f"{r['n']:,}",
                _fmt(m, r["followup"]) + ("*" if r["second_hand_followup"] else ""), _mark(r["verdict_followup"]),
                _fmt(m, r["deepsec"]) + ("*" if r["second_hand_deepsec"] else ""), _mark(r["verdict_deepsec"])]
        if has_null:
            line += [_fmt(m, r["null"]), f"{_mark(r['null_verdict_followup'])} / {_mark(r['null_verdict_deepsec'])}"]
        if spread:
            line += [spread["text"].get(m, NOT_COMPUTED)]
        table.append(line)
    if "CC" in result.metrics and result.metrics["CC"] is not None:
        table.append(["CC (ms per AE)", f"{1e3 * result.metrics['CC']:.2f}"] + [""] * (len(header) - 2))
    why = [(label, _why(rows, key)) for key, label in (("followup", "the follow-up"), ("deepsec", "DeepSec"))]
    taken = sorted({f"{_label(e.metric)}: {effect_text(e)}" for r in rows for key in ("followup", "deepsec")
                    if r[f"verdict_{key}"] in (Verdict.CONSISTENT, Verdict.INCONSISTENT)
                    for e in r[f"cell_{key}"].effects if e.measured})
    measured = [f"{_label(r['metric'])} ±{_fmt(r['metric'], r['allowance_followup'].abs)} "
                f"({r['allowance_followup'].why})"
                for r in rows if r["allowance_followup"].basis == "measured"]
    weak = [f"{_label(r['metric'])} ({r['power_followup']})" for r in rows if r["power_followup"]]
    # A published cell can carry several corrections (" | "-separated); each is listed once per column.
    corrections = sorted({part.strip() for p in published(col.table) if p.column == col.compare_with
                          for part in p.correction.split(" | ") if part.strip()})
    notes = sorted({f"{METRIC_LABELS[p.metric]}: {p.note}" for p in published(col.table)
                    if p.column == col.compare_with and p.note})
    params = {k: v for k, v in result.parameters.items() if k not in _unused_parameters(result)}
    text = render(
        "column_section.md.j2", col=col, profile=profile, fresh=fresh,
        notes=(prov.get("notes") or []) + carried_notes(prov),
        computed={"created": result.created, "device": f"{device.get('name', '?')} ({device.get('device', '?')})",
                  "seconds": f"{prov.get('wall_time_s', float('nan')):.0f}", "training": _training_note(result),
                  "commit": commit},
        table=markdown.table(header, table),
        against={key: _counts_text(verdict_counts(rows, key)) for key in ("followup", "deepsec")},
        why=[(label, reasons) for label, reasons in why if reasons], taken=taken, measured=measured, weak=weak,
        null_text=null_defence_text(rows) if has_null else "",
        second_hand=any(r["second_hand_followup"] or r["second_hand_deepsec"] for r in rows),
        corrected=corrections + notes, departures=result.departures or ["none"],
        parameters=", ".join(f"`{k}={v!r}`" for k, v in params.items()))
    return text


def carried_notes(provenance: dict) -> list[str]:
    """One note per model of a result that was carried to later training code (:mod:`repro.train.carry`): which
    code trained it and that a probe of its configuration trained bit for bit alike under both codes."""
    out = []
    for role, rec in sorted(provenance.get("models", {}).items()):
        for step in rec.get("carried") or []:
            out.append(phrase("carried_note", role=role, from_code=step["from_code"][:10],
                              to_code=step["to_code"][:10], epochs=step["probe"]["epochs"],
                              images=step["probe"]["images"]))
    return out


def _unused_parameters(result: results_mod.Result) -> set[str]:
    """Parameters a column's section does not list: run plumbing, and the raw training budget when the raw model
    is DeepSec's released checkpoint (before: "epochs=8" was shown for columns that trained nothing)."""
    out = {"results_dir", "device", "column", "profile"}
    raw = result.provenance.get("models", {}).get("raw", {})
    if raw.get("source") == ModelSource.DEEPSEC.value:
        from .figures import RAW_TRAINING_PARAMETERS

        out.update(RAW_TRAINING_PARAMETERS)
    return out


def null_defence_text(rows: list[dict]) -> str:
    """What the null defence (the raw model scored as its own defence) says about the published values, per
    reference: which of them tell the published defence from no defence at all (inconsistent with the null
    defence) and which an untouched model matches as well (consistent). ACC_raw is the same for the null defence by
    construction and is left out."""
    parts = []
    for key, label in (("followup", "the follow-up's"), ("deepsec", "DeepSec's")):
        judged = [r for r in rows if r["metric"] != "ACC_raw" and r[f"null_verdict_{key}"] is not None]
        if not judged:
            continue
        parts.append(phrase(
            "null_defence_reference", reference=label,
            telling=[METRIC_LABELS[r["metric"]] for r in judged if r[f"null_verdict_{key}"] == Verdict.INCONSISTENT],
            same=[METRIC_LABELS[r["metric"]] for r in judged if r[f"null_verdict_{key}"] == Verdict.CONSISTENT]))
    return phrase("null_defence", parts=parts)


def seed_spread(col: Column, found: dict, profile: str) -> dict:
    """:func:`repro.study.verdicts.seed_spread` formatted: ``{"seeds", "text": {metric: "mean ± std"}}``."""
    spread = verdicts.seed_spread(col, profile, found)
    if not spread:
        return {}
    return {"seeds": spread["seeds"], "text": {m: f"{_fmt(m, v)} ± {_fmt(m, spread['std'][m]).lstrip('-')}"
                                               for m, v in spread["mean"].items()}}


def training_seconds(result: results_mod.Result) -> tuple[float, bool]:
    """Seconds spent training the models a result used (summed over its trained models' histories), and whether
    all of that training was served from the cache in this run (then the notebook's own wall time excludes it)."""
    trained = [m for m in result.provenance.get("models", {}).values() if "train_time_s" in m]
    return sum(m["train_time_s"] for m in trained), bool(trained) and all(m.get("from_cache") for m in trained)


def _training_note(result: results_mod.Result) -> str:
    seconds, cached = training_seconds(result)
    if not seconds:
        return ""
    return " " + phrase("training_note", seconds=f"{seconds:.0f}", cached=cached)


# Plan columns per overview table: 1 + 2 × 3 table columns fit the book's content column at 1,400 px (the layout
# check, tests/test_layout.py, fails when a table overflows it).
OVERVIEW_COLUMNS = 3


def _overview(cols: list[Column], found: dict, metrics, profile: str) -> str:
    """The overview of a table page: per metric, each column's value with its interval, and the published values
    (follow-up / DeepSec) each with its verdict mark; a table per :data:`OVERVIEW_COLUMNS` plan columns."""
    comps = {col.id: {r["metric"]: r for r in comparison_rows(col, found.get(col.id), profile, found)} for col in cols}

    def published(metric: str, r: dict) -> str:
        return " / ".join(f"{_fmt(metric, r[ref])} {_mark(r[f'verdict_{ref}'])}".strip()
                          for ref in ("followup", "deepsec"))

    tables = []
    for start in range(0, len(cols), OVERVIEW_COLUMNS):
        group = cols[start:start + OVERVIEW_COLUMNS]
        header = ["metric"]
        for col in group:
            header += [f"{col.title}: ours [95 % CI]", "follow-up / DeepSec"]
        rows = [[_label(metric)] + [cell for col in group for cell in (
            _fmt_interval(metric, comps[col.id][metric]), published(metric, comps[col.id][metric]))]
                for metric in metrics]
        tables.append(markdown.table(header, rows))
    return "\n".join(tables)


def _table_page(table: str, cols, found, fresh, profile, figures_dir) -> str:
    from . import figures

    metrics = TABLE_METRICS[table]
    head = render("table_intro.md.j2", table=table, profile=profile, description=get_profile(profile).description)
    parts = [head, _overview(cols, found, metrics, profile)]
    rows = {col.id: comparison_rows(col, found.get(col.id), profile, found) for col in cols if col.id in found}
    if any(r["followup"] is not None or r["deepsec"] is not None for rs in rows.values() for r in rs):
        fig = figures.distance_dots(rows, {m: ALLOWANCES[m].width for m in metrics}, labels=METRIC_LABELS,
                                    title=phrase("distance_title", table=table),
                                    column_labels={c.id: c.title for c in cols})
        figures.save(fig, figures_dir / f"table{table}_distance.png")
        parts.append(phrase("distance_figure", table=table) + "\n")
    if table == "1":
        parts.append(_budget_ladder_section(profile, found))
    for col in cols:
        parts.append(_column_section(col, found.get(col.id), profile, fresh.get(col.id, False), figures_dir,
                                     found=found))
    return "\n".join(parts)


def _budget_ladder_section(profile: str, found: dict) -> str:
    """CW2's budget ladder (the Table 1 CW2 column's ``extra.budget_ladder``) and its budget-arm column beside it;
    empty without a ladder in the result."""
    from .figures import budget_ladder_rows

    col = next((c for c in columns_running(profile, attack="cw2", table="1") if c.id in found), None)
    ladder = {} if col is None else found[col.id].extra.get("budget_ladder", {})
    if not ladder:
        return ""
    ref, paper = ladder["reference"], get_profile("paper")
    budget = lambda p: f"{p['binary_search_steps']} × {p['max_iterations']:,}"  # noqa: E731
    arm = next((c for c in columns_running(profile, attack="cw2", table="measure") if c.id in found), None)
    metrics, arm_budget = [], ""
    if arm is not None:
        a, b = found[col.id], found[arm.id]
        arm_budget = f"{budget(b.parameters)} on {b.parameters['n_samples']:,} candidates"
        metrics = [(_label(m), _fmt_interval(m, _point(a, m)), _fmt_interval(m, _point(b, m))) for m in col.metric_keys]
    return render("budget_ladder.md.j2", ladder=budget_ladder_rows(ladder), column=col.id,
                  arm=None if arm is None else arm.id, metrics=metrics, arm_budget=arm_budget,
                  reference=f"{budget(ref)} on {found[col.id].parameters['n_samples']:,} candidates",
                  paper_budget=f"{budget(paper.attack_budget('cw2').iterations)} on "
                               f"{paper.attack_budget('cw2').n_candidates:,} "
                               "candidates")


def _point(result: results_mod.Result | None, metric: str) -> dict:
    """``{"ours", "low", "high"}`` of ``metric`` in ``result`` (all ``None`` without a result or a value)."""
    if result is None:
        return {"ours": None, "low": None, "high": None}
    interval = result.intervals.get(metric) or {}
    return {"ours": verdicts.finite(result.metrics.get(metric)), "low": interval.get("low"),
            "high": interval.get("high")}


def _corrected_page(profile, found, fresh, figures_dir) -> str:
    from ..study.plan import anchor
    from . import figures

    blocks = []
    for corrected_col in [c for c in COLUMNS.values() if c.contrasts_with and c.id in found]:
        literal, corrected, metrics = corrected_col.contrasts_with, corrected_col.id, corrected_col.metric_keys
        a, b = found.get(literal), found.get(corrected)
        rows = [[_label(m), _fmt_interval(m, _point(a, m)), _fmt_interval(m, _point(b, m))] for m in metrics]
        blocks.append({
            "title": (corrected_col.attack or corrected_col.defence).upper(),
            "table": markdown.table(["metric", f"literal \"ε = 8\" [95 % CI] ([its notebook](columns/{literal}.ipynb))",
                                     f"ε = 8/255 [95 % CI] ([its notebook](columns/{corrected}.ipynb))"], rows),
            "departures": None if b is None else (b.departures or ["none"]),
            "stale": not fresh.get(corrected, False)})
    curves = {COLUMNS[cid].title: r.extra["accuracy_vs_eps"] for cid, r in found.items()
              if cid in COLUMNS and COLUMNS[cid].defence and "accuracy_vs_eps" in r.extra}
    shown = []
    for i, (label, curve) in enumerate(curves.items()):
        dataset = next(c for c in COLUMNS.values() if c.title == label).parameters["dataset"]
        fig = figures.accuracy_curves({"": curve}, title=label, threat_eps=threat_model(dataset)["eps"])
        name = f"curve_{i}.png"
        figures.save(fig, figures_dir / name)
        shown.append({"label": label, "name": name, "n": curve["n"]})
    steps = sorted({c.get("steps") for c in curves.values() if c.get("steps") is not None})
    madry = anchor("madry_wrn")
    text = render("corrected.md.j2", profile=profile, blocks=blocks, measured=_measured_section(profile, found),
                  curves=shown, steps=" or ".join(map(str, steps)) or NOT_COMPUTED,
                  madry={"clean": f"{100 * madry.clean:.1f} %", "pgd": f"{100 * madry.pgd:.1f} %"})
    return text.rstrip("\n") + "\n"


def _measured_section(profile: str, found: dict) -> str:
    """The measurement columns' section: :func:`repro.study.verdicts.measurement_rows`, formatted and rendered."""
    blocks = []
    for b in verdicts.measurement_rows(profile, found):
        rows = [{"metric": _label(r["metric"]), "ours": _fmt(r["metric"], r["ours"]),
                 "theirs": _fmt(r["metric"], r["theirs"]),
                 "diff": _fmt(r["metric"], None if None in (r["ours"], r["theirs"]) else r["ours"] - r["theirs"]),
                 "low": _fmt(r["metric"], r["low"]), "high": _fmt(r["metric"], r["high"]),
                 "allowance": _fmt(r["metric"], r["allowance"]), "within": r["within"]} for r in b["rows"]]
        blocks.append({**b, "rows": rows, "what": phrase("varies", kind=b["varies"]),
                       "measures_title": COLUMNS[b["measures"]].title})
    return render("measured.md.j2", blocks=blocks)


# Published numbers the hand-written chapters quote: substitution name → (the column, found by what it runs, source,
# metric), read from the published CSVs so that prose cannot drift from them.
_CW2 = {"attack": "cw2", "table": "1"}
_PAT = {"defence": "pat", "model": "resnet20", "table": "2"}
PUBLISHED_SUBS = {
    "p_cw2_ass_followup": (_CW2, "follow-up", "ASS"),
    "p_cw2_ass_deepsec": (_CW2, "deepsec", "ASS"),
    "p_pat_acc_raw_followup": (_PAT, "follow-up", "ACC_raw"),
    "p_pat_acc_raw_deepsec": (_PAT, "deepsec", "ACC_raw"),
}


def _published_subs() -> dict[str, str]:
    out = {}
    for name, (criteria, source, metric) in PUBLISHED_SUBS.items():
        col = column_running("paper", **criteria)
        entry = published_value(col.table, col.compare_with, source, metric)
        out[name] = f"{entry.printed:g}{' %' if entry.unit == '%' else ''}"
    return out


def _methods_subs(profile: str, found: dict) -> dict[str, str]:
    """Substitutions of the Methods chapter's training section, generated from the results and the recipes."""
    prof = get_profile(profile)
    times = []
    for col in columns_running(profile, defence="nat", replicates=True):
        model = found[col.id].provenance.get("models", {}).get("defended", {}) if col.id in found else {}
        times += [h["epoch_time_s"] for h in model.get("history") or [] if h.get("epoch_time_s")]
    nat = phrase("nat_epoch_time", n=len(times), low=f"{min(times, default=0):.0f}", high=f"{max(times, default=0):.0f}")
    final = learning_rate_after(RECIPES[DEEPSEC_RECIPE["cifar10"]])
    arms = [a.label for a in prof.defence.ablation if a.dataset == "cifar10"]
    nat_cols = columns_running(profile, defence="nat", replicates=True)
    epochs, full = prof.defence.for_dataset("mnist").epochs, RECIPES[DEEPSEC_RECIPE["mnist"]].epochs
    seeds = sorted(c.parameters["seed"] for c in nat_cols)
    pat = prof.defence.for_dataset("cifar10")
    return {"m_nat_epoch_time": nat, "m_deepsec_cifar_final_lr": f"{final:.1g}",
            "m_pat_recipe": phrase("pat_recipe", epochs=pat.epochs, jpeg=pat.jpeg_fill,
                                   images=f"the first {pat.subset:,}" if pat.subset else "all available",
                                   ramp=pat.defence_params.get("eps_ramp")),
            "m_ablation_arms": phrase("ablation_arms", arms=arms), "m_nat_budget": phrase("nat_budget", epochs=epochs,
                                                                                         full=full),
            "m_nat_seeds": phrase("seeds", seeds=seeds)}


def _verdict_subs(profile: str, found: dict) -> dict[str, str]:
    """Substitutions of the Methods chapter's verdict section, generated from the results."""
    ev = verdicts.raw_accuracy_evidence("cifar10", get_profile(profile), found)
    if ev is None:
        return {"v_released_cifar10": phrase("released_cifar10_unmeasured")}
    vs_paper = verdict(low=ev["low"], high=ev["high"], published=ev["deepsec"], metric="ACC_raw")
    return {"v_released_cifar10": phrase(
        "released_cifar10", matches_followup=ev["matches_followup"], matches_paper=vs_paper == Verdict.CONSISTENT,
        **{k: _fmt("ACC_raw", ev[k]) for k in ("followup", "ours", "low", "high", "deepsec")})}


def _allowance_evidence(profile: str, found: dict) -> str:
    """:func:`repro.study.verdicts.allowance_evidence`, formatted and rendered."""
    def mark(e: dict) -> str:
        return "✓" if e["within"] else "✗"

    rows, uncovered = [], []
    for r in verdicts.allowance_evidence(profile, found):
        m = r["metric"]
        seeds = "; ".join(f"{e['column']}: {_fmt(m, e['range'])} (±{_fmt(m, e['allowance'])}) {mark(e)}"
                          for e in r["seed_spread"]) or NOT_COMPUTED
        def paren(v):  # "−(−5.72)", not "− -5.72"
            return f"({_fmt(m, v)})" if v < 0 else _fmt(m, v)

        retrain = "; ".join(f"{e['column']}: {_fmt(m, e['followup'])} − {paren(e['deepsec'])} = "
                            f"{_fmt(m, e['shift'])} (±{_fmt(m, e['allowance'])}) {mark(e)}" for e in r["retrain"]) or NOT_COMPUTED
        rows.append({"metric": _label(m), "seeds": seeds, "retrain": retrain})
        if not r["covers_seeds"]:
            uncovered.append(_label(m))
    return render("allowance_evidence.md.j2", rows=rows, uncovered=uncovered)


def _allowances_page(profile: str | None = None, found: dict | None = None) -> str:
    rows = []
    for metric, allowance in ALLOWANCES.items():
        unit = PRINTED_UNIT.get(metric)
        scale = 100 if unit == "%" else 1
        parts = [f"{allowance.abs * scale:g}{' pp' if unit == '%' else ''}"] if allowance.abs else []
        if allowance.rel:
            parts.append(f"{allowance.rel * 100:g} % of the published value")
        rows.append([_label(metric), " or ".join(parts) + (" (the larger)" if len(parts) > 1 else ""),
                     allowance.why])
    text = markdown.table(["metric", "allowance on each side of our interval", "why"], rows)
    return text + ("\n" + _allowance_evidence(profile, found) if profile and found else "")


FINDINGS_SUBS = ("f_eps8_n", "f_eps8_saturated", "f_eps8_ass_code", "f_eps8_ass_255", "f_eps8_255_ass_code",
                 "f_eps8_255_ass_255", "f_def_n_mnist", "f_def_n_cifar", "f_shift_n", "f_pat_crr_csr", "f_pat_implied",
                 "f_eps8_cosine", "f_eps8_top2", "f_noise_top", "f_def_flat_mnist", "f_def_flat_cifar",
                 "f_def_flat_clean_mnist", "f_shift_lead", "f_shift_rounded", "f_shift_cosine", "f_shift_split", "f_cw2_zero_class",
                 "f_cw2_zero_flipped", "f_cw2_mr", "f_cw2_mr_deepsec_zero", "f_cw2_n", "f_cw2_ass",
                 "f_shift_mechanism")


# The findings column's headline numbers (repro.study.findings): whether each is a rate (shown in %). A key missing
# here is an error; each is named by the phrase "findings_label".
FINDINGS_IS_RATE = {"eps8_MR": True, "eps8_ALD_Linf": False, "eps8_ASS_code": False, "eps8_ASS_255": False,
                    "eps8_saturated": True, "eps8_255_ASS_code": False, "eps8_255_ASS_255": False,
                    "fgsm_MR_shift": True, "fgsm_MR_no_shift": True, "pgd_MR_shift": True, "pgd_MR_no_shift": True}


def _findings_label(key: str):
    """(label, formatter) of a findings headline number; an unknown key is an error, never a code name shown."""
    label = phrase("findings_label", key=key) if key in FINDINGS_IS_RATE else ""
    if not label:
        raise KeyError(f"the findings result has a headline number {key!r} that the report cannot name; add it to "
                       "repro.report.pages.FINDINGS_IS_RATE and to the phrase findings_label in "
                       "repro/report/templates/phrases.md.j2")
    return label, ((lambda v: f"{100 * v:.1f} %") if FINDINGS_IS_RATE[key] else (lambda v: f"{v:.4f}"))


def _findings_interval(key: str, result: results_mod.Result) -> str:
    """" [low, high]" of a findings headline rate of one seed's result, in percent: an exact interval for a success
    rate over the candidates, the images' bootstrap interval for the share of saturated pixels; "" otherwise."""
    from .findings import interval_text, rate_interval

    ev, value = result.extra, result.metrics[key]
    if key == "eps8_saturated":
        return interval_text(ev["eps8"]["eps8"].get("saturated_interval"))
    if key.endswith("_MR") or "_MR_" in key:
        return interval_text(rate_interval(value, ev["eps8"]["n"] if key.startswith("eps8") else ev["logit_shift"]["n"]))
    return ""


def _findings_pages(gen: Path, result: results_mod.Result | None, subs: dict, found: dict) -> None:
    from . import findings as findings_report

    subs.update({key: NOT_COMPUTED for key in FINDINGS_SUBS})  # every number the chapter quotes has a value

    # Where the follow-up's "ε = 8" examples land on the wide ResNet, beside the same attack with ε in /255.
    profile = next(iter(found.values())).profile if found else "paper"
    wide = {col.title: found[col.id].extra.get("by_class")
            for col in columns_running(profile, attack="pgd", model="resnet20_wide")
            if col.id in found and found[col.id].extra.get("by_class")}
    if wide:
        table = findings_report.class_table({f"{title}: adversarial class": w["adversarial_class_counts"]
                                      for title, w in wide.items()},
                                     per_true={f"{title}: MR of true class": (w["successes_per_true_class"],
                                                                              w["n_per_true_class"])
                                               for title, w in wide.items()})
        (gen / "findings_eps8_wide_classes.md").write_text(markdown.table(table[0], table[1:]), encoding="utf-8")
    else:
        (gen / "findings_eps8_wide_classes.md").write_text(phrase("not_computed") + "\n", encoding="utf-8")
    main = column_running(profile, table="findings")
    seeds = [] if main is None else [found[c.id] for c in (main, *replicates(main.id, profile)) if c.id in found]
    if len(seeds) > 1:
        rows = []
        for key in seeds[0].metrics:
            values = [verdicts.finite(r.metrics.get(key)) for r in seeds]
            if all(v is not None for v in values):
                label, show = _findings_label(key)
                mean, std = verdicts.mean_std(values)
                rows.append([label, *(show(v) + _findings_interval(key, r) for v, r in zip(values, seeds)),
                             f"{show(mean)} ± {show(std)}"])
        text = markdown.table(["headline number", *(f"seed {r.parameters.get('seed')}" for r in seeds), "mean ± std"],
                         rows)
    else:
        text = phrase("one_seed_only") + "\n"
    (gen / "findings_seeds.md").write_text(text, encoding="utf-8")
    cw2_col = column_running(profile, **_CW2)
    cw2 = None if cw2_col is None else found.get(cw2_col.id)
    zero = (cw2.extra.get("by_class") or {}).get("deepsec_zero_image") if cw2 is not None else None
    if zero:
        subs.update({"f_cw2_zero_class": str(zero["class"]),
                     "f_cw2_zero_flipped": str(zero["failures_with_that_target"]),
                     "f_cw2_mr": f"{100 * cw2.metrics['MR']:.1f} %",
                     "f_cw2_mr_deepsec_zero": f"{100 * zero['MR_counted_as_deepsec']:.1f} %",
                     "f_cw2_n": str(cw2.parameters.get("n_samples")),
                     "f_cw2_ass": _fmt_interval("ASS", next(r for r in comparison_rows(cw2_col, cw2)
                                                            if r["metric"] == "ASS"))})
    names = ("eps8", "eps8_classes", "norms", "definitions", "shift", "pat")
    if result is None:
        for name in names:
            (gen / f"findings_{name}.md").write_text(phrase("not_computed") + "\n", encoding="utf-8")
        return
    tables = findings_report.evidence_tables(result.extra)
    for name in names:
        (gen / f"findings_{name}.md").write_text(markdown.table(tables[name][0], tables[name][1:]), encoding="utf-8")
    ev = result.extra
    subs.update({
        "f_eps8_n": str(ev["eps8"]["n"]),
        "f_eps8_saturated": f"{100 * ev['eps8']['eps8']['saturated']:.0f} %",
        "f_eps8_ass_code": findings_report.fixed(ev['eps8']['eps8']['ASS_code']),
        "f_eps8_ass_255": findings_report.fixed(ev['eps8']['eps8']['ASS_255']),
        "f_eps8_255_ass_code": findings_report.fixed(ev['eps8']['eps8_255']['ASS_code']),
        "f_eps8_255_ass_255": findings_report.fixed(ev['eps8']['eps8_255']['ASS_255']),
        "f_def_n_mnist": str(ev["definitions"]["mnist"]["n"]),
        "f_def_n_cifar": str(ev["definitions"]["cifar10"]["n"]),
        "f_shift_n": str(ev["logit_shift"]["n"]),
        "f_pat_crr_csr": f"{ev['pat_arithmetic']['crr_minus_csr']:.2f} %",
        "f_pat_implied": f"{ev['pat_arithmetic']['implied_defended']:.2f} %",
        "f_eps8_cosine": findings_report.fixed(ev["eps8"]["eps8"]["centred_cosine"]),
        "f_eps8_top2": _top_two(ev["eps8"]["eps8"]["adversarial_class_counts"]),
        "f_noise_top": _top_two(ev["eps8"].get("binary_noise_class_counts", [])),
        "f_def_flat_mnist": phrase("k_of_n", k=ev["definitions"]["mnist"]["images_with_flat_perturbed_element"],
                                   n=ev["definitions"]["mnist"]["n_successful"]),
        "f_def_flat_cifar": phrase("k_of_n", k=ev["definitions"]["cifar10"]["images_with_flat_perturbed_element"],
                                   n=ev["definitions"]["cifar10"]["n_successful"]),
        "f_def_flat_clean_mnist": phrase("k_of_n", k=ev["definitions"]["mnist"]["clean_images_with_flat_neighbourhood"],
                                         n=ev["definitions"]["mnist"]["n"]),
        **_shift_subs(ev["logit_shift"]),
    })


def _shift_subs(shift: dict) -> dict[str, str]:
    """The findings chapter's words on the logit shift's float32 mechanism, from the findings column's
    ``logit_shift`` evidence (:func:`repro.study.findings.logit_shift_evidence`) and the study's judgement of it
    (:func:`repro.study.findings.shift_explained`)."""
    from ..study import findings
    from . import findings as findings_report

    f32 = shift["float32"]
    cos, fgsm = f32["cosine_to_float64"], f32["successes"]["fgsm"]
    judged = findings.shift_explained(shift)

    cosines = {f"{key}_{group}": findings_report.fixed(cos[key][group], 2)
               for key in ("shift", "no_shift") for group in ("rounded", "other")}
    return {
        "f_shift_lead": phrase("shift_lead", explained=judged["explained"]),
        "f_shift_rounded": phrase("shift_rounded", rounded=f32["rounded"], n=shift["n"]),
        "f_shift_cosine": phrase("shift_cosine", c=cosines, other=f32["other"]),
        "f_shift_split": phrase("shift_split", fgsm=fgsm, rounded=f32["rounded"], other=f32["other"]),
        "f_shift_mechanism": phrase("shift_mechanism", explained=judged["explained"], gap=judged["gap"],
                                    gap_rounded=judged["gap_rounded"],
                                    gap_other=f"{judged['gap'] - judged['gap_rounded']:+d}"),
    }


def _top_two(counts: list[int]) -> str:
    """The two most frequent classes of a histogram, as "k of n in class c (name) and …"."""
    from ..data import CLASS_NAMES

    if not counts:
        return NOT_COMPUTED
    top = sorted(range(len(counts)), key=lambda c: -counts[c])[:2]
    return phrase("top_two", total=sum(counts),
                  classes=[{"count": counts[c], "index": c, "name": CLASS_NAMES["cifar10"][c]} for c in top])


def _appendix_pages(gen: Path, profile: str, cols, found) -> None:
    rows, versions = [], {}
    for col in cols:
        r = found.get(col.id)
        if r is None:
            rows.append([col.id, col.notebook, NOT_COMPUTED, NOT_COMPUTED, NOT_COMPUTED, NOT_COMPUTED])
            continue
        prov = r.provenance
        dev = prov.get("device", {})
        git = prov.get("git", {})
        commit = (git.get("commit") or "none")[:10] + (" (dirty)" if git.get("dirty") else "")
        train_s, cached = training_seconds(r)
        rows.append([f"[{col.id}](generated/columns/{col.id}.ipynb)", col.notebook, f"{dev.get('name', '?')} "
                     f"({dev.get('device', '?')}, {dev.get('threads', '–')} threads)",
                     f"{prov.get('wall_time_s', float('nan')):.0f}",
                     f"{train_s:.0f}" + (" (cache)" if cached else ""), commit])
        versions = prov.get("versions", versions)
    notebook_total = sum(found[c.id].provenance.get("wall_time_s", 0) for c in cols if c.id in found)
    # Training served from the cache is not in the notebook's wall time; count each trained model once.
    trained = {}
    for r in found.values():
        for m in r.provenance.get("models", {}).values():
            if "train_time_s" in m:
                trained[m.get("key")] = (m["train_time_s"], m.get("from_cache", False))
    cached_total = sum(t for t, cached in trained.values() if cached)
    total = notebook_total + cached_total
    text = markdown.table(["column", "notebook", "device", "notebook wall time (s)", "training (s)", "commit"], rows)
    text += "\n" + phrase("runs_total", total=f"{total:.0f}", minutes=f"{total / 60:.1f}", profile=profile,
                         notebooks=f"{notebook_total:.0f}", cached=f"{cached_total:.0f}") + "\n"
    if versions:
        text += "\n" + markdown.table(["software", "version"], [[k, f"`{v}`"] for k, v in versions.items()
                                                         if k != "executable"])
    (gen / "appendix_runs.md").write_text(text, encoding="utf-8")

    data_rows = {}
    for r in found.values():
        for name, prov in r.provenance.get("data", {}).get("datasets", {}).items():
            data_rows[name] = [name, "official" if prov.get("official") else "**partial copy**",
                               f"{prov.get('train', 0):,} / {prov.get('full_train', 0):,}",
                               f"{prov.get('test', 0):,} / {prov.get('full_test', 0):,}"]
    models = {}
    for r in found.values():
        for role, info in r.provenance.get("models", {}).items():
            if info.get("source") == ModelSource.DEEPSEC.value:
                models[info.get("sha256")] = [f"DeepSec's released {role} model", f"`{info.get('sha256', '')}`"]
    text = markdown.table(["dataset", "copy", "training images (found / official)", "test images (found / official)"],
                     list(data_rows.values()))
    if models:
        text += "\n" + markdown.table(["model", "sha256"], list(models.values()))
    (gen / "appendix_data.md").write_text(text, encoding="utf-8")
    (gen / "appendix_gpu.md").write_text(gpu_estimate(found), encoding="utf-8")
    (gen / "appendix_optimality.md").write_text(optimality_section(gen / "figures"), encoding="utf-8")


GPU_CHECK_FILES = ("gpu_cuda.json", "gpu_cpu.json")  # benchmarks/results/, written by benchmarks/gpu.py


def gpu_estimate(found: dict) -> str:
    """The paper profile's wall time, from the committed output of ``benchmarks/gpu.py``: its measured throughput of
    each unit of work on each model times the work :func:`repro.study.workload.workload` counts. A CUDA measurement
    is preferred; without one, the CPU measurement is shown and the page says so."""
    folder = results_mod.repo_root() / "benchmarks" / "results"
    path = next((folder / name for name in GPU_CHECK_FILES if (folder / name).is_file()), None)
    if path is None:
        return render("appendix_gpu.md.j2", check=None, file=None, columns="", throughput="")
    check = json.loads(path.read_text(encoding="utf-8"))
    by_column: dict[str, float] = {}
    for row in check["estimate"]:
        by_column[row["column"]] = by_column.get(row["column"], 0.0) + (row["seconds"] or 0.0)
    rows = [[f"`{column}`", f"{seconds / 3600:,.1f}"] for column, seconds in by_column.items()]
    rows.append(["**total**", f"**{check['total_seconds'] / 3600:,.1f}**"])
    units = sorted({u for t in check["throughput"].values() for u in t})
    throughput = [[f"`{model}`", *(f"{t[u]:,.0f}" if u in t else NOT_COMPUTED for u in units)]
                  for model, t in check["throughput"].items()]
    return render("appendix_gpu.md.j2", check=check, file=path.name,
                  columns=markdown.table(["column", f"estimated hours ({check['profile']} profile)"], rows),
                  throughput=markdown.table(["model", *units], throughput))


OPTIMALITY_FILES = ("optimality_cuda.json", "optimality_cpu.json")  # benchmarks/results/, benchmarks/optimality.py
# Which of the benchmark's attacks is the configuration a table column runs (the columns: phrase "optimality_used_by").
OURS_IN_TABLES = ("ours CW2 (DeepSec search)", "ours PGD")
REFERENCE_MARK = "(reference)"
# The bar: ours within this many optimality points of the best implementation of the same attack.
OPTIMALITY_SLACK = 0.02


def optimality_section(figures_dir: Path) -> str:
    """The attack-strength appendix, from the committed output of ``benchmarks/optimality.py``: per model and norm,
    each attack's optimality, success, counted passes and time, a figure of the robust-accuracy curves, and for
    each of our attacks how far it is from the best implementation of the same attack."""
    folder = results_mod.repo_root() / "benchmarks" / "results"
    path = next((folder / name for name in OPTIMALITY_FILES if (folder / name).is_file()), None)
    if path is None:
        return render("appendix_optimality.md.j2", check=None, file=None, settings=[], slack=None, verdicts="")
    from . import figures

    check = json.loads(path.read_text(encoding="utf-8"))
    settings, verdicts = [], []
    for key, setting in check["settings"].items():
        rows = []
        for name, a in setting["attacks"].items():
            finite = [d for d in a["distances"] if d != float("inf")]
            median = statistics.median(finite) if finite else float("nan")
            rows.append([name, f"{a['optimality']:.3f}", f"{100 * a['success']:.1f} %",
                         f"{median * (255 if setting['norm'] == 'linf' else 1):.3f}",
                         f"{a['forwards_per_image']:.0f} / {a['backwards_per_image']:.0f}", f"{a['wall_s']:.1f}",
                         f"{a['ms_per_forward']:.2f}"])
        unit = "× 255" if setting["norm"] == "linf" else ""
        how = (f"{setting['search']} search steps × {setting['iterations']} iterations" if setting["targeted"] else
               f"{setting['probes']} probes over ε ≤ {255 * setting['eps_max']:.0f}/255 × {setting['steps']} steps")
        settings.append({"dataset": setting["dataset"], "norm": setting["norm"].upper(), "n": setting["n"],
                         "how": how, "budget": setting["budget"], "d_max": f"{setting['d_max']:.4f}",
                         "table": markdown.table(["attack", "optimality", "success", f"median distance {unit}".strip(),
                                                  "passes per image", "wall time (s)", "ms per forward"], rows)})
        library = {n: a["optimality"] for n, a in setting["attacks"].items()
                   if not n.startswith("ours") and REFERENCE_MARK not in n}
        for ours in OURS_IN_TABLES:
            where = phrase("optimality_used_by", attack=ours)
            if ours not in setting["attacks"] or not library:
                continue
            best_name = max(library, key=library.get)
            gap = setting["attacks"][ours]["optimality"] - library[best_name]
            verdicts.append([f"{setting['dataset']} {setting['norm'].upper()}", ours, where,
                             f"{setting['attacks'][ours]['optimality']:.3f}", f"{best_name} ({library[best_name]:.3f})",
                             f"{100 * gap:+.1f}", "yes" if gap >= -OPTIMALITY_SLACK else "**no**"])
    fig = figures.optimality_curves(check["settings"])
    figures.save(fig, figures_dir / "optimality.png")
    # The figure's path is from the book's source root (where _config.yml is): the section is included by
    # book/appendix.md, and an include does not rebase a relative figure path to the included file's folder.
    return render("appendix_optimality.md.j2", check=check, file=path.name, settings=settings,
                  slack=f"{100 * OPTIMALITY_SLACK:.0f}",
                  verdicts=markdown.table(["model, norm", "ours", "used by", "optimality",
                                           "best library implementation", "difference (points)", "as strong"],
                                          verdicts))


KEY_METRIC = {"attack": "MR", "defence": "ACC_defended"}
GLANCE_START, GLANCE_END = "<!-- results at a glance: start -->", "<!-- results at a glance: end -->"


def stale_columns(profile: str, found: dict) -> list[str]:
    """Ids of the profile's columns whose result in ``found`` carries another fingerprint than the current plan's:
    computed with other code or parameters, shown as they are until the pipeline recomputes them."""
    return [col.id for col in columns_for(profile)
            if col.id in found and found[col.id].fingerprint != fingerprint(col, profile)]


def _stale_warning(ids: list[str]) -> str:
    return phrase("stale_warning", ids=ids) + "\n\n" if ids else ""


def glance(profile: str, found: dict) -> str:
    """Results at a glance, generated from the results: one row per table column with its verdict counts against
    each reference, its key number with the interval, and why any cell is inconsistent or not comparable; then the
    data it ran on."""
    rows = []
    for cid, comp in verdicts.table_cells(profile, found).items():
        col = COLUMNS[cid]
        key = KEY_METRIC["attack" if col.attack else "defence"]
        r = next(r for r in comp if r["metric"] == key)
        why = []
        for k, label in (("followup", "the follow-up"), ("deepsec", "DeepSec")):
            bad = [METRIC_LABELS[x["metric"]] for x in comp if x[f"verdict_{k}"] == Verdict.INCONSISTENT]
            if bad:
                why.append(phrase("inconsistent_with", reference=label, metrics=bad))
        # a reason shared by both references is said once
        reasons = {k: _why_short(comp, k) for k in ("followup", "deepsec")}
        both = [r for r in reasons["followup"] if r in reasons["deepsec"]]
        if both:
            why.append(phrase("not_comparable_either", reasons=both))
        for k, label in (("followup", "the follow-up"), ("deepsec", "DeepSec")):
            only = [r for r in reasons[k] if r not in both]
            if only:
                why.append(phrase("not_comparable_with", reference=label, also=bool(both), reasons=only))
        rows.append([col.title, _counts_short(verdict_counts(comp, "followup")),
                     _counts_short(verdict_counts(comp, "deepsec")),
                     f"{_label(key)} {_fmt_interval(key, r)}", _fmt(key, r["followup"]), _fmt(key, r["deepsec"]),
                     "; ".join(why) or NOT_COMPUTED])
    columns = markdown.table(["column", "vs follow-up (✓ / ✗ / n/c)", "vs DeepSec (✓ / ✗ / n/c)",
                              "our key number [95 % CI]", "follow-up", "DeepSec", "why"], rows)

    def rate(rec: dict) -> str:
        return f"{100 * rec['rate']:.1f} [{100 * rec['low']:.1f}, {100 * rec['high']:.1f}]"

    attacked = [[rec["label"], rate(rec["clean"]), rate(rec["robust"]), f"{rec['robust']['n']:,}",
                 f"ε = {eps_text(sec['threat_model']['eps'])}", masking_summary(sec.get("masking", {}).get(mid))]
                for col in columns_for(profile) if col.table == "security" and col.id in found
                for sec in [found[col.id].extra["security"]]
                for mid, rec in study_models(sec).items() if rec["role"] == "defended"]
    data = {}
    for r in found.values():
        data.update(r.provenance.get("data", {}).get("datasets", {}))
    partial = [{"name": name, "train": f"{prov.get('train', 0):,}", "full_train": f"{prov.get('full_train', 0):,}",
                "test": f"{prov.get('test', 0):,}", "full_test": f"{prov.get('full_test', 0):,}"}
               for name, prov in sorted(data.items()) if not prov.get("official", True)]
    decisions = scorecard(profile, found)
    tables = verdicts.table_summary(profile, found)
    found_text = render("glance_found.md.j2", profile=profile, tables=tables,
                        cells={key: sum(t[key] for t in tables.values())
                               for key in ("total", "consistent", "inconsistent", "not_comparable")},
                        eps8=next((d for d in decisions if d.claim == "eps8_is_madry"), None),
                        claims={s.value: [d.claim for d in decisions if d.status == s] for s in Status},
                        robust=_pat_robustness(profile, found),
                        widths={"tested": sorted({get_profile(profile).wide_width, *get_profile(profile).width_ladder}),
                                "paper": get_profile("paper").wide_width})
    return render("glance.md.j2", summary=found_text, profile=profile,
                  claims=render("claims.md.j2", decisions=decisions),
                  columns=columns, partial=partial, stale=stale_columns(profile, found),
                  attacked=markdown.table(["defended model", "clean", "robust (worst case)", "n", "threat model",
                                           "gradient-masking checks"], attacked) if attacked else "")


# The reference the landing page sets the CIFAR-10 defended models' worst case beside (repro/study/published/anchors.csv).
ROBUSTNESS_ANCHOR = "robustbench_jang_resnet20"


def _pat_robustness(profile: str, found: dict) -> dict | None:
    """The lowest and highest white-box worst-case robust accuracy of the CIFAR-10 defended models of the security
    columns (the study's models), the highest of the training ablation's arms where it is higher still (``arm``,
    else ``None``), their n, and whether every upper bound lies below :data:`ROBUSTNESS_ANCHOR`'s AutoAttack
    accuracy (``None`` without a CIFAR-10 security result)."""
    from ..study.plan import anchor

    evaluations = [found[col.id].extra["security"] for col in columns_for(profile)
                   if col.table == "security" and col.id in found]
    every = [(mid in study_models(sec), {"label": rec["label"], **rec["robust"]}) for sec in evaluations
             if sec.get("dataset") == "cifar10" for mid, rec in sec["models"].items() if rec["role"] == "defended"]
    models = [m for own, m in every if own]
    if not models:
        return None
    ref = anchor(ROBUSTNESS_ANCHOR)
    highest = max(models, key=lambda m: m["rate"])
    arm = max((m for own, m in every if not own), key=lambda m: m["rate"], default=None)
    ns = sorted({m["n"] for _, m in every})
    return {"lowest": min(models, key=lambda m: m["rate"]), "highest": highest,
            "arm": arm if arm is not None and arm["rate"] > highest["rate"] else None,
            "n": " / ".join(f"{n:,}" for n in ns), "anchor": {"model": ref.model, "autoattack": ref.autoattack},
            "below": all(m["high"] < ref.autoattack for _, m in every)}


def notebook_figure(notebook: Path, call: str) -> bytes | None:
    """The PNG a code cell of an executed notebook displayed, the first cell whose source contains ``call``
    (``None`` when there is none): the report shows the pipeline's own figure, never a redrawn one."""
    import base64

    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        if cell["cell_type"] == "code" and call in "".join(cell["source"]):
            for out in cell.get("outputs", []):
                png = out.get("data", {}).get("image/png")
                if png:
                    return base64.b64decode("".join(png) if isinstance(png, list) else png)
    return None


def eps8_picture(profile: str, found: dict, notebooks: Path, figures_dir: Path) -> str:
    """The landing page's picture of the literal "ε = 8": the adversarial-image grid of the literal ε = 8 PGD
    column's executed notebook, with its mean L∞ distance; empty without that column's result or figure."""
    col = next((c for c in columns_running(profile, attack="pgd", literal_eps=True, table="1") if c.id in found),
               None)
    png = None if col is None else notebook_figure(notebooks / f"{col.id}.ipynb", "figures.adversarial_grid(")
    if png is None:
        return ""
    (figures_dir / "eps8_picture.png").write_bytes(png)
    result = found[col.id]
    counts = (result.extra.get("by_class") or {}).get("adversarial_class_counts") or []
    top = None
    if counts and sum(counts):
        k = max(range(len(counts)), key=counts.__getitem__)
        top = {"name": data_mod.CLASS_NAMES[result.parameters.get("dataset", "cifar10")][k],
               "share": f"{100 * counts[k] / sum(counts):.0f}", "n": f"{sum(counts):,}"}
    return render("eps8_picture.md.j2", column=col.id, title=col.title, eps=result.parameters.get("eps"),
                  linf=_fmt_interval("ALD_Linf", _point(result, "ALD_Linf")),
                  mr=_fmt_interval("MR", _point(result, "MR")), top=top)


def _counts_short(counts: dict) -> str:
    if not any(counts.values()):
        return NOT_COMPUTED
    return " / ".join(str(counts[v]) for v in (Verdict.CONSISTENT, Verdict.INCONSISTENT, Verdict.NOT_COMPARABLE))


def load_found(profile: str, results_dir: str = "results") -> dict[str, results_mod.Result]:
    """The results of the profile's columns under ``results_dir`` (those that exist), by column id."""
    found = {}
    for col in columns_for(profile):
        path = results_mod.result_path(results_dir, profile, col.id)
        if path.exists():
            found[col.id] = results_mod.load(path)
    return found


def readme_with_glance(readme: str, profile: str, found: dict) -> str:
    """``readme`` with the text between the glance markers replaced by :func:`glance`."""
    if GLANCE_START not in readme or GLANCE_END not in readme:
        raise ValueError(f"README has no {GLANCE_START!r} … {GLANCE_END!r} block to fill")
    head, rest = readme.split(GLANCE_START, 1)
    _, tail = rest.split(GLANCE_END, 1)
    return f"{head}{GLANCE_START}\n{glance(profile, found)}{GLANCE_END}{tail}"


def _notebooks_page(profile: str, cols) -> str:
    rows = [[f"[{col.title}](columns/{col.id}.ipynb)", f"`{col.id}`", f"`notebooks/{col.notebook}`"] for col in cols]
    return render("notebooks.md.j2", profile=profile, table=markdown.table(["column", "id", "notebook"], rows))


def _copy_titled(src: Path, dest: Path, col: Column) -> None:
    """Copy an executed notebook for the book with its first heading replaced by the column's title, so that the
    sidebar tells the columns of one notebook apart (the results folder keeps the execution untouched)."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("# "):
            first, _, rest = cell.source.partition("\n")
            cell.source = f"# {col.title}\n\n{phrase('executed_column_note', id=col.id, notebook=col.notebook)}\n{rest}"
            break
    nbformat.write(nb, dest)


# ---------------------------------------------------------------------------------------------------- generate
def generate(profile: str, *, results_dir: str = "results", stage: Path) -> list[str]:
    """Write every generated page into ``stage/book/generated/`` and the substitutions into ``stage/_config.yml``.

    Returns the ids of the profile's columns that have no result (the caller decides whether that is an error).
    """
    get_profile(profile)
    gen = stage / "book" / "generated"
    figures_dir = gen / "figures"
    (gen / "columns").mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    cols = columns_for(profile)
    found, missing = {}, []
    for col in cols:
        path = results_mod.result_path(results_dir, profile, col.id)
        nb = results_mod.executed_notebook_path(results_dir, profile, col.id)
        if not path.exists() or not nb.exists():
            missing.append(col.id)
            continue
        found[col.id] = results_mod.load(path)
        _copy_titled(nb, gen / "columns" / f"{col.id}.ipynb", col)
    stale = stale_columns(profile, found)
    fresh = {cid: cid not in stale for cid in found}
    if missing:
        return missing

    for table in ("1", "2"):
        tcols = [c for c in cols if c.table == table and c.replicate_of is None]
        (gen / f"table{table}.md").write_text(_table_page(table, tcols, found, fresh, profile, figures_dir),
                                              encoding="utf-8")
    (gen / "corrected.md").write_text(_corrected_page(profile, found, fresh, figures_dir), encoding="utf-8")
    (gen / "allowances.md").write_text(_allowances_page(profile, found), encoding="utf-8")
    (gen / "glance.md").write_text(glance(profile, found), encoding="utf-8")
    (gen / "eps8_picture.md").write_text(eps8_picture(profile, found, gen / "columns", figures_dir), encoding="utf-8")
    (gen / "notebooks.md").write_text(_notebooks_page(profile, cols), encoding="utf-8")
    from .security import security_page  # the security columns' chapter

    from .training import training_page  # the training columns' chapter

    for chapter, page in (("security", security_page), ("training", training_page)):
        heading, _, body = page(found, profile, figures_dir).partition("\n")
        warn = _stale_warning([c.id for c in cols if c.table == chapter and c.id in stale])
        (gen / f"{chapter}.md").write_text(f"{heading}\n\n{warn}{body}", encoding="utf-8")

    prof = get_profile(profile)
    subs = {"profile": profile, "profile_description": prof.description,
            "profile_warning": phrase("profile_warning", profile=profile)}
    subs.update(_published_subs())
    subs.update(_verdict_subs(profile, found))
    subs.update(_methods_subs(profile, found))
    findings_col = column_running(profile, table="findings")
    _findings_pages(gen, None if findings_col is None else found.get(findings_col.id), subs, found)
    _appendix_pages(gen, profile, cols, found)
    config_path = stage / "_config.yml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config.setdefault("parse", {})["myst_substitutions"] = subs
    config["title"] = f"{config.get('title', '')} ({profile} profile)"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return []
