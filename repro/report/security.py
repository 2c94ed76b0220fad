"""The security evaluation's chapter, tables and figures, generated from the security columns' results.

:func:`security_page` writes the chapter (robust accuracy with intervals, what AutoAttack ran and cost, DeepSec's
transfer setting against white-box attacks, the gradient-masking checks and their verdicts, the published anchors,
and the follow-up's clean-versus-robust comparison); the notebook shows :func:`robust_table`,
:func:`transfer_figure` and :func:`masking_table`. Every number comes from the results
(:mod:`repro.study.security` computed them); nothing here measures anything.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..metrics import robustness
from ..study import security as sec
from . import markdown
from .markdown import NOT_COMPUTED, eps_text, pct, with_interval
from .figures import DATASET_LABELS
from .templates import phrase, render
from ..study.lookup import column_running
from ..study.plan import COLUMNS, anchor, anchors, published_value
from ..study.profiles import get_profile

ACCURACIES = (("clean", "clean"), ("pgd", "PGD"), ("pgd_deepsec_eps", "PGD at DeepSec's ε"),
              ("autoattack", "AutoAttack"), ("robust", "robust (worst case)"))
TRANSFER_LABELS = {"fgsm": "FGSM", "pgd": "PGD", "cw2": "CW2"}


def security_evaluations(found: dict) -> dict[str, dict]:
    """Column id → its ``extra["security"]``, for the security columns that have a result, in plan order."""
    return {cid: r.extra["security"] for cid, r in found.items()
            if cid in COLUMNS and COLUMNS[cid].table == "security" and "security" in r.extra}


# ----------------------------------------------------------------------------------------- tables (notebooks)
def _accuracies(evaluation: dict) -> list[str]:
    """The accuracies the column measured (PGD at DeepSec's ε only where it differs from the threat model's)."""
    return [key for key, _ in ACCURACIES if any(key in rec for rec in evaluation["models"].values())]


def _robust_rows(evaluation: dict, *, arms: bool | None = None) -> list[list[str]]:
    """The robust table's rows: every model (``arms`` ``None``), the study's own models (``False``) or the
    ablation's arms (``True``)."""
    keys = _accuracies(evaluation)
    study = sec.study_models(evaluation)
    return [[rec["label"], *(with_interval(rec.get(key)) for key in keys), str(rec["clean"]["n"])]
            for rec in sec.summary_rows(evaluation) if arms is None or (rec["id"] not in study) == arms]


def _robust_header(evaluation: dict) -> list[str]:
    threat = evaluation["threat_model"]
    names = {**dict(ACCURACIES), "pgd": f"PGD ε = {eps_text(threat['eps'])}",
             "autoattack": f"AutoAttack ε = {eps_text(threat['eps'])}"}
    if evaluation.get("deepsec_eps"):
        names["pgd_deepsec_eps"] = f"PGD ε = {eps_text(evaluation['deepsec_eps'])} (DeepSec's)"
    return ["model", *(names[key] for key in _accuracies(evaluation)), "n"]


def robust_table(evaluation: dict):
    """Accuracy of every model (clean, PGD, AutoAttack, worst case) with 95 % intervals and n, as a DataFrame."""
    import pandas as pd

    header = _robust_header(evaluation)
    return pd.DataFrame(_robust_rows(evaluation), columns=header).set_index("model")


def _paired(rec: dict) -> str:
    """McNemar's exact test of the transfer and white-box outcomes on the same images."""
    from ..metrics.uncertainty import mcnemar_exact

    a, b = rec["transfer"].get("correct"), rec["white_box"].get("correct")
    if not isinstance(a, str) or not isinstance(b, str):
        return NOT_COMPUTED
    t = mcnemar_exact(a, b)
    return f"{t['only_a']} / {t['only_b']}, p = {t['p']:.3f}"


def _transfer_rows(evaluation: dict) -> list[list[str]]:
    rows = []
    for mid, entry in evaluation["transfer"].items():
        for name, rec in entry["attacks"].items():
            rows.append([evaluation["models"][mid]["label"], TRANSFER_LABELS.get(name, name),
                         with_interval(rec["transfer"]), with_interval(rec["white_box"]), _paired(rec),
                         str(entry["n"])])
    return rows


