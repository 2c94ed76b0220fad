"""The training ablation judged pairwise: each arm against the model whose training it varies, on the same test images.

The training column (:mod:`repro.study.training`) stores, per model, its clean and PGD outcome on every test image.
An ablation arm differs from the profile's own defended model (the first of the dataset, whose id the arm's extends
with ``_arm<i>``) in one choice of its training; this module sets the two side by side with the paired difference and
McNemar's exact test (:func:`repro.metrics.uncertainty.mcnemar_exact`), so that the chapter can say which differences
the test images resolve. Computed from stored results only; no notebook imports it.
"""
from __future__ import annotations

import math

from ..metrics.uncertainty import mcnemar_exact
from .roster import ARM_SUFFIX, WIDTH_SUFFIX

SIGNIFICANCE = 0.05  # two-sided level at which the chapter calls a paired difference resolved
# The study's target for the adversarially trained CIFAR-10 ResNet-20 (PAT ε = 8/255), on the exact test images,
# trained on the exact training images alone (for scale, RobustBench's ResNet-20 entry, trained on all 50,000 images:
# repro/study/published/anchors.csv); with the JPEG-decoded rest of the training set added, TARGET_WITH_JPEG.
TARGET = {"clean": 0.65, "pgd": 0.25}
TARGET_WITH_JPEG = {"clean": 0.75, "pgd": 0.35}


def target_for(training: dict) -> dict:
    """The target a model's training record (``extra["training"]["models"][id]["training"]``) is judged against:
    :data:`TARGET_WITH_JPEG` when it trained on the JPEG copies too, else :data:`TARGET`."""
    return TARGET_WITH_JPEG if training.get("jpeg_fill") else TARGET


def target_verdict(clean: dict, pgd: dict, *, target: dict = TARGET) -> dict[str, str]:
    """Whether a model's clean and PGD rates (``{"rate", "low", "high"}`` records) meet ``target``, judged on their
    95 % intervals, per axis (``"clean"``, ``"pgd"``) and ``"overall"``: ``"meets"`` (the lower bound reaches it;
    overall: both do), ``"misses"`` (the upper bound stays below it; overall: either does) or ``"within reach"`` (the
    interval straddles it)."""
    def axis(rec: dict, level: float) -> str:
        return "meets" if rec["low"] >= level else "misses" if rec["high"] < level else "within reach"

    out = {"clean": axis(clean, target["clean"]), "pgd": axis(pgd, target["pgd"])}
    both = set(out.values())
    out["overall"] = "misses" if "misses" in both else "meets" if both == {"meets"} else "within reach"
    return out


def paired_arms(evaluation: dict) -> list[dict]:
    """Per ablation arm of a training evaluation (``result.extra["training"]``), in its order:
    ``{"arm", "model", "label", "base", "base_label", "clean", "pgd"}`` where ``clean``/``pgd`` each hold the arm's and the
    base model's rate (``arm``, ``base``), their difference (``diff``, arm − base), McNemar's ``only_arm``,
    ``only_base``, ``p``, and ``resolved`` (``p`` < :data:`SIGNIFICANCE`).

    Raises:
        ValueError: an arm whose base model is not in the evaluation, or whose outcomes cover other images.
    """
    models = evaluation["models"]
    out = []
    for mid, rec in models.items():
        if rec.get("arm") is None:
            continue
        base_id = mid.rsplit(ARM_SUFFIX, 1)[0]
        if base_id == mid or base_id not in models:
            raise ValueError(f"ablation arm {mid!r}: its base model {base_id!r} is not in the evaluation")
        out.append(_paired(models, mid, base_id, rec["arm"]))
    return out


def paired_widths(evaluation: dict) -> list[dict]:
    """Per wider model of the width ladder (id ``<base>_x<width>``, :func:`repro.study.roster.evaluated_models`),
    in the evaluation's order, the same record as :func:`paired_arms` against the model of the same role at the
    profile's width (``<base>``), on the same test images; ``arm`` is the wider model's label. A rung whose base is
    not in the evaluation is left out (the profile's own width is the ladder's first rung only when it trains it)."""
    models = evaluation["models"]
    out = []
    for mid, rec in models.items():
        base_id, sep, width = mid.rpartition(WIDTH_SUFFIX)
        if sep and width.isdigit() and base_id in models:
            out.append(_paired(models, mid, base_id, rec["label"]))
    return out


