"""The steps of one table column, as the notebooks call them: set up, get the models, attack or defend, measure,
save one result.

Notebooks stay thin (STYLE): their parameters cell holds literals; :func:`setup` names what the notebook runs (an
attack of :data:`repro.attacks.ATTACKS`, a defence of :data:`repro.train.DEFENCES`, or the findings), rejects
parameters the notebook does not declare, validates the others by the kind's resolver (:data:`RESOLVERS`) and fills
the budgets the profile decides (``None`` in the parameters cell); four or five calls below do the work, dispatched
through those registries. The run's context and the parameter checks live in :mod:`repro.study.context`, the
models in :mod:`repro.study.models` (their notebook-facing steps are re-exported here). Every function returns
values and prints nothing.
"""
from __future__ import annotations

import os
import time
import uuid
import warnings

import numpy as np
import torch

from .. import _io
from .. import data as data_mod
from .. import results as results_mod
from ..attacks import ATTACKS, labels_field, lookup
from ..models import DEEPSEC_CHECKPOINTS, MODEL_DATASET
from ..train import DEFENCES, RECIPES
from .context import (Context, ParameterError, attack_parameters, check_count, check_rule, defence_parameters,
                      progress_enabled, require, resolve_common, resolve_jpeg_fill, start)
from .models import BF16_DEPARTURE, ModelSource, defend, planned_work, raw_model
from .plan import COLUMNS, departures as plan_departures, fingerprint
from .profiles import Profile, departures_of

CURVE_EPS = {"mnist": [0.0, 0.1, 0.2, 0.3, 0.4], "cifar10": [0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 0.1]}


def resolve_findings(name: str, *, injected: set | None = None, **params) -> dict:
    """The findings notebook's parameters: the common ones, then ``n_samples`` (``None``: the profile's)."""
    p, prof = resolve_common(injected=injected, **params)
    if p.get("n_samples") is None:
        p["n_samples"] = prof.findings_samples
    check_count(p, "n_samples")
    return p


def _resolve_model(injected: set | None, params: dict) -> tuple[dict, Profile]:
    """The common parameters, then those of the column's model (dataset, architecture, width, logit shift, the raw
    model's training budget)."""
    p, prof = resolve_common(injected=injected, **params)
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
    return p, prof


