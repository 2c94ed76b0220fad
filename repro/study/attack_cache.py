"""Attack outputs kept by what decides them, so that an edit to the study or the report never reruns an attack.

A column's fingerprint (:func:`repro.study.plan.fingerprint`) covers the study code its notebook imports, so an edit
there reruns the column. The attack inside it is the expensive part (CW2 at DeepSec's 10 × 10,000 iterations is
about 70 minutes on 2 CPU cores for 100 MNIST candidates) and it depends on much less: the attack's and the models'
code, the model's weights, the images, the labels and the attack's parameters. :func:`run_cached` keys a
:func:`repro.attacks.run_attack` call on exactly those and keeps its :class:`repro.attacks.AttackRun` under
``repro.models.cache_dir()/"attacks"/<key>.pt``, as the training cache keeps trained models. A reused run keeps the
timing of the run that computed it (CC is that run's cost), and says so in :attr:`Reuse.note`.

The key holds: the sha256 of the source of ``repro.attacks`` and ``repro.models`` and of every ``repro`` module they
import (and of the model's own module) but the data loader (:data:`CODE_EXCLUDE`), the model's class, printed
structure and every tensor of its state dict, the bytes of ``x`` and ``labels``, the parameters, batch size, seed,
device type, the run options and the torch version. The cache lives outside the repository: on a new machine the first run computes and fills it.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass

import torch

from .. import _io, _source
from ..attacks import AttackRun, run_attack
from ..models import cache_dir

CODE_ROOTS = ("repro.attacks", "repro.models")
# ``repro.models`` imports ``repro.data`` only to find the data folder; the images and labels an attack receives are
# in the key as bytes, so an edit to the data loader does not rerun an attack.
CODE_EXCLUDE = ("repro.data",)
FOLDER = "attacks"


@dataclass(frozen=True)
class Reuse:
    """Whether a run came from the cache: its ``key`` and, when reused, when it was computed."""

    key: str
    reused: bool
    computed: str

    @property
    def note(self) -> str:
        return (f"attack outputs reused from the attack cache (key {self.key[:12]}, computed {self.computed} by the "
                "same attack and model code on the same model and inputs; CC is that run's)" if self.reused else "")


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (on the CPU, contiguous)."""
    t = t.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too
    return digest.hexdigest()


def model_digest(model: torch.nn.Module) -> str:
    """sha256 over a model's class, its printed structure and every tensor of its state dict (names included)."""
    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}\0{model!r}".encode())
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor_digest(value).encode())
    return digest.hexdigest()


def run_key(attack: str, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, *, params: dict,
            batch_size: int, seed: int | None, device: torch.device, options: dict) -> str:
    """The cache key of a :func:`repro.attacks.run_attack` call (see the module docstring for what it covers)."""
    roots = CODE_ROOTS + ((type(model).__module__,) if _source.module_file(type(model).__module__) else ())
    return _io.sha256_text(_io.canonical_json({
        "code": _source.code_hash(roots, exclude=CODE_EXCLUDE), "attack": attack, "params": params,
        "batch_size": batch_size, "seed": seed, "device": torch.device(device).type, "options": options,
        "torch": torch.__version__,
        "model": model_digest(model), "x": tensor_digest(x), "labels": tensor_digest(labels),
    }))


def run_cached(attack: str, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, *, params: dict,
               batch_size: int, device, seed: int | None = None, progress: bool = False, autocast_bf16: bool = False,
               compile_model: bool = False) -> tuple[AttackRun, Reuse]:
    """:func:`repro.attacks.run_attack` (same arguments, keyword-only after the labels), computed once per key.

    Returns the run and a :class:`Reuse` record. A cache file that cannot be read, or whose run does not match the
    inputs' shape, is recomputed and replaced (written atomically).
    """
    options = {"autocast_bf16": autocast_bf16, "compile_model": compile_model}
    key = run_key(attack, model, x, labels, params=params, batch_size=batch_size, seed=seed, device=device,
                  options=options)
    path = cache_dir() / FOLDER / f"{key}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=False)
            run = AttackRun(**stored["run"])
            if run.x_adv.shape == x.shape and run.x_adv.dtype == x.dtype:
                return run, Reuse(key=key, reused=True, computed=stored["computed"])
        except Exception:  # noqa: BLE001 - an unreadable cache entry is recomputed, never trusted
            pass
    run = run_attack(attack, model, x, labels, params=params, batch_size=batch_size, device=device,
                     progress=progress, seed=seed, autocast_bf16=autocast_bf16, compile_model=compile_model)
    computed = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    _io.save_atomic({"run": asdict(run), "computed": computed}, path)
    return run, Reuse(key=key, reused=False, computed=computed)
