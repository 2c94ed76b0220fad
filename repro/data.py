"""Datasets as tensors, their provenance, and DeepSec's clean-candidate selection.

Images are float32 NCHW in [0, 1] with no mean/std normalisation (DeepSec trains on plain ``ToTensor()``); labels
are int64 class indices. The data root is ``$REPRO_DATA`` when set, else ``~/.cache/repro/data``.

MNIST is read through torchvision, which downloads and md5-checks the official files when they are missing. CIFAR-10
is read from the official python pickles by our own reader, so that a copy whose md5s are not the official ones
(a partial rebuild, say) still loads — but never silently: :func:`provenance` reports whether each file matched its
official checksum and how many images were found, and every result records it.
"""
from __future__ import annotations

import os
import pickle
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._io import file_digest

DATASETS = ("mnist", "cifar10")
SPLITS = ("train", "test")

# Official sizes and checksums (torchvision's tables, which come from the datasets' home pages).
FULL_SIZES = {"mnist": {"train": 60_000, "test": 10_000}, "cifar10": {"train": 50_000, "test": 10_000}}
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
NUM_CLASSES = 10


class DataNotFoundError(FileNotFoundError):
    """The dataset is neither on disk nor downloadable; the message says which files are expected where."""


def data_root() -> Path:
    """The data root: ``$REPRO_DATA`` if set, else ``~/.cache/repro/data``."""
    env = os.environ.get("REPRO_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "repro" / "data"


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")


def _missing_message(dataset: str, root: Path, files: list[str], cause: BaseException | None) -> str:
    listing = "\n".join(f"  {root / f}" for f in files)
    why = f" (download failed: {cause})" if cause else ""
    return (
        f"{dataset} not found under the data root {root}{why}.\nExpected files:\n{listing}\n"
        "Either give this machine internet access (the files are then downloaded and checksum-verified), or copy the "
        "official files there, or set REPRO_DATA to a folder that holds them."
    )


# ----------------------------------------------------------------------------------------------------------- MNIST
def _load_mnist(split: str, root: Path, download: bool) -> tuple[Tensor, Tensor]:
    from torchvision.datasets import MNIST

    raw = root / "MNIST" / "raw"
    expected = [str(Path("MNIST/raw") / f) for f in MNIST_FILES[split]]
    have_files = all((raw / f).exists() or (raw / f"{f}.gz").exists() for f in MNIST_FILES[split])
    try:
        # torchvision md5-checks the .gz files it downloads or finds, and extracts them.
        ds = MNIST(str(root), train=split == "train", download=download or have_files)
    except Exception as err:  # torchvision raises RuntimeError/URLError variants; we re-raise one clear error
        raise DataNotFoundError(_missing_message("MNIST", root, expected, err)) from err
    x = ds.data.unsqueeze(1).to(torch.float32).div_(255.0)
    y = ds.targets.to(torch.int64)
    return x, y


# -------------------------------------------------------------------------------------------------------- CIFAR-10
def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected an (N, 3072) uint8 'data' array, found shape {data.shape}")
    # A partial rebuild may keep all official labels but fewer image rows; row i is still official image i.
    if len(labels) < len(data):
        raise ValueError(f"{path}: {len(data)} image rows but only {len(labels)} labels")
    return data, labels[: len(data)]


def _ensure_cifar10(root: Path, download: bool) -> Path:
    folder = root / CIFAR10_FOLDER
    names = CIFAR10_BATCHES["train"] + CIFAR10_BATCHES["test"]
    if all((folder / n).exists() for n in names):
        return folder
    expected = [f"{CIFAR10_FOLDER}/{n}" for n in names]
    if not download:
        raise DataNotFoundError(_missing_message("CIFAR-10", root, expected, None))
    from torchvision.datasets import CIFAR10

    try:
        # Downloads the official archive, verifies its md5, extracts it and md5-checks each batch.
        CIFAR10(str(root), train=False, download=True)
    except Exception as err:
        raise DataNotFoundError(_missing_message("CIFAR-10", root, expected, err)) from err
    return folder


def _load_cifar10(split: str, root: Path, download: bool) -> tuple[Tensor, Tensor]:
    folder = _ensure_cifar10(root, download)
    parts = [_read_cifar_batch(folder / name) for name in CIFAR10_BATCHES[split]]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    x = torch.from_numpy(data).view(-1, 3, 32, 32).to(torch.float32).div_(255.0)
    return x, torch.from_numpy(labels)


# ------------------------------------------------------------------------------------------------------ public API
@lru_cache(maxsize=8)
def _load_cached(dataset: str, split: str, root: str, download: bool) -> tuple[Tensor, Tensor]:
    loader = _load_mnist if dataset == "mnist" else _load_cifar10
    x, y = loader(split, Path(root), download)
    x.requires_grad_(False)
    return x, y


def load(
    dataset: str, *, split: str, n: int | None = None, root: str | Path | None = None, download: bool = True
) -> tuple[Tensor, Tensor]:
    """Load a dataset split as tensors.

    Args:
        dataset: ``"mnist"`` or ``"cifar10"``.
        split: ``"train"`` or ``"test"``.
        n: keep the first ``n`` images (in official order); ``None`` keeps all that are available.
        root: data root; default :func:`data_root`.
        download: fetch and checksum-verify the official files when they are missing.

    Returns:
        ``(x, y)``: float32 images ``(N, C, H, W)`` in [0, 1] and int64 labels ``(N,)``. Fresh copies: callers may
        modify them.

    Raises:
        ValueError: unknown dataset or split, or ``n`` < 1.
        DataNotFoundError: the files are not there and cannot be downloaded; the message names them.
    """
    _check_choice("dataset", dataset, DATASETS)
    _check_choice("split", split, SPLITS)
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    root = Path(root) if root is not None else data_root()
    x, y = _load_cached(dataset, split, str(root.expanduser().resolve()), download)
    if n is not None:
        x, y = x[:n], y[:n]
    return x.clone(), y.clone()


def provenance(dataset: str, *, root: str | Path | None = None) -> dict:
    """Describe the copy of ``dataset`` that :func:`load` reads: where, how many images, official or not.

    Returns a JSON-ready dict with ``dataset``, ``root``, ``official`` (every file matched its official checksum
    and the split is complete), ``train``/``test`` image counts, the full official sizes, and per-file checksum
    results. Results record this so that a number measured on a partial dataset is never mistaken for one on the
    official data.
    """
    _check_choice("dataset", dataset, DATASETS)
    root = Path(root) if root is not None else data_root()
    counts = {split: int(load(dataset, split=split, root=root)[1].numel()) for split in SPLITS}
    files: dict[str, dict] = {}
    if dataset == "cifar10":
        for name, official in CIFAR10_MD5.items():
            md5 = file_digest(root / CIFAR10_FOLDER / name, "md5")
            files[name] = {"md5": md5, "official_md5": official, "matches": md5 == official}
    else:
        # torchvision verified the .gz archives' md5s when it read or extracted them; record what is there.
        for split in SPLITS:
            for name in MNIST_FILES[split]:
                files[name] = {"md5": file_digest(root / "MNIST" / "raw" / name, "md5")}
    complete = all(counts[s] == FULL_SIZES[dataset][s] for s in SPLITS)
    checksums_ok = all(f.get("matches", True) for f in files.values())
    return {
        "dataset": dataset,
        "root": str(root),
        "official": bool(complete and checksums_ok),
        "train": counts["train"],
        "test": counts["test"],
        "full_train": FULL_SIZES[dataset]["train"],
        "full_test": FULL_SIZES[dataset]["test"],
        "files": files,
    }


@dataclass(frozen=True)
class Candidates:
    """DeepSec's clean candidates: test images the raw model classifies correctly.

    ``x`` (N, C, H, W) float32 in [0, 1]; ``y`` true labels; ``target`` a random wrong class per image (for targeted
    attacks such as CW2); ``least_likely`` the raw model's least-likely class on the clean image (for LLC/ILLC);
    ``index`` the positions in the test split; ``n_correct`` how many test images the model got right.
    """

    x: Tensor
    y: Tensor
    target: Tensor
    least_likely: Tensor
    index: Tensor
    n_correct: int
    n_test: int


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: Tensor, *, batch_size: int = 500, device=None) -> Tensor:
    """Logits of ``model`` on ``x`` in batches on ``device`` (default: the model's); returned on the CPU.

    The caller owns the model's mode.
    """
    if device is None:
        device = next(model.parameters()).device
    out = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


