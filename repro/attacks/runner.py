"""Run an attack over a dataset in batches on one device, timing the attack itself (DeepSec's CC)."""
from __future__ import annotations

import contextlib
import copy
import inspect
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor
from tqdm import tqdm  # text bars: papermill --log-output streams them; no ipywidgets needed

from ..models.compiled import compile_or_eager
from ..models.fold import fold_batchnorm as fold_batchnorm_copy, has_batchnorm
from ..checks import check_device, check_eval_mode, check_image_batch
from .registry import ATTACKS, lookup


@dataclass(frozen=True)
class AttackRun:
    """The result of :func:`run_attack`.

    ``x_adv``: adversarial images on the CPU, in input order. ``seconds``: wall time spent inside the attack calls
    (transfers excluded; CUDA synchronised). ``seconds_per_example``: ``seconds / n``, DeepSec's CC.
    ``device``: where it ran, in words (e.g. ``"cuda:0 (NVIDIA H200)"`` or ``"cpu (2 threads)"``).
    """

    attack: str
    params: dict
    x_adv: Tensor
    n: int
    seconds: float
    seconds_per_example: float
    device: str
    batch_size: int
    seed: int | None
    options: dict = field(default_factory=dict)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def prepare_model(model: torch.nn.Module, *, fold_batchnorm: bool | None = None,
                  channels_last: bool = False) -> tuple[torch.nn.Module, bool]:
    """The model an attack should run on: ``model`` itself, or a BN-folded and/or channels-last copy.

    See :func:`run_attack` for the options (``fold_batchnorm=None``: fold when possible, warn when tracing fails).
    ``model`` is never modified. Returns ``(model_to_attack, folded)``.
    """
    auto = fold_batchnorm is None
    if auto:
        fold_batchnorm = not model.training and has_batchnorm(model)
    folded = False
    if fold_batchnorm:
        try:
            model, folded = fold_batchnorm_copy(model), True
        except ValueError as err:
            if not auto:
                raise
            warnings.warn(f"attacking without BatchNorm folding: {err}", UserWarning, stacklevel=2)
    if channels_last:
        model = (model if folded else copy.deepcopy(model)).to(memory_format=torch.channels_last)
    return model, folded


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" and "cuda:0" name the same GPU when 0 is the current one.
    def index(d: torch.device):
        return torch.cuda.current_device() if d.type == "cuda" and d.index is None else d.index

    return a.type == b.type and index(a) == index(b)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_attack(
    attack: str | Callable,
    model: torch.nn.Module,
    x: Tensor,
    labels: Tensor,
    *,
    params: dict,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
    seed: int | None = None,
    autocast_bf16: bool = False,
    channels_last: bool | None = None,
    fold_batchnorm: bool | None = None,
    compile_model: bool = False,
) -> AttackRun:
    """Apply ``attack`` to ``x`` in batches of ``batch_size`` on ``device`` and collect the results on the CPU.

    Reference: DeepSec (Ling et al., S&P 2019) defines CC, the mean computation cost per adversarial example, but
    its code never measures it; here it is the wall time of the attack calls only, divided by ``n``.

    Args:
        attack: a name in :data:`repro.attacks.ATTACKS` (``"fgsm"``, ``"pgd"``, ``"cw2"``, ...) or an attack function
            ``f(model, x, labels, **params)``.
        model: maps [0, 1] images to logits; its mode is the caller's (``eval()`` for attacks); it must already be
            on ``device``.
        x: float32 images ``(N, C, H, W)`` (channels first), N ≥ 1, in [0, 1], any device.
        labels: ``(N,)`` int64: true labels for untargeted attacks, target or least-likely classes for targeted ones
            (the ``labels`` field of the attack's :class:`repro.attacks.registry.Attack` entry).
        params: the attack's keyword hyper-parameters (e.g. ``repro.attacks.get_config("pgd", "deepsec_mnist")``).
        batch_size: images per attack call, ≥ 1.
        device: where to attack, one this machine has (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...); default the
            device of the model's parameters, which must be this one.
        progress: show a tqdm progress bar.
        seed: if given and the attack takes a ``generator`` (PGD's random start), a CPU generator seeded with it is
            used across batches, so the run is reproducible for a given batch size.
        autocast_bf16: run the attack under CUDA bfloat16 autocast (CUDA only; changes numerics: record it).
        channels_last: attack a channels-last (NHWC) copy of the model with channels-last batches (any device; on 2
            CPU cores PGD on ResNet-20 ran between as fast and 1.25× faster in our measurements, on GPUs it is the
            tensor-core layout). ``None`` (default): on for 4-D image batches.
        fold_batchnorm: attack a copy of the model with each conv → BN pair merged into one conv
            (:func:`repro.models.fold_batchnorm`; 1.35–1.45× faster PGD-7 on ResNet-20 on 2 CPU cores). ``None`` (default): on when the
            model is in ``eval()`` mode and has BatchNorm layers; if its forward pass cannot be traced, a warning
            says so and the run goes on unfolded. ``True`` insists (ValueError in training mode or when tracing
            fails). Both options change outputs only by float32 rounding (the same function, other kernels); a
            gradient component within rounding of zero may flip the sign of a PGD step there.
        compile_model: run the prepared copy through ``torch.compile``, falling back to eager if compilation fails
            (:func:`repro.models.compiled.compile_or_eager`); the pipeline enables it on CUDA under ``paper``.

    The caller's model is never modified: the options act on a copy made once per run.

    Returns:
        :class:`AttackRun` with ``x_adv`` on the CPU, timings, the device description and the effective options.

    Raises:
        ValueError: unknown attack name, bad batch size, an empty, non-float32 or channels-last ``x``, mismatched
            ``x``/``labels``, a device this machine lacks (e.g. ``"cuda"`` without a GPU) or one other than the
            model's, or bf16 autocast on a device other than CUDA; the attack's own ValueErrors propagate.
    """
    if isinstance(attack, str):
        name, fn = attack, lookup(attack).fn
    elif callable(attack):
        name, fn = getattr(attack, "__name__", repr(attack)), attack
    else:
        raise ValueError(f"attack must be a name in {sorted(ATTACKS)} or a function, got {attack!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    # Checked here once, before any batch moves, so that a custom attack function gets the same refusals.
    check_image_batch(x)
    check_eval_mode(model)
    if not isinstance(labels, Tensor) or labels.shape != x.shape[:1]:
        raise ValueError(f"x (N, ...) and labels (N,) must be tensors with the same N, got shapes "
                         f"{tuple(x.shape)} and {tuple(getattr(labels, 'shape', ()))}")
    first = next(model.parameters(), None)
    if device is None:
        device = first.device if first is not None else torch.device("cpu")
    device = check_device(device)
    if first is not None and not _same_device(first.device, device):
        raise ValueError(f"the model is on {first.device} but device is {device}; move it there first "
                         "(model.to(device)): run_attack never moves the caller's model")
    if autocast_bf16 and device.type != "cuda":
        raise ValueError(f"autocast_bf16 is a CUDA-only option; the device is {device}")
    if channels_last and x.dim() != 4:
        raise ValueError(f"channels_last needs NCHW images, got shape {tuple(x.shape)}")
    channels_last = x.dim() == 4 if channels_last is None else bool(channels_last)
    attack_model, folded = prepare_model(model, fold_batchnorm=fold_batchnorm, channels_last=channels_last)
    attack_model = compile_or_eager(attack_model, enabled=compile_model)
    kwargs = dict(params)
    if seed is not None and "generator" in inspect.signature(fn).parameters:
        kwargs["generator"] = torch.Generator().manual_seed(seed)

    n = x.shape[0]
    outputs: list[Tensor] = []
    seconds = 0.0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if autocast_bf16 else contextlib.nullcontext()
    with tqdm(total=n, desc=name, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size].to(device, non_blocking=True)
            yb = labels[start : start + batch_size].to(device, non_blocking=True)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            _synchronize(device)
            began = time.perf_counter()
            with autocast:
                adv = fn(attack_model, xb, yb, **kwargs)
            _synchronize(device)
            seconds += time.perf_counter() - began
            outputs.append(adv.detach().to("cpu", memory_format=torch.contiguous_format))
            bar.update(len(xb))
    return AttackRun(
        attack=name, params=dict(params), x_adv=torch.cat(outputs), n=n, seconds=seconds,
        seconds_per_example=seconds / n, device=_device_name(device),
        batch_size=batch_size, seed=seed,
        options=dict(autocast_bf16=autocast_bf16, channels_last=channels_last, fold_batchnorm=folded,
                     compiled=bool(compile_model) and getattr(attack_model, "failed", None) is None),
    )
