"""Verdicts: does a published number agree with ours? One rule, applied to intervals and measured departure effects;
never typed by hand.

For one metric of one column and one reference (the follow-up's table or DeepSec's), every way our run departs from
that reference's setting is an :class:`Effect` on the metric: how far the departure moves it (``ours − the reference
setting's value``, an interval), or *unmeasured*. Then the cell is

* **not comparable** when a departure that can move the metric has no measurement (:attr:`Effect.measured` false),
  or when its measured effect reaches beyond the metric's allowance on either side (the departure matters: the
  numbers describe different things);
* otherwise **consistent** when the published value lies inside our 95 % interval, shifted back by the measured
  effects and widened on each side by the metric's allowance (:func:`allowance`), **inconsistent** when it lies
  outside;
* no verdict where we have no interval (the metric is undefined, e.g. no successful adversarial example) or the paper
  printed nothing.

Departures and where their effects come from (:func:`effects`):

* the profile's budget departures (a cut CW2 search, a narrower or shorter-trained network, a defence trained
  differently or on fewer images, a partial training set): unmeasured until a paired run of both settings exists;
* DeepSec's released checkpoints, which DeepSec's authors retrained after the paper (a departure from DeepSec's paper
  only): estimated from the follow-up's run of DeepSec's code on the released checkpoint, which printed its own value
  for the same cell — used only where our measured raw accuracy shows that the follow-up's raw model behaves as the
  released checkpoint does (consistent with the follow-up's raw accuracy).

The allowance covers what differs even in the same setting and what our interval cannot see. Where the column has
seed replicates that retrain its model, it is measured: the range of the replicates' values (:func:`allowance`);
elsewhere it is the assumed value of :data:`ALLOWANCES`, and the book says which. A consistent verdict can still be
uninformative: :func:`power` says when the published value sits at a bound any run of that kind reaches.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from ..metrics import DEFENCE_KEYS, RANGES
from .plan import COLUMNS, TABLE_METRICS, Column, columns_for, published, replicates
from .profiles import Profile, budget_differences, get_profile


class Verdict(str, enum.Enum):
    """The three verdicts a cell can get."""

    CONSISTENT = "consistent"
    INCONSISTENT = "inconsistent"
    NOT_COMPARABLE = "not comparable"


REFERENCES = (("follow-up", "followup"), ("deepsec", "deepsec"))  # (source in the CSVs, key in comparison rows)


@dataclass(frozen=True)
class Allowance:
    """Systematic allowance of a metric: ``max(abs, rel·|published|)`` on each side of our interval. ``basis`` is
    "assumed" (:data:`ALLOWANCES`) or "measured" (from the runs named in ``why``)."""

    abs: float
    rel: float
    why: str
    basis: str = "assumed"

    def width(self, published: float) -> float:
        return max(self.abs, self.rel * abs(published))


_RETRAINED = ("another implementation and another run on the same model move it by about this much (our seed "
              "replicates move it less: see the measured spreads)")
# The assumed allowances: used where no replicate measures the spread (the book lists which cells use which). They
# stand for what differs between two runs of the same setting on the same model; a retrained model moves several
# metrics further (the published pairs of allowance_evidence), which is why the released checkpoint is counted as a
# departure with its own measured effect and never absorbed into an allowance.
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
    "ACC_raw": Allowance(0.005, 0.0, "half a percentage point: the same raw model evaluated by other code (a "
                                     "retrained one moves it further)"),
    "ACC_defended": Allowance(0.005, 0.0, "half a percentage point: another training run of the defence"),
    "CAV": Allowance(0.005, 0.0, "half a percentage point, as the accuracies it subtracts"),
    "CRR": Allowance(0.002, 0.10, "small rates: relative, 10 %, at least 0.2 percentage points"),
    "CSR": Allowance(0.002, 0.10, "small rates: relative, 10 %, at least 0.2 percentage points"),
    "CCV": Allowance(0.002, 0.10, "small values: relative, 10 %"),
    "COS": Allowance(0.0002, 0.10, "small values: relative, 10 %"),
}

# Which metrics a kind of budget departure can move ("all": every metric of the column; "defended": every defence
# metric that depends on the defended model, i.e. all but ACC_raw). Departures that only change how many images are
# measured (fewer candidates, a partial test split) are not listed: the interval accounts for them.
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
    ("defence", "defence_params"): ("defended", "defence parameters"),
    ("defence", "jpeg_fill"): ("defended", "defence training images"),
}
# Budget departures that only change how many images are measured (the interval accounts for them), and the raw
# model's source (judged by its own rule, RELEASED_CHECKPOINT): every other departure is in AFFECTS (a test checks).
MEASUREMENT_ONLY = {("attack", "n_candidates"), ("attack", "ric_samples"), ("defence", "eval_subset"),
                    ("raw", "source")}
RELEASED_CHECKPOINT = "DeepSec's released checkpoint instead of the paper's model"
# Why a budget departure's effect has no measurement here: what measuring it would take. The same key as AFFECTS;
# PARTIAL_DATA for a partial training set (not a budget of the profile).
_PAPER_RUN = "the paper profile's run, a GPU job"
UNMEASURED_WHY = {
    ("attack", "binary_search_steps"): "it needs the attack at the paper's budget on the same images",
    ("attack", "max_iterations"): "it needs the attack at the paper's budget on the same images",
    ("train_wide", "epochs"): "it needs the recipe's full 200-epoch training, " + _PAPER_RUN,
    ("train_wide", "subset"): "it needs the model trained on all training images, " + _PAPER_RUN,
    ("wide", "wide_width"): "it needs the ×10 model, " + _PAPER_RUN,
    ("defence", "init"): "it needs DeepSec's PAT from scratch (200 epochs), " + _PAPER_RUN,
    ("defence", "epochs"): "it needs DeepSec's PAT from scratch (200 epochs), " + _PAPER_RUN,
    ("defence", "subset"): "it needs the defence trained on all training images, " + _PAPER_RUN,
    ("defence", "recipe"): "it needs DeepSec's PAT from scratch (200 epochs), " + _PAPER_RUN,
    ("defence", "defence_params"): "it needs DeepSec's PAT from scratch (200 epochs), " + _PAPER_RUN,
    ("defence", "jpeg_fill"): ("it needs the defence trained on the complete exact training set, which the CIFAR-10 "
                               "copy here lacks"),
}
PARTIAL_DATA = ("data", "partial")
UNMEASURED_WHY[PARTIAL_DATA] = ("it needs the complete training set, which the exact CIFAR-10 copy here lacks; the "
                                "JPEG copy may train, never evaluate")


def recipe_words(name: str, recorded: dict | None = None) -> str:
    """A training recipe in words, without its identifier: DeepSec's or ours, the optimiser, the peak learning rate,
    the schedule (a step schedule without decays is a constant rate), label smoothing where there is any, and whether
    it fine-tunes trained weights.

    The values are ``recorded``'s (a trained model's stored recipe fields) where given, else today's
    :data:`repro.train.config.RECIPES` entry of that name; a name known to neither is returned as it is."""
    import dataclasses

    from ..train.config import DEEPSEC_RECIPE, RECIPES

    values = {**(dataclasses.asdict(RECIPES[name]) if name in RECIPES else {}), **(recorded or {})}
    if not {"optimiser", "lr", "schedule"} <= set(values):
        return name
    whose = "DeepSec's" if name in DEEPSEC_RECIPE.values() else "ours"
    optimiser = {"sgd": "SGD", "adam": "Adam"}.get(values["optimiser"], values["optimiser"])
    constant = values["schedule"] == "step" and not values.get("lr_decays", True)
    smoothing = values.get("label_smoothing") or 0
    return (f"{whose} ({optimiser}, lr {values['lr']:g}, {'constant' if constant else values['schedule']}"
            f"{f', label smoothing {smoothing:g}' if smoothing else ''}{', fine-tuning' if values.get('fine_tune') else ''})")


@dataclass(frozen=True)
class Effect:
    """How far one departure moves one metric: ``ours − the reference setting's value`` lies in [``low``, ``high``]
    (both ``None``: unmeasured). ``kind`` says where the numbers come from: "unmeasured"; "published pair" (the
    follow-up's run of the same setting on the released checkpoint against DeepSec's paper, ``detail`` holding both
    printed values and, under "raw_accuracy", :func:`raw_accuracy_evidence`); "paired" (a run of both settings on
    the same images); "measurement column" (the same attack on a model that varies this departure: a plan column
    whose :attr:`Column.measures` is this column, ``detail`` naming it and both values)."""

    departure: str
    metric: str
    low: float | None = None
    high: float | None = None
    kind: str = "unmeasured"
    detail: dict = field(default_factory=dict)
    why: str = ""  # unmeasured: what measuring it would take (UNMEASURED_WHY)

    @property
    def measured(self) -> bool:
        return self.low is not None and self.high is not None


@dataclass(frozen=True)
class Cell:
    """The judgement of one published number: the verdict, the effects it took into account, the allowance used and
    the effects that made it not comparable (``blocking``)."""

    verdict: Verdict | None
    effects: tuple[Effect, ...] = ()
    blocking: tuple[Effect, ...] = ()
    allowance: float | None = None


def _scope_keys(col: Column, scope: str) -> tuple[str, ...]:
    return col.metric_keys if scope == "all" else tuple(k for k in DEFENCE_KEYS if k != "ACC_raw")


def budget_departures(col: Column, profile: Profile, *, datasets: dict | None = None) -> dict[str, list[str]]:
    """Metric → the worded budget departures of ``col`` under ``profile`` that can move it (both references), on the
    data ``datasets`` records (a result's ``provenance["data"]["datasets"]``: a partial training set moves every
    model trained here)."""
    return {metric: [label for _, label, _ in parts]
            for metric, parts in _budget_departure_parts(col, profile, datasets=datasets).items()}


def _budget_departure_parts(col: Column, profile: Profile, *,
                            datasets: dict | None = None) -> dict[str, list[tuple[str, str, tuple]]]:
    """Metric → ``(part, label, source)`` of each budget departure that can move it; ``part`` is the
    :attr:`Column.uses` part of the profile's budget the departure belongs to (a partial training set: the model's
    training part); ``source`` its :data:`AFFECTS` key (:data:`PARTIAL_DATA` for a partial training set)."""
    out: dict[str, list[tuple[str, str, tuple]]] = {}

    def add(scope: str, why: str, part: str, source: tuple) -> None:
        for key in _scope_keys(col, scope):
            if key in col.metric_keys and why not in [label for _, label, _ in out.get(key, [])]:
                out.setdefault(key, []).append((part, why, source))

    changed = budget_differences(profile, uses=col.uses, attack=col.attack, dataset=col.parameters.get("dataset"))
    for part, name, ours, paper in changed:
        if (part, name) in AFFECTS:
            scope, label = AFFECTS[(part, name)]
            add(scope, _departure_words(name, label, ours, paper), part, (part, name))
    partial = [d for d in (datasets or {}).values() if not d.get("official", True)]
    # A defence trained on the JPEG copies too has seen every training image (its departure says how): the partial
    # copy then counts against the model it starts from only where that was trained here (the wide ResNet).
    filled = "defence" in col.uses and any((p, n) == ("defence", "jpeg_fill") for p, n, _, _ in changed)
    if partial and ("train_wide" in col.uses or ("defence" in col.uses and not filled)):
        add("all" if "train_wide" in col.uses else "defended",
            f"trained on {partial[0].get('train', 0):,} of {partial[0].get('full_train', 0):,} training images",
            "train_wide" if "train_wide" in col.uses else "defence", PARTIAL_DATA)
    return out


def _departure_words(name: str, label: str, ours, paper) -> str:
    """A budget departure in words: "<label> <ours> instead of <paper's>", each value as the field reads it."""
    if name == "jpeg_fill":
        return f"{label}: the exact ones plus lossy JPEG copies of those the copy lacks, instead of all exact"

    def shown(v) -> str:
        if v is None:
            return {"subset": "all", "recipe": "DeepSec's"}.get(name, "the recipe's")
        if name == "recipe":
            return recipe_words(v)
        if isinstance(v, dict):
            return ", ".join(f"{k} = {x:g}" for k, x in sorted(v.items())) if v else "the papers' (none)"
        return f"{v:,}" if isinstance(v, int) else str(v)

    return f"{label} {shown(ours)} instead of {shown(paper)}"


def measured_departure(col: Column, part: str, metric: str, profile: Profile, found: dict) -> tuple | None:
    """``(low, high, detail)`` of how far the departures of ``col``'s budget ``part`` move ``metric``, measured by a
    plan measurement column (:attr:`Column.measures` ``== col.id``, :attr:`Column.varies` ``== part``): the interval
    of ``ours − theirs`` from the two results' 95 % intervals (their half-widths add: conservative); ``None``
    without such a column's result or where either interval is missing."""
    ours = found.get(col.id)
    for other in columns_for(profile.name):
        if other.measures != col.id or other.varies != part or other.id not in found or ours is None:
            continue
        a, b = ours.intervals.get(metric) or {}, found[other.id].intervals.get(metric) or {}
        if None in (a.get("low"), a.get("high"), b.get("low"), b.get("high")):
            return None
        return (a["low"] - b["high"], a["high"] - b["low"],
                {"column": other.id, "model": other.model_label, "ours": finite(ours.metrics.get(metric)),
                 "theirs": finite(found[other.id].metrics.get(metric))})
    return None


