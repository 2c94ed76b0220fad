"""Plot and table helpers for the notebooks and the book: each returns a matplotlib Figure or a pandas DataFrame.

Nothing here computes a metric; it only formats numbers that :mod:`repro.study` measured. Numbers are
shown in the unit the papers print them in (percent for MR and the accuracies), rounded for display only.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..study.plan import METRIC_LABELS, PRINTED_UNIT, to_printed_unit
from ..study.profiles import DATASET_NAMES
from .markdown import NOT_COMPUTED
from .templates import phrase

# How the book names the datasets (their one home is the study's profiles).
DATASET_LABELS = DATASET_NAMES
# Amplification of the perturbation in the image grids (a perturbation of 8/255 is invisible at ×1).
AMPLIFY_TARGET = 0.5


def _fmt(metric: str, value) -> str:
    printed = to_printed_unit(metric, value)
    if printed is None:
        return NOT_COMPUTED
    if PRINTED_UNIT.get(metric) == "%":
        return f"{printed:.2f} %"
    if abs(printed) >= 100:
        return f"{printed:.1f}"
    return f"{printed:.3f}" if metric != "COS" else f"{printed:.4f}"


def metrics_table(metrics: dict, *, keys=None):
    """A one-column DataFrame of ``metrics`` (fractions) formatted as the papers print them; timings excluded."""
    import pandas as pd

    keys = [k for k in (keys or metrics) if k in metrics and k != "CC"]
    return pd.DataFrame({"value": [_fmt(k, metrics[k]) for k in keys]},
                        index=pd.Index([METRIC_LABELS.get(k, k) for k in keys], name="metric"))


# The raw model's training budget: notebook parameters that apply only to a raw model trained here, not to DeepSec's
# released checkpoint (the executed notebooks' table marks them, the book's column sections leave them out).
RAW_TRAINING_PARAMETERS = ("epochs", "train_subset")


def parameters_table(params: dict):
    """The effective parameters as a two-column DataFrame (paths and the device are left out: they vary). The raw
    model's training budget is marked unused where the profile loads DeepSec's released checkpoint instead of
    training that model (before, a column on DeepSec's ResNet-20 listed "epochs 8" as if it had trained it)."""
    import pandas as pd

    from ..study.profiles import get_profile
    from ..study.models import uses_deepsec_checkpoint

    skip = {"results_dir", "device"}
    released = params.get("model") is not None and params.get("profile") is not None and \
        uses_deepsec_checkpoint(params["model"], get_profile(params["profile"]))
    rows = [(k, repr(v) + ("  " + phrase("unused_raw_parameter") if released and k in RAW_TRAINING_PARAMETERS else ""))
            for k, v in params.items() if k not in skip]
    return pd.DataFrame(rows, columns=["parameter", "value"]).set_index("parameter")


def _to_hwc(img: torch.Tensor) -> np.ndarray:
    arr = img.detach().cpu().float().numpy()
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def adversarial_grid(x: torch.Tensor, x_adv: torch.Tensor, *, n: int = 6, labels=None, adv_labels=None,
                     targets=None, class_names=None, title: str = ""):
    """Clean images, adversarial images and the perturbation amplified to be visible, one column per example.

    Args:
        x, x_adv: (N, C, H, W) in [0, 1]; the first ``n`` are shown.
        labels, adv_labels: optional true / predicted classes to print above the clean / adversarial images.
        targets: optional target classes of a targeted attack (printed beside the prediction).
        class_names: names of the classes in label order (e.g. :data:`repro.data.CLASS_NAMES`).

    Returns:
        A matplotlib Figure with three rows: clean, adversarial, and the perturbation δ shown as 0.5 + k·δ (grey is
        no change; k, printed in the row label, scales the largest |δ| of the examples shown to 0.5, so brighter and
        darker than grey mean the attack raised or lowered the pixel).
    """
    def name(c) -> str:
        c = int(c)
        return f"{c} {class_names[c]}" if class_names is not None else f"class {c}"

    n = min(n, len(x))
    delta = (x_adv[:n] - x[:n]).float()
    peak = float(delta.abs().max()) if n else 0.0
    gain = AMPLIFY_TARGET / peak if peak > 0 else 1.0
    fig, axes = plt.subplots(3, max(n, 1), figsize=(1.6 * max(n, 1), 5.2), squeeze=False)
    cmap = "gray" if x.shape[1] == 1 else None
    for i in range(n):
        for row, img in enumerate((x[i], x_adv[i], (0.5 + gain * delta[i]).clamp(0, 1))):
            ax = axes[row][i]
            ax.imshow(_to_hwc(img), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        if labels is not None:
            axes[0][i].set_title(name(labels[i]), fontsize=8)
        if adv_labels is not None:
            target = f" (target {name(targets[i])})" if targets is not None else ""
            axes[1][i].set_title(f"→ {name(adv_labels[i])}{target}", fontsize=8)
    axes[0][0].set_ylabel("clean")
    axes[1][0].set_ylabel("adversarial")
    axes[2][0].set_ylabel(f"0.5 + {gain:.3g}·δ")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def distance_dots(rows_by_column: dict[str, list[dict]], allowance: dict, *, labels: dict, title: str = "",
                  column_labels: dict | None = None):
    """A dot plot of (ours − published) / allowance, per metric (row groups) and column (colours, named in the
    legend), one panel per reference (the follow-up, DeepSec), with our 95 % interval as whiskers and the band
    [−1, 1] shaded.

    Args:
        rows_by_column: column id → :func:`repro.report.pages.comparison_rows` rows.
        allowance: metric → function of the published value giving the allowance (fractions).
        labels: metric → label.
        column_labels: column id → the legend's name for it (default: the id).

    Only metrics with a published value in some column are drawn (never a value as 0, never an empty row); a
    not-comparable cell is a hollow marker. Distances beyond ±8 allowances are clipped to the edge, marked with an
    arrow-like marker and labelled with their value. Sized to stay legible at the book's page width (about 9
    inches shown at 100 %: 9-point tick labels).
    """
    from ..study.verdicts import Verdict

    refs = (("followup", "against the follow-up"), ("deepsec", "against DeepSec"))
    metrics = [m for m in dict.fromkeys(r["metric"] for rows in rows_by_column.values() for r in rows)
               if any(r["metric"] == m and (r["followup"] is not None or r["deepsec"] is not None)
                      for rows in rows_by_column.values() for r in rows)]
    column_labels = column_labels or {}
    n_cols = max(1, len(rows_by_column))
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.2 * len(metrics) * n_cols + 0.12 * len(metrics) + 1.9),
                             sharey=True, squeeze=False)
    colours = plt.get_cmap("tab10")
    limit = 8.0
    ticks, ticklabels = [], []
    for panel, (key, heading) in zip(axes[0], refs):
        panel.axvspan(-1, 1, color="#dddddd", zorder=0)
        panel.axvline(0, color="#888888", lw=0.8)
        y = 0.0
        for metric in metrics:
            if key == "followup":
                ticks.append(y + (n_cols - 1) / 2)
                ticklabels.append(labels.get(metric, metric))
            for j, (col_id, rows) in enumerate(rows_by_column.items()):
                row = next((r for r in rows if r["metric"] == metric), None)
                if row is not None and row[key] is not None and row["ours"] is not None:
                    scale = allowance[metric](row[key]) or 1e-12
                    dist = lambda v: max(-limit, min(limit, (v - row[key]) / scale))  # noqa: E731
                    hollow = row[f"verdict_{key}"] == Verdict.NOT_COMPARABLE
                    if row["low"] is not None:
                        panel.plot([dist(row["low"]), dist(row["high"])], [y, y], color=colours(j), lw=1.5)
                    raw = (row["ours"] - row[key]) / scale
                    centre = dist(row["ours"])
                    marker = ">" if centre >= limit else "<" if centre <= -limit else "o"
                    panel.plot([centre], [y], marker=marker, color=colours(j),
                               markerfacecolor="white" if hollow else colours(j), markersize=6)
                    if abs(raw) > limit:
                        panel.annotate(f"{raw:+.0f}", (centre, y), xytext=(-4 if raw > 0 else 4, 0),
                                       textcoords="offset points", ha="right" if raw > 0 else "left",
                                       va="center", fontsize=9, color=colours(j))
                y += 1
            y += 0.8
        panel.set_xlim(-limit - 0.5, limit + 0.5)
        panel.set_title(heading, fontsize=10)
        panel.set_xlabel("(ours − published) / allowance", fontsize=9)
        panel.tick_params(axis="x", labelsize=9)
    axes[0][0].set_yticks(ticks, ticklabels, fontsize=9)
    axes[0][0].invert_yaxis()
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours(j)) for j in range(len(rows_by_column))]
    handles += [plt.Line2D([], [], marker="o", ls="", color="black", markerfacecolor="white")]
    names = [column_labels.get(c, c) for c in rows_by_column] + ["hollow: not comparable"]
    ncol = 2 if max(map(len, names)) <= 60 else 1
    fig.legend(handles, names, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    rows = -(-len(names) // ncol)
    fig.tight_layout(rect=(0, min(0.3, 0.05 + 0.35 * rows / fig.get_figheight()), 1, 1))
    return fig


def accuracy_curves(curves: dict[str, dict], *, threat_eps: float | None = None, title: str = ""):
    """Accuracy versus ε, one line per model (and per column when several are given), with the dataset's threat
    model ε marked when ``threat_eps`` is given (8/255 on CIFAR-10, 0.3 on MNIST; ``None``: no line, never another
    dataset's). ε is drawn × 255 when the curve's ε are a few 255ths, else as they are.

    Args:
        curves: label → the dict ``accuracy_vs_eps`` record a defence result stores in ``extra``.
    """
    largest = max((max(c["eps"]) for c in curves.values() if c["eps"]), default=0.0)
    scale = 255 if (threat_eps if threat_eps is not None else largest) < 0.1 else 1
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, curve in curves.items():
        eps = np.asarray(curve["eps"]) * scale
        for name in [k for k in curve if k not in ("eps", "n", "steps")]:
            ax.plot(eps, np.asarray(curve[name]) * 100, marker="o", label=f"{label}: {name}" if label else name)
    if threat_eps is not None:
        ax.axvline(threat_eps * scale, color="grey", lw=0.8, ls=":", label="threat model ε")
    ax.set_xlabel(("ε × 255" if scale == 255 else "ε") + " (PGD run against each model)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def training_history(history: list[dict] | None, *, title: str = ""):
    """Per-epoch training loss and validation / PGD accuracy from :class:`repro.train.TrainResult` ``history``.

    ``None`` or an empty list (a model not trained here) gives a figure that says so.
    """
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    if not history:
        ax1.text(0.5, 0.5, "no training history (model not trained here)", ha="center", va="center")
        ax1.set_axis_off()
        ax2.set_axis_off()
        return fig
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    ax1.plot(epochs, [h.get("loss") for h in history], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    for key, label in (("val_acc", "clean (validation)"), ("pgd_acc", "PGD (validation)")):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            ax2.plot(epochs, [np.nan if v is None else 100 * v for v in values], marker="o", label=label)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# The resolution of every figure the book draws, and the PNG text chunks that record it with the figure's smallest
# text, so that the book's layout check (:mod:`repro.report.layout`) can tell how large that text is on the page.
DPI = 100
SMALLEST_TEXT_KEY = "repro:smallest-text-pt"
DPI_KEY = "repro:dpi"


def smallest_text_pt(fig) -> float | None:
    """The font size in points of the smallest visible, non-empty text of ``fig`` (titles, labels, tick labels,
    legends, annotations); ``None`` when it has no text."""
    from matplotlib.text import Text

    fig.draw_without_rendering()  # tick labels get their text at draw time
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return min(sizes, default=None)


def save(fig, path) -> None:
    """Save ``fig`` as PNG (:data:`DPI`) with its smallest text size and resolution in the file, and close it."""
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    smallest = smallest_text_pt(fig)
    metadata = {DPI_KEY: str(DPI), **({SMALLEST_TEXT_KEY: f"{smallest:g}"} if smallest is not None else {})}
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata=metadata)
    plt.close(fig)


def optimality_curves(settings: dict[str, dict]):
    """Robust accuracy versus perturbation size, one panel per model × norm of ``benchmarks/optimality.py``'s output:
    one line per attack (from its per-image distances) and the per-image best of all attacks, dashed."""
    # One panel a row, its legend below it: up to nine attacks per panel would hide the curves inside it.
    fig, axes = plt.subplots(max(1, len(settings)), 1, figsize=(7.8, 4.6 * max(1, len(settings))), squeeze=False)
    for ax, (key, setting) in zip(axes.flat, settings.items()):
        d_max = setting["d_max"]
        grid = np.linspace(0.0, d_max, 200)
        rows = {name: np.asarray(a["distances"], dtype=float) for name, a in setting["attacks"].items()}
        best = np.min(np.stack(list(rows.values())), axis=0)
        scale = 255.0 if setting["norm"] == "linf" else 1.0
        for name, d in rows.items():
            ax.plot(grid * scale, [(d > e).mean() * 100 for e in grid], lw=1.2,
                    label=f"{name} ({setting['attacks'][name]['optimality']:.3f})")
        ax.plot(grid * scale, [(best > e).mean() * 100 for e in grid], color="black", ls="--", lw=1.0,
                label="best of all")
        norm = "L∞" if setting["norm"] == "linf" else "L2"
        ax.set_xlabel("L∞ × 255" if setting["norm"] == "linf" else "L2")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_title(f"{DATASET_LABELS.get(setting['dataset'], setting['dataset'])}, {norm}, n = {setting['n']}",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def budget_ladder_rows(ladder: dict) -> list[dict]:
    """CW2's budget ladder (:func:`repro.study.steps.budget_ladder`) formatted, one dict of strings per budget
    (smallest first): the success rate with its 95 % interval, the mean L2 of the successful examples, and the
    per-image L2 ratio against the column's own budget over the images both fool (median; mean with its bootstrap
    95 % interval). ``compare``: where that interval lies ("above 1", "below 1", "contains 1", or "–")."""
    rows = []
    for arm in ladder.get("arms", []):
        ok, ratio = arm["success"], arm.get("l2_ratio")
        own = (arm["binary_search_steps"], arm["max_iterations"]) == tuple(ladder["reference"].values())
        compare = (NOT_COMPUTED if ratio is None or own else "above 1" if ratio["low"] > 1 else "below 1" if ratio["high"] < 1
                   else "contains 1")
        rows.append({
            "budget": f"{arm['binary_search_steps']} × {arm['max_iterations']:,}", "own": own,
            "mr": f"{100 * ok['rate']:.1f} [{100 * ok['low']:.1f}, {100 * ok['high']:.1f}]", "n": ok["n"],
            "mean_l2": NOT_COMPUTED if arm["mean_l2"] is None else f"{arm['mean_l2']:.3f}",
            "paired": arm["n_paired"],
            "median": NOT_COMPUTED if ratio is None else f"{ratio['median']:.3f}",
            "mean": NOT_COMPUTED if ratio is None else f"{ratio['mean']:.3f} [{ratio['low']:.3f}, {ratio['high']:.3f}]",
            "max": NOT_COMPUTED if ratio is None else f"{ratio['max']:.2f}",
            "seconds": f"{arm['seconds_per_example']:.2f}", "compare": compare,
        })
    return rows


def budget_ladder_table(ladder: dict):
    """:func:`budget_ladder_rows` as a DataFrame for the attack notebooks; ``None`` (nothing shown) without one."""
    import pandas as pd

    names = {"mr": "MR (%) [95 %]", "mean_l2": "mean L2", "paired": "images both fool", "median": "L2 ratio, median",
             "mean": "L2 ratio, mean [95 %]", "seconds": "s per image"}
    rows = [{"budget": r["budget"], **{label: r[key] for key, label in names.items()}}
            for r in budget_ladder_rows(ladder)]
    return pd.DataFrame(rows).set_index("budget") if rows else None  # nothing shown without a ladder
