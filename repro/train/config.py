"""What a training run is: DeepSec's recipes, the defences' named settings and :class:`TrainConfig`.

References: Ling et al., "DEEPSEC: a uniform platform for security analysis of deep learning model", IEEE S&P 2019
(recipes in ``RawModels/``, defences in ``Defenses/DefenseMethods/NAT.py`` and ``PAT.py``); Kurakin, Goodfellow and
Bengio, ICLR 2017 (NAT); Madry et al., ICLR 2018 (PAT). SPEC §2 and §5.

A :class:`TrainConfig` names everything that decides what a run produces; :func:`config_key` hashes its effective
form, which keys the training cache (:mod:`repro.train.cache`). Initial weights are named here (``init``) but loaded by
the caller (:func:`repro.train.cache.initial_weights`): the loop never reaches into the cache.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import _io
from .._source import code_hash
from ..checks import check_integer
from ..data import DATASETS, data_root, digest, jpeg_digest, load
from ..models import DEEPSEC_CHECKPOINTS, MODELS, dataset_of
from .defences import DEFENCES, PGDParams

# Bump when a change to the training code changes what a configuration trains (or the checkpoint format): old cache
# entries then get new keys instead of being returned for a configuration they were not trained with.
# 3: DeepSec's split on official indices (a partial copy's validation images are ones DeepSec's checkpoint never saw),
#    learning rate set per batch, adversarial examples crafted on the BatchNorm-folded copy.
# 4: the key also holds the training code's hash (TRAINING_CODE) and the digest of the training images used.
# 5: that hash covers the code that turns an effective configuration and the training tensors into weights, no more
#    (TRAINING_CODE less TRAINING_CODE_EXCLUDE); the models of format 4 were re-keyed, not retrained (README).
FORMAT_VERSION = 5
# The modules a training run executes (the loop, the defences, the attacks they craft with, the models): their source
# hash is part of every key, so a model trained by other code is never served for this code's configuration.
TRAINING_CODE = ("repro.train.loop",)
# Modules the loop imports that cannot change the weights of a given key, each because the key holds what it
# decides value by value: ``repro.data`` returns the training tensors, whose digest is in the key (``train_data``:
# images, labels and official indices of the split); ``repro.train.config`` resolves a TrainConfig into the
# effective configuration, which the key holds field by field; ``repro.train.cache`` stores and finds models, and
# names the initial weights by their identity (``init``). An edit to them (a new check, a clearer message) keeps
# every key, so it does not retrain the published models.
TRAINING_CODE_EXCLUDE = ("repro.data", "repro.train.config", "repro.train.cache", "repro.train.__main__")


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")


def _positive_int(name: str, value, *, minimum: int = 1, optional: bool = False) -> None:
    check_integer(name, value, low=minimum, optional=optional)


SCHEDULES = ("step", "cosine")
KEEP_RULES = ("best_val", "last")


@dataclass(frozen=True)
class Recipe:
    """An optimiser, learning-rate schedule, budget, augmentation and checkpoint rule for training a model (SPEC §2).

    ``schedule="step"``: the learning rate is multiplied by ``factor`` for each ``(epoch, factor)`` of ``lr_decays``
    (0-based epoch indices) once that epoch has finished, never below ``min_lr`` (DeepSec). ``"cosine"``: it follows
    lr·(1 + cos(π·t/T))/2 over the run's T epochs, t counted in batches. ``warmup_epochs`` (either schedule) scales it
    linearly from one batch's share up to 1 over that many epochs. The rate is set before every batch.

    ``keep``: which epoch's weights the run returns: ``"best_val"`` the best clean validation accuracy (DeepSec's rule,
    later ties win), ``"last"`` the last epoch (for adversarial training, whose clean validation accuracy falls as
    robustness grows: DeepSec's rule would keep the least robust epoch).

    ``label_smoothing``: the share of each training label's probability spread evenly over the classes in the training
    loss (0: plain cross-entropy, DeepSec's; the attacks that craft a defence's examples always use plain
    cross-entropy).

    ``dataset``: the dataset the recipe is written for (``None``: any); :class:`TrainConfig` refuses it for another.
    ``fine_tune``: the recipe continues from trained weights (a few epochs, warm-up, decay to zero), so a
    :class:`TrainConfig` refuses it with ``init="scratch"``.
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
    schedule: str = "step"
    warmup_epochs: float = 0.0
    keep: str = "best_val"
    label_smoothing: float = 0.0
    dataset: str | None = None
    fine_tune: bool = False

    def training_images(self, n: int) -> int:
        """Images an epoch trains on when ``n`` are available: all but the held-out validation share (exact on the
        complete dataset, where :func:`repro.train.runtime.split_data` holds out ⌊val_fraction·N⌋)."""
        return n - int(self.val_fraction * n)

    def __post_init__(self):
        _choice("optimiser", self.optimiser, ("sgd", "adam"))
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("keep", self.keep, KEEP_RULES)
        _choice("dataset", self.dataset, (None, *DATASETS))
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"recipe needs 0 <= label_smoothing < 1, got label_smoothing={self.label_smoothing!r}")
        if not (self.lr > 0 and self.warmup_epochs >= 0 and 0 < self.val_fraction < 1):
            raise ValueError(f"recipe needs lr > 0, warmup_epochs >= 0 and 0 < val_fraction < 1, got lr={self.lr!r}, "
                             f"warmup_epochs={self.warmup_epochs!r}, val_fraction={self.val_fraction!r}")