def noncomparable(col: Column, profile: Profile, *, datasets: dict | None = None) -> dict[str, str]:
    """Metric → the budget departures that move it, joined with "; " (see :func:`budget_departures`)."""
    return {k: "; ".join(v) for k, v in budget_departures(col, profile, datasets=datasets).items()}


def published_table(col: Column) -> str:
    """The published table ("1" or "2") a column is compared with (its own, or its kind's for other columns)."""
    return col.table if col.table in TABLE_METRICS else "1" if col.attack else "2"


def _published(col: Column) -> dict:
    if col.compare_with is None:
        return {}
    return {(r.source, r.metric): r for r in published(published_table(col)) if r.column == col.compare_with}


def finite(value):
    """``value`` if it is a finite number (not a bool), else ``None``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def _uses_released_checkpoint(col: Column, profile: Profile) -> bool:
    from .models import uses_deepsec_checkpoint

    model = col.parameters_for(profile.name).get("model")
    return "raw" in col.uses and model is not None and uses_deepsec_checkpoint(model, profile)


def raw_accuracy_evidence(dataset: str, profile: Profile, found: dict) -> dict | None:
    """Our measured accuracy of DeepSec's released checkpoint on ``dataset`` beside the follow-up's and DeepSec's
    printed raw accuracy, from the first defence column on that dataset that evaluates the released checkpoint:
    ``{"ours", "low", "high", "followup", "deepsec", "matches_followup"}`` (``None`` without such a result).
    ``matches_followup``: the follow-up's raw accuracy is consistent with ours by the rule of this module, i.e. the
    follow-up's raw model behaves as the released checkpoint does."""
    for col in columns_for(profile.name):
        if col.defence is None or col.replicate_of or col.parameters.get("dataset") != dataset \
                or not _uses_released_checkpoint(col, profile) or col.id not in found:
            continue
        result = found[col.id]
        interval = result.intervals.get("ACC_raw") or {}
        pub = _published(col)
        fu, ds = pub.get(("follow-up", "ACC_raw")), pub.get(("deepsec", "ACC_raw"))
        if interval.get("low") is None or fu is None or ds is None:
            continue
        match = verdict(low=interval["low"], high=interval["high"], published=fu.value, metric="ACC_raw")
        return {"ours": result.metrics.get("ACC_raw"), "low": interval["low"], "high": interval["high"],
                "followup": fu.value, "deepsec": ds.value, "matches_followup": match == Verdict.CONSISTENT}
    return None


