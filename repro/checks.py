"""The library's input and parameter checks, in one home for the attacks, the metrics and the training code: images,
labels, logits, devices, the evaluation mode, numbers, and the rules a hyper-parameter is checked by
(:class:`Rule`, which each attack and defence registry entry carries for its own parameters).

Every check raises :class:`ValueError` naming the offending value and what is allowed, so an input an attack refuses,
a metric and the training loop refuse with the same words.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

# A model that already applies softmax returns rows in [0, 1] that sum to 1; attacks and metrics need logits.
PROBABILITY_ROW_SUM_TOL = 1e-4
# The contract's dtype (STYLE rule 1): the models are float32, so other image dtypes fail deep inside the first layer.
IMAGE_DTYPE = torch.float32
# Channel counts of the datasets here (grey MNIST, RGB CIFAR-10): a last dimension of this size in a 4-D batch whose
# dim 1 is not one of them means the batch is channels-last (N, H, W, C).
IMAGE_CHANNELS = (1, 3)


def check_image_batch(x: Tensor, *, name: str = "x") -> None:
    """Raise ValueError unless ``x`` is a non-empty float32 batch ``(N, ...)``, channels-first if 4-D.

    Looks only at the tensor's metadata (no host synchronisation), so it is cheap enough for every public call.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name} must be a batch (N, C, H, W) (or (N, D)), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} has no samples (shape {tuple(x.shape)}); at least one image is needed")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of images in [0, 1], got dtype {x.dtype} "
                         f"(8-bit levels? use {name}.float() / 255)")
    if x.dtype != IMAGE_DTYPE:
        raise ValueError(f"{name} has dtype {x.dtype}; images must be float32 (the models' dtype): use {name}.float()")
    if x.dim() == 4 and x.shape[-1] in IMAGE_CHANNELS and x.shape[1] not in IMAGE_CHANNELS:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, which looks channels-last (N, H, W, C); images must be "
                         f"channels-first (N, C, H, W): use {name}.permute(0, 3, 1, 2)")


def check_images(x: Tensor, *, name: str = "x") -> None:
    """Raise ValueError unless ``x`` passes :func:`check_image_batch` and every value lies in [0, 1] (one sync)."""
    check_image_batch(x, name=name)
    lo, hi = torch.stack(torch.aminmax(x.detach())).tolist()
    # NaN fails both comparisons below, so test it first.
    if lo != lo or hi != hi:
        raise ValueError(f"{name} contains NaN; images must lie in [0, 1]")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} has values in [{lo:.6g}, {hi:.6g}]; images must lie in [0, 1] (ToTensor() scale, "
                         "no mean/std normalisation: put that inside the model)")


def check_labels(labels: Tensor, x: Tensor, *, name: str) -> None:
    """Raise ValueError unless ``labels`` is an int64 tensor of shape ``(N,)`` on ``x``'s batch size.

    The class range is checked against the logits by :func:`check_logits` after the first forward pass.
    """
    if not isinstance(labels, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of int64 class indices, got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise ValueError(f"{name} must hold int64 class indices, got dtype {labels.dtype}")
    if labels.shape != (x.shape[0],):
        raise ValueError(f"{name} must have shape ({x.shape[0]},) to match the batch of x {tuple(x.shape)}, "
                         f"got {tuple(labels.shape)}")
    if labels.device != x.device:
        raise ValueError(f"{name} is on {labels.device} but x is on {x.device}; put both on the same device")


def looks_like_probabilities(rows: Tensor) -> bool:
    """Whether every row of ``rows`` (N, K) lies in [0, 1] and sums to 1 (within :data:`PROBABILITY_ROW_SUM_TOL`).

    True means softmax output rather than logits. One host synchronisation.
    """
    with torch.no_grad():
        rows = rows.detach().double()
        in_unit = ((rows >= 0) & (rows <= 1)).all()
        sums_to_one = ((rows.sum(1) - 1).abs() <= PROBABILITY_ROW_SUM_TOL).all()
        return bool(in_unit & sums_to_one)


def check_class_range(labels: Tensor, n_classes: int, *, name: str) -> None:
    """Raise ValueError naming the first entry of ``labels`` outside ``0..n_classes-1`` (one host synchronisation)."""
    outside = (labels < 0) | (labels >= n_classes)
    if bool(outside.any()):
        i = int(outside.nonzero()[0, 0])
        raise ValueError(f"{name}[{i}] = {int(labels[i])} is not a class index: {name} must lie in "
                         f"0..{n_classes - 1} (the logits have {n_classes} columns)")


def check_logits(logits: Tensor, labels: Tensor, *, name: str) -> None:
    """Check the model's first output: logits ``(N, K)``, not probabilities, and ``labels`` in ``0..K-1``."""
    if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"the model must return logits of shape (N, K) = ({labels.shape[0]}, K), "
                         f"got {tuple(logits.shape)}")
    if looks_like_probabilities(logits):
        raise ValueError("the model's outputs lie in [0, 1] and every row sums to 1: it returns probabilities, "
                         "but attacks need logits (remove the final softmax)")
    check_class_range(labels, logits.shape[1], name=name)


