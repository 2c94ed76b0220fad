"""Re-key published models of format 4 as format 5, without retraining, where that is exact.

Format 5 (:data:`repro.train.config.FORMAT_VERSION`) narrows the code hash in a key to the code that turns an
effective configuration and the training tensors into weights (:data:`~repro.train.config.TRAINING_CODE` less
:data:`~repro.train.config.TRAINING_CODE_EXCLUDE`), and records two new recipe fields (``dataset``, ``fine_tune``)
that decide which runs are allowed, not what a run computes. A format-4 model is re-keyed only when each of these
holds, else this refuses it (retrain it instead):

* its file has the sha256 its folder's ``index.json`` records, and its stored key is the sha256 of its stored
  effective configuration (so the configuration is the one it was trained with);
* the format-4 code hash it records is the hash of the format-4 training code at a clean commit (``HEAD`` unless
  given), and every file of today's format-5 training code is byte for byte the file at that commit: the code that
  trained it and today's agree on every file the format-5 key covers, so today's code computes the same weights;
* its recipe's fields are today's recipe of that name, and the model it started from (if trained here) is re-keyed
  in the same run.

The weights, the history and the training provenance are kept; ``rekeyed`` records the old key, format and code
hash, and the commit checked. Usage: ``python -m repro.train.rekey results/quick/models results/smoke/models``
(on an error nothing is removed; restore the folders from git before a second try).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import _io
from .._source import PACKAGE_DIR, module_closure
from .cache import published_path
from .config import FORMAT_VERSION, RECIPES, TRAINING_CODE, TRAINING_CODE_EXCLUDE, training_code_hash

OLD_FORMAT = 4
OLD_INDEX = "index.json"
OLD_TRAINING_CODE = ("repro.train",)


class RekeyError(ValueError):
    """A format-4 model that cannot be re-keyed exactly (the message says which check failed)."""


def _git_commit(rev: str) -> str:
    out = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=PACKAGE_DIR.parent,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RekeyError(f"{rev!r} is not a commit of this repository")
    return out.stdout.strip()


def _file_at(commit: str, path: Path) -> bytes | None:
    rel = path.resolve().relative_to(PACKAGE_DIR.parent).as_posix()
    out = subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=PACKAGE_DIR.parent, capture_output=True)
    return out.stdout if out.returncode == 0 else None


def check_code_unchanged(commit: str) -> None:
    """Refuse unless every file of today's training code is byte for byte the file at ``commit``."""
    for path in module_closure(TRAINING_CODE, exclude=TRAINING_CODE_EXCLUDE):
        if _file_at(commit, path) != path.read_bytes():
            raise RekeyError(f"{path.relative_to(PACKAGE_DIR.parent)} differs from its version at {commit[:12]}: "
                             "today's code may train other weights than the code checked; retrain the models")


def format4_code_hash(commit: str) -> str:
    """The format-4 training code hash (:func:`repro._source.source_hash` of the ``repro.train`` closure) of the
    files at ``commit``. The closure is read from today's imports; if they differ at ``commit``, so does the hash,
    and the models are refused, never wrongly accepted."""
    digest = hashlib.sha256()
    for path in module_closure(OLD_TRAINING_CODE):
        content = _file_at(commit, path)
        if content is None:
            raise RekeyError(f"{path} does not exist at {commit[:12]}")
        digest.update(path.resolve().relative_to(PACKAGE_DIR.parent).as_posix().encode() + b"\0" + content + b"\0")
    return digest.hexdigest()


def new_config(old: dict, renamed: dict[str, str]) -> dict:
    """The format-5 effective configuration of a format-4 one (``renamed``: old key → new key of models re-keyed
    so far, for a model that started from another)."""
    if old.get("format") != OLD_FORMAT:
        raise RekeyError(f"format {old.get('format')!r}, not {OLD_FORMAT}")
    recipe = dict(old["recipe"])
    today = dataclasses.asdict(RECIPES[recipe["name"]])
    stored = {k: v for k, v in recipe.items() if k != "name"}
    same = json.loads(json.dumps({k: today.get(k) for k in stored})) == json.loads(json.dumps(stored))
    if not same or set(today) - set(stored) != {"dataset", "fine_tune"}:
        raise RekeyError(f"recipe {recipe['name']!r} is not today's recipe of that name")
    init = old["init"]
    if isinstance(init, dict) and "trained" in init:
        if init["trained"] not in renamed:
            raise RekeyError(f"it starts from model {init['trained']}, which is not re-keyed in this run")
        init = {"trained": renamed[init["trained"]]}
    return {**old, "format": FORMAT_VERSION, "code": training_code_hash(), "init": init,
            "recipe": {"name": recipe["name"], **today}}


def rekey_folder(folder: str | Path, renamed: dict[str, str] | None = None, *, commit: str = "HEAD",
                 log=print) -> dict[str, str]:
    """Re-key every format-4 model of the published ``folder`` (files ``<key>.pt`` and ``index.json``) into
    ``<new key>.<sha256>.pt``, checked against the code at ``commit``, then remove the old files and the index.
    Returns old key → new key."""
    folder = Path(folder)
    renamed = {} if renamed is None else renamed
    commit = _git_commit(commit)
    check_code_unchanged(commit)
    old_code = format4_code_hash(commit)
    index_path = folder / OLD_INDEX
    index = json.loads(index_path.read_text(encoding="utf-8"))
    saved = {}
    for key, entry in index.items():
        path = folder / f"{key}.pt"
        if _io.sha256_file(path) != entry["sha256"]:
            raise RekeyError(f"{path}: sha256 differs from {index_path}")
        model = _io.load(path)
        if model["key"] != key or _io.sha256_text(_io.canonical_json(model["config"])) != key:
            raise RekeyError(f"{path}: its key is not the sha256 of its stored configuration")
        if model["config"].get("code") != old_code:
            raise RekeyError(f"{path}: trained by training code {model['config'].get('code')}, not the code at "
                             f"{commit[:12]} ({old_code}); retrain it")
        saved[key] = (path, model)
    todo = dict(saved)
    while todo:  # a model trained from another one follows it
        ready = [k for k, (_, m) in todo.items()
                 if not (isinstance(m["config"]["init"], dict) and m["config"]["init"].get("trained") in todo)]
        if not ready:
            raise RekeyError(f"{folder}: the models' initial weights form a cycle")
        for key in ready:
            path, model = todo.pop(key)
            config = new_config(model["config"], renamed)
            new_key = _io.sha256_text(_io.canonical_json(config))
            out = {**model, "format": FORMAT_VERSION, "key": new_key, "config": config,
                   "rekeyed": {"from_key": key, "from_format": OLD_FORMAT, "from_code": model["config"]["code"],
                               "checked_commit": commit}}
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                staged = Path(tmp) / "model.pt"
                _io.save_atomic(out, staged)
                staged.replace(published_path(folder, new_key, _io.sha256_file(staged)))
            renamed[key] = new_key
            log(f"{folder}: {key[:12]} -> {new_key[:12]}")
    for path, _ in saved.values():
        path.unlink()
    index_path.unlink()
    return renamed


def main(argv: list[str] | None = None) -> int:
    from .carry import run_cli

    def action():
        renamed: dict[str, str] = {}
        for folder in (sys.argv[1:] if argv is None else argv):
            rekey_folder(folder, renamed)
        return renamed

    return run_cli(action, errors=(RekeyError, OSError, KeyError))


if __name__ == "__main__":
    sys.exit(main())
