"""Datasets as tensors, their provenance, and DeepSec's clean-candidate selection.

Images are float32 NCHW in [0, 1] with no mean/std normalisation (DeepSec trains on plain ``ToTensor()``); labels
are int64 class indices. The data root is ``$REPRO_DATA`` when set, else ``~/.cache/repro/data``.

MNIST is downloaded by torchvision when missing (it md5-checks the ``.gz`` archives), but read by our own reader,
which md5-checks the bytes it actually parses — the unzipped file, or the ``.gz`` decompressed in memory when there
is no unzipped copy — against the official files' digests, and refuses (:class:`DataCorruptedError`, naming the
file) anything else. CIFAR-10 is read from the official python pickles by our own reader, so that a copy whose md5s
are not the official ones (a partial rebuild, say) still loads — but never silently: :func:`provenance` reports
whether each file matched its official checksum and how many images were found, and every result records it. A
batch file that does not unpickle (truncated, say) raises :class:`DataCorruptedError` naming it.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
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
# md5 of each *decompressed* official MNIST file: gunzip of the .gz archives whose md5s torchvision lists
# (torchvision.datasets.MNIST.resources), computed once here. These are the bytes we parse, so this is the check.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
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
CIFAR10_BATCH_SIZE = 10_000  # images per official batch file
NUM_CLASSES = 10
# Class names in label order (MNIST: the digits; CIFAR-10: the dataset's batches.meta label_names).
CLASS_NAMES = {"mnist": tuple(str(d) for d in range(10)),
               "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")}


class DataNotFoundError(FileNotFoundError):
    """The dataset is neither on disk nor downloadable; the message says which files are expected where."""


class DataCorruptedError(ValueError):
    """A data file is there but its content is not a valid (or, for MNIST, the official) file; the message names it."""


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
def _mnist_bytes(raw: Path, name: str) -> tuple[bytes, Path]:
    """The decompressed content of MNIST file ``name`` and the file it came from.

    The unzipped file is preferred (torchvision extracts next to the archive); otherwise the ``.gz`` is decompressed
    in memory. Either way the caller checks the md5 of these bytes, which are the ones parsed.
    """
    path = raw / name
    if path.exists():
        return path.read_bytes(), path
    archive = raw / f"{name}.gz"
    if not archive.exists():
        raise DataNotFoundError(f"neither {path} nor {archive} exists")
    try:
        return gzip.decompress(archive.read_bytes()), archive
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError; a truncated stream raises EOFError
        raise DataCorruptedError(f"{archive}: not a valid gzip file ({err}); it is truncated or corrupted. Delete "
                                 "it and load again with download=True, or copy the official file there.") from err


def _read_mnist_file(raw: Path, name: str) -> np.ndarray:
    """Parse one official idx file after checking the md5 of exactly the bytes parsed (:data:`MNIST_MD5`)."""
    payload, source = _mnist_bytes(raw, name)
    md5 = hashlib.md5(payload).hexdigest()
    if md5 != MNIST_MD5[name]:
        what = f"{source} (decompressed)" if source.suffix == ".gz" else str(source)
        raise DataCorruptedError(
            f"{what}: md5 {md5} is not the official {MNIST_MD5[name]} of {name}; the file is modified, truncated or "
            "not MNIST. Delete it (and its .gz) and load again with download=True, or copy the official file there.")
    # The md5 vouches for the idx layout: a 4-byte magic whose last byte is the number of dimensions, each dimension
    # as a big-endian uint32, then the uint8 values.
    ndim = payload[3]
    shape = tuple(int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(payload, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load_mnist(split: str, root: Path, download: bool) -> tuple[Tensor, Tensor]:
    raw = root / "MNIST" / "raw"
    names = MNIST_FILES[split]
    expected = [str(Path("MNIST/raw") / f) for f in names]
    have_files = all((raw / f).exists() or (raw / f"{f}.gz").exists() for f in names)
    if not have_files:
        if not download:
            raise DataNotFoundError(_missing_message("MNIST", root, expected, None))
        from torchvision.datasets import MNIST

        try:
            # torchvision downloads the .gz archives, md5-checks and extracts them; we read (and check) the result.
            MNIST(str(root), train=split == "train", download=True)
        except Exception as err:  # torchvision raises RuntimeError/URLError variants; we re-raise one clear error
            raise DataNotFoundError(_missing_message("MNIST", root, expected, err)) from err
    images, labels = (_read_mnist_file(raw, f) for f in names)
    x = torch.from_numpy(images.copy()).unsqueeze(1).to(torch.float32).div_(255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y, np.arange(len(y))


# -------------------------------------------------------------------------------------------------------- CIFAR-10
def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    # A cut-off pickle raises UnpicklingError or EOFError; other damage surfaces as a missing key or a wrong type.
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError, ValueError) as err:
        raise DataCorruptedError(
            f"{path}: not a readable CIFAR-10 batch ({type(err).__name__}: {err}); the file is truncated or "
            f"corrupted (md5 {file_digest(path, 'md5')}). Replace it with the official file, or delete the "
            f"{CIFAR10_FOLDER} folder and load again with download=True.") from err
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataCorruptedError(f"{path}: expected an (N, 3072) uint8 'data' array, found shape {data.shape}")
    # A partial rebuild may keep all official labels but fewer image rows; row i is still official image i.
    if len(labels) < len(data):
        raise DataCorruptedError(f"{path}: {len(data)} image rows but only {len(labels)} labels")
    labels = labels[: len(data)]
    # A partial copy has no md5 to vouch for it: a label outside the classes would count as a misclassification.
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if len(bad):
        raise DataCorruptedError(f"{path}: label {int(labels[bad[0]])} at row {int(bad[0])} ({len(bad)} such rows); "
                                 f"CIFAR-10 labels are 0..{NUM_CLASSES - 1}. Replace the file with the official one.")
    return data, labels


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


def _load_cifar10(split: str, root: Path, download: bool) -> tuple[Tensor, Tensor, np.ndarray]:
    folder = _ensure_cifar10(root, download)
    parts = [_read_cifar_batch(folder / name) for name in CIFAR10_BATCHES[split]]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    # Row i of official batch b is official image 10,000·b + i, also in a partial copy that keeps fewer rows.
    index = np.concatenate([CIFAR10_BATCH_SIZE * b + np.arange(len(p[1])) for b, p in enumerate(parts)])
    x = torch.from_numpy(data).view(-1, 3, 32, 32).to(torch.float32).div_(255.0)
    return x, torch.from_numpy(labels), index


# ------------------------------------------------------------------------------------------------------ public API
def _files_state(dataset: str, split: str, root: Path) -> tuple:
    """(name, mtime, size) of each file :func:`load` would read: part of the cache key, so that a file replaced or
    damaged after a first load is read (and checked) again instead of served from memory."""
    if dataset == "mnist":
        paths = [root / "MNIST" / "raw" / f"{f}{ext}" for f in MNIST_FILES[split] for ext in ("", ".gz")]
    else:
        paths = [root / CIFAR10_FOLDER / name for name in CIFAR10_BATCHES[split]]
    state = []
    for path in paths:
        with contextlib.suppress(OSError):
            st = path.stat()
            state.append((path.name, st.st_mtime_ns, st.st_size))
    return tuple(state)


@lru_cache(maxsize=8)
def _load_cached(dataset: str, split: str, root: str, download: bool,
                 files_state: tuple) -> tuple[Tensor, Tensor, np.ndarray]:
    loader = _load_mnist if dataset == "mnist" else _load_cifar10
    x, y, index = loader(split, Path(root), download)
    x.requires_grad_(False)
    index.setflags(write=False)
    return x, y, index



def _loaded(dataset: str, split: str, n, root, download: bool) -> tuple[Tensor, Tensor, np.ndarray]:
    """The checked arguments' cached (images, labels, official indices), before taking the first ``n``."""
    _check_choice("dataset", dataset, DATASETS)
    _check_choice("split", split, SPLITS)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    root = Path(root) if root is not None else data_root()
    root = root.expanduser().resolve()
    return _load_cached(dataset, split, str(root), download, _files_state(dataset, split, root))


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
        DataCorruptedError: a file is there but unreadable (a truncated CIFAR-10 batch) or, for MNIST, not the
            official file (its md5 differs); the message names it.
    """
    x, y, _ = _loaded(dataset, split, n, root, download)
    if n is not None:
        x, y = x[:n], y[:n]
    return x.clone(), y.clone()


def official_indices(dataset: str, *, split: str, n: int | None = None, root: str | Path | None = None,
                     download: bool = True) -> np.ndarray:
    """The official index of each image :func:`load` returns with the same arguments (its position in the complete
    official split). On a complete copy this is ``0..N-1``; on a partial CIFAR-10 copy it says which official images
    are there (row i of ``data_batch_b`` is image 10,000·(b − 1) + i), so a split defined on the official indices
    (DeepSec's seeded 10 % validation hold-out) can be restricted to the images available.

    Raises:
        the errors of :func:`load`.
    """
    index = _loaded(dataset, split, n, root, download)[2]
    return index[:n].copy() if n is not None else index.copy()


def digest(dataset: str, *, split: str, root: str | Path | None = None, download: bool = True) -> str:
    """sha256 of the tensors :func:`load` returns for the whole split (images as float32 bytes, labels, official
    indices): it changes with any pixel or label, whatever the file names, counts or checksums say. Part of the
    training cache key (:func:`repro.train.config.config_key`). Computed once per state of the files."""
    _loaded(dataset, split, None, root, download)  # checks the arguments and loads (or reuses) the split
    root = (Path(root) if root is not None else data_root()).expanduser().resolve()
    return _digest_cached(dataset, split, str(root), download, _files_state(dataset, split, root))


@lru_cache(maxsize=8)
def _digest_cached(dataset: str, split: str, root: str, download: bool, files_state: tuple) -> str:
    x, y, index = _load_cached(dataset, split, root, download, files_state)
    h = hashlib.sha256()
    for part in (x.contiguous().numpy().tobytes(), y.numpy().tobytes(), np.ascontiguousarray(index).tobytes()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


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
        # load() above refused any MNIST file whose parsed bytes differ from the official ones; record them anyway.
        for split in SPLITS:
            for name in MNIST_FILES[split]:
                md5 = hashlib.md5(_mnist_bytes(root / "MNIST" / "raw", name)[0]).hexdigest()
                files[name] = {"md5": md5, "official_md5": MNIST_MD5[name], "matches": md5 == MNIST_MD5[name]}
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


def wrong_classes(labels: torch.Tensor, rng: random.Random, *, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """A target class per label, uniform over the ``num_classes − 1`` wrong ones: draw from 0..num_classes − 2 with
    ``rng`` (one draw per label, in order) and skip over the true label. The study's one rule for random targets
    (DeepSec's CW2 candidates here, the security chapter's targeted attacks)."""
    offsets = torch.tensor([rng.randrange(num_classes - 1) for _ in range(len(labels))], dtype=torch.int64)
    return offsets + (offsets >= labels.cpu()).long()


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
    target = wrong_classes(labels, rng)
    least_likely = logits[chosen].argmin(1)
    return Candidates(
        x=x[chosen], y=labels, target=target, least_likely=least_likely, index=chosen,
        n_correct=len(correct), n_test=len(y),
    )