def available_devices() -> list[str]:
    """The devices this machine can run on, as strings: ``"cpu"``, then ``"cuda:0"``, ... and ``"mps"`` if present."""
    names = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def check_device(device) -> torch.device:
    """``torch.device(device)``, refusing a device this machine does not have (ValueError listing those it has).

    Without this, asking for ``"cuda"`` on a machine without a GPU fails later with a driver message.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device name; allowed here: "
                         f"{', '.join(map(repr, available_devices()))}") from err
    present = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}.get(dev.type, True)
    if not present:
        raise ValueError(f"device {device!r} asked for, but {dev.type.upper()} is not available on this machine "
                         f"(torch {torch.__version__}); allowed here: {', '.join(map(repr, available_devices()))}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s); allowed here: {', '.join(map(repr, available_devices()))}")
    return dev


def check_nonnegative(value, *, name: str) -> float:
    """Return ``value`` as a float; raise ValueError unless it is a finite real number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number >= 0, got {value!r}")
    value = float(value)
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def check_steps(steps, *, name: str = "steps") -> int:
    """Return ``steps`` as an int; raise ValueError unless it is an integer ≥ 1."""
    check_integer(name, steps)
    return int(steps)


def check_integer(name: str, value, *, low: int = 1, optional: bool = False) -> None:
    """Raise ValueError naming ``name`` and ``value`` unless it is an integer ≥ ``low`` (or ``None`` if
    ``optional``): the one home of this check for the library, the study and their configurations."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}{' or None' if optional else ''}, got {value!r}")


# The layers whose output depends on the module's mode: batch statistics instead of running ones (and buffers
# updated), random dropout masks. A stateless layer's mode changes nothing, so only these are checked.
MODE_DEPENDENT = (torch.nn.modules.batchnorm._NormBase, torch.nn.modules.dropout._DropoutNd)


def check_eval_mode(model, *, name: str = "model") -> None:
    """Refuse a model with a batch-norm or dropout layer in training mode: attacked or scored in ``train()`` mode,
    batch norm would use the batch's statistics and update the caller's running buffers, and dropout would draw
    masks, so the numbers would describe neither the model nor a reproducible run. The caller owns the mode (STYLE):
    this never calls ``eval()`` on it."""
    if not isinstance(model, torch.nn.Module):
        return
    training = [n or type(model).__name__ for n, m in model.named_modules()
                if isinstance(m, MODE_DEPENDENT) and m.training]
    if training:
        raise ValueError(f"{name} is in training mode ({len(training)} batch-norm or dropout layers, first "
                         f"{training[0]!r}); attacks and metrics need it in evaluation mode: call {name}.eval() first")


# ------------------------------------------------------------------------------------------- hyper-parameter rules
RULE_KINDS = ("number", "count", "choice", "flag")


@dataclass(frozen=True)
class Rule:
    """How one hyper-parameter is checked: ``"number"`` (a finite real ≥ ``low``, or > ``low`` if ``strict``, and
    ≤ ``high`` if given), ``"count"`` (an integer ≥ ``low``), ``"choice"`` (one of ``allowed``) or ``"flag"``
    (True or False). Build one with :func:`number`, :func:`count`, :func:`choice` or :data:`FLAG`."""

    kind: str
    low: float = 0.0
    strict: bool = False
    high: float | None = None
    allowed: tuple = ()

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise ValueError(f"unknown rule kind {self.kind!r}; allowed: {', '.join(map(repr, RULE_KINDS))}")
        if self.kind == "choice" and not self.allowed:
            raise ValueError("a choice rule needs the allowed values")

    def describe(self) -> str:
        """What the rule allows, in words (the tail of its error message)."""
        if self.kind == "number":
            bound = f"a finite number {'>' if self.strict else '>='} {self.low:g}"
            return bound + (f" and <= {self.high:g}" if self.high is not None else "")
        if self.kind == "count":
            return f"an integer >= {int(self.low)}"
        if self.kind == "flag":
            return "True or False"
        return f"one of {', '.join(map(repr, self.allowed))}"

    def check(self, name: str, value) -> None:
        """Raise ValueError naming ``name``, ``value`` and what is allowed unless ``value`` passes."""
        if self.kind == "number":
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and \
                (value > self.low if self.strict else value >= self.low) and (self.high is None or value <= self.high)
        elif self.kind == "count":
            check_integer(name, value, low=int(self.low))
            ok = True
        elif self.kind == "flag":
            ok = isinstance(value, bool)
        else:
            ok = any(value == a and type(value) is type(a) for a in self.allowed)
        if not ok:
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")


def number(*, low: float = 0.0, strict: bool = False, high: float | None = None) -> Rule:
    """A finite real ≥ ``low`` (> ``low`` if ``strict``), ≤ ``high`` if given."""
    return Rule("number", low=low, strict=strict, high=high)


def count(*, low: int = 1) -> Rule:
    """An integer ≥ ``low``."""
    return Rule("count", low=low)


def choice(*allowed) -> Rule:
    """One of ``allowed``."""
    return Rule("choice", allowed=tuple(allowed))


FLAG = Rule("flag")


def check_params(params: dict, rules: dict[str, Rule], *, owner: str) -> None:
    """Check every entry of ``params`` by its rule in ``rules``; a name without a rule is refused (ValueError naming
    it, ``owner`` and the known names), so a new parameter cannot slip through unchecked."""
    for name, value in params.items():
        if name not in rules:
            raise ValueError(f"{owner} has no parameter {name!r}; allowed: {', '.join(map(repr, rules))}")
        try:
            rules[name].check(name, value)
        except ValueError as err:
            raise ValueError(f"{owner}: {err}") from None
