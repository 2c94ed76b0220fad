"""The training cache, and folders of published models.

A trained model is kept under ``repro.models.cache_dir()/"trained"/<config_key>``, content-addressed by
:func:`repro.train.config.config_key` (which holds the training code's hash and the training images' digest), so the
same configuration is trained once and a changed configuration, other code or other data never return a stale model.

A *published* folder (the study's ``results/<profile>/models/``) holds the ``model.pt`` of each model behind committed
results as ``<key>.pt``, with ``index.json`` giving each file's sha256 and the commit that trained it:
:func:`train_cached` serves a model from there (checksum verified) before it would train, and :func:`publish` puts
one there. This module also resolves the initial weights a configuration names, which the training loop receives
from its caller.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import _io
from ..models import ChecksumError, cache_dir, load_deepsec
from .config import TrainConfig, config_key
from .loop import MODEL_FILE, TrainResult, train
from .runtime import build_model, device_for


def trained_dir(config: TrainConfig) -> Path:
    """Where :func:`train_cached` keeps the model ``config`` trains: ``cache_dir()/"trained"/<config_key>``, holding
    ``checkpoint.pt`` (the last epoch's full state), ``model.pt`` (the best-validation weights, history, effective
    config) and ``result.json``."""
    return cache_dir() / "trained" / config_key(config)


def is_cached(config: TrainConfig, *, published: str | Path | None = None) -> bool:
    """Whether the model ``config`` trains is in the cache or in the ``published`` folder (so :func:`train_cached`
    will not train)."""
    return (trained_dir(config) / MODEL_FILE).is_file() or published_file(config, published) is not None


# ----------------------------------------------------------------------------------------------- published models
INDEX_FILE = "index.json"


class PublishedModelError(ValueError):
    """A published model's file disagrees with its folder's index (missing entry, other key, other sha256)."""


def read_index(folder: str | Path) -> dict[str, dict]:
    """``folder/index.json``: key → ``{"sha256", "trained_commit", "code"}`` (empty when there is no index).

    Raises:
        PublishedModelError: the index is not valid JSON (the message names the file).
    """
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise PublishedModelError(f"{path} is not valid JSON ({err}); restore it from git") from err
    if not isinstance(index, dict):
        raise PublishedModelError(f"{path} must map model keys to records, got {type(index).__name__}")
    return index


def published_file(config: TrainConfig, published: str | Path | None) -> Path | None:
    """The published ``<key>.pt`` of ``config`` in the folder ``published``, its sha256 checked against the index;
    ``None`` when the folder has no such model (or ``published`` is ``None``).

    Raises:
        PublishedModelError: the file is there but the index has no entry for it, or its sha256 differs.
    """
    if published is None:
        return None
    key = config_key(config)
    path = Path(published) / f"{key}.pt"
    if not path.is_file():
        return None
    entry = read_index(published).get(key)
    if entry is None:
        raise PublishedModelError(f"{path} is not listed in {Path(published) / INDEX_FILE}: a published model needs "
                                  "its recorded sha256; republish it with the pipeline, or delete the file")
    got = _io.sha256_file(path)
    if got != entry.get("sha256"):
        raise ChecksumError(f"published model {path} has sha256 {got}, {INDEX_FILE} records {entry.get('sha256')}: "
                            "the file was changed or damaged; restore it from git")
    return path


def publish(source: str | Path, folder: str | Path) -> dict:
    """Put a trained model's ``model.pt`` (``source``) into the published ``folder`` as ``<key>.pt`` and record its
    sha256 and training provenance in the folder's index; both writes are atomic. Returns the index entry."""
    source, folder = Path(source), Path(folder)
    saved = _io.load(source)
    key, trained_by = saved["key"], saved.get("provenance", {})
    dest = folder / f"{key}.pt"
    with _io.atomic_file(dest, "wb") as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out)
    entry = {"sha256": _io.sha256_file(dest), "trained_commit": trained_by.get("git", {}).get("commit"),
             "trained_dirty": trained_by.get("git", {}).get("dirty"), "code": trained_by.get("code"),
             "model": saved["config"]["model"], "defence": saved["config"]["defence"]}
    index = {**read_index(folder), key: entry}
    _io.write_text_atomic(json.dumps(dict(sorted(index.items())), indent=1) + "\n", folder / INDEX_FILE)
    return entry


def prune(folder: str | Path, *, keep) -> list[Path]:
    """Delete the published models of ``folder`` whose key is not in ``keep`` (and their index entries); returns
    the deleted files."""
    folder, keep = Path(folder), set(keep)
    index = read_index(folder)
    gone = [p for p in sorted(folder.glob("*.pt")) if p.stem not in keep]
    for path in gone:
        path.unlink()
    if gone or set(index) - keep:
        _io.write_text_atomic(json.dumps({k: v for k, v in sorted(index.items()) if k in keep}, indent=1) + "\n",
                              folder / INDEX_FILE)
    return gone


def cached_model_file(key: str) -> Path:
    """Where the training cache keeps the ``model.pt`` of the configuration with key ``key``."""
    return cache_dir() / "trained" / key / MODEL_FILE


def initial_weights(config: TrainConfig, *, progress: bool = False,
                    published: str | Path | None = None) -> dict | None:
    """The state dict ``config.init`` names: ``None`` for ``"scratch"``; DeepSec's released checkpoint for
    ``"deepsec"``; the model another :class:`TrainConfig` trains (from the cache or the ``published`` folder,
    trained first if in neither); or a file."""
    init = config.init
    if init == "scratch":
        return None
    if init == "deepsec":
        return load_deepsec(config.dataset, logit_shift=config.model_kwargs.get("logit_shift", True)).state_dict()
    if isinstance(init, TrainConfig):
        return train_cached(init, progress=progress, published=published).model.state_dict()
    saved = _io.load(Path(init))
    return saved["state_dict"] if "state_dict" in saved else saved


def _from_file(path: Path, config: TrainConfig, key: str) -> TrainResult:
    saved = _io.load(path)
    if saved.get("key") != key:
        raise ValueError(f"{path} holds the model of configuration {saved.get('key')!r}, not {key!r}: the file is "
                         "corrupted or misnamed; delete it to retrain")
    model = build_model(config)
    model.load_state_dict(saved["state_dict"], strict=True)
    model = model.to(device_for(config)).eval()
    return TrainResult(model=model, config=config, key=key, history=saved["history"], best_epoch=saved["best_epoch"],
                       best_val_acc=saved["best_val_acc"], checkpoint=path, from_cache=True,
                       provenance=saved.get("provenance"))


def load_trained(config: TrainConfig) -> TrainResult:
    """The model that ``config`` trained, from the cache; never trains.

    Raises:
        FileNotFoundError: not trained yet (the message says where it was looked for).
    """
    path = trained_dir(config) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no trained model for this configuration at {path}; run train_cached(config) "
                                "(or python -m repro.train) first")
    return _from_file(path, config, config_key(config))


def train_cached(config: TrainConfig, *, progress: bool = True, published: str | Path | None = None) -> TrainResult:
    """The model ``config`` trains: loaded from the cache when it is there, else from the ``published`` folder
    (checksum verified, :func:`published_file`), else trained in the cache folder (resuming a partial run).
    ``from_cache`` on the result says whether it was loaded, ``checkpoint`` from which file."""
    if (trained_dir(config) / MODEL_FILE).is_file():
        return load_trained(config)
    path = published_file(config, published)
    if path is not None:
        return _from_file(path, config, config_key(config))
    return train(config, out_dir=trained_dir(config),
                 initial_weights=initial_weights(config, progress=progress, published=published),
                 resume=True, progress=progress)