def effects(col: Column, profile: Profile, *, reference: str, found: dict | None = None,
            datasets: dict | None = None) -> dict[str, list[Effect]]:
    """Metric → the :class:`Effect` of every departure of ``col`` (run under ``profile``) from the setting of
    ``reference`` ("followup" or "deepsec") that can move that metric, measured from the results in ``found``
    (column id → result) where a measurement exists."""
    out: dict[str, list[Effect]] = {}
    for metric, parts in _budget_departure_parts(col, profile, datasets=datasets).items():
        out[metric] = []
        for part in dict.fromkeys(part for part, _, _ in parts):  # a measurement column varies a part as a whole
            labels = [label for p, label, _ in parts if p == part]
            measured = measured_departure(col, part, metric, profile, found or {})
            if measured is None:
                out[metric] += [Effect(label, metric, why=UNMEASURED_WHY.get(source, ""))
                                for p, label, source in parts if p == part]
            else:
                out[metric].append(Effect("; ".join(labels), metric, measured[0], measured[1],
                                          "measurement column", measured[2]))
    if reference == "deepsec" and _uses_released_checkpoint(col, profile):
        pub = _published(col)
        evidence = raw_accuracy_evidence(col.parameters.get("dataset"), profile, found or {})
        for metric in col.metric_keys:
            if metric == "CC":
                continue
            fu, ds = pub.get(("follow-up", metric)), pub.get(("deepsec", metric))
            if evidence and evidence["matches_followup"] and fu is not None and ds is not None:
                shift = fu.value - ds.value
                effect = Effect(RELEASED_CHECKPOINT, metric, shift, shift, "published pair",
                                {"followup": fu.value, "deepsec": ds.value, "raw_accuracy": evidence})
            else:
                effect = Effect(RELEASED_CHECKPOINT, metric, detail={"raw_accuracy": evidence})
            out.setdefault(metric, []).append(effect)
    return out