RECIPES: dict[str, Recipe] = {
    # DeepSec RawModels/MNISTConv.py (MNIST_Training_Parameters) and train_mnist.py: SGD, Nesterov, no schedule.
    "deepsec_mnist": Recipe(optimiser="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-6,
                            epochs=20, batch_size=100, dataset="mnist"),
    # DeepSec RawModels/ResNet.py (CIFAR10_Training_Parameters, adjust_learning_rate, called after 0-based epoch
    # `epoch` ends, with a floor of 0.5e-6) and Utils/dataset.py (RandomAffine translate 0.1, RandomHorizontalFlip).
    "deepsec_cifar10": Recipe(optimiser="adam", lr=1e-3, epochs=200, batch_size=32,
                              lr_decays=((80, 0.1), (120, 0.1), (160, 0.1), (180, 0.5)), min_lr=0.5e-6,
                              augment=True, dataset="cifar10"),
    # Ours, for adversarial fine-tuning from a trained CIFAR-10 model on a CPU budget (not DeepSec's): SGD with
    # momentum and weight decay, half an epoch of warm-up, cosine decay to zero over the run, DeepSec's augmentation,
    # the last epoch kept. The book's training ablation compares it with DeepSec's optimiser and with training from
    # scratch.
    "pat_finetune_cifar10": Recipe(optimiser="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, epochs=5,
                                   batch_size=128, schedule="cosine", warmup_epochs=0.5, augment=True, keep="last",
                                   dataset="cifar10", fine_tune=True),
    # The same with a 5× lower peak learning rate: an arm of the training ablation.
    "pat_finetune_cifar10_lr0.01": Recipe(optimiser="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, epochs=5,
                                          batch_size=128, schedule="cosine", warmup_epochs=0.5, augment=True,
                                          keep="last", dataset="cifar10", fine_tune=True),
    # Arms of the training ablation that change one choice of pat_finetune_cifar10: DeepSec's optimiser (Adam at its
    # learning rate, no weight decay, as deepsec_cifar10) in place of SGD, on the same warm-up and cosine schedule;
    # and label smoothing 0.1 on the training loss (Szegedy et al., CVPR 2016).
    "pat_finetune_cifar10_adam": Recipe(optimiser="adam", lr=1e-3, epochs=5, batch_size=128, schedule="cosine",
                                        warmup_epochs=0.5, augment=True, keep="last", dataset="cifar10",
                                        fine_tune=True),
    "pat_finetune_cifar10_ls0.1": Recipe(optimiser="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, epochs=5,
                                         batch_size=128, schedule="cosine", warmup_epochs=0.5, augment=True,
                                         keep="last", label_smoothing=0.1, dataset="cifar10", fine_tune=True),
    # Ours, for the data-matched reference of the training ablation: PAT from scratch (as DeepSec's PAT, but on a CPU
    # budget) with the usual SGD recipe for training a CIFAR-10 ResNet from random weights (peak 0.1, one epoch of
    # warm-up, cosine decay), DeepSec's augmentation, the last epoch kept.
    "pat_scratch_cifar10": Recipe(optimiser="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, epochs=15,
                                  batch_size=128, schedule="cosine", warmup_epochs=1.0, augment=True, keep="last",
                                  dataset="cifar10"),
}
# DeepSec's recipe for each dataset (SPEC §2).
DEEPSEC_RECIPE = {"mnist": "deepsec_mnist", "cifar10": "deepsec_cifar10"}
HISTORY_PGD: dict[str, PGDParams] = {
    # The attack each dataset's PAT trains against (DeepSec's PAT settings, SPEC §5), for the training histories.
    "mnist": PGDParams(eps=0.3, step_size=0.01, steps=40),
    "cifar10": PGDParams(eps=8 / 255, step_size=2 / 255, steps=7),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run produces (and, for ``device``, where it runs).

    Attributes:
        dataset: ``"mnist"`` or ``"cifar10"``.
        model: a :data:`repro.models.MODELS` name built for ``dataset``; ``model_kwargs`` go to its factory.
        defence: ``None`` (standard training) or a :data:`repro.train.DEFENCES` name (``"nat"``, ``"pat"``).
        defence_params: that defence's parameters, or a name from its named configurations; ``None`` picks
            DeepSec's setting for the dataset (``"deepsec_<dataset>"``).
        recipe: a :data:`RECIPES` name; ``None`` picks DeepSec's recipe for the dataset.
        epochs, batch_size: ``None`` takes the recipe's (SPEC §2).
        subset: use the first ``subset`` training images (official order) before the 90/10 split; ``None``: all.
        jpeg_fill: CIFAR-10 only: also train on the lossy JPEG copies of the official training images the exact copy
            lacks (:func:`repro.data.load_jpeg`; never for validation), without a ``subset``. A departure wherever
            used; in the key.
        seed: seeds the split, model initialisation, data order, augmentation, NAT's ε and PGD's start (DeepSec: 100).
        init: where the weights start: ``"scratch"``, ``"deepsec"`` (DeepSec's released raw checkpoint), another
            :class:`TrainConfig` (the model it trains) or the path of a state dict. Part of the cache key; the
            weights themselves are loaded by the caller.
        history_subset: held-out (validation) images on which each epoch's PGD accuracy is measured.
        history_pgd: that PGD attack; ``None``: :data:`HISTORY_PGD` for the dataset.
        disable_dropout: set every ``nn.Dropout`` to p = 0 (for exact multi-process comparisons only).
        device: ``"auto"`` (CUDA when present, one GPU per rank), ``"cpu"``, ``"cuda"``, ``"cuda:1"``. Not part of
            the cache key: the same experiment on another device is the same experiment.
        bf16: bfloat16 autocast for forward passes (training and crafting); changes numerics, hence in the key.
        channels_last: NHWC memory format for the model and batches (a GPU speed option).
        compile: run the update's forward pass through ``torch.compile`` (falling back to eager if compilation
            fails; :func:`repro.models.compiled.compile_or_eager`). Like the device, not part of the cache key.
    """

    dataset: str
    model: str
    model_kwargs: dict = field(default_factory=dict)
    defence: str | None = None
    defence_params: object = None
    recipe: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    subset: int | None = None
    jpeg_fill: bool = False
    seed: int = 100
    init: "str | TrainConfig" = "scratch"
    history_subset: int = 1000
    history_pgd: PGDParams | None = None
    disable_dropout: bool = False
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self):
        _choice("dataset", self.dataset, DATASETS)
        _choice("model", self.model, tuple(MODELS))
        if dataset_of(self.model) != self.dataset:
            raise ValueError(f"model {self.model!r} is for {dataset_of(self.model)!r}, not {self.dataset!r}")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs must be a dict, got {self.model_kwargs!r}")
        _choice("defence", self.defence, (None, *DEFENCES))
        if self.defence is None:
            if self.defence_params is not None:
                raise ValueError(f"defence_params {self.defence_params!r} given without a defence; allowed "
                                 f"defences: {', '.join(map(repr, DEFENCES))}")
        else:
            object.__setattr__(self, "defence_params",
                               DEFENCES[self.defence].resolve(self.defence_params, dataset=self.dataset))
        recipe = DEEPSEC_RECIPE[self.dataset] if self.recipe is None else self.recipe
        _choice("recipe", recipe, tuple(RECIPES))
        object.__setattr__(self, "recipe", recipe)
        written_for = RECIPES[recipe].dataset
        if written_for not in (None, self.dataset):
            fits = [n for n, r in RECIPES.items() if r.dataset in (None, self.dataset)]
            raise ValueError(f"recipe {recipe!r} is written for {written_for!r}, not {self.dataset!r}; allowed for "
                             f"{self.dataset!r}: {', '.join(map(repr, fits))}")
        if RECIPES[recipe].fine_tune and self.init == "scratch":
            raise ValueError(f"recipe {recipe!r} fine-tunes trained weights, so init 'scratch' is refused; start from "
                             f"'deepsec' or a TrainConfig, or train from scratch with {DEEPSEC_RECIPE[self.dataset]!r}")
        history = HISTORY_PGD[self.dataset] if self.history_pgd is None else self.history_pgd
        if not isinstance(history, PGDParams):
            raise ValueError(f"history_pgd must be PGDParams or None, got {history!r}")
        history.check()
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
        if self.jpeg_fill is True and self.dataset != "cifar10":
            raise ValueError(f"jpeg_fill=True needs dataset 'cifar10' (the only JPEG copy), not {self.dataset!r}")
        if self.jpeg_fill is True and self.subset is not None:
            # subset counts exact rows, which on a partial copy are not the first official indices: with the JPEG
            # fill it would name no well-defined set of images, and the key could not tell two such sets apart.
            raise ValueError(f"jpeg_fill=True trains on every official training image, so subset must be None, got "
                             f"subset={self.subset!r}")
        if self.init == "deepsec" and self.dataset not in DEEPSEC_CHECKPOINTS:
            raise ValueError(f"no DeepSec checkpoint for dataset {self.dataset!r}")
        try:
            torch.device("cuda" if self.device == "auto" else self.device)
        except RuntimeError as err:
            raise ValueError(f"unknown device {self.device!r}; allowed: 'auto', 'cpu', 'cuda', 'cuda:N'") from err
        for name in ("jpeg_fill", "disable_dropout", "bf16", "channels_last", "compile"):
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
        init_id = {"file_sha256": _io.sha256_file(Path(init))}
    n_available = _train_size(config.dataset, str(data_root()))
    # Only present when used, so that the keys of every configuration without it stay what they were.
    jpeg = {"jpeg_fill": jpeg_digest(config.dataset, split="train")} if config.jpeg_fill else {}
    return {
        "format": FORMAT_VERSION,
        "code": training_code_hash(),
        "dataset": config.dataset,
        "train_data": digest(config.dataset, split="train"),
        "train_images": min(n_available, config.subset or n_available),
        **jpeg,
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


def training_code_hash() -> str:
    """sha256 of the source of :data:`TRAINING_CODE` and every module it imports, less :data:`TRAINING_CODE_EXCLUDE`
    (:func:`repro._source.code_hash`)."""
    return code_hash(TRAINING_CODE, exclude=TRAINING_CODE_EXCLUDE)


@functools.lru_cache(maxsize=8)
def _train_size(dataset: str, root: str) -> int:
    return len(load(dataset, split="train", root=root)[1])


def config_key(config: TrainConfig) -> str:
    """The cache key of a configuration: hex sha256 of the canonical JSON of :func:`effective_config`.

    It includes :data:`FORMAT_VERSION`, the training code's hash (:func:`training_code_hash`) and the digest of the
    training split (:func:`repro.data.digest`), so other code or other images give new keys. Defaults resolve first:
    ``epochs=None`` and the recipe's 20 give the same key; the device is not part of it.
    """
    return _io.sha256_text(_io.canonical_json(effective_config(config)))

