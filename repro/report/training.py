"""The training chapter (:mod:`repro.study.training`): how every model was trained, its validation curves, its clean
and PGD accuracy on the test images, and the training ablation behind the quick profile's PAT recipe."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from ..data import FULL_SIZES
from ..models import DEEPSEC_CHECKPOINTS
from ..study.ablation import (SIGNIFICANCE as ABLATION_SIGNIFICANCE, TARGET, TARGET_WITH_JPEG, ablation_base,
                              ablation_ids, early_stopping, frontier, target_verdicts, updates)
from ..study.plan import COLUMNS
from ..study.profiles import get_profile
from ..study.verdicts import recipe_words
from ..train.config import DEEPSEC_RECIPE, RECIPES
from . import figures, markdown
from .templates import phrase, render
from .figures import DATASET_LABELS
from .markdown import NOT_COMPUTED, eps_text, with_interval

# Characters of a legend label that still fit two legend columns across the training figure.
LEGEND_LABEL_FITS_TWO_COLUMNS = 55


def _training(found: dict) -> dict[str, dict]:
    """Column id → its ``extra["training"]``, for the training columns that have a result, in plan order."""
    return {cid: r.extra["training"] for cid, r in found.items()
            if cid in COLUMNS and COLUMNS[cid].table == "training" and "training" in r.extra}


def _init(record: dict) -> str:
    init = record["init"]
    kind = ("scratch" if init == "scratch" else "deepsec" if isinstance(init, dict) and "deepsec_sha256" in init
            else "trained" if isinstance(init, dict) and "trained" in init else None)
    return phrase("init_words", kind=kind, other=str(init))


def _rows(evaluation: dict, *, wall_time: bool = True) -> list[list[str]]:
    rows = []
    for rec in evaluation["models"].values():
        t = rec["training"]
        how = [phrase("released_checkpoint"), NOT_COMPUTED, NOT_COMPUTED, NOT_COMPUTED, NOT_COMPUTED] if t is None else [
            _init(t), recipe_words(t["recipe"], {k: t[k] for k in ("optimiser", "lr", "schedule", "label_smoothing")
                                                 if k in t}),
            phrase("epochs_images", epochs=t["epochs"], images=f"{t['train_images']:,}", jpeg=t.get("jpeg_fill")),
            f"{t['kept_epoch']} ({phrase('keep_rule', keep=t['keep'])})", f"{t['train_time_s'] / 60:.1f}"]
        row = [rec["label"], *how, with_interval(rec["clean"]), with_interval(rec["pgd"])]
        rows.append(row if wall_time else row[:5] + row[6:])
    return rows


HEADER = ["model", "initialisation", "recipe", "epochs × images", "kept epoch (rule)", "training (min)",
          "clean accuracy", "PGD accuracy"]


def training_table(evaluation: dict, *, wall_time: bool = False):
    """The column's models as a DataFrame (for the notebook): how each was trained and its test accuracies; the
    training wall time only with ``wall_time`` (it depends on the machine, so the regression-checked cell leaves it
    out: :func:`wall_times` prints it)."""
    import pandas as pd

    header = _header(evaluation)
    header = header if wall_time else header[:5] + header[6:]
    return pd.DataFrame(_rows(evaluation, wall_time=wall_time), columns=header)


def _header(evaluation: dict) -> list[str]:
    """The table header, with the number of test images behind the accuracies (Table 2 uses the whole test split,
    so the same model's clean accuracy can differ there by its interval)."""
    n = next(iter(evaluation["models"].values()))["clean"]["n"]
    return HEADER[:6] + [f"clean accuracy ({n:,} test images)", f"PGD accuracy ({n:,} test images)"]


def wall_times(evaluation: dict) -> str:
    """One line per model trained here: its training wall time in minutes (as its training recorded it)."""
    return "\n".join(phrase("trained_in", label=rec["label"], minutes=f"{rec['training']['train_time_s'] / 60:.1f}")
                     for rec in evaluation["models"].values() if rec["training"]) or phrase("nothing_trained")


def validation_attack(result) -> str:
    """The PGD that measured the per-epoch validation robustness of the models a training result trained, in words
    (from their configurations; "each model's own PGD" when they differ)."""
    settings = {(c["eps"], c["step_size"], c["steps"]) for m in result.provenance.get("models", {}).values()
                for c in [(m.get("config") or {}).get("history_pgd")] if isinstance(c, dict)}
    if len(settings) != 1:
        return phrase("validation_pgd", eps=None, steps=None, step=None)
    eps, step, steps = settings.pop()
    return phrase("validation_pgd", eps=eps_text(eps), steps=steps, step=eps_text(step))


def curves_figure(evaluation: dict, *, title: str = "", pgd: str = "PGD"):
    """Per trained model, clean and PGD accuracy on the held-out validation images after every epoch, from epoch 0
    (the starting weights, measured alike) for a fine-tuned model; ``pgd`` names the validation attack (the same for
    every model of the figure)."""
    trained = [(rec["label"], ([rec["training"]["start"]] if rec["training"].get("start") else [])
                + rec["training"]["history"]) for rec in evaluation["models"].values()
               if rec["training"] and rec["training"]["history"]]
    fig, axes = plt.subplots(1, 2, figsize=(7.8, 3.6), sharex=True)
    for label, history in trained:
        epochs = [h["epoch"] for h in history]
        line, = axes[0].plot(epochs, [100 * h["val_acc"] for h in history], marker="o", ms=3, label=label)
        under_pgd = [h.get("pgd_acc") for h in history]
        if any(v is not None for v in under_pgd):
            axes[1].plot(epochs, [float("nan") if v is None else 100 * v for v in under_pgd], marker="o", ms=3,
                         color=line.get_color())
    axes[0].set_title("clean validation accuracy", fontsize=9)
    axes[1].set_title(f"validation accuracy under {pgd}", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    # Two legend columns only while the labels fit them: a wider legend widens the saved figure, which the page then
    # shrinks below the book's smallest readable text (tests/test_layout.py).
    ncol = 2 if max((len(label) for label, _ in trained), default=0) <= LEGEND_LABEL_FITS_TWO_COLUMNS else 1
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(title or "Training curves", fontsize=10)
    rows = (len(trained) + ncol - 1) // ncol
    fig.set_figheight(3.6 + 0.16 * rows)
    fig.tight_layout(rect=(0, 0.04 + 0.16 * rows / fig.get_figheight(), 1, 1))
    return fig


def _target_lines(evaluation: dict, verdicts: dict) -> list[str]:
    """Whether each adversarially trained CIFAR-10 model meets the study's target, from its ``verdicts``
    (:func:`repro.study.ablation.target_verdicts`)."""
    lines = []
    for mid, verdict in verdicts.items():
        rec = evaluation["models"][mid]
        lines.append(phrase("target_line", label=rec["label"], clean=with_interval(rec["clean"]),
                            clean_verdict=verdict["clean"], pgd=with_interval(rec["pgd"]), pgd_verdict=verdict["pgd"],
                            overall=verdict["overall"], jpeg=bool(rec["training"].get("jpeg_fill"))))
    return lines


def _frontier(evaluation: dict, verdicts: dict) -> str:
    """The ablation's measured frontier (:func:`repro.study.ablation.frontier`) in words: each model on it with its
    clean and PGD accuracy and its number of updates, and how many of the ablation's models meet their target (from
    ``verdicts``, :func:`repro.study.ablation.target_verdicts`)."""
    models = evaluation["models"]
    ids = frontier(evaluation)
    if not ids:
        return ""
    studied = ablation_ids(evaluation)
    meets = sum(verdicts[mid]["overall"] == "meets" for mid in studied)
    points = [{"label": models[mid]["arm"] or None, "clean": f"{100 * models[mid]['clean']['rate']:.1f} %",
               "pgd": f"{100 * models[mid]['pgd']['rate']:.1f} %", "updates": f"{updates(models[mid]['training']):,}"}
              for mid in ids]
    return phrase("frontier", points=points, n=len(studied), meets=meets,
                  base_updates=f"{updates(models[ablation_base(evaluation)]['training']):,}")


def _early_stopping(evaluation: dict, result) -> str:
    """What early stopping on the training curves' held-out PGD accuracy would have kept
    (:func:`repro.study.ablation.early_stopping`), in words."""
    rows = early_stopping(evaluation)
    if not rows:
        return ""
    configs = [result.provenance.get("models", {}).get(r["model"], {}).get("config") or {} for r in rows]
    sizes = {min(c["history_subset"], n - RECIPES[c["recipe"]["name"]].training_images(n))
             for c in configs if c.get("history_subset") and c.get("recipe", {}).get("name") in RECIPES
             for n in [c["train_images"]]}
    arms = {mid: rec.get("arm") for mid, rec in evaluation["models"].items()}
    other = [{"label": f"the arm “{arms[r['model']]}”" if arms.get(r["model"]) else r["label"], "best": r["best"],
              "kept": r["kept"], "best_pgd": f"{100 * r['best_pgd']:.1f} %",
              "kept_pgd": f"{100 * r['kept_pgd']:.1f} %"} for r in rows if r["best"] != r["kept"]]
    return phrase("early_stopping", n=len(rows), same=len(rows) - len(other), other=other,
                  attack=validation_attack(result), images=f"{sizes.pop():,}" if len(sizes) == 1 else None)


def _scratch_cost(evaluation: dict) -> str:
    """What DeepSec's own schedule for the dataset (its recipe's epochs, from scratch, on the training part of the
    full dataset) would cost here, from the measured epoch time of the first PAT model trained here."""
    dataset = evaluation["dataset"]
    recipe = RECIPES[DEEPSEC_RECIPE[dataset]]
    full = recipe.training_images(FULL_SIZES[dataset]["train"])
    for rec in evaluation["models"].values():
        t = rec["training"]
        col = COLUMNS[rec["column"]]
        if rec["role"] == "defended" and t and t["history"] and not rec["arm"] and col.defence == "pat" \
                and col.parameters.get("model") == DEEPSEC_CHECKPOINTS[dataset]["model"]:
            per_epoch = t["train_time_s"] / len(t["history"])
            return phrase("scratch_cost", per_epoch=f"{per_epoch:,.0f}", label=rec["label"],
                          images=f"{t['train_images']:,}", epochs=recipe.epochs,
                          hours=f"{recipe.epochs * per_epoch / 3600:.1f}", full=f"{full:,}",
                          full_hours=f"{recipe.epochs * per_epoch * full / t['train_images'] / 3600:.0f}")
    return ""


def _paired_rows(evaluation: dict, *, widths: bool = False) -> list[dict]:
    """Each ablation arm against its base model (``widths``: each wider model of the width ladder against the model
    of the same role at the profile's width) on the same test images (:func:`repro.study.ablation.paired_arms`,
    :func:`~repro.study.ablation.paired_widths`), formatted: the two accuracies, the difference in points and
    McNemar's p, clean and under PGD."""
    from ..study.ablation import paired_arms, paired_widths

    rows = []
    for pair in (paired_widths if widths else paired_arms)(evaluation):
        cells = {}
        for what in ("clean", "pgd"):
            d = pair[what]
            cells[what] = {"arm": f"{100 * d['arm']:.1f} %", "base": f"{100 * d['base']:.1f} %",
                           "diff": f"{100 * d['diff']:+.1f}", "p": f"{d['p']:.2g}", "resolved": d["resolved"],
                           "only_arm": d["only_arm"], "only_base": d["only_base"]}
        rows.append({"arm": pair["arm"], "base": pair["base_label"], "n": f"{pair['clean']['n']:,}", **cells})
    return rows


def _worst_case(evaluation: dict, found: dict) -> dict | None:
    """The ablation's models (the model the arms vary, then its arms) as the security chapter attacked them: per
    model its arm (``None``: the profile's recipe), this column's single-start PGD on the security column's images
    (its first n test images: the per-image outcomes' first n), the worst case over PGD with restarts and AutoAttack
    there, the drop between the two in points, and the masking checks' verdict (:data:`NOT_COMPUTED` for a model the
    security result lacks); with that column's id, restarts and n. ``None`` without arms or without a security
    result for the dataset.

    Raises:
        ValueError: a model whose clean outcomes on those images differ between the two columns (not the same
            images, or not the same model).
    """
    from ..metrics.robustness import rate_of
    from .security import masking_summary, security_evaluations

    ids = ablation_ids(evaluation)
    found_sec = [(cid, ev) for cid, ev in security_evaluations(found).items()
                 if ev["dataset"] == evaluation["dataset"]]
    if not ids or not found_sec:
        return None
    cid, sec = found_sec[0]
    rows = []
    for mid in ids:
        rec, attacked = evaluation["models"][mid], sec["models"].get(mid)
        if attacked is None:
            rows.append({"arm": rec["arm"], "pgd": NOT_COMPUTED, "robust": NOT_COMPUTED, "drop": NOT_COMPUTED,
                         "masking": NOT_COMPUTED})
            continue
        n = attacked["clean"]["n"]
        if rec["clean"]["correct"][:n] != attacked["clean"]["correct"]:
            raise ValueError(f"{mid}: its clean outcomes on the first {n} test images differ between the training "
                             f"and the security result ({cid}): not the same images or not the same model")
        pgd = rate_of(rec["pgd"]["correct"][:n])
        rows.append({"arm": rec["arm"], "pgd": with_interval(pgd), "robust": with_interval(attacked["robust"]),
                     "drop": f"{100 * (attacked['robust']['rate'] - pgd['rate']):+.1f}",
                     "masking": masking_summary(sec["masking"].get(mid))})
    return {"rows": rows, "column": cid, "restarts": found[cid].parameters["pgd_restarts"], "n": f"{sec['n']:,}",
            "missing": sum(mid not in sec["models"] for mid in ids)}


def _base_recipe(ev: dict, result) -> str | None:
    """How the model the ablation arms vary (the profile's own) was trained, in words, from its training record and
    configuration; ``None`` without arms."""
    base = ablation_base(ev)
    if base is None:
        return None
    record = ev["models"][base]["training"] or {}
    params = result.provenance.get("models", {}).get(base, {}).get("config", {}).get("defence_params") or {}
    images = record.get("train_images")
    return phrase("pat_recipe", epochs=record.get("epochs"), jpeg=record.get("jpeg_fill", False),
                  images=f"{images:,}" if images else "its", ramp=params.get("eps_ramp"))


def training_page(found: dict, profile: str, figures_dir) -> str:
    """The training chapter in Markdown (MyST) from the training columns' results; a short "not computed" page when
    there is none."""
    from ..study.plan import anchor

    figures_dir = Path(figures_dir)
    evaluations = _training(found)
    if not evaluations:
        return phrase("not_computed_chapter", chapter="training", profile=profile) + "\n"
    resnet20 = anchor("robustbench_jang_resnet20")
    sections = []
    for cid, ev in evaluations.items():
        threat, dataset = ev["threat_model"], ev["dataset"]
        split = ev.get("deepsec_split")
        verdicts = target_verdicts(ev)
        name = f"training_curves_{cid}.png"
        fig = curves_figure(ev, title=phrase("curves_title", dataset=DATASET_LABELS.get(dataset, dataset)),
                            pgd=validation_attack(found[cid]))
        figures.save(fig, figures_dir / name)
        sections.append({
            "id": cid, "title": COLUMNS[cid].title, "figure": name, "table": markdown.table(_header(ev), _rows(ev)),
            "n": f"{next(iter(ev['models'].values()))['clean']['n']:,}",
            "threat": {"eps": eps_text(threat["eps"]), "step": eps_text(threat["step_size"]), "steps": threat["steps"]},
            "ablation": any(rec["arm"] for rec in ev["models"].values()), "recipe": _base_recipe(ev, found[cid]),
            "paired": _paired_rows(ev), "widths": _paired_rows(ev, widths=True), "alpha": ABLATION_SIGNIFICANCE,
            "worst": _worst_case(ev, found),
            "target": None if dataset != "cifar10" else {
                "clean": f"{100 * TARGET['clean']:.0f} %", "pgd": f"{100 * TARGET['pgd']:.0f} %",
                "jpeg_clean": f"{100 * TARGET_WITH_JPEG['clean']:.0f} %",
                "jpeg_pgd": f"{100 * TARGET_WITH_JPEG['pgd']:.0f} %",
                "anchor_clean": f"{100 * resnet20.clean:.2f} %", "anchor_pgd": f"{100 * resnet20.pgd:.2f} %",
                "jpeg": any((rec["training"] or {}).get("jpeg_fill") for rec in ev["models"].values()),
                "lines": _target_lines(ev, verdicts), "frontier": _frontier(ev, verdicts),
                "early_stopping": _early_stopping(ev, found[cid])},
            "split": None if not split else {
                "model": split["model"], "held_out": with_interval(split["held_out"]),
                "held_out_n": f"{split['held_out']['n']:,}", "trained_on": with_interval(split["trained_on"]),
                "trained_on_n": f"{split['trained_on']['n']:,}"},
            "scratch": _scratch_cost(ev)})
    text = render("training.md.j2", profile=profile, description=get_profile(profile).description,
                  sections=sections)
    return text.rstrip("\n") + "\n"


__all__ = ["curves_figure", "training_page", "training_table", "wall_times"]