def candidates(
    model: torch.nn.Module,
    dataset: str,
    *,
    n: int = 1000,
    seed: int = 100,
    root: str | Path | None = None,
    batch_size: int = 500,
    device=None,
    allow_fewer: bool = False,
) -> Candidates:
    """Select ``n`` clean candidates as DeepSec does (SPEC §3).

    The test split is classified by ``model`` (in whatever mode the caller set; use ``eval()``); the correctly
    classified indices are listed in test order and ``random.Random(seed).sample`` picks ``n`` of them. Each gets a
    target drawn uniformly from the 9 wrong classes and the model's least-likely class. With ``allow_fewer`` (for a
    partial copy of the data) every correctly classified image is selected when there are fewer than ``n``.

    Raises:
        ValueError: ``n`` < 1, or fewer than ``n`` test images are classified correctly (without ``allow_fewer``).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    x, y = load(dataset, split="test", root=root)
    logits = predict_logits(model, x, batch_size=batch_size, device=device)
    correct = torch.nonzero(logits.argmax(1) == y).flatten().tolist()
    requested = n
    if len(correct) < n and allow_fewer:
        n = len(correct)
    if len(correct) < n or n == 0:
        raise ValueError(f"asked for n={requested} candidates but the model classifies only {len(correct)} of {len(y)} "
                         f"{dataset} test images correctly")
    rng = random.Random(seed)
    chosen = torch.tensor(sorted(rng.sample(correct, n)), dtype=torch.int64)
    labels = y[chosen]
    # Uniform over the 9 wrong classes: draw from 0..8 and skip over the true label.
    offsets = torch.tensor([rng.randrange(NUM_CLASSES - 1) for _ in range(n)], dtype=torch.int64)
    target = offsets + (offsets >= labels).long()
    least_likely = logits[chosen].argmin(1)
    return Candidates(
        x=x[chosen], y=labels, target=target, least_likely=least_likely, index=chosen,
        n_correct=len(correct), n_test=len(y),
    )