def allowance(col: Column, metric: str, profile: Profile, found: dict | None = None) -> Allowance:
    """The allowance of ``metric`` for ``col``: measured when ``col`` has results from seed replicates that retrain
    the model the metric depends on (a defence column's replicates retrain the defence: every metric but ACC_raw) —
    the range of the point values over those runs —; else the assumed :data:`ALLOWANCES` entry."""
    assumed = ALLOWANCES[metric]
    found = found or {}
    retrains = col.defence is not None and metric != "ACC_raw"
    runs = [found[c.id] for c in [col, *replicates(col.id, profile.name)] if c.id in found]
    values = [v for v in (finite(r.metrics.get(metric)) for r in runs) if v is not None]
    if not retrains or len(values) < 3:
        return assumed
    seeds = ", ".join(str(r.parameters.get("seed")) for r in runs)
    spread = max(values) - min(values)
    return Allowance(spread, 0.0, f"the range of the values of {len(values)} models trained with seeds {seeds}",
                     basis="measured")


def allowance_evidence(profile: str, found: dict) -> list[dict]:
    """What the allowances can be checked against, per metric of Tables 1 and 2, measured under ``profile``:
    ``seed_spread`` (per column with seed replicates, table or measurement column: the range of the point values over
    the seeds, its title and the seeds) and ``retrain`` (per column compared with both papers on DeepSec's released
    checkpoint: the follow-up's printed value minus DeepSec's, the same setting on the retrained model). Each entry
    holds ``allowance``, the width the verdict allows around that column's value (the follow-up's printed value,
    else DeepSec's, else ours), and ``within`` (the spread or shift is no wider); ``covers_seeds``: every seed spread
    is within its allowance."""
    prof = get_profile(profile)
    out = []
    for table, metrics in TABLE_METRICS.items():
        for metric in metrics:
            spreads, retrain = [], []
            for col in columns_for(prof.name):
                if col.replicate_of or col.id not in found or metric not in col.metric_keys:
                    continue
                pub = _published(col)
                fu, ds = pub.get(("follow-up", metric)), pub.get(("deepsec", metric))
                runs = [found[c.id] for c in [col, *replicates(col.id, prof.name)] if c.id in found]
                values = [v for v in (finite(r.metrics.get(metric)) for r in runs) if v is not None]
                centre = fu.value if fu is not None else ds.value if ds is not None else (values or [None])[0]
                width = None if centre is None else ALLOWANCES[metric].width(centre)
                if len(values) >= 2:
                    spread = max(values) - min(values)
                    spreads.append({"column": col.title, "range": spread, "allowance": width,
                                    "within": width is not None and spread <= width + 1e-12,
                                    "seeds": [r.parameters.get("seed") for r in runs]})
                if col.table == table and _uses_released_checkpoint(col, prof) and fu is not None and ds is not None:
                    shift, at = fu.value - ds.value, ALLOWANCES[metric].width(ds.value)
                    retrain.append({"column": col.title, "followup": fu.value, "deepsec": ds.value, "shift": shift,
                                    "allowance": at, "within": abs(shift) <= at + 1e-12})
            if spreads or retrain:
                out.append({"metric": metric, "seed_spread": spreads, "retrain": retrain,
                            "covers_seeds": all(e["within"] for e in spreads)})
    return out


