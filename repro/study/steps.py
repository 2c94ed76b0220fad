"""The steps of one table column, as the notebooks call them: set up, get the models, attack or defend, measure,
save one result.

Notebooks stay thin (STYLE): their parameters cell holds literals; :func:`setup` names the attack (a
:data:`repro.attacks.ATTACKS` entry) or defence (a :data:`repro.train.DEFENCES` entry) the notebook runs, rejects
parameters the notebook does not declare, validates the others and fills the budgets the profile decides (``None``
in the parameters cell); four or five calls below do the work, dispatched through those registries. Every function
returns values and prints nothing.
"""
from __future__ import annotations

import enum
import math
import os
import random
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from .. import _io
from .. import data as data_mod
from .. import results as results_mod
from ..attacks import ATTACKS, labels_field
from ..models import DEEPSEC_CHECKPOINTS, MODEL_DATASET
from ..train import DEFENCES, RECIPES, TrainConfig
from .plan import COLUMNS, departures as plan_departures, fingerprint
from .profiles import PROFILES, Profile, departures_of, get_profile, loads_deepsec_checkpoint

# Accuracy-vs-ε curves: PGD with `curve_steps` steps of ε/4 (Madry's 2/255 for ε = 8/255).
CURVE_EPS = {"mnist": [0.0, 0.1, 0.2, 0.3, 0.4], "cifar10": [0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 0.1]}
BF16_DEPARTURE = ("bfloat16 autocast on the GPU in the {what} (the papers ran float32): logits and gradients are "
                  "rounded to 8 significant bits, so results differ from a float32 run within the intervals' noise")
# The follow-up's name for PGD's step (accepted as an alias of step_size).
ALIASES = {"eps_iter": "step_size"}


class ParameterError(ValueError):
    """A notebook parameter is unknown, out of range, or inconsistent with another one."""


class ModelSource(str, enum.Enum):
    """Where a model in a result came from."""

    DEEPSEC = "DeepSec's released checkpoint"
    TRAINED = "trained here"


@dataclass
class Context:
    """One run in progress: the effective parameters and what the result will record about it."""

    kind: str  # "attack", "defence" or "findings"
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


def _number(p: dict, name: str, *, low: float = 0.0, strict: bool = False, high: float | None = None) -> None:
    value = p[name]
    require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
             f"{name} must be a finite number, got {value!r}")
    require(value > low if strict else value >= low, f"{name} must be {'>' if strict else '>='} {low}, got {value!r}")
    require(high is None or value <= high, f"{name} must be <= {high}, got {value!r}")


def check_count(p: dict, name: str, *, low: int = 1, optional: bool = False) -> None:
    value = p[name]
    if value is None and optional:
        return
    require(isinstance(value, int) and not isinstance(value, bool) and value >= low,
             f"{name} must be an integer >= {low}{' or None' if optional else ''}, got {value!r}")


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


