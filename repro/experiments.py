"""The steps of one table column, as the notebooks call them: set up, get the models, attack or defend, measure,
save one result.

Notebooks stay thin (STYLE): their parameters cell holds literals, :func:`setup` validates them and fills the
budgets the profile decides (``None`` in the parameters cell), and four or five calls below do the work. Every
function returns values and prints nothing.
"""
from __future__ import annotations

import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from . import data as data_mod
from . import results as results_mod
from .plan import COLUMNS, departures as plan_departures
from .profiles import PROFILES, Profile, get_profile

# tqdm.auto (used by the attack runner) warns in notebooks without ipywidgets, leaking local paths into the executed
# notebooks; progress bars are off in the notebooks anyway.
warnings.filterwarnings("ignore", message="IProgress not found")

# Model names a notebook accepts, with their dataset. "resnet20_wide" is the follow-up's "Wide ResNet": DeepSec's
# ResNet-20 with stage widths × width (paper 10; CPU profiles narrower), always trained here.
MODEL_DATASET = {"mnist_convnet": "mnist", "resnet20": "cifar10", "resnet20_wide": "cifar10"}
KINDS = ("cw2", "pgd", "nat", "pat", "findings")
KIND_TYPE = {"cw2": "attack", "pgd": "attack", "nat": "defence", "pat": "defence", "findings": "findings"}
# Batch size for forward passes and attacks when a profile does not say (all profiles do).
DEFAULT_BATCH = 128
# Accuracy-vs-ε curves: by default PGD with this many steps of ε/4 (Madry's 2/255 for ε = 8/255), on at most this
# many images.
CURVE_STEPS = 10
CURVE_MAX_SAMPLES = 200
# The findings notebook attacks at most this many candidates per experiment (its effects are large).
FINDINGS_MAX_SAMPLES = 500
CURVE_EPS = {"mnist": [0.0, 0.1, 0.2, 0.3, 0.4], "cifar10": [0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 0.1]}


class ParameterError(ValueError):
    """A notebook parameter is unknown, out of range, or inconsistent with another one."""


@dataclass
class Context:
    """One run in progress: the effective parameters and what the result will record about it."""

    kind: str
    params: dict
    profile: Profile
    device: torch.device
    started: float
    models: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    departures: list = field(default_factory=list)  # found while running (e.g. fewer candidates than asked)

    @property
    def column(self) -> str:
        return self.params["column"]


# --------------------------------------------------------------------------------------------------- validation
def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ParameterError(message)


def _number(params: dict, name: str, *, low: float | None = None, high: float | None = None,
            strict_low: bool = False) -> float:
    value = params[name]
    _require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
             f"{name} must be a finite number, got {value!r}")
    if low is not None:
        ok = value > low if strict_low else value >= low
        _require(ok, f"{name} must be {'>' if strict_low else '>='} {low}, got {value!r}")
    if high is not None:
        _require(value <= high, f"{name} must be <= {high}, got {value!r}")
    return float(value)