def verdict(*, low: float | None, high: float | None, published: float | None, metric: str,
            reason: str | None = None, effects: list[Effect] | tuple = (),
            margin: float | None = None) -> Verdict | None:
    """The verdict of one cell (see the module docstring); ``None`` when there is nothing to judge. ``reason``: a
    departure known to move the metric without an :class:`Effect` (not comparable); ``margin``: the allowance's
    width (default: the assumed :data:`ALLOWANCES` entry's)."""
    return judge(low=low, high=high, published=published, metric=metric, effects=effects, margin=margin,
                 reason=reason).verdict


def judge(*, low: float | None, high: float | None, published: float | None, metric: str,
          effects: list[Effect] | tuple = (), margin: float | None = None, reason: str | None = None) -> Cell:
    """The :class:`Cell` of one published value against our interval [``low``, ``high``] and the ``effects`` of
    the departures that can move the metric (see the module docstring)."""
    if published is None or (isinstance(published, float) and math.isnan(published)):
        return Cell(None, tuple(effects))
    width = ALLOWANCES[metric].width(published) if margin is None else margin
    blocking = tuple(e for e in effects if not e.measured or max(abs(e.low), abs(e.high)) > width + 1e-12)
    if reason or blocking:
        return Cell(Verdict.NOT_COMPARABLE, tuple(effects), blocking, width)
    if low is None or high is None:
        return Cell(None, tuple(effects), (), width)
    # The reference setting's value: ours minus the departures' effects.
    lo = low - sum(e.high for e in effects) - width - 1e-12
    hi = high - sum(e.low for e in effects) + width + 1e-12
    return Cell(Verdict.CONSISTENT if lo <= published <= hi else Verdict.INCONSISTENT, tuple(effects), (), width)


