"""The machinery around the training loop, kept out of it: devices and DDP shares, data split, timing, evaluation,
the learning-rate schedule, and checkpoints with RNG state (so that a resumed run is bit-identical).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import _io
from ..attacks.pgd import pgd
from ..checks import check_class_range, check_images
from ..data import FULL_SIZES, NUM_CLASSES, load, load_jpeg, official_indices
from ..models import build
from ..models.fold import fold_batchnorm, has_batchnorm
from .config import Recipe, TrainConfig
from .defences import PGDParams

EVAL_BATCH = 500  # batch size for validation and history attacks; results do not depend on it (eval mode)


def distributed() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def device_for(config: TrainConfig) -> torch.device:
    """The run's device: ``config.device``, or under ``"auto"`` this rank's GPU when CUDA is present, else the CPU."""
    if config.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(config.device)


def build_model(config: TrainConfig) -> nn.Module:
    """The untrained architecture of ``config`` (dropout off when ``disable_dropout``)."""
    model = build(config.model, **config.model_kwargs)
    if config.disable_dropout:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    return model


def rank_share(start: int, n_batch: int, rank: int, world: int) -> tuple[slice, float]:
    """This rank's contiguous share of the global batch ``[start, start + n_batch)`` and the global batch / world
    (each loss term is a sum over the share divided by it, so DDP's average is the one-process batch mean)."""
    q, r = divmod(n_batch, world)
    lo = start + rank * q + min(rank, r)
    return slice(lo, lo + q + (rank < r)), n_batch / world


@dataclass
class Split:
    """The training and held-out validation images, on the run's device."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor


def split_data(config: TrainConfig, device: torch.device) -> Split:
    """DeepSec's split (``RawModels/Utils/dataset.py``), defined on the official training indices: shuffle
    ``0..N_official-1`` with numpy's legacy RNG seeded with the run's seed (DeepSec: 100) and hold out the first 10 %
    for validation; then keep the images that are available (the first ``subset``, or a partial copy's rows).

    On the complete MNIST/CIFAR-10 training sets this is DeepSec's exact split. On a subset or a partial copy it is
    the same split restricted to the images there, so the validation images of a model fine-tuned from DeepSec's
    released checkpoint are images that checkpoint never trained on (a split of the available images alone would
    validate on images DeepSec trained on). Validation images come in DeepSec's shuffled order, so the first
    ``history_subset`` of them are the same whatever the subset.

    With ``config.jpeg_fill`` the training part also holds the JPEG copy (:func:`repro.data.load_jpeg`) of every
    official training image the exact copy lacks (within ``subset``); validation stays on exact images only, and
    the held-out images' JPEG copies are not used at all.
    """
    x, y = load(config.dataset, split="train", n=config.subset)
    available = official_indices(config.dataset, split="train", n=config.subset)
    n_exact = len(available)
    n_official = FULL_SIZES[config.dataset]["train"]
    if config.jpeg_fill:
        x_jpeg, y_jpeg, index_jpeg = load_jpeg(config.dataset, split="train")
        fill = ~np.isin(index_jpeg, available) & (index_jpeg < (config.subset or n_official))
        x, y = torch.cat([x, x_jpeg[fill]]), torch.cat([y, y_jpeg[fill]])
        available = np.concatenate([available, index_jpeg[fill]])
    order = np.arange(n_official)
    np.random.RandomState(config.seed).shuffle(order)
    n_val = int(np.floor(config.effective_recipe.val_fraction * n_official))
    position = np.full(n_official, -1)
    position[available] = np.arange(len(available))
    val, tr = position[order[:n_val]], position[order[n_val:]]
    val, tr = torch.from_numpy(val[(val >= 0) & (val < n_exact)]), torch.from_numpy(tr[tr >= 0])
    return Split(x[tr].to(device), y[tr].to(device), x[val].to(device), y[val].to(device))


def check_data(data: Split) -> None:
    """Check the run's images (float32 in [0, 1]) and labels (class indices 0..9) once, before training: the attacks
    inside the training steps then skip their per-call value checks (``validate=False``)."""
    for name in ("x_train", "x_val"):
        if len(getattr(data, name)):
            check_images(getattr(data, name), name=name)
    for name in ("y_train", "y_val"):
        if len(getattr(data, name)):
            check_class_range(getattr(data, name), NUM_CLASSES, name=name)


class Clock:
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
def clean_accuracy(net: nn.Module, x: Tensor, y: Tensor, autocast) -> float:
    """Accuracy of ``net`` (in eval mode) on ``(x, y)``."""
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(x), EVAL_BATCH):
        with autocast():
            correct += (net(x[i:i + EVAL_BATCH]).argmax(1) == y[i:i + EVAL_BATCH]).sum()
    return correct.item() / max(len(x), 1)


def pgd_accuracy(net: nn.Module, x: Tensor, y: Tensor, params: PGDParams, seed: int, autocast) -> float | None:
    """Accuracy of ``net`` under PGD run against it; the same random starts every epoch (``seed``), so the curve
    compares models, not noise. ``None`` without images."""
    if len(x) == 0:
        return None
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


def lr_factor(recipe: Recipe, *, epochs: int, step: int, steps_per_epoch: int) -> float:
    """The learning-rate multiplier before batch ``step`` (0-based, counted over the whole run) of a run of
    ``epochs`` epochs of ``steps_per_epoch`` batches (see :class:`Recipe` for the schedules). A pure function of its
    arguments, so a resumed run sets the same rates without a scheduler state."""
    epoch = step // steps_per_epoch
    if recipe.schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * step / (epochs * steps_per_epoch)))
    else:
        factor = max(math.prod(f for e, f in recipe.lr_decays if e < epoch), recipe.min_lr / recipe.lr)
    warmup = recipe.warmup_epochs * steps_per_epoch
    return factor * min(1.0, (step + 1) / warmup) if warmup > 0 else factor


def optimiser_for(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``model``'s parameters."""
    if recipe.optimiser == "sgd":
        return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                               nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)


def attack_view(net: nn.Module) -> nn.Module:
    """The network the training loop crafts adversarial examples on: ``net`` (in eval mode) with every BatchNorm
    folded into its convolution (:func:`repro.models.fold.fold_batchnorm`), the same function in fewer operations
    (PGD-7 on ResNet-20 1.35–1.45× faster on 2 CPU cores, see :func:`repro.models.fold.fold_batchnorm`), or ``net`` itself without
    BatchNorm. Rebuilt for every batch, since the weights change."""
    return fold_batchnorm(net) if has_batchnorm(net) else net


def write_checkpoint(payload: dict, path: Path) -> None:
    """The per-epoch checkpoint write (rank 0 only); a function of its own so tests can simulate a kill after it."""
    _io.save_atomic(payload, path)


def gather_rng(data_gen: torch.Generator, attack_gen: torch.Generator, world: int) -> list:
    """Every rank's RNG state (data order, augmentation, NAT ε, PGD starts, dropout), for the checkpoint."""
    rng = _io.rng_snapshot(data_generator=data_gen, attack_generator=attack_gen)
    if world == 1:
        return [rng]
    rngs = [None] * world
    dist.all_gather_object(rngs, rng)
    return rngs


def barrier(world: int) -> None:
    """Wait for every rank (no-op in one process)."""
    if world > 1:
        dist.barrier()


def cpu_state(net: nn.Module) -> dict:
    """A detached CPU copy of ``net``'s state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
