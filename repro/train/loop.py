"""The training loop: standard training, or a defence from :data:`repro.train.DEFENCES`, with DeepSec's recipes.

References: DeepSec (Ling et al., S&P 2019) ``RawModels/train_*.py``, ``Defenses/DefenseMethods/NAT.py`` and
``PAT.py``; Kurakin et al. (ICLR 2017); Madry et al. (ICLR 2018).

:func:`train` reads like DeepSec's algorithm box: per batch, craft the adversarial examples in ``eval()`` mode, then
update in ``train()`` mode on the defence's loss. Everything else (DDP shares, timing, RNG state, checkpoints,
evaluation) lives in :mod:`repro.train.runtime`. Launched by ``torchrun --nproc_per_node=N -m repro.train`` the same
loop runs under DistributedDataParallel: every rank draws the same global batch (and augmentation and NAT ε) and trains
on its contiguous share, so N processes take the same steps as one (up to float summation order).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm  # text bars: papermill --log-output streams them; no ipywidgets needed

from .. import _io
from .._source import git_info
from ..models.compiled import compile_or_eager
from ..data import provenance
from .augment import draw_augmentation, translate_flip
from .config import FORMAT_VERSION, TrainConfig, config_key, effective_config
from .defences import DEFENCES, mean_cross_entropy
from . import runtime as rt

CHECKPOINT_FILE, MODEL_FILE, RESULT_FILE = "checkpoint.pt", "model.pt", "result.json"


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``model`` is in ``eval()`` mode on the run's device and holds the kept epoch's weights (the recipe's ``keep`` rule: DeepSec's best clean validation accuracy, or the last epoch);
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
    provenance: dict | None = None  # the commit and code hash that trained it (``model.pt``'s "provenance")

    @property
    def train_time_s(self) -> float:
        """Seconds the training took (summed over epochs, including runs before a resume)."""
        return sum(h["epoch_time_s"] for h in self.history)


def train(config: TrainConfig, *, out_dir: str | Path, initial_weights: dict | None = None, resume: bool = True,
          progress: bool = True) -> TrainResult:
    """Train a raw model, or a defence, with the config's recipe; keep the epoch the recipe's ``keep`` rule picks.

    Per batch: standard training minimises CE(model(x), y) in ``train()`` mode; a defence first crafts ``x_adv`` in
    its registered mode (NAT and PAT: ``eval()``, BatchNorm on running statistics, dropout off, as DeepSec's NAT.py
    and PAT.py do) and then
    minimises its loss in ``train()`` mode. After every epoch: clean validation accuracy, PGD accuracy on the first
    ``history_subset`` validation images, the checkpoint rule (DeepSec's: validation accuracy rounded to 4 decimals ≥
    the best so far, so later ties win; or the last epoch) and an atomic checkpoint. The learning rate is set before
    every batch from the recipe's schedule. Adversarial examples are crafted on the BatchNorm-folded copy of the
    network (:func:`repro.train.runtime.attack_view`).

    Args:
        config: the run (see :class:`TrainConfig`).
        out_dir: where ``checkpoint.pt`` (every epoch), ``model.pt`` and ``result.json`` go.
        initial_weights: the state dict ``config.init`` names (``None`` for ``"scratch"``); the caller loads it
            (:func:`repro.train.cache.initial_weights`).
        resume: continue from ``out_dir/checkpoint.pt`` when it exists (a checkpoint of another configuration is an
            error, never a silent restart); ``False`` starts over and overwrites it.
        progress: tqdm bars per epoch and batch (rank 0 only).

    Returns:
        A :class:`TrainResult` (model in ``eval()`` mode with the kept epoch's weights).

    Raises:
        ValueError: the checkpoint in ``out_dir`` belongs to another configuration, or ``initial_weights`` is missing
            (or given) against ``config.init``.
    """
    if (initial_weights is None) != (config.init == "scratch"):
        raise ValueError(f"config.init is {config.init!r} but initial_weights is "
                         f"{'missing' if initial_weights is None else 'given'}: pass the weights init names")
    rank, world = rt.distributed()
    device, key, out_dir = rt.device_for(config), config_key(config), Path(out_dir)
    recipe, epochs, batch_size = config.effective_recipe, config.effective_epochs, config.effective_batch_size
    defence = DEFENCES[config.defence] if config.defence else None
    params = config.defence_params
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)

    data = rt.split_data(config, device)
    rt.check_data(data)  # once per run, so that the steps never wait on the device
    torch.manual_seed(config.seed)
    net = rt.build_model(config)
    if initial_weights is not None:
        net.load_state_dict(initial_weights, strict=True)
    net = net.to(device=device, memory_format=fmt)
    optimiser = rt.optimiser_for(net, recipe)
    data_gen = torch.Generator().manual_seed(config.seed)  # shared by all ranks: order, augmentation, NAT ε
    attack_gen = torch.Generator(device=device).manual_seed(config.seed + 1 + rank)
    torch.manual_seed(config.seed + rank)  # dropout masks: one stream per rank
    state = _resume(out_dir / CHECKPOINT_FILE, config, key, net, optimiser, data_gen, attack_gen, rank) \
        if resume else None
    history, best, start_epoch = state if state else ([], None, 0)
    model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else net
    model = compile_or_eager(model, enabled=config.compile)
    n_train, show = len(data.y_train), progress and rank == 0
    steps_per_epoch = -(-n_train // batch_size)

    def set_lr(step: int) -> float:
        lr = recipe.lr * rt.lr_factor(recipe, epochs=epochs, step=step, steps_per_epoch=steps_per_epoch)
        for group in optimiser.param_groups:
            group["lr"] = lr
        return lr

    for epoch in tqdm(range(start_epoch, epochs), desc="epochs", disable=not show, initial=start_epoch, total=epochs):
        lr, loss_sum, t_epoch = set_lr(epoch * steps_per_epoch), torch.zeros((), device=device), time.perf_counter()
        craft_clock, train_clock = rt.Clock(device), rt.Clock(device)
        # The epoch's random draws for the global batch, moved to the device once (no per-batch copies).
        order = torch.randperm(n_train, generator=data_gen).to(device)
        shifts = [t.to(device) for t in draw_augmentation(n_train, *data.x_train.shape[2:], data_gen)] \
            if recipe.augment else None
        drawn = defence.draw(n_train, params, data_gen).to(device) if defence and defence.draw else None
        for batch, start in enumerate(tqdm(range(0, n_train, batch_size), desc=f"epoch {epoch + 1}/{epochs}",
                                           leave=False, disable=not show)):
            set_lr(epoch * steps_per_epoch + batch)
            n_batch = min(batch_size, n_train - start)
            if n_batch < world:
                continue  # a last batch too small to give every rank an image (never happens in one process)
            share, per_rank = rt.rank_share(start, n_batch, rank, world)
            x, y = data.x_train[order[share]], data.y_train[order[share]]
            if shifts is not None:
                x = translate_flip(x, *(t[share] for t in shifts))
            x = x.contiguous(memory_format=fmt)
            mean_ce = mean_cross_entropy(y, per_rank, label_smoothing=recipe.label_smoothing)
            loss = step(net, model, optimiser, x, y, defence=defence, params=params, mean_ce=mean_ce,
                        autocast=autocast, generator=attack_gen, drawn=None if drawn is None else drawn[share],
                        progress=epoch + batch / steps_per_epoch,
                        clocks=(craft_clock, train_clock))
            loss_sum += loss.detach() * per_rank

        if world > 1:
            dist.all_reduce(loss_sum)
        net.eval()
        val_acc = rt.clean_accuracy(net, data.x_val, data.y_val, autocast)
        pgd_acc = rt.pgd_accuracy(net, data.x_val[:config.history_subset], data.y_val[:config.history_subset],
                                  config.history_pgd, config.seed, autocast)
        history.append({"epoch": epoch + 1, "lr": lr, "loss": loss_sum.item() / n_train, "val_acc": val_acc,
                        "pgd_acc": pgd_acc, "epoch_time_s": time.perf_counter() - t_epoch,
                        "train_time_s": train_clock.total() + craft_clock.total(),
                        "craft_time_s": craft_clock.total(), "images": n_train})
        if recipe.keep == "last" or best is None or round(val_acc, 4) >= round(best["val_acc"], 4):
            best = {"epoch": epoch + 1, "val_acc": val_acc, "state_dict": rt.cpu_state(net)}
        rngs = rt.gather_rng(data_gen, attack_gen, world)
        if rank == 0:
            rt.write_checkpoint({"format": FORMAT_VERSION, "key": key, "config": effective_config(config),
                                 "epoch": epoch + 1, "model": net.state_dict(), "optimiser": optimiser.state_dict(),
                                 "rng": rngs, "history": history, "best": best},
                                out_dir / CHECKPOINT_FILE)
        rt.barrier(world)

    if best is None:
        raise ValueError(f"nothing was trained: epochs={epochs}")
    return _finish(config, key, net, history, best, out_dir, device, rank, world)


def step(net: nn.Module, model: nn.Module, optimiser: torch.optim.Optimizer, x, y, *, defence, params, mean_ce,
         autocast, generator, drawn, progress: float, clocks) -> torch.Tensor:
    """One training step on the batch ``(x, y)``: a defence crafts ``x_adv`` in its ``craft_mode`` (``"eval"``: on the
    BatchNorm-folded copy of ``net`` in ``eval()`` mode; ``"train"``: on ``net`` in ``train()`` mode), then ``model`` (``net``, or its DDP wrapper) takes one optimiser step on the loss in ``train()``
    mode. Returns the loss (a tensor: no host synchronisation anywhere in the step; the loop checked its data once).
    ``drawn``: the batch's share of the defence's per-epoch draw; ``progress``: epochs done (fractional) at this
    batch; ``clocks`` time the two halves."""
    craft_clock, train_clock = clocks
    with craft_clock():                                     # 1. craft in the defence's mode (eval() for both here)
        if defence is not None:
            crafting_on = rt.attack_view(net.eval()) if defence.craft_mode == "eval" else net.train()
            with autocast():
                x_adv = defence.craft(crafting_on, x, y, params, drawn=drawn, progress=progress, generator=generator)
    with train_clock():                                     # 2. update in train() mode
        model.train()
        with autocast():
            loss = mean_ce(model(x)) if defence is None else defence.loss(model, mean_ce, x, x_adv, params)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return loss


def _resume(path: Path, config: TrainConfig, key: str, net, optimiser, data_gen, attack_gen, rank):
    """Load the state of an interrupted run from ``path``: (history, best, epochs done), or ``None``."""
    if not path.is_file():
        return None
    saved = _io.load(path)
    if saved.get("key") != key:
        ours, theirs = effective_config(config), saved.get("config", {})
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise ValueError(f"the checkpoint {path} belongs to another configuration (key {saved.get('key')!r}, ours "
                         f"{key!r}; differing fields: {', '.join(differ)}); use another out_dir, or resume=False to "
                         "overwrite it")
    net.load_state_dict(saved["model"])
    optimiser.load_state_dict(saved["optimiser"])
    rng = saved["rng"][rank] if rank < len(saved["rng"]) else saved["rng"][0]
    _io.rng_restore(rng, data_generator=data_gen, attack_generator=attack_gen)
    return saved["history"], saved["best"], saved["epoch"]


def _finish(config, key, net, history, best, out_dir, device, rank, world) -> TrainResult:
    """Load the best weights, write ``model.pt`` and ``result.json`` (rank 0), return the :class:`TrainResult`."""
    net.load_state_dict(best["state_dict"])
    net.eval()
    final_path = out_dir / MODEL_FILE
    effective = effective_config(config)
    trained_by = {"git": git_info(), "code": effective["code"]}
    if rank == 0:
        # model.pt is what results/<profile>/models/ publishes: the kept weights and what trained them, no optimiser.
        _io.save_atomic({"format": FORMAT_VERSION, "key": key, "config": effective, "state_dict": best["state_dict"],
                         "history": history, "best_epoch": best["epoch"], "best_val_acc": best["val_acc"],
                         "provenance": trained_by}, final_path)
        record = {
            "key": key, "config": effective, "history": history, "best_epoch": best["epoch"],
            "best_val_acc": best["val_acc"], "train_time_s": sum(h["epoch_time_s"] for h in history),
            "provenance": {"git": trained_by["git"], "code": trained_by["code"], "torch": torch.__version__, "python": sys.version.split()[0],
                           "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                           "world_size": world, "data": provenance(config.dataset)},
        }
        _io.write_text_atomic(json.dumps(record, indent=1), out_dir / RESULT_FILE)
    rt.barrier(world)
    return TrainResult(model=net, config=config, key=key, history=history, best_epoch=best["epoch"],
                       best_val_acc=best["val_acc"], checkpoint=final_path, from_cache=False, provenance=trained_by)
