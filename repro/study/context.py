"""What every notebook of the study starts with: the run's :class:`Context`, the checks of its parameters (those
common to every notebook, then the rules the attack and defence registries carry), its device and its seeds.

The column steps (:mod:`repro.study.steps`), the model provisioning (:mod:`repro.study.models`) and the chapters
(:mod:`repro.study.security`, :mod:`repro.study.training`) build on this module; it imports none of them.
"""
from __future__ import annotations

import os
import random
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import data as data_mod
from .. import results as results_mod
from ..attacks import ATTACKS
from ..checks import check_integer
from ..train import DEFENCES
from .profiles import PROFILES, Profile, get_profile

# The follow-up's name for PGD's step (accepted as an alias of step_size).
ALIASES = {"eps_iter": "step_size"}

class ParameterError(ValueError):
    """A notebook parameter is unknown, out of range, or inconsistent with another one."""

@dataclass
class Context:
    """One run in progress: the effective parameters and what the result will record about it."""

    kind: str  # one of repro.results.KINDS
    name: str  # the attack or defence run ("findings" for the findings notebook)
    params: dict
    profile: Profile
    device: torch.device
    started: float
    models: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    departures: list = field(default_factory=list)  # found while running (e.g. fewer candidates than asked)
    train_seconds: float = 0.0  # training done by this run (not served from the cache)
    intervals: dict = field(default_factory=dict)  # metric → 95 % interval record, saved beside the metrics
    extra: dict = field(default_factory=dict)  # other numbers the steps measured (e.g. the null defence)

    @property
    def column(self) -> str:
        return self.params["column"]

# --------------------------------------------------------------------------------------------------- validation
def require(condition: bool, message: str) -> None:
    if not condition:
        raise ParameterError(message)

def check_count(p: dict, name: str, *, low: int = 1, optional: bool = False) -> None:
    """:func:`repro.checks.check_integer` on ``p[name]``, as a :class:`ParameterError`."""
    try:
        check_integer(name, p[name], low=low, optional=optional)
    except ValueError as err:
        raise ParameterError(str(err)) from None


def resolve_jpeg_fill(p: dict, default: bool, *, profile_subset: int | None) -> None:
    """Fill ``p["defence_jpeg_fill"]`` (``None``: ``default``, the profile's) and check it: a bool, CIFAR-10 only, and
    not together with ``defence_subset`` (which counts exact training images; ``profile_subset``: the profile's, so
    that the message says whose it is)."""
    fill = default if p.get("defence_jpeg_fill") is None else p["defence_jpeg_fill"]
    require(isinstance(fill, bool), f"defence_jpeg_fill must be True, False or None (the profile's), got {fill!r}")
    require(not fill or p["dataset"] == "cifar10",
            f"defence_jpeg_fill=True needs dataset 'cifar10' (the JPEG copies are CIFAR-10's), got {p['dataset']!r}")
    subset = p.get("defence_subset")
    require(not fill or subset is None or subset != profile_subset,
            f"defence_jpeg_fill=True cannot be used under the profile {p['profile']!r}: it trains the defences on the "
            f"first {subset} exact training images (its defence_subset); use a profile without one (quick, paper)")
    require(not fill or subset is None,
            f"defence_subset={subset!r} counts exact training images and cannot be combined with the JPEG copies "
            f"(defence_jpeg_fill=True; None takes the profile's): pass defence_jpeg_fill=False as well")
    p["defence_jpeg_fill"] = fill


def check_rule(rule, name: str, value) -> None:
    """``rule.check(name, value)`` (a :class:`repro.checks.Rule` from an attack's or a defence's registry entry, the
    one home of its checks) as a :class:`ParameterError`."""
    try:
        rule.check(name, value)
    except ValueError as err:
        raise ParameterError(str(err)) from None

def _check_output_folder(results_dir: str, profile: str) -> None:
    """Refuse, before any work, a results folder inside the committed ``results/`` tree (only the pipeline writes
    there, by moving what a run saved in its staging folder) or one where the result could not be written."""
    folder = results_mod.resolve_path(results_dir) / profile
    committed = results_mod.resolve_path(results_mod.COMMITTED_RESULTS)
    require(folder != committed and committed not in folder.parents,
             f"results_dir {results_dir!r} is inside the committed results/ tree, which only the pipeline writes "
             "(python -m repro.pipeline); use another folder, e.g. the default 'runs'")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as err:
        raise ParameterError(f"results_dir {results_dir!r}: cannot write to {folder} ({err.strerror or err}); give "
                             "a writable folder") from err