def resolve(*, attack: str | None = None, defence: str | None = None, findings: bool = False,
            injected: set | None = None, **params) -> dict:
    """Validate a column notebook's parameters and fill the budgets the profile decides.

    Args:
        attack / defence / findings: what the notebook runs: an :data:`repro.attacks.ATTACKS` name, a
            :data:`repro.train.DEFENCES` name, or the findings experiments (the security and training chapters
            resolve their own parameters: :func:`repro.study.security.setup`, :func:`repro.study.training.setup`).
        **params: the parameters cell's values. ``None`` for a budget (``n_samples``, ``batch_size``, ``width``,
            the attack's iteration budget, ``epochs``, ``train_subset``, ``defence_*``, ``eval_subset``,
            ``curve_samples``) means "the profile's value". PGD's ``eps_iter`` (the follow-up's name) is accepted
            as ``step_size``; given alone under papermill, it replaces the notebook's default ``step_size``.
        injected: the parameters papermill injected (:func:`injected_parameters`; ``None``: unknown, every given
            parameter counts as set by the caller).

    Returns:
        The effective parameters, JSON-ready (device as a string).

    Raises:
        ParameterError: an unknown profile, dataset, model, attack or defence, a dataset/model mismatch, a negative
            ε, a step count below 1, ... — the message names the parameter and what is allowed.
    """
    require((attack is not None) + (defence is not None) + bool(findings) == 1,
             "give exactly one of attack=..., defence=... or findings=True")
    require(attack is None or attack in ATTACKS,
             f"unknown attack {attack!r}; allowed: {', '.join(map(repr, ATTACKS))}")
    require(defence is None or defence in DEFENCES,
             f"unknown defence {defence!r}; allowed: {', '.join(map(repr, DEFENCES))}")
    p, prof = resolve_common(injected=injected, **params)
    if findings:
        if p.get("n_samples") is None:
            p["n_samples"] = prof.findings_samples
        check_count(p, "n_samples")
        return p

    require(p.get("dataset") in data_mod.DATASETS,
             f"unknown dataset {p.get('dataset')!r}; allowed: {', '.join(map(repr, data_mod.DATASETS))}")
    require(p.get("model") in MODEL_DATASET,
             f"unknown model {p.get('model')!r}; allowed: {', '.join(map(repr, MODEL_DATASET))}")
    require(MODEL_DATASET[p["model"]] == p["dataset"],
             f"model {p['model']!r} is a {MODEL_DATASET[p['model']]} model but dataset is {p['dataset']!r}; "
             f"use dataset={MODEL_DATASET[p['model']]!r} or a {p['dataset']} model "
             f"({', '.join(repr(m) for m, d in MODEL_DATASET.items() if d == p['dataset'])})")
    require(isinstance(p.get("logit_shift"), bool), f"logit_shift must be True or False, got {p.get('logit_shift')!r}")
    if p["model"] == "resnet20_wide":
        p["width"] = prof.wide_width if p.get("width") is None else p["width"]
        check_count(p, "width")
    else:
        require(p.get("width") in (None, 1),
                 f"width applies to model 'resnet20_wide' only, got width={p.get('width')!r} with model {p['model']!r}")
        p["width"] = None
    for name, default in (("epochs", prof.raw.epochs), ("train_subset", prof.raw.subset)):
        p[name] = default if p.get(name) is None else p[name]
        check_count(p, name, optional=True)

    if attack is not None:
        budget = prof.attack_budget(attack)
        p["n_samples"] = budget.n_candidates if p.get("n_samples") is None else p["n_samples"]
        check_count(p, "n_samples")
        for name in attack_parameters(attack):
            if name in p and p[name] is None and name in budget.iterations:
                p[name] = budget.iterations[name]
            if name in p:
                check_rule(ATTACKS[attack].rules[name], name, p[name])
        if p.get("eps", 0) >= 1:
            p["note"] = (f"eps = {p['eps']:g} ≥ 1 on [0, 1] images: only the [0, 1] box constrains the attack "
                         "(the follow-up's literal \"ε = 8\")")
        return p

    # One notebook serves every defence: its parameters cell lists each defence's hyper-parameters, ``None`` meaning
    # DeepSec's setting for the dataset; those of another defence must stay ``None`` and are dropped.
    mine = defence_parameters(defence)
    for other in DEFENCES:
        for name in defence_parameters(other):
            if name not in mine and name in p:
                require(p[name] is None, f"{name} is a parameter of defence {other!r}, not of {defence!r}; leave it "
                                         f"None (given {p[name]!r})")
                p.pop(name)
    setting = DEFENCES[defence].configs[f"deepsec_{p['dataset']}"]
    for name in mine:
        if name in p:
            if p[name] is None:
                p[name] = getattr(setting, name)
            check_rule(DEFENCES[defence].params_type.RULES[name], name, p[name])
    require(p.get("defence_init") in (None, "raw", "scratch"),
             f"defence_init must be 'raw', 'scratch' or None (the profile's), got {p.get('defence_init')!r}")
    budget = prof.defence.for_dataset(p["dataset"])
    require(p.get("defence_recipe") in (None, *RECIPES),
             f"defence_recipe must be one of {', '.join(map(repr, RECIPES))} or None (the profile's), got "
             f"{p.get('defence_recipe')!r}")
    for name, default in (("defence_init", budget.init), ("defence_recipe", budget.recipe),
                          ("defence_epochs", budget.epochs), ("defence_subset", budget.subset),
                          ("eval_subset", prof.defence.eval_subset), ("curve_samples", prof.curve_samples)):
        p[name] = default if p.get(name) is None else p[name]
    for name in ("defence_epochs", "defence_subset", "eval_subset"):
        check_count(p, name, optional=True)
    check_count(p, "curve_samples")
    check_count(p, "curve_steps")
    return p


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


def setup(*, attack: str | None = None, defence: str | None = None, findings: bool = False, **params) -> Context:
    """:func:`start` for a column notebook (an attack, a defence or the findings), its parameters resolved by
    :func:`resolve`.

    Raises:
        ParameterError: a parameter the notebook does not declare (named, with the allowed ones), or a bad value.
    """
    kind = "attack" if attack else "defence" if defence else "findings"
    # The defence notebook serves every defence: its ``defence`` parameter names the one it runs.
    return start(kind, attack or defence or kind,
                 lambda **p: resolve(attack=attack, defence=defence, findings=findings, **p),
                 declared=("defence",) if defence else (), **params)


def _data_record(dataset: str) -> dict:
    prov = data_mod.provenance(dataset)
    return {k: v for k, v in prov.items() if k != "root"}


def progress_enabled() -> bool:
    """tqdm bars in long cells: on, except under CI (``CI`` set) or with ``REPRO_PROGRESS=0``."""
    return not os.environ.get("CI") and os.environ.get("REPRO_PROGRESS", "1") != "0"


