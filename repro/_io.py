"""File plumbing shared by the package: digests, atomic writes, canonical JSON keys, checkpoints, RNG snapshots.

Kept apart from the training loop so that the loop reads like the papers' algorithm boxes. Everything here is
format, not method: changing it never changes what a model learns or what a metric measures.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch


def canonical_json(obj) -> str:
    """``obj`` as JSON with sorted keys and no whitespace: equal objects give equal strings (and hashes).

    Floats are written by ``repr`` (shortest round-trip form), so 8/255 and 0.03137254901960784 are the same key.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def sha256_text(text: str) -> str:
    """Hex sha256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest (``"sha256"``, ``"md5"``, ...) of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path``."""
    return file_digest(path, "sha256")


@contextmanager
def atomic_file(path: Path, mode: str = "wb"):
    """Open a temporary file beside ``path`` for writing; on success flush it to disk and rename it over ``path``.

    The temporary file is in the same folder (same file system, so ``os.replace`` is atomic): a reader sees either
    the old file or the complete new one, and a kill or an exception at any moment leaves nothing half-written
    under ``path`` (the temporary file is removed). The file gets ordinary 0644 permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_atomic(obj, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path, "wb") as f:
        torch.save(obj, f)


def write_text_atomic(text: str, path: Path) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path, "w") as f:
        f.write(text)


def load(path: Path) -> dict:
    """Load a checkpoint written by :func:`save_atomic` onto the CPU (``weights_only=True``: tensors and plain data)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_snapshot(*, data_generator: torch.Generator, attack_generator: torch.Generator) -> dict:
    """The random state that decides what happens next in training, as plain tensors.

    torch's global CPU RNG (dropout on the CPU), every CUDA device's RNG (dropout on GPUs), the data-order
    generator (shuffling, augmentation, NAT's ε) and the attack generator (PGD's random start). Python's and
    numpy's RNGs are not used by the training loop.
    """
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": data_generator.get_state(),
        "attack": attack_generator.get_state(),
    }


def rng_restore(state: dict, *, data_generator: torch.Generator, attack_generator: torch.Generator) -> None:
    """Put back a state captured by :func:`rng_snapshot`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    data_generator.set_state(state["data"])
    attack_generator.set_state(state["attack"])


def lookup(table: dict, name, *, what: str):
    """``table[name]``, or a ValueError naming ``name`` (as a ``what``) and every allowed key: the one way every
    registry of the package (models, profiles, plan columns, ...) answers an unknown name."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; allowed: {', '.join(map(repr, table))}")
    return table[name]
