"""Standard, NAT and PAT training with DeepSec's recipes: one visible loop, resumable, cached, DDP-ready.

* :mod:`~repro.train.config`: :class:`TrainConfig`, the recipes, :func:`config_key`.
* :mod:`~repro.train.defences`: the :data:`DEFENCES` registry (parameters, named settings, crafting, loss).
* :mod:`~repro.train.augment`: DeepSec's CIFAR-10 augmentation.
* :mod:`~repro.train.loop`: :func:`train`, the epoch loop; :mod:`~repro.train.runtime` its machinery.
* :mod:`~repro.train.cache`: :func:`train_cached`, the content-addressed training cache, and published models.
* ``python -m repro.train``: the command line (a profile's configuration, flags override).
"""
from .cache import (PublishedModelError, cached_model_file, initial_weights, is_cached, load_trained, prune, publish,
                    published_file, read_index, train_cached, trained_dir)
from .config import (DEEPSEC_RECIPE, FORMAT_VERSION, HISTORY_PGD, RECIPES, Recipe, TrainConfig, config_key,
                     effective_config)
from .defences import DEFENCES, NAT_CONFIGS, PAT_CONFIGS, Defence, NATParams, PATParams, PGDParams
from .loop import TrainResult, train

__all__ = [
    "TrainConfig", "TrainResult", "Recipe", "Defence", "NATParams", "PATParams", "PGDParams", "RECIPES",
    "DEEPSEC_RECIPE", "DEFENCES", "NAT_CONFIGS", "PAT_CONFIGS", "HISTORY_PGD", "FORMAT_VERSION", "config_key",
    "effective_config", "train", "train_cached", "initial_weights", "is_cached", "load_trained", "trained_dir",
    "publish", "prune", "published_file", "read_index", "cached_model_file", "PublishedModelError",
]