def _masking_rows(evaluation: dict) -> list[list[str]]:
    rows = []
    for mid, check in evaluation["masking"].items():
        by_steps = ", ".join(f"{r['steps']}: {pct(r['rate'])}" for r in check["steps"])
        large = check["eps"][-1]
        verdict = check["verdict"]
        why = "; ".join(phrase("masking_reason", key=key) for key in verdict["reasons"]) or NOT_COMPUTED
        rows.append([evaluation["models"][mid]["label"], with_interval(check["white_box"]),
                     with_interval(check["square"]), by_steps, f"{pct(large['rate'])} at ε = {eps_text(large['eps'])}",
                     verdict["verdict"], why, str(check["white_box"]["n"])])
    return rows


def masking_summary(check: dict | None) -> str:
    """A model's masking verdict in words, with the step accuracies behind a single-step gap (NOT_COMPUTED unchecked)."""
    if not check:
        return NOT_COMPUTED
    verdict = check["verdict"]
    if not verdict["suspected"]:
        return verdict["verdict"]
    reasons = []
    for key in verdict["reasons"]:
        text = phrase("masking_reason", key=key)
        if key in ("single_step_gap", "steps_hurt"):
            steps = sorted(check["steps"], key=lambda r: r["steps"])
            text = phrase("masking_steps", reason=text, first_steps=steps[0]["steps"], first_rate=pct(steps[0]["rate"]),
                          last_steps=steps[-1]["steps"], last_rate=pct(steps[-1]["rate"]))
        reasons.append(text)
    return phrase("masking_summary", verdict=verdict["verdict"], reasons=reasons)


MASKING_HEADER = ["model", "white-box gradient attacks (worst case)", "Square (gradient-free)", "accuracy by PGD steps",
                  "accuracy at the largest ε", "verdict", "reasons", "n"]


def masking_table(evaluation: dict):
    """The gradient-masking checks and their verdicts, as a DataFrame."""
    import pandas as pd

    return pd.DataFrame(_masking_rows(evaluation), columns=MASKING_HEADER).set_index("model")