def power(col: Column, metric: str, published: float, *, low: float | None, high: float | None,
          params: dict | None = None) -> str | None:
    """Why a consistent verdict on ``metric`` says little (``None``: it is informative): the published value and our
    interval sit at a bound of the metric's range, which any run of this kind reaches (MR 100 % for an unbounded or
    strong attack on an undefended model), or, for L∞ of a bounded attack, at the attack's ε itself."""
    if low is None or high is None:
        return None
    lo_bound, hi_bound = RANGES.get(metric, (-math.inf, math.inf))
    tol = ALLOWANCES[metric].width(published) + 1e-9
    for bound, name in ((lo_bound, "lower"), (hi_bound, "upper")):
        if math.isfinite(bound) and abs(published - bound) <= tol and min(abs(low - bound), abs(high - bound)) <= tol:
            return f"at the {name} bound of the metric ({bound:g})"
    eps = (params or {}).get("eps")
    if metric == "ALD_Linf" and isinstance(eps, (int, float)) and eps < 1 and abs(published - eps) <= tol \
            and abs(high - eps) <= tol:
        return f"the L∞ distance of a bounded attack is its ε ({eps:g}) by construction"
    return None


def model_insensitive(col: Column, metric: str, published: float, profile: Profile, found: dict) -> str | None:
    """Why a consistent verdict on ``metric`` says nothing about ``col``'s model: every measurement column of
    ``col`` (the same attack on clearly different models) is consistent with ``published`` too, by the same rule
    without effects; ``None`` when there is no such column or one of them is not consistent."""
    others = [m for m in columns_for(profile.name) if m.measures == col.id and m.id in found]
    if not others:
        return None
    for m in others:
        interval = found[m.id].intervals.get(metric) or {}
        cell = judge(low=interval.get("low"), high=interval.get("high"), published=published, metric=metric,
                     margin=allowance(col, metric, profile, found).width(published))
        if cell.verdict != Verdict.CONSISTENT:
            return None
    return "the same attack on " + " and on ".join(m.model_label for m in others) + " is consistent with it too"


