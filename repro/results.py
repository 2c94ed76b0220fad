"""One JSON file per run: effective parameters, metrics as numbers, and provenance.

A :class:`Result` is what a notebook saves and what the book's tables are generated from. Files are written
atomically (temporary file + ``os.replace``), so an interrupted run never leaves a half-written result that the
pipeline would take as up to date. Metrics are fractions (0.998, not "99.8 %"); NaN is stored as ``null``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._io import write_text_atomic
from ._source import git_info  # noqa: F401  (re-exported: results record it)

SCHEMA = 2


def repo_root() -> Path:
    """The repository that holds this package (the folder with ``pyproject.toml`` above ``repro/``).

    Falls back to the current directory for an installed (non-editable) package.
    """
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def resolve_path(path: str | os.PathLike) -> Path:
    """``path`` as given if absolute, else relative to :func:`repo_root` (not the notebook's folder, which differs
    between papermill, nbval and Jupyter)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p


# The kinds of run a result can record (repro.study.context.Context.kind).
KINDS = ("attack", "defence", "findings", "security", "training")


@dataclass
class Result:
    """A run of one notebook (one table column).

    Attributes:
        column: the plan's column id (or any name for an ad-hoc run).
        kind: which notebook kind produced it, one of :data:`KINDS` (an attack or defence column, the findings, the
            security evaluation or the training chapter).
        notebook: the notebook file that produced it.
        profile: the compute profile's name.
        parameters: the *effective* parameters, after profile budgets were filled in.
        metrics: metric name → fraction (or ``None`` where undefined, e.g. no successful adversarial example).
        intervals: metric name → its 95 % interval ``{"low", "high", "method", "n"}`` (Clopper–Pearson for rates,
            bootstrap over the images for means; ``None`` where the metric is undefined), from the same per-image
            values as the metric.
        extra: other numbers worth keeping (training histories, accuracy-vs-ε curves, both definitions of a
            metric, ...), JSON-ready.
        departures: departures from the paper's setting that apply to this run.
        provenance: git commit and dirty flag, versions, device, wall time, data and model provenance.
        fingerprint: hash of the parameters and of the source files the numbers depend on (the pipeline re-runs a
            column when it changes).
        created: UTC time the result was saved (ISO 8601).
        run_id: a random id per run; the pipeline stores it in the executed notebook too, so a JSON and a notebook
            from different runs are never taken for a pair.
    """

    column: str
    kind: str
    notebook: str
    profile: str
    parameters: dict
    metrics: dict
    intervals: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    departures: list = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    fingerprint: str = ""
    created: str = ""
    run_id: str = ""
    schema: int = SCHEMA

    def to_json(self) -> dict:
        return json_ready(asdict(self))


