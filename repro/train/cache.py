"""The training cache, and folders of published models.

A trained model is kept under ``repro.models.cache_dir()/"trained"/<config_key>``, content-addressed by
:func:`repro.train.config.config_key` (which holds the training code's hash and the training images' digest), so the
same configuration is trained once and a changed configuration, other code or other data never return a stale model.

A *published* folder (the study's ``results/<profile>/models/``) holds the ``model.pt`` of each model behind committed
results as ``<key>.<sha256>.pt`` (the file carries its training provenance inside):
:func:`train_cached` serves a model from there (checksum verified) before it would train, and :func:`publish` puts
one there. This module also resolves the initial weights a configuration names, which the training loop receives
from its caller.
"""
from __future__ import annotations

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
class PublishedModelError(ValueError):
    """A published model's file disagrees with its name (other key inside, other sha256), or a key has two files."""


def published_path(folder: str | Path, key: str, sha256: str) -> Path:
    """Where the published ``folder`` keeps the model of configuration ``key`` whose bytes have ``sha256``:
    ``<key>.<sha256>.pt``. The name carries the checksum, so the folder needs no index beside the models."""
    return Path(folder) / f"{key}.{sha256}.pt"


def read_index(folder: str | Path) -> dict[str, Path]:
    """The published ``folder``'s index, read from its file names: key → file of every model (empty when there is
    none).

    Raises:
        PublishedModelError: a ``.pt`` file whose name is not ``<key>.<sha256>.pt``, or two files for one key.
    """
    out: dict[str, Path] = {}
    for path in sorted(Path(folder).glob("*.pt")):
        parts = path.name.split(".")
        if len(parts) != 3 or not all(len(p) == 64 and set(p) <= set("0123456789abcdef") for p in parts[:2]):
            raise PublishedModelError(f"{path}: a published model is named <key>.<sha256>.pt (hex sha256s); "
                                      "republish it with the pipeline, or delete the file")
        if parts[0] in out:
            raise PublishedModelError(f"{path} and {out[parts[0]]} are two published models of configuration "
                                      f"{parts[0]}; delete the one no committed result names")
        out[parts[0]] = path
    return out


def published_file(config: TrainConfig, published: str | Path | None) -> Path | None:
    """The published model of ``config`` in the folder ``published``, its bytes checked against the sha256 in its
    name; ``None`` when the folder has no such model (or ``published`` is ``None``).

    Raises:
        ChecksumError: the file's sha256 is not the one its name records.
        PublishedModelError: the folder holds a misnamed file or two files for the key (:func:`read_index`).
    """
    if published is None:
        return None
    path = read_index(published).get(config_key(config))
    if path is None:
        return None
    expected, got = path.name.split(".")[1], _io.sha256_file(path)
    if got != expected:
        raise ChecksumError(f"published model {path} has sha256 {got}, its name records {expected}: the file was "
                            "changed or damaged; restore it from git")
    return path


def publish(source: str | Path, folder: str | Path) -> Path:
    """Copy a trained model's ``model.pt`` (``source``) into the published ``folder`` as ``<key>.<sha256>.pt``
    (atomically), replacing an older file of the same key. Returns the published file."""
    source, folder = Path(source), Path(folder)
    key = _io.load(source)["key"]
    dest = published_path(folder, key, _io.sha256_file(source))
    old = read_index(folder).get(key)
    with _io.atomic_file(dest, "wb") as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out)
    if old is not None and old != dest:
        old.unlink()
    return dest


def prune(folder: str | Path, *, keep) -> list[Path]:
    """Delete the published models of ``folder`` whose key is not in ``keep``; returns the deleted files."""
    gone = [path for key, path in read_index(folder).items() if key not in set(keep)]
    for path in gone:
        path.unlink()
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
                       provenance={**(saved.get("provenance") or {}),
                                   **({"carried": saved["carried"]} if saved.get("carried") else {})})


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