def _drop_others(p: dict, kind: str, name: str, parameters: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """A notebook that serves every registered attack (or defence) lists all their hyper-parameters: those of
    another ``kind`` than ``name`` must stay ``None`` and are dropped from ``p``. Returns ``name``'s own."""
    mine = parameters[name]
    for other, names in parameters.items():
        for param in names:
            if param not in mine and param in p:
                require(p[param] is None, f"{param} is a parameter of {kind} {other!r}, not of {name!r}; leave it "
                                          f"None (given {p[param]!r})")
                p.pop(param)
    return mine


def resolve_attack(attack: str, *, injected: set | None = None, **params) -> dict:
    """An attack notebook's parameters: the model's, ``n_samples`` and the attack's iteration budget (``None``: the
    profile's), each hyper-parameter checked by its rule in the attack's registry entry."""
    try:
        entry = lookup(attack)
    except ValueError as err:
        raise ParameterError(str(err)) from None
    p, prof = _resolve_model(injected, params)
    budget = prof.attack_budget(attack)
    p["n_samples"] = budget.n_candidates if p.get("n_samples") is None else p["n_samples"]
    check_count(p, "n_samples")
    # One notebook serves every attack (attack.ipynb; pgd.ipynb and cw2.ipynb are it with other defaults).
    mine = _drop_others(p, "attack", attack, {a: attack_parameters(a) for a in ATTACKS})
    setting = entry.default_setting(p["dataset"])
    for name in mine:
        if name in p and p[name] is None:  # the profile's iteration budget, else DeepSec's setting
            p[name] = budget.iterations.get(name, setting.get(name))
        if name in p and p[name] is not None:
            check_rule(entry.rules[name], name, p[name])
        elif name in p:
            p.pop(name)  # neither: the attack function's own default
    if p.get("eps", 0) >= 1:
        p["note"] = (f"eps = {p['eps']:g} ≥ 1 on [0, 1] images: only the [0, 1] box constrains the attack "
                     "(the follow-up's literal \"ε = 8\")")
    return p


def resolve_defence(defence: str, *, injected: set | None = None, **params) -> dict:
    """The defence notebook's parameters: the model's, the defence's hyper-parameters (``None``: the value the
    profile's defence training sets, else DeepSec's setting for the dataset; each checked by its rule in the
    defence's parameters type) and the training and evaluation budgets (``None``: the profile's)."""
    require(defence in DEFENCES, f"unknown defence {defence!r}; allowed: {', '.join(map(repr, DEFENCES))}")
    p, prof = _resolve_model(injected, params)
    # One notebook serves every defence (defence.ipynb).
    mine = _drop_others(p, "defence", defence, {d: defence_parameters(d) for d in DEFENCES})
    setting = DEFENCES[defence].default_setting(p["dataset"])
    budget = prof.defence.for_dataset(p["dataset"])
    for name in mine:
        if name in p:
            if p[name] is None:
                p[name] = budget.defence_params.get(name, getattr(setting, name))
            check_rule(DEFENCES[defence].params_type.RULES[name], name, p[name])
    require(p.get("defence_init") in (None, "raw", "scratch"),
            f"defence_init must be 'raw', 'scratch' or None (the profile's), got {p.get('defence_init')!r}")
    require(p.get("defence_recipe") in (None, *RECIPES),
            f"defence_recipe must be one of {', '.join(map(repr, RECIPES))} or None (the profile's), got "
            f"{p.get('defence_recipe')!r}")
    for name, default in (("defence_init", budget.init), ("defence_recipe", budget.recipe),
                          ("defence_epochs", budget.epochs), ("defence_subset", budget.subset),
                          ("eval_subset", prof.defence.eval_subset), ("curve_samples", prof.curve_samples)):
        p[name] = default if p.get(name) is None else p[name]
    for name in ("defence_epochs", "defence_subset", "eval_subset"):
        check_count(p, name, optional=True)
    resolve_jpeg_fill(p, budget.jpeg_fill, profile_subset=budget.subset)
    check_count(p, "curve_samples")
    check_count(p, "curve_steps")
    return p


# Each kind of column notebook's resolver (the security and training chapters resolve their own parameters:
# repro.study.security.setup, repro.study.training.setup).
RESOLVERS = {"attack": resolve_attack, "defence": resolve_defence, "findings": resolve_findings}


def _kind(attack: str | None, defence: str | None, findings: bool) -> tuple[str, str]:
    require((attack is not None) + (defence is not None) + bool(findings) == 1,
            "give exactly one of attack=..., defence=... or findings=True")
    return ("attack", attack) if attack is not None else ("defence", defence) if defence is not None \
        else ("findings", "findings")


def resolve(*, attack: str | None = None, defence: str | None = None, findings: bool = False,
            injected: set | None = None, **params) -> dict:
    """Validate a column notebook's parameters and fill the budgets the profile decides, by the resolver of what it
    runs (:data:`RESOLVERS`).

    Args:
        attack / defence / findings: what the notebook runs: an :data:`repro.attacks.ATTACKS` name, a
            :data:`repro.train.DEFENCES` name, or the findings experiments.
        **params: the parameters cell's values. ``None`` for a budget (``n_samples``, ``batch_size``, ``width``,
            the attack's iteration budget, ``epochs``, ``train_subset``, ``defence_*``, ``eval_subset``,
            ``curve_samples``) means "the profile's value". PGD's ``eps_iter`` (the follow-up's name) is accepted
            as ``step_size``; given alone under papermill, it replaces the notebook's default ``step_size``.
        injected: the parameters papermill injected (:func:`~repro.study.context.injected_parameters`; ``None``:
            unknown, every given parameter counts as set by the caller).

    Returns:
        The effective parameters, JSON-ready (device as a string).

    Raises:
        ParameterError: an unknown profile, dataset, model, attack or defence, a dataset/model mismatch, a negative
            ε, a step count below 1, ... — the message names the parameter and what is allowed.
    """
    kind, name = _kind(attack, defence, findings)
    return RESOLVERS[kind](name, injected=injected, **params)


def setup(*, attack: str | None = None, defence: str | None = None, findings: bool = False, **params) -> Context:
    """:func:`~repro.study.context.start` for a column notebook (an attack, a defence or the findings), its
    parameters resolved by :func:`resolve`.

    Raises:
        ParameterError: a parameter the notebook does not declare (named, with the allowed ones), or a bad value.
    """
    kind, name = _kind(attack, defence, findings)
    # The attack and defence notebooks serve every attack and defence: their ``attack``/``defence`` parameter names
    # the one they run.
    return start(kind, name, lambda **p: RESOLVERS[kind](name, **p),
                 declared=(kind,) if kind in ("attack", "defence") else (), **params)


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


def attack_labels(ctx: Context, cands: data_mod.Candidates) -> torch.Tensor | None:
    """The labels a targeted attack aimed at (DeepSec's random targets or the least-likely classes), ``None`` for an
    untargeted one (its labels are the true classes)."""
    field_name = labels_field(ctx.name)
    return None if field_name == "y" else getattr(cands, field_name)


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


# What the notebooks call, from this module and the two it builds on.
__all__ = ["ParameterError", "Context", "RESOLVERS", "resolve", "setup", "planned_work", "raw_model", "defend",
           "candidates", "attack", "attack_labels", "budget_ladder", "attack_metrics", "outcome_by_class", "defence_metrics",
           "accuracy_vs_eps", "deepsec_candidates", "finish", "result_file", "run_title"]
