"""Model registry (name → factory) and DeepSec's released raw checkpoints.

Every model maps float32 NCHW images in [0, 1] to logits. Factories take keyword arguments only.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .._io import atomic_file, lookup, sha256_file
from ..data import data_root
from .fold import fold_batchnorm, has_batchnorm
from .mnist_convnet import MNISTConvNet, mnist_convnet
from .resnet import ResNet, resnet20, resnet20_wide
from .wide_resnet import WideResNet, madry_wrn

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mnist_convnet": mnist_convnet,
    "resnet20": resnet20,
    "resnet20_wide": resnet20_wide,
    "madry_wrn": madry_wrn,
}
# The dataset each architecture is built for (its input shape and classes); the one home of this fact.
MODEL_DATASET: dict[str, str] = {
    "mnist_convnet": "mnist", "resnet20": "cifar10", "resnet20_wide": "cifar10", "madry_wrn": "cifar10",
}


def dataset_of(name: str) -> str:
    """The dataset model ``name`` is built for.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    return lookup(MODEL_DATASET, name, what="model")

# DeepSec's released raw models (ryderling/DEEPSEC, commit 2c67afac0ae966767b6712a51db85f04f4f5c565).
DEEPSEC_COMMIT = "2c67afac0ae966767b6712a51db85f04f4f5c565"
DEEPSEC_CHECKPOINTS = {
    "mnist": {
        "file": "MNIST_raw.pt",
        "path": "RawModels/MNIST/model/MNIST_raw.pt",
        "sha256": "e04a324e60b10db2d0c09b8719f8535ba3a8a3b91ef2cf29f0458704f4857c38",
        "model": "mnist_convnet",
    },
    "cifar10": {
        "file": "CIFAR10_raw.pt",
        "path": "RawModels/CIFAR10/model/CIFAR10_raw.pt",
        "sha256": "60e6798c68f2ad41007d284d282134c16195fc0ba86e2e7a4a7d3fbd61e91527",
        "model": "resnet20",
    },
}
DEEPSEC_URL = "https://github.com/ryderling/DEEPSEC/raw/{commit}/{path}"


class ChecksumError(ValueError):
    """A checkpoint's sha256 is not the expected one."""


def build(name: str, **kwargs) -> nn.Module:
    """Build the model registered as ``name`` with keyword arguments for its factory.

    Raises:
        ValueError: unknown name.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


def cache_dir() -> Path:
    """Where downloaded checkpoints and trained models are cached (``$REPRO_CACHE`` or ``~/.cache/repro``)."""
    env = os.environ.get("REPRO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "repro"


def verify_sha256(path: Path, expected: str) -> None:
    """Raise :class:`ChecksumError` naming the file and both hashes if ``path`` does not hash to ``expected``."""
    got = sha256_file(path)
    if got != expected:
        raise ChecksumError(f"checkpoint {path} has sha256 {got}, expected {expected}: the file is corrupted or "
                            "not the released one; delete it to download it again")


def _download(url: str, dst: Path, sha256: str) -> None:
    with atomic_file(dst, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
        digest = hashlib.sha256()
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
        if digest.hexdigest() != sha256:  # raising inside atomic_file discards the download
            raise ChecksumError(f"{url} has sha256 {digest.hexdigest()}, expected {sha256}: not the released file")


def deepsec_checkpoint(dataset: str, *, download: bool = True) -> Path:
    """Path to DeepSec's released raw checkpoint for ``dataset``, sha256-verified.

    Looks in ``$REPRO_DATA/deepsec-raw-models/`` first, then the cache, then downloads it from DeepSec's GitHub
    repository into the cache.

    Raises:
        ValueError: unknown dataset.
        ChecksumError: a file is there but its hash is wrong.
        FileNotFoundError: not on disk and cannot be downloaded; the message names where it was looked for.
    """
    if dataset not in DEEPSEC_CHECKPOINTS:
        raise ValueError(f"unknown dataset {dataset!r} for DeepSec's checkpoints; allowed: "
                         f"{', '.join(DEEPSEC_CHECKPOINTS)}")
    info = DEEPSEC_CHECKPOINTS[dataset]
    places = [data_root() / "deepsec-raw-models" / info["file"], cache_dir() / "deepsec" / info["file"]]
    for path in places:
        if path.exists():
            verify_sha256(path, info["sha256"])
            return path
    url = DEEPSEC_URL.format(commit=DEEPSEC_COMMIT, path=info["path"])
    if not download:
        raise FileNotFoundError(f"DeepSec's {dataset} checkpoint is not at {places[0]} or {places[1]}")
    try:
        _download(url, places[1], info["sha256"])
    except ChecksumError:
        raise
    except OSError as err:
        raise FileNotFoundError(
            f"DeepSec's {dataset} checkpoint is not at {places[0]} or {places[1]} and could not be downloaded from "
            f"{url} ({err}); copy {info['file']} (sha256 {info['sha256']}) to one of those places") from err
    return places[1]


def load_deepsec(dataset: str, *, logit_shift: bool = True, map_location: str | torch.device = "cpu") -> nn.Module:
    """DeepSec's released raw model for ``"mnist"`` (ConvNet) or ``"cifar10"`` (ResNet-20), in ``eval()`` mode.

    The checkpoint is a plain state dict saved from CUDA tensors; it is loaded with ``weights_only=True`` and
    ``strict=True`` after its sha256 is verified. ``logit_shift`` defaults to on, as in DeepSec's released code.
    """
    path = deepsec_checkpoint(dataset)
    model = build(DEEPSEC_CHECKPOINTS[dataset]["model"], logit_shift=logit_shift)
    state = torch.load(path, map_location=map_location, weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


__all__ = [
    "MODELS", "MODEL_DATASET", "dataset_of", "build", "load_deepsec", "deepsec_checkpoint", "cache_dir", "verify_sha256",
    "ChecksumError",
    "MNISTConvNet", "ResNet", "WideResNet", "mnist_convnet", "resnet20", "resnet20_wide", "madry_wrn",
    "fold_batchnorm",
    "has_batchnorm",
]