def comparison_rows(col: Column, result, profile: str | None = None, found: dict | None = None) -> list[dict]:
    """One dict per metric of ``col``: ``ours`` with ``low``/``high``/``n`` (its 95 % interval), and per reference
    key ``k`` ("followup", "deepsec"): the published value ``k`` (a fraction or None), ``second_hand_k``, ``d_k``
    (ours − published), ``verdict_k`` (a :class:`Verdict` or None), ``cell_k`` (its :class:`Cell`), ``power_k`` (why a
    consistent verdict is uninformative, or None), ``allowance_k`` (the :class:`Allowance` used); ``reason``: the
    budget departures that move the metric; for a defence the null defence's value ``null`` and its verdicts
    ``null_verdict_k``. ``found`` (column id → result) supplies the measurements behind effects and allowances."""
    pub = _published(col)
    prof = get_profile(profile or (result.profile if result is not None else "paper"))
    datasets = {} if result is None else result.provenance.get("data", {}).get("datasets", {})
    found = dict(found or {})
    if result is not None:
        found.setdefault(col.id, result)
    reasons = noncomparable(col, prof, datasets=datasets)
    per_ref = {key: effects(col, prof, reference=key, found=found, datasets=datasets) for _, key in REFERENCES}
    null = {} if result is None else result.extra.get("null_defence", {})
    params = {} if result is None else result.parameters
    rows = []
    for metric in col.metric_keys:
        ours = None if result is None else finite(result.metrics.get(metric))
        interval = (None if result is None else result.intervals.get(metric)) or {}
        row = {"metric": metric, "ours": ours, "low": interval.get("low"), "high": interval.get("high"),
               "n": interval.get("n"), "reason": reasons.get(metric, "")}
        null_interval = (null.get("intervals") or {}).get(metric) or {}
        row["null"] = finite(null.get("metrics", {}).get(metric)) if null else None
        allow = allowance(col, metric, prof, found)
        for source, key in REFERENCES:
            entry = pub.get((source, metric))
            value = None if entry is None else entry.value
            row[key] = value
            row[f"second_hand_{key}"] = entry is not None and entry.second_hand
            row[f"d_{key}"] = None if entry is None or ours is None else ours - entry.value
            margin = None if value is None else allow.width(value)
            cell = judge(low=row["low"], high=row["high"], published=value, metric=metric,
                         effects=per_ref[key].get(metric, []), margin=margin)
            row[f"cell_{key}"] = cell
            row[f"verdict_{key}"] = cell.verdict
            row[f"allowance_{key}"] = allow
            row[f"power_{key}"] = (power(col, metric, value, low=row["low"], high=row["high"], params=params)
                                   or model_insensitive(col, metric, value, prof, found)) \
                if cell.verdict == Verdict.CONSISTENT else None
            row[f"null_verdict_{key}"] = None if row["null"] is None else verdict(
                low=null_interval.get("low"), high=null_interval.get("high"), published=value, metric=metric)
        rows.append(row)
    return rows


def measurement_rows(profile: str, found: dict) -> list[dict]:
    """The measurement columns of ``profile`` with results, each with per-metric rows of how far the departure it
    varies moves the measured column's metric: ``{"column", "measures", "varies", "model", "rows"}``; a row holds
    ``metric``, ``ours``/``theirs`` (point values), ``low``/``high`` (the difference's interval, ours − theirs),
    ``allowance`` (the width the verdicts allow around the follow-up's value, or around ours where nothing is
    published) and ``within`` (the whole difference interval inside ± that allowance: the departure does not count
    against the verdict)."""
    prof = get_profile(profile)
    out = []
    for m in columns_for(prof.name):
        if m.measures is None or m.id not in found or m.measures not in found:
            continue
        target = next(c for c in columns_for(prof.name) if c.id == m.measures)
        pub = _published(target)
        rows = []
        for metric in target.metric_keys:
            measured = measured_departure(target, m.varies, metric, prof, found)
            if measured is None:
                continue
            low, high, detail = measured
            entry = pub.get(("follow-up", metric))
            centre = entry.value if entry is not None else detail["ours"]
            width = None if centre is None else allowance(target, metric, prof, found).width(centre)
            rows.append({"metric": metric, "ours": detail["ours"], "theirs": detail["theirs"], "low": low,
                         "high": high, "allowance": width,
                         "within": width is not None and max(abs(low), abs(high)) <= width + 1e-12})
        out.append({"column": m.id, "measures": target.id, "varies": m.varies, "model": m.model_label,
                    "measured_model": target.model_label, "rows": rows})
    return out


