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

An edit to the attack code changes every key. :func:`carry` (``python -m repro.study.attack_cache --from COMMIT``)
keeps the cache usable across such an edit when a probe shows it computes the same thing: every configuration of
every registered attack, on small random models and images (:mod:`repro.study.attack_probe`), run once by the old
tree's code and once by today's, must give bit-identical adversarial images. It then records the pair of code
hashes in ``carried.json``; a later miss under today's code looks for the run under the old code's key and re-files
it under the new key, and the run's note says so. A probe is evidence, not a proof: code that differs only on inputs
unlike the probe's would pass (the same standard as :mod:`repro.train.carry`).
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import _io, _source
from ..attacks import ATTACKS, AttackRun, run_attack
from ..models import cache_dir

CODE_ROOTS = ("repro.attacks", "repro.models")
# ``repro.models`` imports ``repro.data`` only to find the data folder; the images and labels an attack receives are
# in the key as bytes, so an edit to the data loader does not rerun an attack.
CODE_EXCLUDE = ("repro.data",)
FOLDER = "attacks"
CARRIED = "carried.json"  # the code-hash pairs a probe found to compute the same attacks (in the cache folder)
PROBE_SCRIPT = Path(__file__).with_name("attack_probe.py")
PROBE_IMAGES = 4
# The probe's budgets: every configuration at most this many iterations (the code paths, not the strength).
PROBE_BUDGET = {"steps": 3, "binary_search_steps": 2, "max_iterations": 10}


@dataclass(frozen=True)
class Reuse:
    """Whether a run came from the cache: its ``key`` and, when reused, when it was computed."""

    key: str
    reused: bool
    computed: str
    carried_from: str = ""  # the code hash of the attack code that computed it, when carried (see carry)

    @property
    def note(self) -> str:
        if not self.reused:
            return ""
        code = (f"attack code {self.carried_from[:12]}, which a probe found to compute the same as today's"
                if self.carried_from else "the same attack and model code")
        return (f"attack outputs reused from the attack cache (key {self.key[:12]}, computed {self.computed} by "
                f"{code}, on the same model and inputs; CC is that run's)")


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


def attack_code_hash(model: torch.nn.Module | None = None) -> str:
    """The hash of the code an attack run depends on (:data:`CODE_ROOTS` and the model's own module)."""
    module = type(model).__module__ if model is not None else None
    roots = CODE_ROOTS + ((module,) if module and _source.module_file(module) else ())
    return _source.code_hash(roots, exclude=CODE_EXCLUDE)


def run_key(attack: str, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, *, params: dict,
            batch_size: int, seed: int | None, device: torch.device, options: dict, code: str | None = None) -> str:
    """The cache key of a :func:`repro.attacks.run_attack` call (see the module docstring for what it covers);
    ``code`` replaces today's code hash (:func:`attack_code_hash`) to find a run computed by other code."""
    return _io.sha256_text(_io.canonical_json({
        "code": code or attack_code_hash(model), "attack": attack, "params": params,
        "batch_size": batch_size, "seed": seed, "device": torch.device(device).type, "options": options,
        "torch": torch.__version__,
        "model": model_digest(model), "x": tensor_digest(x), "labels": tensor_digest(labels),
    }))


def _read(path: Path, x: torch.Tensor) -> tuple[AttackRun, str, str] | None:
    """The run stored at ``path``, when it was computed and the code hash it was carried from (``""``: computed by
    today's code), or ``None`` if it is missing, unreadable or does not match ``x``'s shape (an entry that cannot be
    trusted is recomputed)."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=False)
        run = AttackRun(**stored["run"])
    except Exception:  # noqa: BLE001 - an unreadable cache entry is recomputed, never trusted
        return None
    if run.x_adv.shape != x.shape or run.x_adv.dtype != x.dtype:
        return None
    return run, stored["computed"], stored.get("carried_from", "")


def carried_codes(folder: Path | None = None) -> dict[str, list[str]]:
    """Today's-code hash → the older code hashes a probe found to compute the same attacks (``carried.json``)."""
    path = (folder or cache_dir() / FOLDER) / CARRIED
    if not path.is_file():
        return {}
    pairs: dict[str, list[str]] = {}
    for record in json.loads(path.read_text(encoding="utf-8")):
        pairs.setdefault(record["to_code"], []).append(record["from_code"])
    return pairs


