"""The training cache: a trained model is kept under ``repro.models.cache_dir()/"trained"/<config_key>``.

Content-addressed by :func:`repro.train.config.config_key`, so the same configuration is trained once, and a changed
configuration (or :data:`repro.train.config.FORMAT_VERSION`) never returns a stale model. This module also resolves
the initial weights a configuration names, which the training loop receives from its caller.
"""
from __future__ import annotations

from pathlib import Path

from .. import _io
from ..models import cache_dir, load_deepsec
from .config import TrainConfig, config_key
from .loop import MODEL_FILE, TrainResult, train
from .runtime import build_model, device_for


def trained_dir(config: TrainConfig) -> Path:
    """Where :func:`train_cached` keeps the model ``config`` trains: ``cache_dir()/"trained"/<config_key>``, holding
    ``checkpoint.pt`` (the last epoch's full state), ``model.pt`` (the best-validation weights, history, effective
    config) and ``result.json``."""
    return cache_dir() / "trained" / config_key(config)


def is_cached(config: TrainConfig) -> bool:
    """Whether the model ``config`` trains is in the cache (so :func:`train_cached` will not train)."""
    return (trained_dir(config) / MODEL_FILE).is_file()


def initial_weights(config: TrainConfig, *, progress: bool = False) -> dict | None:
    """The state dict ``config.init`` names: ``None`` for ``"scratch"``; DeepSec's released checkpoint for
    ``"deepsec"``; the model another :class:`TrainConfig` trains (trained first if it is not cached); or a file."""
    init = config.init
    if init == "scratch":
        return None
    if init == "deepsec":
        return load_deepsec(config.dataset, logit_shift=config.model_kwargs.get("logit_shift", True)).state_dict()
    if isinstance(init, TrainConfig):
        return train_cached(init, progress=progress).model.state_dict()
    saved = _io.load(Path(init))
    return saved["state_dict"] if "state_dict" in saved else saved


def _from_file(path: Path, config: TrainConfig, key: str) -> TrainResult:
    saved = _io.load(path)
    if saved.get("key") != key:
        raise ValueError(f"{path} holds the model of configuration {saved.get('key')!r}, not {key!r}: the cache "
                         "entry is corrupted; delete its folder to retrain")
    model = build_model(config)
    model.load_state_dict(saved["state_dict"], strict=True)
    model = model.to(device_for(config)).eval()
    return TrainResult(model=model, config=config, key=key, history=saved["history"], best_epoch=saved["best_epoch"],
                       best_val_acc=saved["best_val_acc"], checkpoint=path, from_cache=True)


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


def train_cached(config: TrainConfig, *, progress: bool = True) -> TrainResult:
    """The model ``config`` trains: loaded from the cache when it is there, else trained in the cache folder
    (resuming a partial run). ``from_cache`` on the result says which happened."""
    if is_cached(config):
        return load_trained(config)
    return train(config, out_dir=trained_dir(config), initial_weights=initial_weights(config, progress=progress),
                 resume=True, progress=progress)