def verdict_counts(rows: list[dict], key: str) -> dict[Verdict, int]:
    """How many cells of ``rows`` got each verdict against the reference ``key`` ("followup" or "deepsec")."""
    return {v: sum(1 for r in rows if r[f"verdict_{key}"] == v) for v in Verdict}


def table_cells(profile: str, found: dict) -> dict[str, list[dict]]:
    """Column id → its :func:`comparison_rows`, for every Table 1 and Table 2 column of ``profile`` (not the seed
    replicates) that has a result in ``found``."""
    return {col.id: comparison_rows(col, found[col.id], profile, found) for col in columns_for(profile)
            if col.table in TABLE_METRICS and not col.replicate_of and col.id in found}


def cell_totals(profile: str, found: dict) -> dict[Verdict, int]:
    """How many published cells of Tables 1 and 2 got each verdict, over both references and every column."""
    summary = table_summary(profile, found).values()
    return {Verdict.CONSISTENT: sum(t["consistent"] for t in summary),
            Verdict.INCONSISTENT: sum(t["inconsistent"] for t in summary),
            Verdict.NOT_COMPARABLE: sum(t["not_comparable"] for t in summary)}


def table_summary(profile: str, found: dict) -> dict[str, dict]:
    """Per published table ("1", "2"): how many of its cells got each verdict over both references (``total``,
    ``consistent``, ``inconsistent``, ``not_comparable``) and ``blocking``: the departures that make cells not
    comparable, most cells first, each ``{"departure", "cells", "measured", "why"}`` (``why``: what measuring an
    unmeasured one would take); ``unmeasured_only``: the not-comparable cells that no measured effect blocks, i.e.
    the cells a run in the paper's setting would settle."""
    out, cells = {}, table_cells(profile, found)
    for table in TABLE_METRICS:
        counts = {v: 0 for v in Verdict}
        blocking: dict[str, dict] = {}
        unmeasured_only = 0
        for cid, rows in cells.items():
            if COLUMNS[cid].table != table:
                continue
            for r in rows:
                for _, key in REFERENCES:
                    cell = r[f"cell_{key}"]
                    if cell.verdict is None:
                        continue
                    counts[cell.verdict] += 1
                    if cell.verdict == Verdict.NOT_COMPARABLE and all(not e.measured for e in cell.blocking):
                        unmeasured_only += 1
                    for e in {e.departure: e for e in cell.blocking}.values():  # a cell counts once per departure
                        entry = blocking.setdefault(e.departure, {"departure": e.departure, "cells": 0,
                                                                  "measured": e.measured, "why": e.why})
                        entry["cells"] += 1
        out[table] = {"total": sum(counts.values()), "consistent": counts[Verdict.CONSISTENT],
                      "inconsistent": counts[Verdict.INCONSISTENT], "not_comparable": counts[Verdict.NOT_COMPARABLE],
                      "blocking": sorted(blocking.values(), key=lambda b: -b["cells"]),
                      "unmeasured_only": unmeasured_only}
    return out


def seed_spread(col: Column, profile: str, found: dict) -> dict:
    """Mean and sample standard deviation of each metric over ``col`` and its seed replicates with results:
    ``{"seeds": [...], "mean": {metric: value}, "std": {metric: value}}`` (metrics undefined in any run are left
    out; empty without a replicate)."""
    reps = [found[c.id] for c in replicates(col.id, profile) if c.id in found]
    if not reps or col.id not in found:
        return {}
    runs = [found[col.id], *reps]
    mean, std = {}, {}
    for metric in col.metric_keys:
        values = [finite(r.metrics.get(metric)) for r in runs]
        if all(v is not None for v in values):
            mean[metric], std[metric] = mean_std(values)
    return {"seeds": [r.parameters.get("seed") for r in runs], "mean": mean, "std": std}


def mean_std(values: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (n − 1) of at least two values (the spread over seeds)."""
    if len(values) < 2:
        raise ValueError(f"a spread needs at least two values, got {len(values)}")
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