# ------------------------------------------------------------------------------------------------------- models
def train_config(*, dataset: str, model: str, profile: str | Profile, width: int | None = None,
                 logit_shift: bool = True, defence: str | None = None, defence_params=None, seed: int = 100,
                 device: str = "auto", epochs: int | None = None, train_subset: int | None = None,
                 defence_init: str | None = None, defence_recipe: str | None = None,
                 defence_epochs: int | None = None, defence_subset: int | None = None) -> TrainConfig:
    """The :class:`repro.train.TrainConfig` a profile prescribes for a raw model (``defence=None``) or a defence:
    the one function that turns a profile into a training configuration, used by the notebooks and by
    ``python -m repro.train`` alike (so both train, and cache, the same model).

    Raw models take DeepSec's recipe with the profile's raw budget (``epochs``/``train_subset`` override it).
    Defences take the profile's defence budget for the dataset (``defence_*`` override it: initialisation, recipe,
    epochs, training images); when they start from the raw model
    (``defence_init="raw"``), that is DeepSec's released checkpoint if the profile loads those and DeepSec released
    this architecture, else the raw model this function configures.
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    kwargs = {} if logit_shift else {"logit_shift": False}
    on_cuda = torch.cuda.is_available() if device == "auto" else torch.device(device).type == "cuda"
    fast = prof.cuda_bf16 and on_cuda  # bfloat16 autocast, channels-last, torch.compile: GPU speed options
    if model == "resnet20_wide":
        kwargs["width"] = prof.wide_width if width is None else width
    raw = TrainConfig(dataset=dataset, model=model, model_kwargs=kwargs,
                      epochs=prof.raw.epochs if epochs is None else epochs,
                      subset=prof.raw.subset if train_subset is None else train_subset, seed=seed,
                      history_subset=prof.history_subset, device=device, bf16=fast, channels_last=fast,
                      compile=fast)
    if defence is None:
        return raw
    budget = prof.defence.for_dataset(dataset)
    init_rule = budget.init if defence_init is None else defence_init
    if init_rule == "scratch":
        init = "scratch"
    elif uses_deepsec_checkpoint(model, prof):
        init = "deepsec"
    else:
        init = raw
    return replace(raw, defence=defence, defence_params=defence_params, init=init,
                   recipe=budget.recipe if defence_recipe is None else defence_recipe,
                   epochs=budget.epochs if defence_epochs is None else defence_epochs,
                   subset=budget.subset if defence_subset is None else defence_subset)


def uses_deepsec_checkpoint(model: str, profile: Profile) -> bool:
    """Whether the profile's raw ``model`` is DeepSec's released checkpoint (else it is trained here)."""
    return loads_deepsec_checkpoint(model, profile)


def _config_of(ctx: Context, *, defence_params=None) -> TrainConfig:
    p = ctx.params
    extra = {} if defence_params is None else dict(
        defence=ctx.name, defence_params=defence_params, defence_init=p["defence_init"],
        defence_recipe=p["defence_recipe"], defence_epochs=p["defence_epochs"], defence_subset=p["defence_subset"])
    return train_config(dataset=p["dataset"], model=p["model"], profile=ctx.profile, width=p["width"],
                        logit_shift=p["logit_shift"], seed=p["seed"], device=str(ctx.device), epochs=p["epochs"],
                        train_subset=p["train_subset"], **extra)


def published_models(profile: Profile) -> "os.PathLike":
    """The folder of the trained models behind the committed results of ``profile`` (``results/<profile>/models/``):
    every notebook run loads a model from there (checksum verified) before it would train one."""
    return results_mod.models_dir(results_mod.COMMITTED_RESULTS, profile.name)


def model_available(config: TrainConfig, profile: Profile) -> bool:
    """Whether ``config``'s model is in the training cache or published with ``profile``'s results (no training)."""
    from ..train import is_cached

    return is_cached(config, published=published_models(profile))


def provide_model(ctx: Context, config: TrainConfig, role: str):
    """Train ``config`` (or load it from the cache or the profile's published models); record it in the result
    under ``role``: its key, the sha256 of its ``model.pt``, the commit and code hash that trained it."""
    from ..train import train_cached

    if config.bf16:
        departure = BF16_DEPARTURE.format(what=f"{role} model's training")
        ctx.departures += [departure] if departure not in ctx.departures else []

    available = model_available(config, ctx.profile)
    with warnings.catch_warnings():
        if getattr(config.defence_params, "eps", 0) >= 1:
            warnings.simplefilter("ignore", UserWarning)  # the literal "ε = 8": recorded in the parameters' note
        trained = train_cached(config, progress=progress_enabled() and not available,
                               published=published_models(ctx.profile))
    if not trained.from_cache:
        ctx.train_seconds += trained.train_time_s
    trained_by = trained.provenance or {}
    published = Path(trained.checkpoint).parent == Path(published_models(ctx.profile))
    ctx.models[role] = {"source": ModelSource.TRAINED.value, "logit_shift": ctx.params.get("logit_shift", True),
                        "config": results_mod.json_ready(_effective(trained.config)), "key": trained.key,
                        "sha256": _io.sha256_file(Path(trained.checkpoint)),
                        "trained_commit": trained_by.get("git", {}).get("commit"),
                        "trained_dirty": trained_by.get("git", {}).get("dirty"), "code": trained_by.get("code"),
                        # re-keyed to later training code after probes trained identically (repro.train.carry)
                        "carried": trained_by.get("carried", []),
                        "loaded_from": "published" if published else "cache" if trained.from_cache else "trained",
                        "history": results_mod.json_ready(trained.history), "best_epoch": trained.best_epoch,
                        "best_val_acc": trained.best_val_acc, "from_cache": trained.from_cache,
                        "train_time_s": trained.train_time_s}
    if published:
        ctx.notes.append(f"{role} model loaded from the published {Path(trained.checkpoint).name} (sha256 checked), "
                         "not retrained")
    return trained.model.to(ctx.device).eval()


def _effective(config: TrainConfig) -> dict:
    from ..train import effective_config

    return effective_config(config)


def raw_model(ctx: Context) -> torch.nn.Module:
    """The column's raw (undefended) model in ``eval()`` mode on the context's device; records where it came from:
    DeepSec's released checkpoint when the profile loads those and DeepSec released the architecture, otherwise
    trained here with DeepSec's recipe (cached)."""
    from .. import models

    p = ctx.params
    if uses_deepsec_checkpoint(p["model"], ctx.profile):
        model = models.load_deepsec(p["dataset"], logit_shift=p["logit_shift"], map_location=ctx.device)
        ctx.models["raw"] = {"source": ModelSource.DEEPSEC.value,
                             "file": models.deepsec_checkpoint(p["dataset"]).name,
                             "sha256": DEEPSEC_CHECKPOINTS[p["dataset"]]["sha256"],
                             "deepsec_commit": models.DEEPSEC_COMMIT, "logit_shift": p["logit_shift"]}
        return model
    return provide_model(ctx, _config_of(ctx), "raw")


def defend(ctx: Context, raw: torch.nn.Module) -> torch.nn.Module:
    """Train the column's defence (a :data:`repro.train.DEFENCES` entry) and return it in ``eval()`` mode.

    Fine-tuned from the raw model or trained from scratch as ``defence_init`` says; cached by configuration (the
    same defence is trained once); the training history is recorded in the result.
    """
    p = ctx.params
    params = DEFENCES[ctx.name].params_type(**{k: p[k] for k in defence_parameters(ctx.name) if k in p})
    config = _config_of(ctx, defence_params=params)
    if config.init == "deepsec" and not ctx.data["datasets"][p["dataset"]].get("official", True):
        ctx.notes.append("validated on the images of the partial copy that DeepSec's own split (seed 100) held out, "
                         "which its released raw model never trained on")
    return provide_model(ctx, config, "defended")


def _seconds_per_image_pass(config: TrainConfig, device: torch.device) -> float:
    """One timed forward-backward pass of a batch of 32 through the untrained architecture, per image."""
    from ..models import build

    shape = (32, 1, 28, 28) if config.dataset == "mnist" else (32, 3, 32, 32)
    model = build(config.model, **config.model_kwargs).to(device).train()
    x = torch.rand(shape, device=device)
    y = torch.zeros(shape[0], dtype=torch.long, device=device)
    torch.nn.functional.cross_entropy(model(x), y).backward()  # warm-up
    started = time.perf_counter()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return (time.perf_counter() - started) / shape[0]


def planned_work(ctx: Context) -> str:
    """What the column is about to do that costs time, in words: each model it trains that is not in the training
    cache, with an estimate from one timed batch on this machine; and the attack budget. Returned (the notebook
    shows it) before the work starts, so that a long cell is never a surprise."""
    p, lines = ctx.params, []
    configs = []
    if not uses_deepsec_checkpoint(p.get("model", ""), ctx.profile) and ctx.kind != "findings":
        configs.append(("raw model", _config_of(ctx)))
    if ctx.kind == "defence":
        params = DEFENCES[ctx.name].params_type(**{k: p[k] for k in defence_parameters(ctx.name) if k in p})
        configs.append((f"{ctx.name.upper()} defence", _config_of(ctx, defence_params=params)))
    for role, config in configs:
        if model_available(config, ctx.profile):
            lines.append(f"{role}: {config.model} {config.model_kwargs or ''} from the training cache or the "
                         "published models")
            continue
        passes = DEFENCES[config.defence].passes(config.defence_params) if config.defence else 1
        images = config.effective_recipe.training_images(config.subset or ctx.data["datasets"][config.dataset]["train"])
        estimate = config.effective_epochs * images * passes * _seconds_per_image_pass(config, ctx.device)
        lines.append(f"{role}: training {config.model} {config.model_kwargs or ''} for {config.effective_epochs} "
                     f"epoch(s) on {images:,} images ({passes} forward-backward passes per image), not in the "
                     f"training cache: about {estimate / 60:.0f} min on {ctx.device} (estimated from one timed "
                     "batch; checkpoints every epoch, an interrupted run resumes)")
    if ctx.kind == "attack":
        entry = ATTACKS[ctx.name]
        cost = entry.cost({k: p[k] for k in entry.parameters if k in p})
        lines.append(f"attack: {ctx.name} on up to {p['n_samples']:,} candidates, {cost:,} "
                     f"{entry.unit.replace('_', ' ')}s per image")
    return "\n".join(lines) or "nothing expensive"


# ------------------------------------------------------------------------------------------------------ attacks
def candidates(ctx: Context, model: torch.nn.Module) -> data_mod.Candidates:
    """DeepSec's clean candidates for the column (``n_samples`` of them, seeded) on the CPU.

    On a partial copy of the dataset (e.g. 1,017 CIFAR-10 test images) the model may classify fewer than
    ``n_samples`` images correctly; then every correctly classified image is attacked, the effective ``n_samples``
    says how many, and the result lists it as a departure. On the official data too few is an error.
    """
    p = ctx.params
    n = p["n_samples"]
    cands = data_mod.candidates(model, p["dataset"], n=n, seed=p["seed"], batch_size=p["batch_size"],
                                device=ctx.device, allow_fewer=not ctx.data["datasets"][p["dataset"]]["official"])
    if len(cands.y) < n:
        ctx.departures.append(f"{len(cands.y):,} candidates attacked instead of {n:,}: the model classifies only "
                              f"{cands.n_correct:,} of the {cands.n_test:,} test images of the partial copy correctly")
        p["n_samples_requested"], p["n_samples"] = n, len(cands.y)
    ctx.data["candidates"] = {"n": len(cands.y), "n_correct": cands.n_correct, "n_test": cands.n_test,
                              "raw_accuracy": cands.n_correct / cands.n_test}
    return cands


def attack(ctx: Context, model: torch.nn.Module, cands: data_mod.Candidates):
    """Run the column's attack (the :data:`repro.attacks.ATTACKS` entry ``setup`` named) on the candidates, with
    the labels it takes (:func:`repro.attacks.labels_field`); returns :class:`repro.attacks.AttackRun`."""
    from .attack_cache import run_cached

    p = ctx.params
    params = {name: p[name] for name in attack_parameters(ctx.name) if name in p}
    with warnings.catch_warnings():
        if p.get("eps", 0) >= 1:
            # Expected for the follow-up's literal "ε = 8"; the result records it in its notes instead.
            warnings.simplefilter("ignore", UserWarning)
        bf16 = ctx.profile.cuda_bf16 and ctx.device.type == "cuda"
        run, reuse = run_cached(ctx.name, model, cands.x, getattr(cands, labels_field(ctx.name)), params=params,
                                batch_size=p["batch_size"], device=ctx.device, progress=progress_enabled(),
                                seed=p["seed"], autocast_bf16=bf16, compile_model=bf16)
    if reuse.reused:
        ctx.notes.append(reuse.note)
    if bf16:
        ctx.departures.append(BF16_DEPARTURE.format(what="attack"))
    prepared = [what for what, on in (("BatchNorm folded into the convolutions", run.options["fold_batchnorm"]),
                                      ("channels-last tensors", run.options["channels_last"])) if on]
    ctx.notes.append(f"attack ran on {run.device}" + (f", with {' and '.join(prepared)}" if prepared else ""))
    return run


def _cw2_outcomes(model: torch.nn.Module, cands: data_mod.Candidates, x_adv: torch.Tensor, *, batch_size: int,
                  device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per candidate: whether ``x_adv`` is classified as its target, and the absolute L2 distance to the clean image."""
    pred = data_mod.predict_logits(model, x_adv, batch_size=batch_size, device=device).argmax(1)
    return pred == cands.target, (x_adv - cands.x).flatten(1).norm(dim=1)


def budget_ladder(ctx: Context, model: torch.nn.Module, cands: data_mod.Candidates, run) -> dict:
    """CW2 at each smaller budget of the profile's ``cw2_ladder`` on the column's candidates and targets, compared
    image by image with the column's own run ``run`` (empty dict when the profile has no ladder or the column is not
    CW2). Saved in the result's ``extra.budget_ladder``.

    Per budget: the success rate (a ``{rate, k, n}`` record with its exact 95 % interval), the mean absolute L2 of
    the successful examples, and over the images both budgets fool the ratio of their L2 distances, smaller budget
    over the column's (its median, and its mean with a bootstrap 95 % interval): a ratio above 1 is the distance the
    smaller budget leaves on the table. Each run goes through the attack cache (:mod:`repro.study.attack_cache`).
    """
    from ..metrics.uncertainty import bootstrap_mean, clopper_pearson
    from .attack_cache import run_cached

    p = ctx.params
    if ctx.name != "cw2" or not ctx.profile.cw2_ladder:
        return {}
    own = (p["binary_search_steps"], p["max_iterations"])
    params = {name: p[name] for name in attack_parameters(ctx.name) if name in p}
    ref_ok, ref_l2 = _cw2_outcomes(model, cands, run.x_adv, batch_size=p["batch_size"], device=ctx.device)

    def row(steps: int, iterations: int, ok: torch.Tensor, l2: torch.Tensor, seconds: float) -> dict:
        n, k = len(ok), int(ok.sum())
        low, high = clopper_pearson(k, n)
        both = ok & ref_ok
        ratio = (l2[both] / ref_l2[both]).double().numpy()
        out = {"binary_search_steps": steps, "max_iterations": iterations,
               "iterations": steps * iterations, "success": {"rate": k / n, "k": k, "n": n, "low": low, "high": high},
               "mean_l2": float(l2[ok].mean()) if k else None, "n_paired": int(both.sum()),
               "seconds_per_example": seconds,
               "l2": [round(float(v), 5) if good else None for v, good in zip(l2, ok)]}
        if len(ratio):
            lo, hi = bootstrap_mean(ratio, seed=p["seed"])
            out["l2_ratio"] = {"median": float(np.median(ratio)), "mean": float(ratio.mean()), "low": lo, "high": hi,
                               "max": float(ratio.max())}
        return out

    arms = []
    for steps, iterations in ctx.profile.cw2_ladder:
        if (steps, iterations) == own:
            continue
        arm, reuse = run_cached("cw2", model, cands.x, cands.target,
                                params={**params, "binary_search_steps": steps, "max_iterations": iterations},
                                batch_size=p["batch_size"], device=ctx.device, progress=progress_enabled(),
                                seed=p["seed"])
        if reuse.reused:
            ctx.notes.append(f"budget ladder {steps} × {iterations}: {reuse.note}")
        ok, l2 = _cw2_outcomes(model, cands, arm.x_adv, batch_size=p["batch_size"], device=ctx.device)
        arms.append(row(steps, iterations, ok, l2, arm.seconds_per_example))
    arms.append(row(*own, ref_ok, ref_l2, run.seconds_per_example))
    ctx.extra["budget_ladder"] = {"reference": {"binary_search_steps": own[0], "max_iterations": own[1]},
                                  "arms": sorted(arms, key=lambda a: a["iterations"])}
    return ctx.extra["budget_ladder"]


def attack_metrics(ctx: Context, model: torch.nn.Module, cands: data_mod.Candidates, run) -> dict:
    """DeepSec's attack utility metrics on the column's adversarial examples, plus CC (seconds per example)."""
    from ..metrics import attack_utility

    target = getattr(cands, labels_field(ctx.name)) if labels_field(ctx.name) != "y" else None
    # RIC's Guetzli encoder dominates a CPU column's time: it uses every usable CPU (jpeg_workers=None) and, where
    # the profile says so, encodes a random sample of the successful AEs (its interval has the sample's n).
    metrics, ctx.intervals = attack_utility(model, cands.x, run.x_adv, cands.y, target=target,
                                            batch_size=ctx.params["batch_size"], device=ctx.device, jpeg_workers=None,
                                            ric_samples=ctx.profile.ric_samples, intervals=True,
                                            seed=ctx.params["seed"])
    # CC is one timing of the whole run divided by N, not a mean of per-image values: it has no interval.
    metrics["CC"] = run.seconds_per_example
    ctx.extra["by_class"] = outcome_by_class(model, cands, run.x_adv, target=target,
                                             batch_size=ctx.params["batch_size"], device=ctx.device)
    return metrics


def outcome_by_class(model: torch.nn.Module, cands: data_mod.Candidates, x_adv: torch.Tensor, *,
                     target: torch.Tensor | None, batch_size: int, device) -> dict:
    """Where the adversarial examples land and whom they fool, per class: the histogram of the classes the model
    gives the successful adversarial examples, MR per true class, and, for a targeted attack, what DeepSec's
    failure convention would do: DeepSec returns an all-zero image for a sample that never succeeds, so a failure
    whose target is the class the model gives the all-zero image counts as a success there (ours keeps the clean
    image and counts it as a failure)."""
    from ..metrics import success_mask

    logits = data_mod.predict_logits(model, x_adv, batch_size=batch_size, device=device)
    ok = success_mask(logits, cands.y, target=target)
    k = logits.shape[1]
    landed = logits.argmax(1)[ok]
    out = {"adversarial_class_counts": torch.bincount(landed, minlength=k).tolist(),
           "n_per_true_class": torch.bincount(cands.y, minlength=k).tolist(),
           "successes_per_true_class": torch.bincount(cands.y[ok], minlength=k).tolist()}
    if target is not None:
        zero = torch.zeros_like(cands.x[:1])
        zero_class = int(data_mod.predict_logits(model, zero, device=device).argmax(1))
        flipped = int(((~ok) & (target == zero_class)).sum())
        out["deepsec_zero_image"] = {"class": zero_class, "failures_with_that_target": flipped,
                                     "MR_counted_as_deepsec": (int(ok.sum()) + flipped) / len(ok)}
    return out


# ----------------------------------------------------------------------------------------------------- defences
def defence_metrics(ctx: Context, raw: torch.nn.Module, defended: torch.nn.Module) -> dict:
    """DeepSec's defence utility metrics on the test split (or the ``eval_subset`` of it), with intervals.

    Also scores the *null defence* — the raw model as its own "defence" — on the same images (saved in the
    result's ``extra["null_defence"]``): every metric that depends on the defence is exactly 0 for it, so a reader
    sees which metrics can tell a defence from no defence at all.
    """
    from ..metrics import defence_utility

    p = ctx.params
    x, y = data_mod.load(p["dataset"], split="test", n=p["eval_subset"])
    ctx.data["defence_eval"] = {"n": len(y)}
    options = dict(batch_size=p["batch_size"], device=ctx.device, intervals=True, seed=p["seed"])
    metrics, ctx.intervals = defence_utility(raw, defended, x, y, **options)
    null, null_intervals = defence_utility(raw, raw, x, y, **options)
    ctx.extra["null_defence"] = {"metrics": null, "intervals": null_intervals}
    return metrics


def accuracy_vs_eps(ctx: Context, models: dict[str, torch.nn.Module], *, eps_values=None) -> dict:
    """Accuracy of each model under PGD run *against that model*, for a range of ε.

    PGD with ``curve_steps`` steps of ε/4 and a random start, on the first ``curve_samples`` test images.
    Returns ``{"eps": [...], "<name>": [accuracy, ...], "n": N, "steps": S}``.
    """
    from ..attacks import run_attack

    p = ctx.params
    eps_values = list(CURVE_EPS[p["dataset"]] if eps_values is None else eps_values)
    x, y = data_mod.load(p["dataset"], split="test", n=p["curve_samples"])
    out: dict = {"eps": eps_values, "n": len(y), "steps": p["curve_steps"]}
    for name, model in models.items():
        accs = []
        for eps in eps_values:
            x_eval = x if eps == 0 else run_attack(
                "pgd", model, x, y, params=dict(eps=eps, step_size=eps / 4, steps=p["curve_steps"]),
                batch_size=p["batch_size"], device=ctx.device, progress=False, seed=p["seed"]).x_adv
            pred = data_mod.predict_logits(model, x_eval, batch_size=p["batch_size"], device=ctx.device).argmax(1)
            accs.append(float((pred == y).float().mean()))
        out[name] = accs
    return out


def deepsec_candidates(ctx: Context, dataset: str):
    """DeepSec's released raw model for ``dataset`` and ``n_samples`` clean candidates for it (findings notebook)."""
    from .. import models

    model = models.load_deepsec(dataset, map_location=ctx.device)
    ctx.models[dataset] = {"source": ModelSource.DEEPSEC.value, "sha256": DEEPSEC_CHECKPOINTS[dataset]["sha256"]}
    cands = data_mod.candidates(model, dataset, n=ctx.params["n_samples"], seed=ctx.params["seed"],
                                batch_size=ctx.params["batch_size"], device=ctx.device)
    ctx.data.setdefault("candidates", {})[dataset] = {"n": len(cands.y), "n_correct": cands.n_correct,
                                                      "n_test": cands.n_test}
    return model, cands


# --------------------------------------------------------------------------------------------------------- save
def data_departures(datasets: dict) -> list[str]:
    """Departures that depend on the data found at run time (a partial CIFAR-10 copy)."""
    return [f"{prov['dataset']} is a partial copy: {prov['train']:,} of {prov['full_train']:,} training and "
            f"{prov['test']:,} of {prov['full_test']:,} test images"
            for prov in datasets.values() if not prov.get("official", True)]


def is_pipeline_run(params: dict) -> bool:
    """Whether a run is the pipeline's: it saves into the pipeline's staging folder (only the pipeline passes it)."""
    return results_mod.resolve_path(params["results_dir"]) == results_mod.resolve_path(results_mod.PIPELINE_STAGING)


def result_name(ctx: Context) -> str:
    """The file name (without ``.json``) the run's result gets: the plan column's id for a pipeline run of a plan
    column; for any other run (ad hoc, whatever its ``column``), that name plus a short hash of the effective
    parameters, so that runs with other parameters never overwrite each other or a plan column's result."""
    p = ctx.params
    if p["column"] in COLUMNS and is_pipeline_run(p):
        return p["column"]
    digest = _io.sha256_text(_io.canonical_json(results_mod.json_ready(
        {k: v for k, v in p.items() if k not in ("results_dir", "column")})))
    return f"{p['column']}-{digest[:8]}"


def run_title(ctx: Context) -> str:
    """A title for the run's figures: the plan column's title for a pipeline run of a plan column; otherwise what
    ran, on which model, with the hyper-parameters the caller can change (e.g. "pgd on resnet20: eps 8, steps 20")."""
    p = ctx.params
    if p["column"] in COLUMNS and is_pipeline_run(p):
        return COLUMNS[p["column"]].title
    names = attack_parameters(ctx.name) if ctx.kind == "attack" else \
        defence_parameters(ctx.name) if ctx.kind == "defence" else ()
    shown = ", ".join(f"{n} {p[n]:g}" if isinstance(p[n], float) else f"{n} {p[n]}" for n in names if n in p)
    model = f" on {p['model']}" if "model" in p else ""
    return f"{ctx.name}{model}" + (f": {shown}" if shown else "")


def _plan_fingerprint(ctx: Context) -> str:
    """The plan's fingerprint when this run is exactly a plan column under its profile (else empty: ad hoc)."""
    col = COLUMNS.get(ctx.column)
    if col is None:
        return ""
    given = {k: ctx.params.get(k) for k in col.parameters_for(ctx.params["profile"])}
    planned = col.parameters_for(ctx.params["profile"])
    return fingerprint(col, ctx.params["profile"]) if given == planned else ""


def adhoc_uses(ctx: Context) -> frozenset:
    """The parts of the profile's budget an ad-hoc run (no plan column) uses, read from its parameters as
    :attr:`repro.study.plan.Column.uses` states them for plan columns."""
    p = ctx.params
    parts = {"attack"} if ctx.kind == "attack" else {"defence"} if ctx.kind == "defence" else set()
    if p.get("model") == "resnet20_wide":
        parts |= {"wide", "train_wide"}
    elif parts:
        parts.add("raw")
    return frozenset(parts)


def adhoc_departures(ctx: Context) -> list[str]:
    """The profile's departures from the paper's budgets that an ad-hoc run inherits (e.g. RIC on a sample)."""
    return departures_of(ctx.profile, uses=adhoc_uses(ctx), attack=ctx.name if ctx.kind == "attack" else None,
                         dataset=ctx.params.get("dataset"), model=ctx.params.get("model"))


def finish(ctx: Context, metrics: dict, *, extra: dict | None = None) -> results_mod.Result:
    """Build the column's :class:`repro.results.Result` and write it, once, to
    ``<results_dir>/<profile>/<column>.json``.

    A run of a plan column with the plan's parameters carries the column's fingerprint (so the pipeline and the
    book know it is up to date); an ad-hoc run carries none. ``run_id`` ties the JSON to its executed notebook.
    """
    p = ctx.params
    col = COLUMNS.get(p["column"])
    deps = plan_departures(col, ctx.profile) if col is not None else adhoc_departures(ctx)
    deps += data_departures(ctx.data.get("datasets", {})) + ctx.departures
    result = results_mod.Result(
        column=p["column"], kind=ctx.kind, notebook=col.notebook if col else "", profile=p["profile"],
        parameters=p, metrics=dict(metrics), intervals=dict(ctx.intervals), extra={**ctx.extra, **(extra or {})},
        departures=deps,
        provenance=results_mod.provenance(device=ctx.device, wall_time_s=time.time() - ctx.started,
                                          data=ctx.data, models=ctx.models),
        fingerprint=_plan_fingerprint(ctx), run_id=uuid.uuid4().hex,
    )
    if ctx.intervals:
        from ..metrics.uncertainty import DEFAULT_LEVEL, DEFAULT_RESAMPLES

        result.extra["interval_protocol"] = {
            "level": DEFAULT_LEVEL, "bootstrap_resamples": DEFAULT_RESAMPLES, "bootstrap_seed": p["seed"],
            "rates": "Clopper–Pearson (exact)", "means": "percentile bootstrap over the images"}
    result.provenance["notes"] = list(ctx.notes)
    result.provenance["train_time_s"] = ctx.train_seconds
    results_mod.save(result, results_mod.result_path(p["results_dir"], p["profile"], result_name(ctx)))
    return result


def result_file(ctx: Context) -> str:
    """Where :func:`finish` saves (relative to the repository root when ``results_dir`` is relative)."""
    p = ctx.params
    path = results_mod.result_path(p["results_dir"], p["profile"], result_name(ctx))
    try:
        return str(path.relative_to(results_mod.repo_root()))
    except ValueError:
        return os.fspath(path)