def json_ready(value):
    """JSON-ready copy: NaN/inf → None, tuples → lists, numpy and torch scalars → Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return json_ready(value.tolist())
    raise TypeError(f"cannot store {type(value).__name__} in a result JSON: {value!r}")


def result_path(results_dir: str | os.PathLike, profile: str, column: str) -> Path:
    """``<results_dir>/<profile>/<column>.json`` (relative paths are taken from the repository root)."""
    return resolve_path(results_dir) / profile / f"{column}.json"


def executed_notebook_path(results_dir: str | os.PathLike, profile: str, column: str) -> Path:
    """``<results_dir>/<profile>/<column>.ipynb``: the executed notebook lives beside its result JSON."""
    return resolve_path(results_dir) / profile / f"{column}.ipynb"


# The results tree in the repository that the pipeline writes and git tracks (ad-hoc runs write elsewhere), and the
# folder where the pipeline's notebook runs save before it moves their results there (ignored by git).
COMMITTED_RESULTS = "results"
PIPELINE_STAGING = "runs/pipeline"


def models_dir(results_dir: str | os.PathLike, profile: str) -> Path:
    """``<results_dir>/<profile>/models/``: the trained models behind a profile's results, published beside them
    (:func:`repro.train.publish`)."""
    return resolve_path(results_dir) / profile / "models"


def save(result: Result, path: str | os.PathLike) -> Path:
    """Write ``result`` as JSON to ``path`` atomically; fills ``created`` if empty. Returns the path."""
    path = resolve_path(path)
    if not result.created:
        result.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_text_atomic(json.dumps(result.to_json(), indent=2, ensure_ascii=False, allow_nan=False) + "\n", path)
    return path


class ResultError(ValueError):
    """A result file that cannot be shown: unreadable, not of this schema, or with a number that contradicts its
    definition (wrong type, outside its range, outside its own interval). The message names the file, the field,
    the value and what is allowed."""


# Interval methods a result may name: a rate's exact binomial interval, a mean's bootstrap (repro.metrics.uncertainty).
INTERVAL_METHODS = ("clopper-pearson", "bootstrap")
# Floating-point slack for "the point lies in its interval" (the bootstrap's percentiles are computed in float64 from
# float32 per-image values).
_SLACK = 1e-9


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate(result: Result, *, path: str | os.PathLike = "<result>") -> Result:
    """``result`` if every number in it can be what it claims to be, else :class:`ResultError` naming the first
    violation: the fields' types; each metric a finite number or ``None`` (undefined) within its range
    (:data:`repro.metrics.RANGES` by name; a rate, i.e. a Clopper–Pearson interval, in [0, 1]); each interval
    ``low <= point <= high`` with ``n`` a positive count, its method one of :data:`INTERVAL_METHODS`, and no interval
    for a metric the result does not report."""
    from .metrics import RANGES

    def bad(field_: str, value, allowed: str) -> ResultError:
        return ResultError(f"{path}: {field_} = {value!r}; allowed: {allowed}")

    for name, kind in (("column", str), ("kind", str), ("notebook", str), ("profile", str), ("parameters", dict),
                       ("metrics", dict), ("intervals", dict), ("extra", dict), ("departures", list),
                       ("provenance", dict), ("fingerprint", str), ("created", str), ("run_id", str)):
        if not isinstance(getattr(result, name), kind):
            raise bad(name, getattr(result, name), f"a {kind.__name__}")
    if result.kind not in KINDS:
        raise bad("kind", result.kind, ", ".join(KINDS))
    for name, value in result.metrics.items():
        if value is None:
            continue
        if not _is_number(value):
            raise bad(f"metrics.{name}", value, "a finite number (a fraction, not a percentage string) or null")
        interval = result.intervals.get(name)
        low, high = RANGES.get(name, (-math.inf, math.inf))
        if isinstance(interval, dict) and interval.get("method") == "clopper-pearson":
            low, high = max(low, 0.0), min(high, 1.0)
        if not low - _SLACK <= value <= high + _SLACK:
            raise bad(f"metrics.{name}", value, f"a value in [{low}, {high}]")
    for name, interval in result.intervals.items():
        if name not in result.metrics:
            raise bad(f"intervals.{name}", interval, f"an interval of a reported metric ({', '.join(result.metrics)})")
        point = result.metrics[name]
        if interval is None:
            continue
        if point is None:
            raise bad(f"intervals.{name}", interval, "null: the metric is undefined (null), so is its interval")
        if not isinstance(interval, dict) or set(interval) != {"low", "high", "method", "n"}:
            raise bad(f"intervals.{name}", interval, "an object with exactly low, high, method and n")
        if interval["method"] not in INTERVAL_METHODS:
            raise bad(f"intervals.{name}.method", interval["method"], " or ".join(INTERVAL_METHODS))
        n = interval["n"]
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
            raise bad(f"intervals.{name}.n", n, "a positive count of images")
        lo, hi = interval["low"], interval["high"]
        if not (_is_number(lo) and _is_number(hi)):
            raise bad(f"intervals.{name}", [lo, hi], "finite numbers low and high")
        if not lo - _SLACK <= point <= hi + _SLACK:
            raise bad(f"metrics.{name}", point, f"a value inside its own 95 % interval [{lo}, {hi}]")
    _check_outcomes(result, bad)
    return result


def _walk_rates(value, where: str):
    """Every stored rate record in ``value`` (a dict with ``rate``, ``k`` and ``n``), with its JSON path."""
    if isinstance(value, dict):
        if {"rate", "k", "n"} <= set(value):
            yield where, value
        for key, item in value.items():
            yield from _walk_rates(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk_rates(item, f"{where}[{i}]")


def _check_outcomes(result: Result, bad) -> None:
    """Rates that a result stores beside their per-image outcomes must agree with them: MR with the per-class
    success counts (``extra.by_class``), every ``{rate, k, n}`` record with ``k / n``, its interval and its
    per-image bit string (``correct``), and a security metric ``<model>/<measure>`` with its record."""
    by_class = result.extra.get("by_class")
    if isinstance(by_class, dict) and "MR" in result.metrics and result.metrics["MR"] is not None:
        n, k = sum(by_class.get("n_per_true_class", [])), sum(by_class.get("successes_per_true_class", []))
        if n and abs(result.metrics["MR"] - k / n) > _SLACK:
            raise bad("metrics.MR", result.metrics["MR"], f"{k} / {n} = {k / n}, the rate of the per-class success "
                                                          "counts stored in extra.by_class")
    for where, record in _walk_rates(result.extra, "extra"):
        rate, k, n = record["rate"], record["k"], record["n"]
        if not (isinstance(n, int) and isinstance(k, int) and 0 <= k <= n and n >= 1):
            raise bad(f"{where}.k/n", [k, n], "counts 0 <= k <= n, n >= 1")
        if not _is_number(rate) or abs(rate - k / n) > _SLACK:
            raise bad(f"{where}.rate", rate, f"k / n = {k} / {n} = {k / n}")
        if "low" in record and not record["low"] - _SLACK <= rate <= record["high"] + _SLACK:
            raise bad(f"{where}.rate", rate, f"a value inside its own interval [{record['low']}, {record['high']}]")
        bits = record.get("correct")
        if isinstance(bits, str) and (len(bits) != n or bits.count("1") != k or set(bits) - {"0", "1"}):
            raise bad(f"{where}.correct", f"{len(bits)} outcomes, {bits.count('1')} ones",
                      f"n = {n} outcomes of 0 or 1 with k = {k} ones")
    models = result.extra.get("security", {}).get("models") if isinstance(result.extra.get("security"), dict) else None
    if isinstance(models, dict):
        for name, value in result.metrics.items():
            model, _, measure = name.partition("/")
            record = models.get(model, {}).get(measure) if isinstance(models.get(model), dict) else None
            if isinstance(record, dict) and "rate" in record and value is not None and \
                    abs(value - record["rate"]) > _SLACK:
                raise bad(f"metrics.{name}", value, f"{record['rate']}, the rate in extra.security.models.{model}."
                                                    f"{measure}")


def load(path: str | os.PathLike) -> Result:
    """Read a result JSON written by :func:`save`, validated (:func:`validate`).

    Raises:
        FileNotFoundError: no such file.
        ResultError: not JSON, not a result of a schema this code reads, missing or unknown fields, or a number
            that contradicts its definition; the message names the file and the field.
    """
    path = resolve_path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultError(f"{path}: not a JSON result file (truncated or edited?): {err}") from None
    if not isinstance(data, dict):
        raise ResultError(f"{path}: a result file holds one JSON object, not a {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise ResultError(f"{path}: result schema {data.get('schema')!r}, this code reads schema {SCHEMA}")
    known = set(Result.__dataclass_fields__)
    required = {n for n, f in Result.__dataclass_fields__.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if set(data) - known or required - set(data):
        raise ResultError(f"{path}: unknown fields {sorted(set(data) - known)}, missing fields "
                          f"{sorted(required - set(data))}; a result has {sorted(known)}")
    return validate(Result(**data), path=path)


def load_profile(results_dir: str | os.PathLike, profile: str) -> dict[str, Result]:
    """All results under ``<results_dir>/<profile>/``, by column id."""
    folder = resolve_path(results_dir) / profile
    return {p.stem: load(p) for p in sorted(folder.glob("*.json"))}


# ---------------------------------------------------------------------------------------------------- provenance
def versions() -> dict:
    """Python, torch, torchvision, numpy versions and the platform (no local paths)."""
    import numpy
    import torch
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "platform": platform.platform()}


def device_info(device) -> dict:
    """The device's name: the GPU's model for CUDA, the CPU's model and thread count otherwise."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {"device": str(device), "name": torch.cuda.get_device_name(index)}
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"device": str(device), "name": name, "threads": torch.get_num_threads(), "cpus": os.cpu_count()}


def provenance(*, device, wall_time_s: float, data: dict | None = None, models: dict | None = None) -> dict:
    """Everything a result records about where and how it was computed."""
    return {"git": git_info(), "versions": versions(), "device": device_info(device), "wall_time_s": wall_time_s,
            "data": data or {}, "models": models or {}}