def _resolve_device(device) -> str:
    require(isinstance(device, str), f"device must be a string ('auto', 'cpu', 'cuda', 'cuda:N'), got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ParameterError(f"device {device!r} is not a torch device ('auto', 'cpu', 'cuda', 'cuda:N')") from err
    require(dev.type in ("cpu", "cuda"), f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    require(dev.type != "cuda" or torch.cuda.is_available(),
             f"device {device!r} asked for, but CUDA is not available on this machine; use 'cpu' or 'auto'")
    return str(dev)


def attack_parameters(attack: str) -> tuple[str, ...]:
    """The hyper-parameters of ``attack`` (from its registry entry)."""
    return ATTACKS[attack].parameters


def defence_parameters(defence: str) -> tuple[str, ...]:
    """The hyper-parameters of ``defence`` (the fields of its parameters type, from its registry entry)."""
    return DEFENCES[defence].parameters

def injected_parameters() -> set[str] | None:
    """Names papermill injected into this kernel (its "# Parameters" cell), or ``None`` outside papermill.

    papermill only warns about a parameter the notebook does not declare and runs the defaults; :func:`setup`
    uses this to refuse it instead.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    history = [] if shell is None else shell.user_ns.get("In", [])
    injected = [cell for cell in history if isinstance(cell, str) and cell.startswith("# Parameters\n")]
    if not injected:
        return None
    import ast

    tree = ast.parse(injected[-1])
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}


def resolve_common(*, injected: set | None = None, **params) -> tuple[dict, Profile]:
    """The checks every notebook's parameters pass (profile, column, results folder, seed, device, batch size) and
    the aliases (``eps_iter`` → ``step_size``), as :func:`resolve` describes them; the chapters (security, training)
    call it before their own resolvers. Returns the parameters and the profile.

    Raises:
        ParameterError: a bad common parameter (named, with what is allowed).
    """
    p = dict(params)
    for alias, name in ALIASES.items():
        if p.get(alias) is not None:
            # Under papermill, a parameter left at the notebook's default (not injected) gives way to its alias.
            given = name not in p or injected is None or name in injected
            require(not given or p.get(name) in (None, p[alias]),
                     f"{alias} (the follow-up's name) and {name} are the same parameter; got both, "
                     f"{p[alias]!r} and {p[name]!r}")
            p[name] = p[alias]
        p.pop(alias, None)
    require(p.get("profile") in PROFILES,
             f"unknown profile {p.get('profile')!r}; allowed: {', '.join(map(repr, PROFILES))}")
    prof = get_profile(p["profile"])
    require(isinstance(p.get("column"), str) and p["column"].replace("_", "").replace("-", "").isalnum(),
             f"column must be a plain name (letters, digits, _ and -), got {p.get('column')!r}")
    require(isinstance(p.get("results_dir"), str) and p["results_dir"] != "",
             f"results_dir must be a folder name, got {p.get('results_dir')!r}")
    _check_output_folder(p["results_dir"], p["profile"])
    check_count(p, "seed", low=0)
    p["device"] = _resolve_device(p.get("device", "auto"))
    if p.get("batch_size") is None:
        p["batch_size"] = prof.batch_size
    check_count(p, "batch_size")
    return p, prof

def start(kind: str, name: str, resolver, *, declared: tuple[str, ...] = (), **params) -> Context:
    """The setup every notebook runs: check that papermill injected no parameter the notebook lacks (``params`` and
    ``declared``, the ones the caller consumed itself), validate and resolve the parameters
    (``resolver(injected=..., **params)`` → the effective parameters), seed every RNG, and start the clock. ``kind``
    is the result's kind (:data:`repro.results.KINDS`), ``name`` what it runs.

    Raises:
        ParameterError: a parameter the notebook does not declare (named, with the allowed ones), or a bad value.
    """
    started = time.time()
    injected = injected_parameters()
    if injected is not None:
        allowed = set(params) | set(declared)
        unknown = sorted(injected - allowed)
        require(not unknown, f"unknown notebook parameter(s) {', '.join(map(repr, unknown))}; allowed: "
                              f"{', '.join(map(repr, sorted(allowed)))}")
    p = resolver(injected=injected, **params)
    random.seed(p["seed"])
    np.random.seed(p["seed"] % 2**32)
    torch.manual_seed(p["seed"])
    ctx = Context(kind=kind, name=name, params=p, profile=get_profile(p["profile"]),
                  device=torch.device(p["device"]), started=started)
    datasets = [p["dataset"]] if "dataset" in p else list(data_mod.DATASETS)
    ctx.data = {"datasets": {d: _data_record(d) for d in datasets}}
    return ctx

def _data_record(dataset: str) -> dict:
    prov = data_mod.provenance(dataset)
    return {k: v for k, v in prov.items() if k != "root"}


def progress_enabled() -> bool:
    """tqdm bars in long cells: on, except under CI (``CI`` set) or with ``REPRO_PROGRESS=0``."""
    return not os.environ.get("CI") and os.environ.get("REPRO_PROGRESS", "1") != "0"