def _count(params: dict, name: str, *, low: int = 1) -> int:
    value = params[name]
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= low,
             f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _resolve_device(device: str) -> torch.device:
    _require(isinstance(device, str), f"device must be a string ('auto', 'cpu', 'cuda', 'cuda:N'), got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ParameterError(f"device {device!r} is not a torch device ('auto', 'cpu', 'cuda', 'cuda:N')") from err
    _require(dev.type in ("cpu", "cuda"), f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    _require(dev.type != "cuda" or torch.cuda.is_available(),
             f"device {device!r} asked for, but CUDA is not available on this machine; use 'cpu' or 'auto'")
    return dev


def resolve(kind: str, **params) -> dict:
    """Validate a notebook's parameters and fill the budgets the profile decides.

    Args:
        kind: the notebook: ``"cw2"``, ``"pgd"``, ``"nat"``, ``"pat"`` or ``"findings"``.
        **params: the parameters cell's values. ``None`` for a budget (``n_samples``, ``batch_size``, ``width``,
            ``binary_search_steps``, ``max_iterations``, ``epochs``, ``train_subset``, ``defence_epochs``, ``defence_subset``,
            ``eval_subset``) means "the profile's value". PGD's ``eps_iter`` (the follow-up's name) is accepted as
            ``step_size``.

    Returns:
        The effective parameters, JSON-ready (device as a string).

    Raises:
        ParameterError: an unknown profile, dataset or model, a dataset/model mismatch, a negative ε, a step count
            below 1, ... — the message names the parameter and what is allowed.
    """
    _require(kind in KINDS, f"unknown notebook kind {kind!r}; allowed: {', '.join(KINDS)}")
    p = dict(params)
    _require(p.get("profile") in PROFILES,
             f"unknown profile {p.get('profile')!r}; allowed: {', '.join(map(repr, PROFILES))}")
    prof = get_profile(p["profile"])
    _require(isinstance(p.get("column"), str) and p["column"].replace("_", "").replace("-", "").isalnum(),
             f"column must be a plain name (letters, digits, _ and -), got {p.get('column')!r}")
    _require(isinstance(p.get("results_dir"), str) and p["results_dir"] != "",
             f"results_dir must be a folder name, got {p.get('results_dir')!r}")
    _count(p, "seed", low=0)
    p["device"] = str(_resolve_device(p.get("device", "auto")))
    if KIND_TYPE[kind] != "defence":
        if p.get("n_samples") is None:
            p["n_samples"] = {"findings": min(prof.n_candidates, FINDINGS_MAX_SAMPLES),
                              "cw2": prof.cw2_n_candidates}.get(kind, prof.n_candidates)
        _count(p, "n_samples")
    if p.get("batch_size") is None:
        p["batch_size"] = prof.batch_size or DEFAULT_BATCH
    _count(p, "batch_size")
    if kind == "findings":
        return p

    _require(p.get("dataset") in data_mod.DATASETS,
             f"unknown dataset {p.get('dataset')!r}; allowed: {', '.join(map(repr, data_mod.DATASETS))}")
    _require(p.get("model") in MODEL_DATASET,
             f"unknown model {p.get('model')!r}; allowed: {', '.join(map(repr, MODEL_DATASET))}")
    _require(MODEL_DATASET[p["model"]] == p["dataset"],
             f"model {p['model']!r} is a {MODEL_DATASET[p['model']]} model but dataset is {p['dataset']!r}; "
             f"use dataset={MODEL_DATASET[p['model']]!r} or a {p['dataset']} model "
             f"({', '.join(repr(m) for m, d in MODEL_DATASET.items() if d == p['dataset'])})")
    _require(isinstance(p.get("logit_shift"), bool), f"logit_shift must be True or False, got {p.get('logit_shift')!r}")
    if p["model"] == "resnet20_wide":
        if p.get("width") is None:
            p["width"] = prof.wide_width
        _count(p, "width")
    else:
        _require(p.get("width") in (None, 1),
                 f"width applies to model 'resnet20_wide' only, got width={p.get('width')!r} with model {p['model']!r}")
        p["width"] = None

    if kind == "pgd":
        if p.get("eps_iter") is not None:
            _require(p.get("step_size") in (None, p["eps_iter"]),
                     f"eps_iter (the follow-up's name) and step_size are the same parameter; got both, "
                     f"{p['eps_iter']!r} and {p['step_size']!r}")
            p["step_size"] = p["eps_iter"]
        p.pop("eps_iter", None)
        _number(p, "eps", low=0.0)
        _number(p, "step_size", low=0.0, strict_low=True)
        _count(p, "steps")
        if p["eps"] >= 1:
            p["note"] = (f"eps = {p['eps']:g} ≥ 1 on [0, 1] images: only the [0, 1] box constrains the attack "
                         "(the follow-up's literal \"ε = 8\")")
    elif kind == "cw2":
        _require(p.get("search") in ("deepsec", "carlini"),
                 f"search must be 'deepsec' or 'carlini', got {p.get('search')!r}")
        _number(p, "confidence", low=0.0)
        _number(p, "initial_const", low=0.0, strict_low=True)
        _number(p, "lr", low=0.0, strict_low=True)
        if p.get("binary_search_steps") is None:
            p["binary_search_steps"] = prof.cw2_binary_search_steps
        if p.get("max_iterations") is None:
            p["max_iterations"] = prof.cw2_max_iterations
        _count(p, "binary_search_steps")
        _count(p, "max_iterations")
    else:  # defences
        if kind == "nat":
            _number(p, "sigma", low=0.0, strict_low=True)
            _number(p, "eps_max", low=0.0, high=1.0, strict_low=True)
            _number(p, "adv_weight", low=0.0)
        else:
            _number(p, "eps", low=0.0)
            _number(p, "step_size", low=0.0, strict_low=True)
            _count(p, "steps")
        _require(p.get("defence_init") in (None, "raw", "scratch"),
                 f"defence_init must be 'raw', 'scratch' or None (the profile's), got {p.get('defence_init')!r}")
        for name, default in (("defence_init", prof.defence_init), ("defence_epochs", prof.defence_epochs),
                              ("defence_subset", prof.defence_subset), ("eval_subset", prof.eval_subset),
                              ("curve_samples", None)):
            if p.get(name) is None:
                p[name] = default
        if p["curve_samples"] is None:
            p["curve_samples"] = min(prof.history_subset, CURVE_MAX_SAMPLES)
        for name in ("defence_epochs", "defence_subset", "eval_subset"):
            if p[name] is not None:
                _count(p, name)
        _count(p, "curve_samples")
        if p.get("curve_steps") is None:
            p["curve_steps"] = CURVE_STEPS
        _count(p, "curve_steps")
    # Raw-model training budgets (used when the raw model is trained here: the wide ResNet always, the others
    # under a profile with raw_source "train").
    for name, default in (("epochs", prof.train_epochs), ("train_subset", prof.train_subset)):
        if p.get(name) is None:
            p[name] = default
        if p[name] is not None:
            _count(p, name)
    return p


def setup(kind: str, **params) -> Context:
    """Validate and resolve the parameters (:func:`resolve`), seed every RNG, and start the clock."""
    started = time.time()
    p = resolve(kind, **params)
    seed = p["seed"]
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    ctx = Context(kind=kind, params=p, profile=get_profile(p["profile"]), device=torch.device(p["device"]),
                  started=started)
    datasets = [p["dataset"]] if "dataset" in p else list(data_mod.DATASETS)
    ctx.data = {"datasets": {name: _data_record(name) for name in datasets}}
    return ctx


def _data_record(dataset: str) -> dict:
    prov = data_mod.provenance(dataset)
    return {k: v for k, v in prov.items() if k != "root"}


# ------------------------------------------------------------------------------------------------------- models
def raw_model(ctx: Context) -> torch.nn.Module:
    """The column's raw (undefended) model in ``eval()`` mode on the context's device; records where it came from.

    DeepSec's released checkpoint when the profile says ``raw_source="deepsec"`` and the model is one DeepSec
    released (MNIST ConvNet, CIFAR-10 ResNet-20); otherwise trained here with DeepSec's recipe (cached).
    """
    from . import models

    p = ctx.params
    if p["model"] != "resnet20_wide" and ctx.profile.raw_source == "deepsec":
        path = models.deepsec_checkpoint(p["dataset"])
        model = models.load_deepsec(p["dataset"], logit_shift=p["logit_shift"], map_location=ctx.device)
        ctx.models["raw"] = {"source": "DeepSec's released checkpoint", "file": path.name,
                             "sha256": models.DEEPSEC_CHECKPOINTS[p["dataset"]]["sha256"],
                             "deepsec_commit": models.DEEPSEC_COMMIT, "logit_shift": p["logit_shift"]}
        return model
    return _trained_raw(ctx)


def _raw_config(ctx: Context):
    """The :class:`repro.train.TrainConfig` of the column's raw model (DeepSec's recipe, the profile's budget)."""
    from . import train as train_mod

    p = ctx.params
    model, kwargs = p["model"], {}
    if model == "resnet20_wide":
        model, kwargs = "resnet20", {"width": p["width"]}
    if not p["logit_shift"]:
        kwargs["logit_shift"] = False
    return train_mod.TrainConfig(dataset=p["dataset"], model=model, model_kwargs=kwargs, epochs=p["epochs"],
                                 subset=p["train_subset"], seed=p["seed"], history_subset=ctx.profile.history_subset,
                                 device=str(ctx.device))


def _trained_raw(ctx: Context) -> torch.nn.Module:
    """Train (or load from the training cache) the raw model with DeepSec's recipe; see :mod:`repro.train`."""
    from . import train as train_mod

    config = _raw_config(ctx)
    trained = train_mod.train_cached(config, progress=False)
    ctx.models["raw"] = {"source": "trained here", "logit_shift": ctx.params["logit_shift"],
                         **_train_record(trained)}
    return trained.model.to(ctx.device).eval()


def _train_record(trained) -> dict:
    from . import train as train_mod

    return {"config": results_mod._clean(train_mod.effective_config(trained.config)), "key": trained.key,
            "history": results_mod._clean(trained.history), "best_epoch": trained.best_epoch,
            "best_val_acc": trained.best_val_acc, "from_cache": trained.from_cache}


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
    """Run the column's attack on the candidates; returns :class:`repro.attacks.AttackRun` (x_adv on the CPU)."""
    from .attacks import run_attack

    p = ctx.params
    if ctx.kind == "pgd":
        name, labels = "pgd", cands.y
        params = dict(eps=p["eps"], step_size=p["step_size"], steps=p["steps"], random_start=True)
    elif ctx.kind == "cw2":
        name, labels = "cw2", cands.target
        params = dict(confidence=p["confidence"], initial_const=p["initial_const"], lr=p["lr"],
                      binary_search_steps=p["binary_search_steps"], max_iterations=p["max_iterations"],
                      abort_early=False, search=p["search"])
    else:
        raise ParameterError(f"attack() is for the cw2 and pgd notebooks, not {ctx.kind!r}")
    with warnings.catch_warnings():
        if p.get("eps", 0) >= 1:
            # Expected for the follow-up's literal "ε = 8"; the result records it in its notes instead.
            warnings.simplefilter("ignore", UserWarning)
        run = run_attack(name, model, cands.x, labels, params=params, batch_size=p["batch_size"],
                         device=ctx.device, progress=False, seed=p["seed"])
    prepared = [what for what, on in (("BatchNorm folded into the convolutions", run.options["fold_batchnorm"]),
                                      ("channels-last tensors", run.options["channels_last"])) if on]
    ctx.notes.append(f"attack ran on {run.device}" + (f", with {' and '.join(prepared)}" if prepared else ""))
    return run


def attack_metrics(ctx: Context, model: torch.nn.Module, cands: data_mod.Candidates, run) -> dict:
    """DeepSec's attack utility metrics on the column's adversarial examples, plus CC (seconds per example)."""
    from .metrics import attack_utility

    target = cands.target if ctx.kind == "cw2" else None
    # RIC's Guetzli encoder dominates a CPU column's time; it uses every usable CPU (jpeg_workers=None).
    metrics = attack_utility(model, cands.x, run.x_adv, cands.y, target=target, batch_size=ctx.params["batch_size"],
                             device=ctx.device, jpeg_workers=None)
    metrics["CC"] = run.seconds_per_example
    return metrics


# ----------------------------------------------------------------------------------------------------- defences
def defend(ctx: Context, raw: torch.nn.Module) -> torch.nn.Module:
    """Train the column's defence (NAT or PAT) with :mod:`repro.train`; returns the defended model in ``eval()``.

    Fine-tuned from the raw model or trained from scratch as ``defence_init`` says (cached by configuration: the
    same defence is trained once). The training history is recorded in the result.
    """
    from dataclasses import replace

    from . import train as train_mod

    p = ctx.params
    raw_config = _raw_config(ctx)
    if p["defence_init"] == "scratch":
        init = "scratch"
    elif ctx.models.get("raw", {}).get("source") == "DeepSec's released checkpoint":
        init = "deepsec"
    else:
        init = raw_config
    if ctx.kind == "nat":
        params = train_mod.NATParams(sigma=p["sigma"], eps_max=p["eps_max"], adv_ratio=p["adv_weight"])
    else:
        params = train_mod.PATParams(eps=p["eps"], step_size=p["step_size"], steps=p["steps"])
    config = replace(raw_config, defence=ctx.kind, defence_params=params, epochs=p["defence_epochs"],
                     subset=p["defence_subset"], init=init)
    with warnings.catch_warnings():
        if p.get("eps", 0) >= 1:
            # Expected for the follow-up's literal "ε = 8"; the result records it in its parameters' note.
            warnings.simplefilter("ignore", UserWarning)
        trained = train_mod.train_cached(config, progress=False)
    ctx.models["defended"] = {"source": "trained here", "init": init if isinstance(init, str) else "raw (trained here)",
                              **_train_record(trained)}
    return trained.model.to(ctx.device).eval()


def defence_metrics(ctx: Context, raw: torch.nn.Module, defended: torch.nn.Module) -> dict:
    """DeepSec's defence utility metrics on the test split (or the profile's ``eval_subset`` of it)."""
    from .metrics import defense_utility

    p = ctx.params
    x, y = data_mod.load(p["dataset"], split="test", n=p["eval_subset"])
    ctx.data["defence_eval"] = {"n": len(y)}
    return defense_utility(raw, defended, x, y, batch_size=p["batch_size"], device=ctx.device)


def accuracy_vs_eps(ctx: Context, models: dict[str, torch.nn.Module], *, eps_values=None) -> dict:
    """Accuracy of each model under PGD run *against that model*, for a range of ε.

    PGD with ``curve_steps`` steps of ε/4 and a random start, on the first ``curve_samples`` test images.
    Returns ``{"eps": [...], "<name>": [accuracy, ...], "n": N, "steps": S}``.
    """
    from .attacks import run_attack

    p = ctx.params
    eps_values = list(CURVE_EPS[p["dataset"]] if eps_values is None else eps_values)
    x, y = data_mod.load(p["dataset"], split="test", n=p["curve_samples"])
    out: dict = {"eps": eps_values, "n": len(y), "steps": p["curve_steps"]}
    for name, model in models.items():
        accs = []
        for eps in eps_values:
            if eps == 0:
                x_eval = x
            else:
                params = dict(eps=eps, step_size=eps / 4, steps=p["curve_steps"])
                x_eval = run_attack("pgd", model, x, y, params=params, batch_size=p["batch_size"], device=ctx.device,
                                    progress=False, seed=p["seed"]).x_adv
            pred = data_mod.predict_logits(model, x_eval, batch_size=p["batch_size"], device=ctx.device).argmax(1)
            accs.append(float((pred == y).float().mean()))
        out[name] = accs
    return out


# --------------------------------------------------------------------------------------------------------- save
def data_departures(datasets: dict) -> list[str]:
    """Departures that depend on the data found at run time (a partial CIFAR-10 copy)."""
    out = []
    for prov in datasets.values():
        if not prov.get("official", True):
            out.append(f"{prov['dataset']} is a partial copy: {prov['train']:,} of {prov['full_train']:,} training "
                       f"and {prov['test']:,} of {prov['full_test']:,} test images")
    return out


def finish(ctx: Context, metrics: dict, *, extra: dict | None = None) -> results_mod.Result:
    """Build the column's :class:`repro.results.Result` and save it to ``<results_dir>/<profile>/<column>.json``.

    The fingerprint is left empty here; the pipeline (``repro.run``) stamps it after the notebook succeeded.
    """
    p = ctx.params
    col = COLUMNS.get(p["column"])
    deps = plan_departures(col, ctx.profile) if col is not None else []
    deps += data_departures(ctx.data.get("datasets", {})) + ctx.departures
    result = results_mod.Result(
        column=p["column"], kind=KIND_TYPE[ctx.kind], notebook=f"{ctx.kind}.ipynb", profile=p["profile"],
        parameters=p, metrics=dict(metrics), extra=dict(extra or {}), departures=deps,
        provenance=results_mod.provenance(device=ctx.device, wall_time_s=time.time() - ctx.started,
                                          data=ctx.data, models=ctx.models),
    )
    result.provenance["notes"] = list(ctx.notes)
    results_mod.save(result, results_mod.result_path(p["results_dir"], p["profile"], p["column"]))
    return result


def deepsec_candidates(ctx: Context, dataset: str):
    """DeepSec's released raw model for ``dataset`` and ``n_samples`` clean candidates for it (findings notebook)."""
    from . import models

    model = models.load_deepsec(dataset, map_location=ctx.device)
    ctx.models[dataset] = {"source": "DeepSec's released checkpoint",
                           "sha256": models.DEEPSEC_CHECKPOINTS[dataset]["sha256"]}
    cands = data_mod.candidates(model, dataset, n=ctx.params["n_samples"], seed=ctx.params["seed"],
                                batch_size=ctx.params["batch_size"], device=ctx.device)
    ctx.data.setdefault("candidates", {})[dataset] = {"n": len(cands.y), "n_correct": cands.n_correct,
                                                      "n_test": cands.n_test}
    return model, cands


def result_file(ctx: Context) -> str:
    """Where :func:`finish` saves (relative to the repository root when ``results_dir`` is relative)."""
    p = ctx.params
    path = results_mod.result_path(p["results_dir"], p["profile"], p["column"])
    try:
        return str(path.relative_to(results_mod.repo_root()))
    except ValueError:
        return os.fspath(path)