def run_cached(attack: str, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, *, params: dict,
               batch_size: int, device, seed: int | None = None, progress: bool = False, autocast_bf16: bool = False,
               compile_model: bool = False) -> tuple[AttackRun, Reuse]:
    """:func:`repro.attacks.run_attack` (same arguments, keyword-only after the labels), computed once per key.

    Returns the run and a :class:`Reuse` record. A cache file that cannot be read, or whose run does not match the
    inputs' shape, is recomputed and replaced (written atomically).
    """
    options = {"autocast_bf16": autocast_bf16, "compile_model": compile_model}
    fields = dict(params=params, batch_size=batch_size, seed=seed, device=device, options=options)
    code = attack_code_hash(model)
    key = run_key(attack, model, x, labels, code=code, **fields)
    folder = cache_dir() / FOLDER
    path = folder / f"{key}.pt"
    found = _read(path, x)
    if found:  # a carried entry keeps saying so (it was computed by the older code)
        return found[0], Reuse(key=key, reused=True, computed=found[1], carried_from=found[2])
    for old_code in carried_codes(folder).get(code, []):
        found = _read(folder / f"{run_key(attack, model, x, labels, code=old_code, **fields)}.pt", x)
        if found:
            run, computed, earlier = found
            origin = earlier or old_code  # carried twice: the code that computed it
            _io.save_atomic({"run": asdict(run), "computed": computed, "carried_from": origin}, path)
            return run, Reuse(key=key, reused=True, computed=computed, carried_from=origin)
    run = run_attack(attack, model, x, labels, params=params, batch_size=batch_size, device=device,
                     progress=progress, seed=seed, autocast_bf16=autocast_bf16, compile_model=compile_model)
    computed = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    _io.save_atomic({"run": asdict(run), "computed": computed}, path)
    return run, Reuse(key=key, reused=False, computed=computed)


# --------------------------------------------------------------------------------------------------------- carry
class CarryError(ValueError):
    """The attack cache cannot be carried to today's code (the message says which check failed)."""


def probe_cases() -> list[dict]:
    """Every named configuration of every registered attack, at the probe's small budgets (:data:`PROBE_BUDGET`)."""
    cases = []
    for name, entry in ATTACKS.items():
        for config, setting in entry.configs.items():
            params = {k: min(v, PROBE_BUDGET[k]) if k in PROBE_BUDGET else v for k, v in setting.items()}
            cases.append({"name": f"{name}/{config}", "attack": name, "params": params, "labels": entry.labels})
    return cases


def _probe(tree: Path, spec: Path, work: Path, side: str) -> dict:
    from ..train.carry import run_in_tree

    out = work / f"{side}.pt"
    run = run_in_tree(tree, str(PROBE_SCRIPT), str(spec), str(out))
    if run.returncode != 0:
        raise CarryError(f"the attack probe failed under {tree}: {run.stderr.strip()[-800:]}")
    return torch.load(out, map_location="cpu")


def carry(*, old_tree: Path, new_tree: Path = _source.PACKAGE_DIR.parent, checked: str = "",
          folder: Path | None = None) -> dict:
    """Probe every attack configuration under the code of ``old_tree`` and of ``new_tree``; if every output is
    bit-identical, record the pair of attack-code hashes in ``carried.json`` (written atomically) so that today's
    runs find the old code's entries. Returns the record.

    Raises:
        CarryError: the code hashes are equal (nothing to carry) or an output differs (named); nothing is written.
    """
    from ..train.carry import run_in_tree

    hashes = []
    for tree in (old_tree, new_tree):
        out = run_in_tree(tree, "-c", "from repro._source import code_hash; "
                          f"print(code_hash({CODE_ROOTS!r}, exclude={CODE_EXCLUDE!r}))")
        if out.returncode != 0:
            raise CarryError(f"{tree}: cannot compute its attack-code hash: {out.stderr.strip()[-500:]}")
        hashes.append(out.stdout.strip())
    old_code, new_code = hashes
    if old_code == new_code:
        raise CarryError(f"the attack code of {old_tree} and {new_tree} is the same ({new_code[:12]}): nothing to "
                         "carry")
    cases = probe_cases()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        spec = work / "spec.json"
        spec.write_text(json.dumps({"cases": cases, "images": PROBE_IMAGES}), encoding="utf-8")
        before, after = (_probe(tree, spec, work, side) for side, tree in (("old", old_tree), ("new", new_tree)))
    if before.keys() != after.keys():
        raise CarryError(f"the probes ran other cases: {sorted(set(before) ^ set(after))}")
    differ = sorted(k for k in after if not torch.equal(before[k], after[k]))
    if differ:
        raise CarryError(f"the new attack code computes other adversarial images for {', '.join(differ)}: the cache "
                         "cannot be carried")
    digest = hashlib.sha256()
    for k in sorted(after):
        digest.update(k.encode() + b"\0" + tensor_digest(after[k]).encode())
    record = {"from_code": old_code, "to_code": new_code, "checked_commit": checked,
              "probe": {"cases": len(after), "images": PROBE_IMAGES, "budget": PROBE_BUDGET,
                        "outputs_sha256": digest.hexdigest(), "identical": True},
              "carried": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    folder = folder or cache_dir() / FOLDER
    path = folder / CARRIED
    records = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    folder.mkdir(parents=True, exist_ok=True)
    _io.write_text_atomic(json.dumps([*records, record], indent=1), path)
    return record


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ..train.carry import CarryError as CheckoutError, checked_out, run_cli

    parser = argparse.ArgumentParser(prog="python -m repro.study.attack_cache",
                                     description="Carry the attack cache across an attack-code edit, where a probe "
                                                 "shows the edit computes the same adversarial images.")
    parser.add_argument("--from", dest="commit", required=True, help="the commit whose attack code filled the cache")
    args = parser.parse_args(argv)

    def action():
        with checked_out(args.commit) as (old_tree, commit):
            return carry(old_tree=old_tree, checked=commit)

    return run_cli(action, errors=(CarryError, CheckoutError, OSError))


if __name__ == "__main__":
    sys.exit(main())
