"""Carry published models across a change of the training code, without retraining, where probes show that the
change does not change what training computes.

A published model's key holds the hash of the training code that trained it (:func:`repro.train.config.
training_code_hash`), so any edit to that code, even a comment or a new option that is off by default, makes every
published model unknown to today's code: retraining the quick profile's models takes about 4.7 hours on 2 CPU cores.
This tool re-keys them instead, one by one, when all of this holds (else it refuses that folder and removes nothing):

* the file is named ``<key>.<sha256>.pt`` with its own sha256 and key, and the key is the sha256 of its stored
  effective configuration;
* that configuration records the training code hash of the *old* tree (``--from``: a commit, checked out into a
  temporary git worktree), and today's tree has another one;
* its recipe is today's recipe of that name (today's may add fields: the probe trains with their values), and the
  model it starts from, if trained here, is carried in the same run;
* the new code gives its configuration the same effective values (:func:`config_changes`: only the code hash, the
  renamed key of the model it starts from, and fields the new code adds may differ), and its new key is the one the
  new code computes;
* **a probe trains identically under both codes**: the model's own configuration (architecture, defence and its
  parameters, recipe, epochs, batch size, seed, initial weights, validation attack, numerics) on the first
  :data:`PROBE_IMAGES` training images, trained once by each tree in its own process on one CPU thread
  (:mod:`repro.train.probe`); the two runs' weights must be equal bit for bit and their histories equal (timings
  aside). Every epoch, the schedule, the defence's crafting and the keep rule run; a change that alters any of them
  for this configuration fails the check.

A probe is evidence, not a proof: code that behaves differently only on more images than the probe's would pass.
The carried file says so: ``carried`` records the old key and code hash, the commit checked, the probe's size and
the sha256 of the probe's weights. Weights, history and training provenance are kept as they were.

Usage: ``python -m repro.train.carry --from COMMIT results/quick/models results/smoke/models``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .. import _io
from .._source import PACKAGE_DIR
from .cache import published_path, read_index

PROBE_IMAGES = 64  # training images of a probe (before DeepSec's 90/10 split)
PROBE_HISTORY = 8  # validation images of the probe's per-epoch PGD accuracy
PROBE_SCRIPT = Path(__file__).with_name("probe.py")


class CarryError(ValueError):
    """A model that cannot be carried (the message names the file and the check that failed)."""


def run_in_tree(tree: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``python *args`` with the ``repro`` package of ``tree`` on one CPU thread."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True)


def code_hash_of(tree: Path) -> str:
    """The training code hash of the ``repro`` package in ``tree`` (computed by that tree's own code)."""
    out = run_in_tree(tree, "-c", "from repro.train.config import training_code_hash; print(training_code_hash())")
    if out.returncode != 0:
        raise CarryError(f"{tree}: cannot compute its training code hash: {out.stderr.strip()[-500:]}")
    return out.stdout.strip()


def _probe_script(tree: Path, command: str, spec: dict, work: Path, name: str, *out: str) -> str:
    """Run :mod:`repro.train.probe` ``command`` on ``spec`` with the code of ``tree``; its standard output."""
    spec_path = work / f"{name}.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    run = run_in_tree(tree, str(PROBE_SCRIPT), command, str(spec_path), *out)
    if run.returncode != 0:
        raise CarryError(f"the probe's {command!r} failed under {tree}: {run.stderr.strip()[-800:]}")
    return run.stdout


def _probe(tree: Path, spec: dict, work: Path, name: str) -> dict:
    """The probe's weights and history trained by the code of ``tree``."""
    out_path = work / f"{name}.pt"
    _probe_script(tree, "train", spec, work, name, str(out_path))
    return torch.load(out_path, map_location="cpu")


def _today(tree: Path, spec: dict, work: Path, name: str) -> dict:
    """``{"key", "config"}``: what the code of ``tree`` makes of a published configuration (:mod:`repro.train.probe`
    ``key``)."""
    return json.loads(_probe_script(tree, "key", spec, work, name))


def config_changes(old: dict, new: dict, *, renamed: dict[str, str]) -> list[str]:
    """What differs between a stored effective configuration and the one the new code gives it, beyond what a carry
    allows: the code hash, the key of a model it starts from (``renamed``: old → new) and fields the new code adds
    (whose defaults the probe shows to train as before). Each entry names the field."""
    expected = {**old, "code": new["code"]}
    if isinstance(old["init"], dict) and "trained" in old["init"]:
        expected["init"] = {"trained": renamed.get(old["init"]["trained"], old["init"]["trained"])}
    return _differences(json.loads(json.dumps(expected)), json.loads(json.dumps(new)), "")


def recipe_changes(stored: dict) -> list[str]:
    """What differs between a stored recipe (its fields and ``name``) and today's recipe of that name, beyond fields
    today's adds (whose values the probe trains with). Each entry names the field."""
    from .config import RECIPES

    recipe = dict(stored)
    name = recipe.pop("name")
    if name not in RECIPES:
        return [f"recipe {name!r} (not a recipe today)"]
    return _differences(json.loads(json.dumps(recipe)), json.loads(json.dumps(dataclasses.asdict(RECIPES[name]))),
                        "recipe.")


def _differences(a, b, where: str) -> list[str]:
    """The fields of ``a`` that ``b`` removes or changes, recursively; fields only ``b`` has are not differences."""
    if isinstance(a, dict) and isinstance(b, dict):
        gone = [f"{where}{k} (removed)" for k in a if k not in b]
        return gone + [x for k in a if k in b for x in _differences(a[k], b[k], f"{where}{k}.")]
    return [] if a == b else [where.rstrip(".") + f" ({a!r} → {b!r})"]


def same_training(a: dict, b: dict) -> str | None:
    """``None`` when two probes trained identically (bitwise equal weights, equal histories), else what differs."""
    if a["history"] != b["history"]:
        return "their training histories differ"
    if a["state_dict"].keys() != b["state_dict"].keys():
        return "their weights have other names"
    for name, tensor in a["state_dict"].items():
        other = b["state_dict"][name]
        if tensor.dtype != other.dtype or tensor.shape != other.shape or not torch.equal(tensor, other):
            return f"their weights differ ({name})"
    return None


def _weights_digest(state_dict: dict) -> str:
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _initial_file(config: dict, models: dict, work: Path) -> str | None:
    """The file of the initial weights a stored configuration names (``None`` for scratch), written to ``work``."""
    from ..models import load_deepsec

    init = config["init"]
    if init == "scratch":
        return None
    if isinstance(init, dict) and "deepsec_sha256" in init:
        weights = load_deepsec(config["dataset"], logit_shift=config["model_kwargs"].get("logit_shift", True)
                               ).state_dict()
    elif isinstance(init, dict) and init.get("trained") in models:
        weights = models[init["trained"]][1]["state_dict"]
    else:
        raise CarryError(f"initial weights {init!r}: not DeepSec's checkpoint nor a model of the folders carried")
    path = work / f"init_{hashlib.sha256(json.dumps(init, sort_keys=True).encode()).hexdigest()[:16]}.pt"
    torch.save(weights, path)
    return str(path)


def _key_spec(key: str, models: dict) -> dict:
    """The ``key`` spec of :mod:`repro.train.probe` for the published model ``key`` (and, in turn, the model it
    starts from)."""
    config = models[key][1]["config"]
    spec = {"config": config}
    init = config["init"]
    if isinstance(init, dict) and "trained" in init:
        spec["init_config"] = _key_spec(init["trained"], models)
    return spec


def _load_checked(path: Path, key: str, old_code: str) -> dict:
    expected = path.name.split(".")[1]
    if _io.sha256_file(path) != expected:
        raise CarryError(f"{path}: its sha256 is not the one its name records")
    model = _io.load(path)
    config = model["config"]
    if model["key"] != key or _io.sha256_text(_io.canonical_json(config)) != key:
        raise CarryError(f"{path}: its key is not the sha256 of its stored configuration")
    if config.get("code") != old_code:
        raise CarryError(f"{path}: trained by training code {config.get('code')}, not by the old tree's "
                         f"({old_code}); retrain it")
    changed = recipe_changes(config["recipe"])
    if changed:
        raise CarryError(f"{path}: its recipe {config['recipe']['name']!r} is not today's recipe of that name "
                         f"({'; '.join(changed)}); retrain it")
    return model


def carry(folders: list[Path], *, old_tree: Path, new_tree: Path = PACKAGE_DIR.parent, checked: str = "",
          log=print) -> dict[str, str]:
    """Carry every model of the published ``folders`` from the training code of ``old_tree`` to that of
    ``new_tree`` (see the module docstring); ``checked`` names the old tree's commit in the record. Writes the
    re-keyed files, then removes the old ones, only after every model of every folder passed. Returns old key →
    new key.

    Raises:
        CarryError: a check failed (nothing is written or removed).
    """
    old_code, new_code = code_hash_of(old_tree), code_hash_of(new_tree)
    if old_code == new_code:
        raise CarryError(f"the training code of {old_tree} and {new_tree} is the same ({new_code[:12]}): nothing to "
                         "carry")
    models: dict[str, tuple[Path, dict]] = {}
    for folder in folders:
        for key, path in read_index(folder).items():
            models[key] = (path, _load_checked(path, key, old_code))
    renamed: dict[str, str] = {}
    staged: list[tuple[Path, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        todo = dict(models)
        while todo:  # a model trained from another follows it
            ready = [k for k, (_, m) in todo.items()
                     if not (isinstance(m["config"]["init"], dict) and m["config"]["init"].get("trained") in todo)]
            if not ready:
                raise CarryError("the models' initial weights form a cycle")
            for key in ready:
                path, model = todo.pop(key)
                config = model["config"]
                spec = {"config": config, "subset": PROBE_IMAGES, "init_file": _initial_file(config, models, work),
                        "history_subset": min(PROBE_HISTORY, config["history_subset"])}
                before, after = (_probe(tree, spec, work, f"{key[:16]}_{side}")
                                 for side, tree in (("old", old_tree), ("new", new_tree)))
                differs = same_training(before, after)
                if differs:
                    raise CarryError(f"{path}: a probe of its configuration trains differently under the new code "
                                     f"({differs}); retrain it")
                today = _today(new_tree, _key_spec(key, models), work, f"{key[:16]}_key")
                changes = config_changes(config, today["config"], renamed=renamed)
                if today["config"].get("code") != new_code or changes:
                    raise CarryError(f"{path}: the new code gives its configuration other values "
                                     f"({'; '.join(changes) or 'another code hash'}); retrain it")
                new_config, new_key = today["config"], today["key"]
                record = {"from_key": key, "from_code": old_code, "to_code": new_code, "checked_commit": checked,
                          "probe": {"images": PROBE_IMAGES, "history_subset": spec["history_subset"],
                                    "epochs": config["epochs"], "weights_sha256": _weights_digest(after["state_dict"]),
                                    "identical": True}}
                staged.append((path, {**model, "key": new_key, "config": new_config,
                                      "carried": [*model.get("carried", []), record]}))
                renamed[key] = new_key
                log(f"{path.parent}: {key[:12]} -> {new_key[:12]} (probe identical)")
    for path, payload in staged:
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            out = Path(tmp) / "model.pt"
            _io.save_atomic(payload, out)
            out.replace(published_path(path.parent, payload["key"], _io.sha256_file(out)))
    for path, _ in staged:
        path.unlink()
    return renamed


@contextlib.contextmanager
def checked_out(commit: str):
    """A temporary git worktree of ``commit``, removed afterwards; yields ``(tree, full commit hash)``.

    Raises:
        CarryError: ``commit`` cannot be checked out.
    """
    root = PACKAGE_DIR.parent
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp) / "old"
        out = subprocess.run(["git", "worktree", "add", "--detach", str(where), commit], cwd=root,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise CarryError(f"cannot check out {commit!r}: {out.stderr.strip()}")
        try:
            full = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True)
            yield where, full.stdout.strip()
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=root, capture_output=True)


def uncommitted_training_code(root: Path = PACKAGE_DIR.parent) -> list[str]:
    """The files of today's training code (:data:`repro.train.config.TRAINING_CODE`'s closure) that differ from
    ``HEAD`` in the working tree: a carry keys models to committed code only, so that the results computed with
    them name a commit that holds that code."""
    from .._source import module_closure
    from .config import TRAINING_CODE, TRAINING_CODE_EXCLUDE

    paths = [str(p.relative_to(root)) for p in module_closure(TRAINING_CODE, exclude=TRAINING_CODE_EXCLUDE)]
    out = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=root, capture_output=True, text=True)
    return [line[3:] for line in out.stdout.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repro.train.carry", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="commit", required=True, help="the commit whose training code trained them")
    parser.add_argument("folders", nargs="+", type=Path, help="published model folders (results/<profile>/models)")
    args = parser.parse_args(argv)
    root = PACKAGE_DIR.parent
    dirty = uncommitted_training_code(root)
    if dirty:
        print(f"error: uncommitted edits to the training code ({', '.join(dirty)}): commit them first, so that the "
              "carried keys belong to a commit", file=sys.stderr)
        return 1
    def action():
        with checked_out(args.commit) as (old_tree, commit):
            return carry(args.folders, old_tree=old_tree, checked=commit)

    return run_cli(action, errors=(CarryError, OSError))


def run_cli(action, *, errors: tuple) -> int:
    """The tail of this package's maintenance commands: print ``action()``'s JSON-ready result and return 0, or
    print ``error: ...`` to standard error and return 1 on one of ``errors``."""
    try:
        out = action()
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