# ----------------------------------------------------------------------------------------------------- figures
def transfer_figure(evaluations: dict | list, *, title: str = ""):
    """One panel per defended model: its accuracy under each attack crafted on the raw model (DeepSec's transfer
    setting) and on the defended model itself (white-box), with 95 % intervals.

    Args:
        evaluations: one column's ``extra["security"]`` or several (a list, or a dict of them).
    """
    if isinstance(evaluations, dict) and "models" in evaluations:
        evaluations = [evaluations]
    evaluations = list(evaluations.values()) if isinstance(evaluations, dict) else list(evaluations)
    panels = [(ev["models"][mid]["label"], entry["attacks"]) for ev in evaluations
              for mid, entry in ev["transfer"].items()]
    cols = min(max(len(panels), 1), 3)
    rows = -(-max(len(panels), 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols + 0.6, 2.7 * rows + 0.5), squeeze=False, sharey=True)
    series = (("transfer", "crafted on the raw model (DeepSec)", "#ff7f0e", -0.2),
              ("white_box", "crafted on the defended model (white-box)", "#1f77b4", 0.2))
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, (label, attacks) in zip(axes.flat, panels):
        ax.set_visible(True)
        names = list(attacks)
        positions = np.arange(len(names))
        for key, _, colour, offset in series:
            values = np.array([100 * attacks[a][key]["rate"] for a in names])
            low = np.array([100 * attacks[a][key]["low"] for a in names])
            high = np.array([100 * attacks[a][key]["high"] for a in names])
            ax.bar(positions + offset, values, width=0.4, color=colour,
                   yerr=np.vstack([values - low, high - values]), capsize=2, error_kw={"lw": 0.8})
        ax.set_xticks(positions, [TRANSFER_LABELS.get(a, a) for a in names], fontsize=8)
        ax.set_title(label, fontsize=8)
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour) for _, _, colour, _ in series]
    fig.legend(handles, [text for _, text, _, _ in series], loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title or phrase("transfer_figure_title"), fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def masking_figure(evaluation: dict, *, title: str = ""):
    """Accuracy versus PGD steps and versus ε for every defended model of one column (the masking checks)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7.8, 3.4))
    # The study's models in colour; the ablation's arms as thin grey lines under one legend entry (the masking
    # table names each).
    study = sec.study_models(evaluation)
    arms = [mid for mid in evaluation["masking"] if mid not in study]
    for mid, check in evaluation["masking"].items():
        style = (dict(marker="o", label=evaluation["models"][mid]["label"]) if mid in study else
                 dict(color="0.6", lw=0.8, marker=".", zorder=0,
                      label=phrase("ablation_arms_legend", n=len(arms)) if mid == arms[0] else None))
        ax1.plot([r["steps"] for r in check["steps"]], [100 * r["rate"] for r in check["steps"]], **style)
        ax2.plot([r["eps"] for r in check["eps"]], [100 * r["rate"] for r in check["eps"]], **style)
    steps = [r["steps"] for r in next(iter(evaluation["masking"].values()), {"steps": []})["steps"]]
    for ax, values, labels in ((ax1, steps, [str(v) for v in steps]),
                               (ax2, evaluation["masking_eps"], [eps_text(e) for e in evaluation["masking_eps"]])):
        ax.set_xscale("log")
        ax.set_xticks(values, labels, fontsize=8)
        ax.minorticks_off()
    ax1.set_xlabel(f"PGD steps (ε = {eps_text(evaluation['threat_model']['eps'])})")
    ax2.set_xlabel(f"ε ({evaluation['masking'][next(iter(evaluation['masking']))]['eps_steps']} PGD steps per point)"
                   if evaluation["masking"] else "ε")
    for ax in (ax1, ax2):
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    # Below the panels, where it hides no curve (MNIST's fill the top of the left panel, CIFAR-10's the right one).
    handles, labels = ax2.get_legend_handles_labels()
    rows = -(-len(labels) // 2)
    fig.set_figheight(3.4 + 0.2 * rows)
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title or "gradient-masking checks", fontsize=10)
    fig.tight_layout(rect=(0, (0.06 + 0.2 * rows) / fig.get_figheight(), 1, 1))
    return fig


# -------------------------------------------------------------------------------------------------------- page
def _autoattack_section(evaluations: dict[str, dict], found: dict) -> list[str]:
    rows, checks, without_square = [], [], []
    for cid, ev in evaluations.items():
        device = found[cid].provenance.get("device", {})
        for rec in ev["models"].values():
            aa = rec["autoattack"]
            attacks = ", ".join(aa["attacks"])
            rows.append([rec["label"], aa["version"], attacks, str(aa["target_classes"]), str(aa["iterations"]),
                         f"{aa['seconds_per_image']:.3f}", f"{aa['seconds']:.0f}",
                         f"{device.get('name', '?')} ({device.get('device', '?')}, {device.get('threads', '?')} "
                         "threads)"])
            checks += [f"{rec['label']}: {message}" for message in aa.get("checks", [])]
            if "square" not in aa["attacks"]:
                without_square.append(rec["label"])
    table = markdown.table(["model", "version", "attacks", "APGD-T target classes", "APGD iterations",
                            "seconds per image", "seconds", "device"], rows)
    text = render("security_autoattack.md.j2", table=table, checks=checks, without_square=without_square,
                  models=len(rows))
    return [text.rstrip("\n") + "\n"]


def _transfer_section(evaluations: dict[str, dict], figures_dir: Path) -> list[str]:
    from . import figures

    rows = []
    for ev in evaluations.values():
        rows += _transfer_rows(ev)
    budgets = sorted({(e["attacks"]["cw2"]["params"]["binary_search_steps"],
                       e["attacks"]["cw2"]["params"]["max_iterations"])
                      for ev in evaluations.values() for e in ev["transfer"].values() if "cw2" in e["attacks"]})
    table = markdown.table(["defended model", "attack", "crafted on the raw model (DeepSec)",
                            "crafted on the defended model (white-box)", "paired: only transfer / only "
                            "white-box correct", "n"], rows)
    fig = transfer_figure(evaluations)
    figures.save(fig, figures_dir / "security_transfer.png")
    return [render("security_transfer.md.j2", table=table, figure="security_transfer.png",
                   budgets=", ".join(f"{s} × {i:,}" for s, i in budgets) or NOT_COMPUTED)]


def _masking_section(evaluations: dict[str, dict], figures_dir: Path) -> list[str]:
    from . import figures

    rows, shown = [], []
    for ev in evaluations.values():
        rows += _masking_rows(ev)
    for i, (cid, ev) in enumerate(evaluations.items()):
        if not ev["masking"]:
            continue
        fig = masking_figure(ev, title=f"{COLUMNS[cid].title}: gradient-masking checks")
        name = f"security_masking_{cid}.png"
        figures.save(fig, figures_dir / name)
        first = next(iter(ev["masking"].values()))
        shown.append({"name": name, "index": i, "title": COLUMNS[cid].title, "eps_steps": first["eps_steps"],
                      "square": f"{first['square']['square_queries']:,}"})
    text = render("security_masking.md.j2", step_factor=f"{robustness.MASKING_STEP_FACTOR:g}",
                  rules=[(phrase("masking_reason", key=k), t) for k, t in robustness.MASKING_RULES.items()],
                  table=markdown.table(MASKING_HEADER, rows), figures=shown)
    return [text.rstrip("\n") + "\n"]


def _anchor_section() -> list[str]:
    # The numbers in a table, the prose about each in a list below it: eight columns of prose overflow the page.
    rows = [[a.model, pct(a.clean, 2), pct(a.pgd, 2), pct(a.autoattack, 2)] for a in anchors()]
    return [render("security_anchors.md.j2", table=markdown.table(["model", "clean", "PGD", "AutoAttack"], rows),
                   anchors=[{"model": a.model, "setting": a.attack_setting, "data": a.training_data,
                             "length": a.training_length, "source": a.source} for a in anchors()])]


def _followup_section(evaluations: dict[str, dict]) -> list[str]:
    cifar = next((ev for ev in evaluations.values() if ev["dataset"] == "cifar10"), None)
    literal = column_running("paper", defence="pat", literal_eps=True, table="2")
    published = None if literal is None else published_value("2", literal.compare_with, "follow-up", "ACC_defended")
    madry = anchor("madry_wrn")
    ours = [] if cifar is None else [
        phrase("pat_model_rates", label=rec["label"], clean=with_interval(rec["clean"]),
               robust=with_interval(rec["robust"]), n=rec["robust"]["n"])
        for rec in sec.study_models(cifar).values()
        if rec["role"] == "defended" and COLUMNS[rec["column"]].defence == "pat"]
    return [render("security_followup.md.j2", published=pct(None if published is None else published.value, 2),
                   cited={"standard": pct(anchor("followup_cites_madry_standard").pgd),
                          "wide": pct(anchor("followup_cites_madry_wide").pgd, 0)},
                   madry_clean=pct(madry.clean), madry_pgd=pct(madry.pgd),
                   madry_autoattack=pct(anchor("robustbench_madry").autoattack, 2), ours=ours)]


def security_page(found: dict, profile: str, figures_dir) -> str:
    """The security evaluation's chapter in Markdown (MyST), from the results of the security columns.

    Args:
        found: column id → :class:`repro.results.Result` of the profile (other columns are ignored).
        profile: the profile's name (its description is shown).
        figures_dir: where the chapter's figures are saved (referenced as ``figures/<name>.png``).

    Returns:
        The page's Markdown; a short "not computed" page when no security column has a result.
    """
    figures_dir = Path(figures_dir)
    evaluations = security_evaluations(found)
    if not evaluations:
        return phrase("not_computed_chapter", chapter="security", profile=profile) + "\n"
    first = next(iter(found[cid] for cid in evaluations))
    parts = [render("security_intro.md.j2", profile=profile, description=get_profile(profile).description,
                    restarts=first.parameters["pgd_restarts"],
                    arms=sum(len(ev["models"]) - len(sec.study_models(ev)) for ev in evaluations.values()),
                    evaluations=[{"dataset": DATASET_LABELS.get(ev["dataset"], ev["dataset"]),
                                  "eps": eps_text(ev["threat_model"]["eps"]),
                                  "step": eps_text(ev["threat_model"]["step_size"])} for ev in evaluations.values()])]
    for cid, ev in evaluations.items():
        result = found[cid]
        q = result.parameters
        parts.append(render(
            "security_model.md.j2", title=COLUMNS[cid].title, id=cid, n=f"{ev['n']:,}", steps=q["pgd_steps"],
            restarts=q["pgd_restarts"], version=q["autoattack"]["version"], seed=q["seed"],
            seconds=f"{result.provenance.get('wall_time_s', float('nan')):.0f}",
            device=result.provenance.get("device", {}).get("name", "?"),
            table=markdown.table(_robust_header(ev), _robust_rows(ev, arms=False)),
            arms_table=markdown.table(_robust_header(ev), rows) if (rows := _robust_rows(ev, arms=True)) else None,
            deepsec_eps=eps_text(ev["deepsec_eps"]) if ev.get("deepsec_eps") else None,
            departures=result.departures or ["none"]))
    parts += _autoattack_section(evaluations, found)
    parts += _transfer_section(evaluations, figures_dir)
    parts += _masking_section(evaluations, figures_dir)
    parts += _anchor_section()
    parts += _followup_section(evaluations)
    return "\n".join(parts)

