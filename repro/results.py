"""One JSON file per run: effective parameters, metrics as numbers, and provenance.

A :class:`Result` is what a notebook saves and what the book's tables are generated from. Files are written
atomically (temporary file + ``os.replace``), so an interrupted run never leaves a half-written result that the
pipeline would take as up to date. Metrics are fractions (0.998, not "99.8 %"); NaN is stored as ``null``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._io import write_text_atomic

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


@dataclass
class Result:
    """A run of one notebook (one table column).

    Attributes:
        column: the plan's column id (or any name for an ad-hoc run).
        kind: ``"attack"``, ``"defence"``, ``"raw"`` or ``"findings"``.
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
        return _clean(asdict(self))


def _clean(value):
    """JSON-ready copy: NaN/inf → None, tuples → lists, numpy and torch scalars → Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return _clean(value.tolist())
    raise TypeError(f"cannot store {type(value).__name__} in a result JSON: {value!r}")


def result_path(results_dir: str | os.PathLike, profile: str, column: str) -> Path:
    """``<results_dir>/<profile>/<column>.json`` (relative paths are taken from the repository root)."""
    return resolve_path(results_dir) / profile / f"{column}.json"


def executed_notebook_path(results_dir: str | os.PathLike, profile: str, column: str) -> Path:
    """``<results_dir>/<profile>/<column>.ipynb``: the executed notebook lives beside its result JSON."""
    return resolve_path(results_dir) / profile / f"{column}.ipynb"


def save(result: Result, path: str | os.PathLike) -> Path:
    """Write ``result`` as JSON to ``path`` atomically; fills ``created`` if empty. Returns the path."""
    path = resolve_path(path)
    if not result.created:
        result.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_text_atomic(json.dumps(result.to_json(), indent=2, ensure_ascii=False, allow_nan=False) + "\n", path)
    return path


def load(path: str | os.PathLike) -> Result:
    """Read a result JSON written by :func:`save`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a result of a schema this code reads.
    """
    path = resolve_path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: result schema {data.get('schema')!r}, this code reads schema {SCHEMA}")
    return Result(**data)


def load_profile(results_dir: str | os.PathLike, profile: str) -> dict[str, Result]:
    """All results under ``<results_dir>/<profile>/``, by column id."""
    folder = resolve_path(results_dir) / profile
    return {p.stem: load(p) for p in sorted(folder.glob("*.json"))}


# ---------------------------------------------------------------------------------------------------- provenance
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=repo_root(), capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info() -> dict:
    """The repository's commit (``None`` before the first commit or outside git) and whether the code is dirty.

    "Dirty" looks at the code only (``repro/``, ``notebooks/``, ``pyproject.toml``), not at results or the book,
    which the pipeline itself writes.
    """
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--", "repro", "notebooks", "pyproject.toml")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


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


# --------------------------------------------------------------------------------------------------- fingerprints
def source_files(sources) -> list[Path]:
    """The files named by ``sources`` (paths relative to the repository root; a folder means its ``*.py``)."""
    root = repo_root()
    files: list[Path] = []
    for rel in sources:
        p = root / rel
        if p.is_dir():
            files.extend(sorted(p.rglob("*.py")))
        elif p.exists():
            files.append(p)
    return files


def fingerprint(parameters: dict, sources) -> str:
    """sha256 over the parameters (canonical JSON) and the contents of ``sources`` (see :func:`source_files`)."""
    root = repo_root()
    digest = hashlib.sha256()
    digest.update(json.dumps(_clean(parameters), sort_keys=True).encode())
    for path in source_files(sources):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
