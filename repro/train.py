"""Standard, NAT and PAT training with DeepSec's recipes: one visible loop, resumable, cached, DDP-ready.

References: Ling et al., "DEEPSEC: a uniform platform for security analysis of deep learning model", IEEE S&P 2019
(recipes in ``RawModels/``, defences in ``Defenses/DefenseMethods/NAT.py`` and ``PAT.py``); Kurakin, Goodfellow and
Bengio, "Adversarial machine learning at scale", ICLR 2017 (NAT); Madry et al., "Towards deep learning models
resistant to adversarial attacks", ICLR 2018 (PAT).

A run is described by a :class:`TrainConfig` (data, model, defence, budget, seed, numerics). :func:`train` runs it,
writing an atomic checkpoint after every epoch into ``out_dir`` and resuming from it; :func:`train_cached` keeps the
trained model under ``repro.models.cache_dir()/"trained"/<key>``, where the key hashes the effective configuration.
Launched by ``torchrun --nproc_per_node=N -m repro.train ...`` the same loop runs under DistributedDataParallel:
every rank draws the same global batch (and the same augmentation and NAT ε) and trains on its contiguous share; the
loss is normalised by the global batch size, so N processes take the same steps as one (up to float summation order).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import _io as ckpt
from .attacks.llc import llc
from .attacks.pgd import pgd
from .data import DATASETS, data_root, load, provenance
from .models import DEEPSEC_CHECKPOINTS, MODELS, build, cache_dir, load_deepsec
from .profiles import get_profile
from .results import git_info

# Bump when a change to this module changes what a configuration trains (or the checkpoint format): old cache
# entries then get new keys instead of being returned for a configuration they were not trained with.
FORMAT_VERSION = 1
DEFENCES = (None, "nat", "pat")
PAT_LOSSES = ("mixed", "adversarial")
EVAL_BATCH = 500  # batch size for validation and history attacks; results do not depend on it (eval mode)
CHECKPOINT_FILE, MODEL_FILE, RESULT_FILE = "checkpoint.pt", "model.pt", "result.json"


# ------------------------------------------------------------------------------------------- recipes and defences
@dataclass(frozen=True)
class Recipe:
    """An optimiser, learning-rate schedule, budget and augmentation for training a raw model (SPEC §2).

    ``lr_decays``: ``(epoch, factor)`` pairs with 0-based epoch indices: the learning rate is multiplied by
    ``factor`` once epoch ``epoch`` has finished, and never falls below ``min_lr``.
    """

    optimiser: str  # "sgd" or "adam"
    lr: float
    epochs: int
    batch_size: int
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    lr_decays: tuple[tuple[int, float], ...] = ()
    min_lr: float = 0.0
    augment: bool = False  # random translate ±10 % and horizontal flip
    val_fraction: float = 0.1


RECIPES: dict[str, Recipe] = {
    # DeepSec RawModels/MNISTConv.py (MNIST_Training_Parameters) and train_mnist.py: SGD, Nesterov, no schedule.
    "deepsec_mnist": Recipe(optimiser="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-6,
                            epochs=20, batch_size=100),
    # DeepSec RawModels/ResNet.py (CIFAR10_Training_Parameters, adjust_learning_rate, called after 0-based epoch
    # `epoch` ends, with a floor of 0.5e-6) and Utils/dataset.py (RandomAffine translate 0.1, RandomHorizontalFlip).
    "deepsec_cifar10": Recipe(optimiser="adam", lr=1e-3, epochs=200, batch_size=32,
                              lr_decays=((80, 0.1), (120, 0.1), (160, 0.1), (180, 0.5)), min_lr=0.5e-6,
                              augment=True),
}
DEFAULT_RECIPE = {"mnist": "deepsec_mnist", "cifar10": "deepsec_cifar10"}
DEFAULT_MODEL = {"mnist": "mnist_convnet", "cifar10": "resnet20"}
MODEL_DATASET = {"mnist_convnet": "mnist", "resnet20": "cifar10", "wide_resnet": "cifar10"}


@dataclass(frozen=True)
class NATParams:
    """NAT (DeepSec's version of Kurakin et al.): per-image ε_i = clip(|N(0, σ)|/255, 0, eps_max); the loss is
    (CE(x) + adv_ratio·CE(x_adv)) / (1 + adv_ratio). ``sigma`` in 0..255 units, ``eps_max`` in [0, 1] units."""

    sigma: float
    eps_max: float
    adv_ratio: float = 0.3


@dataclass(frozen=True)
class PATParams:
    """PAT: PGD with a random start (ε, step in [0, 1] units), crafted in eval() mode. ``loss="mixed"`` is DeepSec's
    0.5·(CE(x) + CE(x_adv)); ``"adversarial"`` is Madry et al.'s CE(x_adv) alone."""

    eps: float
    step_size: float
    steps: int
    loss: str = "mixed"


@dataclass(frozen=True)
class PGDParams:
    """An L∞ PGD attack with random start, for the robust accuracy recorded in training histories."""

    eps: float
    step_size: float
    steps: int


NAT_CONFIGS: dict[str, NATParams] = {
    # DeepSec Defenses/NAT_Test.py defaults (mu 0, sigma 50, clip 0..0.3, adv_ratio 0.3) and README for CIFAR-10.
    "deepsec_mnist": NATParams(sigma=50.0, eps_max=0.3),
    "deepsec_cifar10": NATParams(sigma=15.0, eps_max=0.1),
}
PAT_CONFIGS: dict[str, PATParams] = {
    # DeepSec Defenses/PAT_Test.py (SPEC §5): mixed loss; MNIST as Madry's mnist_challenge config.
    "deepsec_mnist": PATParams(eps=0.3, step_size=0.01, steps=40),
    # DeepSec's CIFAR-10 PAT: Madry's cifar10_challenge ε 8/255, step 2/255, 7 steps, with DeepSec's mixed loss.
    "deepsec_cifar10": PATParams(eps=8 / 255, step_size=2 / 255, steps=7),
    # Madry et al. (ICLR 2018) themselves train on adversarial examples only.
    "madry_mnist": PATParams(eps=0.3, step_size=0.01, steps=40, loss="adversarial"),
    "madry_cifar10": PATParams(eps=8 / 255, step_size=2 / 255, steps=7, loss="adversarial"),
    "madry_cifar10_10steps": PATParams(eps=8 / 255, step_size=2 / 255, steps=10, loss="adversarial"),
    # The follow-up study's PAT on the wide ResNet, literally "ε=8, 10 steps, step 2" on [0, 1] images: only the
    # box constrains (SPEC §5, §8.1). It re-ran DeepSec's PAT code, hence the mixed loss.
    "followup_eps8": PATParams(eps=8.0, step_size=2.0, steps=10),
    # ... and what it intended: Madry's ε = 8/255, step 2/255, with its 10 steps.
    "followup_eps8_255": PATParams(eps=8 / 255, step_size=2 / 255, steps=10),
}
HISTORY_PGD: dict[str, PGDParams] = {
    # The attack each dataset's PAT trains against (DeepSec's PAT settings, SPEC §5).
    "mnist": PGDParams(eps=0.3, step_size=0.01, steps=40),
    "cifar10": PGDParams(eps=8 / 255, step_size=2 / 255, steps=7),
}


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")


def _positive_int(name: str, value, *, minimum: int = 1, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{' or None' if optional else ''}, got {value!r}")


def _nonnegative(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_params(params) -> None:
    if isinstance(params, NATParams):
        for name in ("sigma", "eps_max", "adv_ratio"):
            _nonnegative(f"NAT {name}", getattr(params, name))
    elif isinstance(params, (PATParams, PGDParams)):
        kind = "PAT" if isinstance(params, PATParams) else "history PGD"
        _nonnegative(f"{kind} eps", params.eps)
        _nonnegative(f"{kind} step_size", params.step_size)
        _positive_int(f"{kind} steps", params.steps)
        if isinstance(params, PATParams):
            _choice("PAT loss", params.loss, PAT_LOSSES)


# ------------------------------------------------------------------------------------------------------ the config
@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run produces (and, for ``device``, where it runs).

    Attributes:
        dataset: ``"mnist"`` or ``"cifar10"``.
        model: a :data:`repro.models.MODELS` name; ``model_kwargs`` go to its factory (e.g. ``{"width": 10}``).
        defence: ``None`` (standard training), ``"nat"`` or ``"pat"``.
        defence_params: :class:`NATParams`/:class:`PATParams`, or a name from :data:`NAT_CONFIGS`/
            :data:`PAT_CONFIGS`; ``None`` picks DeepSec's setting for the dataset (``"deepsec_<dataset>"``).
        recipe: a :data:`RECIPES` name; ``None`` picks DeepSec's recipe for the dataset.
        epochs, batch_size: ``None`` takes the recipe's (SPEC §2).
        subset: use the first ``subset`` training images (official order) before the 90/10 split; ``None``: all.
        seed: seeds the split, model initialisation, data order, augmentation, NAT's ε and PGD's start (DeepSec: 100).
        init: ``"scratch"``; ``"deepsec"`` (DeepSec's released raw checkpoint); another :class:`TrainConfig` (the
            model it trains, via :func:`train_cached`); or a path to a state dict / ``model.pt``.
        history_subset: held-out (validation) images on which each epoch's PGD accuracy is measured.
        history_pgd: that PGD attack; ``None``: :data:`HISTORY_PGD` for the dataset.
        disable_dropout: set every ``nn.Dropout`` to p = 0 (for exact multi-process comparisons only).
        device: ``"auto"`` (CUDA when present, one GPU per rank), ``"cpu"``, ``"cuda"``, ``"cuda:1"``. Not part of
            the cache key: the same experiment on another device is the same experiment.
        bf16: bfloat16 autocast for forward passes (training and crafting); changes numerics, hence in the key.
        channels_last: NHWC memory format for the model and batches (a GPU speed option).
    """

    dataset: str
    model: str
    model_kwargs: dict = field(default_factory=dict)
    defence: str | None = None
    defence_params: NATParams | PATParams | str | None = None
    recipe: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    subset: int | None = None
    seed: int = 100
    init: "str | TrainConfig" = "scratch"
    history_subset: int = 1000
    history_pgd: PGDParams | None = None
    disable_dropout: bool = False
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = False

    def __post_init__(self):
        _choice("dataset", self.dataset, DATASETS)
        _choice("model", self.model, tuple(MODELS))
        if self.model in MODEL_DATASET and MODEL_DATASET[self.model] != self.dataset:
            raise ValueError(f"model {self.model!r} is for {MODEL_DATASET[self.model]!r}, not {self.dataset!r}")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs must be a dict, got {self.model_kwargs!r}")
        _choice("defence", self.defence, DEFENCES)
        params = self.defence_params
        if self.defence is None and params is not None:
            raise ValueError(f"defence_params {params!r} given without a defence; allowed defences: 'nat', 'pat'")
        if self.defence is not None:
            named = NAT_CONFIGS if self.defence == "nat" else PAT_CONFIGS
            params = f"deepsec_{self.dataset}" if params is None else params
            if isinstance(params, str):
                _choice(f"{self.defence.upper()} configuration", params, tuple(named))
                params = named[params]
            expected = NATParams if self.defence == "nat" else PATParams
            if not isinstance(params, expected):
                raise ValueError(f"defence {self.defence!r} needs {expected.__name__}, got {params!r}")
            _check_params(params)
            object.__setattr__(self, "defence_params", params)
        recipe = DEFAULT_RECIPE[self.dataset] if self.recipe is None else self.recipe
        _choice("recipe", recipe, tuple(RECIPES))
        object.__setattr__(self, "recipe", recipe)
        history = HISTORY_PGD[self.dataset] if self.history_pgd is None else self.history_pgd
        if not isinstance(history, PGDParams):
            raise ValueError(f"history_pgd must be PGDParams or None, got {history!r}")
        _check_params(history)
        object.__setattr__(self, "history_pgd", history)
        _positive_int("epochs", self.epochs, optional=True)
        _positive_int("batch_size", self.batch_size, optional=True)
        _positive_int("subset", self.subset, minimum=10, optional=True)
        _positive_int("seed", self.seed, minimum=0)
        _positive_int("history_subset", self.history_subset, minimum=0)
        if not (isinstance(self.init, TrainConfig) or self.init in ("scratch", "deepsec")
                or (isinstance(self.init, (str, Path)) and Path(self.init).is_file())):
            raise ValueError(f"unknown init {self.init!r}; allowed: 'scratch', 'deepsec', a TrainConfig, or the path "
                             "of an existing checkpoint file")
        if self.init == "deepsec" and self.dataset not in DEEPSEC_CHECKPOINTS:
            raise ValueError(f"no DeepSec checkpoint for dataset {self.dataset!r}")
        try:
            torch.device("cuda" if self.device == "auto" else self.device)
        except RuntimeError as err:
            raise ValueError(f"unknown device {self.device!r}; allowed: 'auto', 'cpu', 'cuda', 'cuda:N'") from err
        for name in ("disable_dropout", "bf16", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def effective_recipe(self) -> Recipe:
        """The :class:`Recipe` this run uses."""
        return RECIPES[self.recipe]

    @property
    def effective_epochs(self) -> int:
        """Epochs to train: ``epochs``, or the recipe's."""
        return self.epochs if self.epochs is not None else self.effective_recipe.epochs

    @property
    def effective_batch_size(self) -> int:
        """Global batch size: ``batch_size``, or the recipe's."""
        return self.batch_size if self.batch_size is not None else self.effective_recipe.batch_size


def effective_config(config: TrainConfig) -> dict:
    """The configuration as JSON-ready data with every default resolved (recipe constants, defence and history
    parameters, epochs, batch size, images used, the initial weights' identity); the device is left out.

    Reference: the cache-key scheme of this package (the SPEC asks for content-addressed trained models).

    Returns:
        A dict; :func:`config_key` hashes its canonical JSON. Results record it as the effective parameters.
    """
    init = config.init
    if isinstance(init, TrainConfig):
        init_id = {"trained": config_key(init)}
    elif init == "deepsec":
        init_id = {"deepsec_sha256": DEEPSEC_CHECKPOINTS[config.dataset]["sha256"]}
    elif init == "scratch":
        init_id = "scratch"
    else:
        init_id = {"file_sha256": ckpt.sha256_file(Path(init))}
    n_available = _train_size(config.dataset, str(data_root()))
    return {
        "format": FORMAT_VERSION,
        "dataset": config.dataset,
        "train_images": min(n_available, config.subset or n_available),
        "model": config.model,
        "model_kwargs": dict(config.model_kwargs),
        "defence": config.defence,
        "defence_params": dataclasses.asdict(config.defence_params) if config.defence else None,
        "recipe": {"name": config.recipe, **dataclasses.asdict(config.effective_recipe)},
        "epochs": config.effective_epochs,
        "batch_size": config.effective_batch_size,
        "seed": config.seed,
        "init": init_id,
        "history_subset": config.history_subset,
        "history_pgd": dataclasses.asdict(config.history_pgd),
        "disable_dropout": config.disable_dropout,
        "bf16": config.bf16,
        "channels_last": config.channels_last,
    }


@functools.lru_cache(maxsize=8)
def _train_size(dataset: str, root: str) -> int:
    return len(load(dataset, split="train", root=root)[1])


def config_key(config: TrainConfig) -> str:
    """The cache key of a configuration.

    Reference: this package's cache scheme: content-addressed by the effective configuration.

    Args:
        config: the run.

    Returns:
        Hex sha256 of the canonical JSON of :func:`effective_config` (which includes :data:`FORMAT_VERSION`, so a
        change to what the code trains gives new keys). Defaults resolve first: ``epochs=None`` and the recipe's 20
        give the same key; the device is not part of it.
    """
    return ckpt.sha256_text(ckpt.canonical_json(effective_config(config)))


def config_for(dataset: str, *, defence: str | None = None, variant: str | None = None, profile: str = "quick",
               model: str | None = None, model_kwargs: dict | None = None, wide: bool = False, seed: int = 100,
               device: str = "auto") -> TrainConfig:
    """The :class:`TrainConfig` a profile prescribes for a raw model or a defence.

    Reference: SPEC §2 (recipes), §5 (defences); budgets from :mod:`repro.profiles`.

    Args:
        dataset: ``"mnist"`` or ``"cifar10"``.
        defence: ``None``, ``"nat"`` or ``"pat"``.
        variant: a name in :data:`NAT_CONFIGS`/:data:`PAT_CONFIGS`; default ``"deepsec_<dataset>"``.
        profile: ``"smoke"``, ``"quick"`` or ``"paper"``: epochs (``train_epochs``/``defence_epochs``), training
            images (``train_subset``), history images, and how defences start (``defence_init``: from scratch, or
            fine-tuned from the raw model: DeepSec's released one when ``raw_source="deepsec"`` and the architecture
            is DeepSec's, else the raw model this module trains with the same profile).
        model, model_kwargs: default DeepSec's architecture for the dataset.
        wide: the follow-up study's wide ResNet-20, widths × the profile's ``wide_width`` (overrides ``model``).
        seed, device: as in :class:`TrainConfig`.

    Returns:
        A validated :class:`TrainConfig`; ``dataclasses.replace`` it to override any field.

    Raises:
        ValueError: unknown profile, dataset, defence, variant or model.
    """
    prof = get_profile(profile)
    _choice("dataset", dataset, DATASETS)
    _choice("defence", defence, DEFENCES)
    if wide:
        model, model_kwargs = "resnet20", {**(model_kwargs or {}), "width": prof.wide_width}
    model = model or DEFAULT_MODEL[dataset]
    model_kwargs = dict(model_kwargs or {})
    init: str | TrainConfig = "scratch"
    if defence is not None and prof.defence_init == "raw":
        deepsec_arch = model == DEFAULT_MODEL[dataset] and model_kwargs.get("width", 1) == 1
        if prof.raw_source == "deepsec" and deepsec_arch:
            init = "deepsec"
        else:
            init = config_for(dataset, profile=profile, model=model, model_kwargs=model_kwargs, seed=seed,
                              device=device)
    return TrainConfig(
        dataset=dataset, model=model, model_kwargs=model_kwargs, defence=defence,
        defence_params=variant if defence is not None else None,
        epochs=prof.train_epochs if defence is None else prof.defence_epochs,
        subset=prof.train_subset, seed=seed, init=init, history_subset=prof.history_subset, device=device,
    )


# ------------------------------------------------------------------------------------------------------- results
@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``model`` is in ``eval()`` mode on the run's device and holds the best-validation weights (DeepSec's rule);
    ``history`` has one dict per epoch (``epoch``, ``lr``, ``loss``, ``val_acc``, ``pgd_acc``, ``epoch_time_s``,
    ``train_time_s``, ``craft_time_s``, ``images``); ``checkpoint`` is the final ``model.pt``; ``from_cache`` says
    whether the model was loaded instead of trained.
    """

    model: nn.Module
    config: TrainConfig
    key: str
    history: list[dict]
    best_epoch: int
    best_val_acc: float
    checkpoint: Path
    from_cache: bool


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device(config: TrainConfig) -> torch.device:
    if config.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(config.device)


def _build_model(config: TrainConfig) -> nn.Module:
    model = build(config.model, **config.model_kwargs)
    if config.disable_dropout:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    return model


def _result_from_file(path: Path, config: TrainConfig, key: str, *, from_cache: bool) -> TrainResult:
    saved = ckpt.load(path)
    if saved.get("key") != key:
        raise ValueError(f"{path} holds the model of configuration {saved.get('key')!r}, not {key!r}: the cache "
                         "entry is corrupted; delete its folder to retrain")
    model = _build_model(config)
    model.load_state_dict(saved["state_dict"], strict=True)
    model = model.to(_device(config)).eval()
    return TrainResult(model=model, config=config, key=key, history=saved["history"],
                       best_epoch=saved["best_epoch"], best_val_acc=saved["best_val_acc"], checkpoint=path,
                       from_cache=from_cache)


def trained_dir(config: TrainConfig) -> Path:
    """Where :func:`train_cached` keeps the model ``config`` trains.

    Reference: this package's cache scheme (:func:`config_key`).

    Args:
        config: the run.

    Returns:
        ``repro.models.cache_dir()/"trained"/<config_key(config)>``, holding ``checkpoint.pt`` (the last epoch's
        full state), ``model.pt`` (the best-validation weights, history, effective config) and ``result.json``.
    """
    return cache_dir() / "trained" / config_key(config)


def load_trained(config: TrainConfig) -> TrainResult:
    """The model that ``config`` trained, from the cache; never trains.

    Reference: this package's cache (see :func:`train_cached`).

    Args:
        config: the configuration the model was trained with (the device may differ).

    Returns:
        A :class:`TrainResult` with ``from_cache=True``.

    Raises:
        FileNotFoundError: not trained yet (the message says where it was looked for).
    """
    path = trained_dir(config) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no trained model for this configuration at {path}; run train_cached(config) "
                                "(or python -m repro.train) first")
    return _result_from_file(path, config, config_key(config), from_cache=True)


def train_cached(config: TrainConfig, *, progress: bool = True) -> TrainResult:
    """The model ``config`` trains: loaded from the cache when it is there, else trained (resuming a partial run).

    Reference: this package's cache; keys are :func:`config_key` (content of the effective configuration).

    Args:
        config: the run.
        progress: show tqdm progress bars while training.

    Returns:
        A :class:`TrainResult`; ``from_cache`` says which happened.
    """
    path = trained_dir(config) / MODEL_FILE
    if path.is_file():
        return _result_from_file(path, config, config_key(config), from_cache=True)
    return train(config, resume=True, progress=progress)


# ------------------------------------------------------------------------------------------------ data and batches
@dataclass
class _Data:
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor


def _prepare_data(config: TrainConfig, device: torch.device) -> _Data:
    x, y = load(config.dataset, split="train", n=config.subset)
    # DeepSec's split (RawModels/Utils/dataset.py): shuffle indices with numpy's legacy RNG seeded 100, first 10 %
    # validation. On the full MNIST/CIFAR-10 train sets this is DeepSec's exact split.
    order = np.arange(len(y))
    np.random.RandomState(config.seed).shuffle(order)
    n_val = int(np.floor(config.effective_recipe.val_fraction * len(y)))
    val, tr = torch.from_numpy(order[:n_val]), torch.from_numpy(order[n_val:])
    return _Data(x[tr].to(device), y[tr].to(device), x[val].to(device), y[val].to(device))


def _draw_augmentation(n: int, height: int, width: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image integer shifts and flips as torchvision's RandomAffine(translate=(0.1, 0.1)) + RandomHorizontalFlip
    draw them: shift = round(U(−0.1·size, 0.1·size)), flip with probability 0.5."""
    dx = torch.round((torch.rand(n, generator=generator) * 2 - 1) * 0.1 * width).long()
    dy = torch.round((torch.rand(n, generator=generator) * 2 - 1) * 0.1 * height).long()
    flip = torch.rand(n, generator=generator) < 0.5
    return dx, dy, flip


def _translate_flip(x: Tensor, dx: Tensor, dy: Tensor, flip: Tensor) -> Tensor:
    """Shift each image by (dx, dy) pixels with zero fill, then mirror it horizontally where ``flip``.

    Shifts must be at most ⌈0.1·size⌉ pixels (what :func:`_draw_augmentation` draws); no host synchronisation.
    """
    n, _, h, w = x.shape
    pad = math.ceil(0.1 * max(h, w))
    padded = F.pad(x, (pad, pad, pad, pad))
    dx, dy, flip = dx.to(x.device), dy.to(x.device), flip.to(x.device)
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) - dx[:, None] + pad
    rows = torch.arange(h, device=x.device).expand(n, h) - dy[:, None] + pad
    out = padded[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def _draw_nat_eps(n: int, params: NATParams, generator: torch.Generator) -> Tensor:
    """DeepSec's NAT.py: ε_i = clip(|N(0, σ)| / 255, 0, eps_max) per image."""
    return (torch.randn(n, generator=generator) * params.sigma).abs().div(255.0).clamp(0.0, params.eps_max)


class _Clock:
    """Accumulates the time of code sections; on CUDA with events, so the inner loop never waits for the GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.events: list = []
        self.seconds = 0.0

    @contextlib.contextmanager
    def __call__(self):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.events.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self.seconds += time.perf_counter() - t0

    def total(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return self.seconds + sum(s.elapsed_time(e) for s, e in self.events) / 1000.0
        return self.seconds


@torch.no_grad()
def _clean_accuracy(net: nn.Module, x: Tensor, y: Tensor, autocast) -> float:
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(x), EVAL_BATCH):
        with autocast():
            correct += (net(x[i:i + EVAL_BATCH]).argmax(1) == y[i:i + EVAL_BATCH]).sum()
    return correct.item() / max(len(x), 1)


def _pgd_accuracy(net: nn.Module, x: Tensor, y: Tensor, params: PGDParams, seed: int, autocast) -> float | None:
    if len(x) == 0:
        return None
    # The same random starts every epoch, so the curve compares models, not noise.
    generator = torch.Generator(device=x.device).manual_seed(seed)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(x), EVAL_BATCH):
        xb, yb = x[i:i + EVAL_BATCH], y[i:i + EVAL_BATCH]
        with autocast():
            x_adv = pgd(net, xb, yb, eps=params.eps, step_size=params.step_size, steps=params.steps,
                        random_start=True, generator=generator)
            with torch.no_grad():
                correct += (net(x_adv).argmax(1) == yb).sum()
    return correct.item() / len(x)


class _LRFactor:
    """Learning-rate multiplier for 0-based epoch k: the product of every decay whose epoch has finished (< k),
    floored at ``min_lr``. A plain object, so LambdaLR checkpoints its state."""

    def __init__(self, recipe: Recipe):
        self.decays = [list(d) for d in recipe.lr_decays]
        self.floor = recipe.min_lr / recipe.lr

    def __call__(self, epoch: int) -> float:
        return max(math.prod(f for e, f in self.decays if e < epoch), self.floor)


def _optimiser(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimiser == "sgd":
        return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                               nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)


def _initial_weights(config: TrainConfig) -> dict | None:
    if config.init == "scratch":
        return None
    if config.init == "deepsec":
        return load_deepsec(config.dataset, logit_shift=config.model_kwargs.get("logit_shift", True)).state_dict()
    if isinstance(config.init, TrainConfig):
        return train_cached(config.init).model.state_dict()
    saved = ckpt.load(Path(config.init))
    return saved["state_dict"] if "state_dict" in saved else saved


def _write_checkpoint(payload: dict, path: Path) -> None:
    """The per-epoch checkpoint write (rank 0 only); a function of its own so tests can simulate a kill after it."""
    ckpt.save_atomic(payload, path)


# ------------------------------------------------------------------------------------------------------ the loop
def train(config: TrainConfig, *, resume: bool = True, progress: bool = True,
          out_dir: str | Path | None = None) -> TrainResult:
    """Train a raw model, or a NAT or PAT defence, with DeepSec's recipe; keep the best-validation checkpoint.

    Reference: DeepSec (Ling et al., S&P 2019) ``RawModels/train_*.py``, ``Defenses/DefenseMethods/NAT.py`` and
    ``PAT.py``; Kurakin et al. (ICLR 2017); Madry et al. (ICLR 2018). Per batch:

    * standard: ``train()``; CE(model(x), y).
    * NAT: ``eval()``; y_LL = argmin model(x); x_adv = LLC(x, y_LL, ε_i) with ε_i = clip(|N(0, σ)|/255, 0, ε_max);
      ``train()``; (CE(x) + 0.3·CE(x_adv)) / 1.3.
    * PAT: ``eval()``; x_adv = PGD(x, y) from a random start; ``train()``; 0.5·(CE(x) + CE(x_adv)) (DeepSec), or
      CE(x_adv) (Madry).

    Adversarial examples are crafted in ``eval()`` mode, as DeepSec's NAT.py and PAT.py do: BatchNorm uses its
    running statistics and dropout is off, so crafting neither updates BN statistics nor sees a random sub-network.
    After every epoch: clean validation accuracy, PGD accuracy on the first ``history_subset`` validation images,
    the learning-rate schedule step, the best-model rule (DeepSec: val accuracy rounded to 4 decimals ≥ the best
    so far, so later ties win) and an atomic checkpoint.

    Args:
        config: the run (see :class:`TrainConfig`).
        resume: continue from ``out_dir/checkpoint.pt`` when it exists (a checkpoint of another configuration is an
            error, never a silent restart); ``False`` starts over and overwrites it.
        progress: tqdm bars (rank 0 only).
        out_dir: where checkpoints and results go; default the cache folder :func:`trained_dir`.

    Returns:
        A :class:`TrainResult` (model in ``eval()`` mode with the best-validation weights).

    Raises:
        ValueError: the checkpoint in ``out_dir`` belongs to another configuration.
    """
    rank, world = _distributed()
    device = _device(config)
    key = config_key(config)
    out_dir = Path(out_dir) if out_dir is not None else cache_dir() / "trained" / key
    recipe, epochs, batch_size = config.effective_recipe, config.effective_epochs, config.effective_batch_size

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)

    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    data = _prepare_data(config, device)
    x_hist, y_hist = data.x_val[:config.history_subset], data.y_val[:config.history_subset]
    torch.manual_seed(config.seed)
    net = _build_model(config)
    initial = _initial_weights(config)
    if initial is not None:
        net.load_state_dict(initial, strict=True)
    net = net.to(device=device, memory_format=memory_format)
    optimiser = _optimiser(net, recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, _LRFactor(recipe))
    # Shared by all ranks: data order, augmentation and NAT's ε are drawn for the global batch.
    data_gen = torch.Generator().manual_seed(config.seed)
    attack_gen = torch.Generator(device=device).manual_seed(config.seed + 1 + rank)
    torch.manual_seed(config.seed + rank)  # dropout masks: one stream per rank
    history: list[dict] = []
    best: dict | None = None
    start_epoch = 0

    checkpoint_path = out_dir / CHECKPOINT_FILE
    if resume and checkpoint_path.is_file():
        saved = ckpt.load(checkpoint_path)
        if saved.get("key") != key:
            ours, theirs = effective_config(config), saved.get("config", {})
            differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
            raise ValueError(f"the checkpoint {checkpoint_path} belongs to another configuration (key "
                             f"{saved.get('key')!r}, ours {key!r}; differing fields: {', '.join(differ)}); use "
                             "another out_dir, or resume=False to overwrite it")
        net.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        scheduler.load_state_dict(saved["scheduler"])
        rng = saved["rng"][rank] if rank < len(saved["rng"]) else saved["rng"][0]
        ckpt.rng_restore(rng, data_generator=data_gen, attack_generator=attack_gen)
        history, best, start_epoch = saved["history"], saved["best"], saved["epoch"]

    model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else net
    ce = F.cross_entropy
    n_train = len(data.y_train)
    show = progress and rank == 0
    for epoch in tqdm(range(start_epoch, epochs), desc="epochs", disable=not show, initial=start_epoch,
                      total=epochs):
        lr = optimiser.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=device)
        craft_clock, train_clock = _Clock(device), _Clock(device)
        t_epoch = time.perf_counter()
        # The epoch's random draws, for the global batch on every rank, moved to the device once (no per-batch
        # host-to-device copies, which would wait for the GPU): data order, augmentation, NAT's per-image ε.
        order = torch.randperm(n_train, generator=data_gen).to(device)
        if recipe.augment:
            shifts_flips = [t.to(device) for t in _draw_augmentation(n_train, *data.x_train.shape[2:], data_gen)]
        if config.defence == "nat":
            nat_eps = _draw_nat_eps(n_train, config.defence_params, data_gen).to(device)
        for start in tqdm(range(0, n_train, batch_size), desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                          disable=not show):
            n_batch = min(batch_size, n_train - start)
            if n_batch < world:
                continue  # a last batch too small to give every rank an image (never happens in one process)
            # This rank's contiguous share of the global batch; each loss term is a sum over the share divided by
            # global batch / world, so DDP's gradient average equals the one-process mean over the global batch.
            q, r = divmod(n_batch, world)
            lo = start + rank * q + min(rank, r)
            share = slice(lo, lo + q + (rank < r))
            per_rank = n_batch / world
            x, y = data.x_train[order[share]], data.y_train[order[share]]
            if recipe.augment:
                x = _translate_flip(x, *(t[share] for t in shifts_flips))
            x = x.contiguous(memory_format=memory_format)

            def mean_ce(logits: Tensor) -> Tensor:
                return ce(logits.float(), y, reduction="sum") / per_rank

            with craft_clock():
                if config.defence == "nat":
                    net.eval()
                    with torch.no_grad(), autocast():
                        least_likely = net(x).argmin(1)
                    with autocast():
                        x_adv = llc(net, x, least_likely, eps=nat_eps[share])
                elif config.defence == "pat":
                    p = config.defence_params
                    net.eval()
                    with autocast():
                        x_adv = pgd(net, x, y, eps=p.eps, step_size=p.step_size, steps=p.steps, random_start=True,
                                    generator=attack_gen)
            with train_clock():
                model.train()
                with autocast():
                    if config.defence is None:
                        loss = mean_ce(model(x))
                    elif config.defence == "nat":
                        ratio = config.defence_params.adv_ratio
                        loss = (mean_ce(model(x)) + ratio * mean_ce(model(x_adv))) / (1.0 + ratio)
                    elif config.defence_params.loss == "mixed":
                        loss = 0.5 * (mean_ce(model(x)) + mean_ce(model(x_adv)))
                    else:
                        loss = mean_ce(model(x_adv))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            loss_sum += loss.detach() * per_rank

        train_time, craft_time = train_clock.total(), craft_clock.total()
        if world > 1:
            dist.all_reduce(loss_sum)
        net.eval()
        val_acc = _clean_accuracy(net, data.x_val, data.y_val, autocast)
        pgd_acc = _pgd_accuracy(net, x_hist, y_hist, config.history_pgd, config.seed, autocast)
        scheduler.step()
        history.append({
            "epoch": epoch + 1, "lr": lr, "loss": loss_sum.item() / n_train, "val_acc": val_acc, "pgd_acc": pgd_acc,
            "epoch_time_s": time.perf_counter() - t_epoch, "train_time_s": train_time + craft_time,
            "craft_time_s": craft_time, "images": n_train,
        })
        if best is None or round(val_acc, 4) >= round(best["val_acc"], 4):
            best = {"epoch": epoch + 1, "val_acc": val_acc,
                    "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}}
        rng = ckpt.rng_snapshot(data_generator=data_gen, attack_generator=attack_gen)
        rngs = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if rank == 0:
            _write_checkpoint({
                "format": FORMAT_VERSION, "key": key, "config": effective_config(config), "epoch": epoch + 1,
                "model": net.state_dict(), "optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rngs, "history": history, "best": best,
            }, checkpoint_path)
        if world > 1:
            dist.barrier()

    if best is None:
        raise ValueError(f"nothing was trained: epochs={epochs}")
    net.load_state_dict(best["state_dict"])
    net.eval()
    final_path = out_dir / MODEL_FILE
    if rank == 0:
        effective = effective_config(config)
        ckpt.save_atomic({"format": FORMAT_VERSION, "key": key, "config": effective, "state_dict": best["state_dict"],
                          "history": history, "best_epoch": best["epoch"], "best_val_acc": best["val_acc"]},
                         final_path)
        record = {
            "key": key, "config": effective, "history": history, "best_epoch": best["epoch"],
            "best_val_acc": best["val_acc"], "train_time_s": sum(h["epoch_time_s"] for h in history),
            "provenance": {"git": git_info(), "torch": torch.__version__, "python": sys.version.split()[0],
                           "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                           "world_size": world, "data": provenance(config.dataset)},
        }
        ckpt.write_text_atomic(json.dumps(record, indent=1), out_dir / RESULT_FILE)
    if world > 1:
        dist.barrier()
    return TrainResult(model=net, config=config, key=key, history=history, best_epoch=best["epoch"],
                       best_val_acc=best["val_acc"], checkpoint=final_path, from_cache=False)


# ------------------------------------------------------------------------------------------------- command line
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m repro.train",
        description="Train a raw model or a NAT/PAT defence with DeepSec's recipes. Under torchrun "
                    "(--nproc_per_node=N) it trains with DistributedDataParallel (NCCL on GPUs, gloo on CPUs).")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--defence", default="none", choices=["none", "nat", "pat"])
    parser.add_argument("--variant", default=None, help=f"NAT: {', '.join(NAT_CONFIGS)}; PAT: {', '.join(PAT_CONFIGS)}")
    parser.add_argument("--profile", default="paper", help="smoke, quick or paper (budgets; flags below override)")
    parser.add_argument("--model", default=None, help=f"one of {', '.join(MODELS)}")
    parser.add_argument("--model-kwargs", default="{}", help='JSON, e.g. \'{"width": 10}\'')
    parser.add_argument("--wide", action="store_true", help="the follow-up's wide ResNet-20 (profile's wide_width)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size")
    parser.add_argument("--subset", type=int, default=None, help="training images used (before the 90/10 split)")
    parser.add_argument("--history-subset", type=int, default=None)
    parser.add_argument("--init", default=None, help="scratch, deepsec, raw (this profile's raw model) or a path")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--disable-dropout", action="store_true")
    parser.add_argument("--out-dir", default=None, help="default: the cache folder of the configuration")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` for parsed command-line arguments: the profile's, then each given flag overrides.

    Reference: :func:`config_for`. Returns a validated config; raises ValueError for bad values.
    """
    defence = None if args.defence == "none" else args.defence
    base = config_for(args.dataset, defence=defence, variant=args.variant, profile=args.profile, model=args.model,
                      model_kwargs=json.loads(args.model_kwargs), wide=args.wide, seed=args.seed, device=args.device)
    overrides: dict = {"bf16": args.bf16, "channels_last": args.channels_last, "disable_dropout": args.disable_dropout}
    for name in ("epochs", "batch_size", "subset", "history_subset"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.init == "raw":
        overrides["init"] = dataclasses.replace(
            base, defence=None, defence_params=None, init="scratch",
            epochs=get_profile(args.profile).train_epochs, **{k: v for k, v in overrides.items() if k != "epochs"})
    elif args.init is not None:
        overrides["init"] = args.init
    return dataclasses.replace(base, **overrides)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m repro.train`` or ``torchrun ... -m repro.train``).

    Reference: PyTorch's torchrun conventions (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` environment variables).

    Args:
        argv: arguments (default ``sys.argv[1:]``); ``--help`` lists them.

    Returns:
        The exit status, 0 on success. Rank 0 prints one JSON line: key, model path, best epoch and accuracy.
    """
    args = _parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and args.device != "cpu"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        result = train(config_from_args(args), resume=not args.no_resume, progress=not args.no_progress,
                       out_dir=args.out_dir)
        if _distributed()[0] == 0:
            print(json.dumps({"key": result.key, "model": str(result.checkpoint), "best_epoch": result.best_epoch,
                              "best_val_acc": result.best_val_acc, "last": result.history[-1]}))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


__all__ = [
    "TrainConfig", "TrainResult", "Recipe", "NATParams", "PATParams", "PGDParams", "RECIPES", "NAT_CONFIGS",
    "PAT_CONFIGS", "HISTORY_PGD", "FORMAT_VERSION", "config_for", "config_from_args", "config_key",
    "effective_config", "train", "train_cached", "load_trained", "trained_dir", "main",
]

if __name__ == "__main__":
    sys.exit(main())
