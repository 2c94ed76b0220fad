"""Verdicts: does a published number agree with ours? One rule, applied to intervals; never typed by hand.

For one metric of one column and one reference (the follow-up's table or DeepSec's):

* **not comparable** when a departure of our run from the published setting affects that metric (a narrower or
  shorter-trained model, a cut attack budget, a defence trained on fewer images: :func:`noncomparable`);
* otherwise **consistent** when the published value lies inside our 95 % interval widened on each side by the
  metric's systematic allowance (:data:`ALLOWANCES`), **inconsistent** when it lies outside;
* no verdict where we have no interval (the metric is undefined, e.g. no successful adversarial example) or the paper
  printed nothing.

The allowance covers what differs even in the same setting and what our interval cannot see: a different retrained
raw model, a different draw of candidates, float and library versions. It is small, and relative for metrics whose
values are small, so that a ninefold gap never passes as "close".
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from ..metrics import DEFENCE_KEYS
from .plan import Column
from .profiles import Profile, budget_differences


class Verdict(str, enum.Enum):
    """The three verdicts a cell can get."""

    CONSISTENT = "consistent"
    INCONSISTENT = "inconsistent"
    NOT_COMPARABLE = "not comparable"


@dataclass(frozen=True)
class Allowance:
    """Systematic allowance of a metric: ``max(abs, rel·|published|)`` on each side of our interval."""

    abs: float
    rel: float
    why: str

    def width(self, published: float) -> float:
        return max(self.abs, self.rel * abs(published))


_RETRAINED = "another retrained raw model and another draw of candidates move it by about this much"
ALLOWANCES: dict[str, Allowance] = {
    "MR": Allowance(0.005, 0.0, "half a percentage point: " + _RETRAINED),
    "ACAC": Allowance(0.01, 0.02, _RETRAINED),
    "ACTC": Allowance(0.002, 0.10, "small values: relative, 10 %"),
    "ALD_L0": Allowance(0.01, 0.02, _RETRAINED),
    "ALD_L2": Allowance(0.0, 0.05, "5 %: the distance scales with the model's margins, which retraining moves"),
    "ALD_Linf": Allowance(0.0, 0.05, "5 %; for a bounded attack the value is ε itself"),
    "ASS": Allowance(0.01, 0.02, _RETRAINED),
    "PSD": Allowance(0.0, 0.05, "5 %, as for the L2 distance it weights"),
    "NTE": Allowance(0.002, 0.10, "small values: relative, 10 %"),
    "RGB": Allowance(0.01, 0.0, "one percentage point: " + _RETRAINED),
    "RIC": Allowance(0.01, 0.0, "one percentage point: " + _RETRAINED),
    "ACC_raw": Allowance(0.005, 0.0, "half a percentage point: another retrained raw model"),
    "ACC_defended": Allowance(0.005, 0.0, "half a percentage point: another training run of the defence"),
    "CAV": Allowance(0.005, 0.0, "half a percentage point, as the accuracies it subtracts"),
    "CRR": Allowance(0.002, 0.10, "small rates: relative, 10 %, at least 0.2 percentage points"),
    "CSR": Allowance(0.002, 0.10, "small rates: relative, 10 %, at least 0.2 percentage points"),
    "CCV": Allowance(0.002, 0.10, "small values: relative, 10 %"),
    "COS": Allowance(0.0002, 0.10, "small values: relative, 10 %"),
}

# Which metrics a kind of departure changes systematically ("all": every metric of the column; "defended": every
# defence metric that depends on the defended model, i.e. all but ACC_raw). Departures that only change how many
# images are measured (fewer candidates, a partial test split) are not listed: the interval accounts for them.
AFFECTS = {
    ("attack", "binary_search_steps"): ("all", "CW2 binary search steps"),
    ("attack", "max_iterations"): ("all", "CW2 iterations per search step"),
    ("train_wide", "epochs"): ("all", "wide ResNet training epochs"),
    ("train_wide", "subset"): ("all", "wide ResNet training images"),
    ("wide", "wide_width"): ("all", "wide ResNet width"),
    ("defence", "init"): ("defended", "defence initialisation"),
    ("defence", "epochs"): ("defended", "defence training epochs"),
    ("defence", "subset"): ("defended", "defence training images"),
    ("defence", "recipe"): ("defended", "defence training recipe"),
}


def _changed(profile: Profile, col: Column) -> list[tuple[str, str, object, object]]:
    """(part, field, ours, paper's) for every budget field of ``profile`` that differs from the paper's and that
    ``col`` uses."""
    return budget_differences(profile, uses=col.uses, attack=col.attack, dataset=col.parameters.get("dataset"))


def noncomparable(col: Column, profile: Profile, *, datasets: dict | None = None) -> dict[str, str]:
    """Metric → why it is not comparable with the published value, for ``col`` run under ``profile`` on the data
    ``datasets`` records (a result's ``provenance["data"]["datasets"]``; a partial training set makes every model
    trained here not comparable)."""
    reasons: dict[str, list[str]] = {}

    def add(scope: str, why: str) -> None:
        keys = col.metric_keys if scope == "all" else tuple(k for k in DEFENCE_KEYS if k != "ACC_raw")
        for key in keys:
            if key in col.metric_keys and why not in reasons.get(key, []):
                reasons.setdefault(key, []).append(why)

    for part, name, ours, paper in _changed(profile, col):
        if (part, name) in AFFECTS:
            scope, label = AFFECTS[(part, name)]
            shown = lambda v: "all" if v is None and name == "subset" else "DeepSec's" if v is None and \
                name == "recipe" else "the recipe's" if v is None \
                else f"{v:,}" if isinstance(v, int) else str(v)  # noqa: E731
            add(scope, f"{label} {shown(ours)} instead of {shown(paper)}")
    partial = [d for d in (datasets or {}).values() if not d.get("official", True)]
    if partial and ("train_wide" in col.uses or "defence" in col.uses):
        add("all" if "train_wide" in col.uses else "defended",
            f"trained on {partial[0].get('train', 0):,} of {partial[0].get('full_train', 0):,} training images")
    return {k: "; ".join(v) for k, v in reasons.items()}


def verdict(*, low: float | None, high: float | None, published: float | None, metric: str,
            reason: str | None = None) -> Verdict | None:
    """The verdict of one cell (see the module docstring); ``None`` when there is nothing to judge."""
    if published is None or (isinstance(published, float) and math.isnan(published)):
        return None
    if reason:
        return Verdict.NOT_COMPARABLE
    if low is None or high is None:
        return None
    margin = ALLOWANCES[metric].width(published) + 1e-12
    return Verdict.CONSISTENT if low - margin <= published <= high + margin else Verdict.INCONSISTENT