def _paired(models: dict, mid: str, base_id: str, arm: str) -> dict:
    rec, base = models[mid], models[base_id]
    row = {"arm": arm, "model": mid, "label": rec["label"], "base": base_id, "base_label": base["label"]}
    for what in ("clean", "pgd"):
        a, b = rec[what], base[what]
        if a["n"] != b["n"]:
            raise ValueError(f"model {mid!r}: {what} on {a['n']} images, its base {base_id!r} on {b['n']}")
        test = mcnemar_exact(a["correct"], b["correct"])
        row[what] = {"arm": a["rate"], "base": b["rate"], "diff": a["rate"] - b["rate"], "n": a["n"],
                     "only_arm": test["only_a"], "only_base": test["only_b"], "p": test["p"],
                     "resolved": test["p"] < SIGNIFICANCE}
    return row


def updates(training: dict) -> int:
    """Optimiser steps of a model's training (a training record, ``extra["training"]["models"][id]["training"]``):
    epochs × batches an epoch, the last batch of an epoch counted though smaller."""
    return training["epochs"] * math.ceil(training["train_images"] / training["batch_size"])


def ablation_base(evaluation: dict) -> str | None:
    """The id of the model the ablation's arms vary (the profile's own defended model: each arm's id is its id with
    ``_arm<i>``); ``None`` without arms.

    Raises:
        ValueError: arms that vary different models.
    """
    bases = {mid.rsplit(ARM_SUFFIX, 1)[0] for mid, rec in evaluation["models"].items() if rec.get("arm") is not None}
    if len(bases) > 1:
        raise ValueError(f"ablation arms vary {len(bases)} models ({', '.join(sorted(bases))}); one is allowed")
    return bases.pop() if bases else None


def ablation_ids(evaluation: dict) -> list[str]:
    """The ids of the ablation's models, in the evaluation's order: the model the arms vary, and its arms."""
    base = ablation_base(evaluation)
    return [mid for mid, rec in evaluation["models"].items()
            if base is not None and (mid == base or (rec.get("arm") is not None
                                                     and mid.rsplit(ARM_SUFFIX, 1)[0] == base))]


def target_verdicts(evaluation: dict) -> dict[str, dict[str, str]]:
    """:func:`target_verdict` for every defended model trained here, by id in the evaluation's order, each against
    its own target (:func:`target_for`)."""
    return {mid: target_verdict(rec["clean"], rec["pgd"], target=target_for(rec["training"]))
            for mid, rec in evaluation["models"].items() if rec.get("role") == "defended" and rec.get("training")}


def frontier(evaluation: dict) -> list[str]:
    """The ablation's measured frontier: of the model the arms vary and its arms, the ids of those that no other of
    them dominates (at least as accurate both clean and under PGD, and more accurate on one), most robust first
    (ties: the more accurate first); ``[]`` without arms."""
    models = evaluation["models"]
    ids = ablation_ids(evaluation)
    point = {mid: (models[mid]["clean"]["rate"], models[mid]["pgd"]["rate"]) for mid in ids}

    def beaten(mid: str) -> bool:
        (c, r) = point[mid]
        return any(c2 >= c and r2 >= r and (c2, r2) != (c, r) for other, (c2, r2) in point.items() if other != mid)

    return sorted((mid for mid in ids if not beaten(mid)), key=lambda mid: (-point[mid][1], -point[mid][0]))


def early_stopping(evaluation: dict) -> list[dict]:
    """What early stopping on the held-out PGD accuracy of the training curves would have kept, per defended model
    trained for more than one epoch, in the evaluation's order: ``{"model", "label", "epochs", "kept", "kept_pgd",
    "best", "best_pgd"}``, ``best`` the epoch of the highest held-out PGD accuracy (later ties win, as the keep rules
    do) and ``kept`` the epoch the model's own rule kept."""
    out = []
    for mid, rec in evaluation["models"].items():
        t = rec.get("training")
        if rec.get("role") != "defended" or not t or len(t["history"]) < 2 \
                or any(h.get("pgd_acc") is None for h in t["history"]):
            continue
        by_epoch = {h["epoch"]: h["pgd_acc"] for h in t["history"]}
        best = max(by_epoch, key=lambda e: (by_epoch[e], e))
        out.append({"model": mid, "label": rec["label"], "epochs": len(by_epoch), "kept": t["kept_epoch"],
                    "kept_pgd": by_epoch[t["kept_epoch"]], "best": best, "best_pgd": by_epoch[best]})
    return out
