"""The models a column uses: its training configuration (the one the command line builds too), where each model comes
from (DeepSec's released checkpoint, the training cache, the profile's published models, or trained now) and what
training it would cost, recorded in the run's :class:`~repro.study.context.Context`.
"""
from __future__ import annotations

import enum
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from .. import _io
from .. import results as results_mod
from ..attacks import ATTACKS
from ..models import DEEPSEC_CHECKPOINTS
from ..train import DEFENCES, TrainConfig
from .context import Context, defence_parameters, progress_enabled
from .profiles import Profile, get_profile, loads_deepsec_checkpoint

BF16_DEPARTURE = ("bfloat16 autocast on the GPU in the {what} (the papers ran float32): logits and gradients are "
                  "rounded to 8 significant bits, so results differ from a float32 run within the intervals' noise")

class ModelSource(str, enum.Enum):
    """Where a model in a result came from."""

    DEEPSEC = "DeepSec's released checkpoint"
    TRAINED = "trained here"

# ------------------------------------------------------------------------------------------------------- models
def train_config(*, dataset: str, model: str, profile: str | Profile, width: int | None = None,
                 logit_shift: bool = True, defence: str | None = None, defence_params=None, seed: int = 100,
                 device: str = "auto", epochs: int | None = None, train_subset: int | None = None,
                 defence_init: str | None = None, defence_recipe: str | None = None,
                 defence_epochs: int | None = None, defence_subset: int | None = None,
                 defence_jpeg_fill: bool | None = None) -> TrainConfig:
    """The :class:`repro.train.TrainConfig` a profile prescribes for a raw model (``defence=None``) or a defence:
    the one function that turns a profile into a training configuration, used by the notebooks and by
    ``python -m repro.train`` alike (so both train, and cache, the same model).

    Raw models take DeepSec's recipe with the profile's raw budget (``epochs``/``train_subset`` override it).
    Defences take the profile's defence budget for the dataset (``defence_*`` override it: initialisation, recipe,
    epochs, training images, JPEG fill); ``defence_params`` given as a named setting (or ``None``: DeepSec's) gets
    the defence parameters the budget sets on top, while a parameters object (a notebook's, resolved with the same
    rule) is taken as it is; when they start from the raw model
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
    if defence_params is None or isinstance(defence_params, str):
        entry = DEFENCES[defence]
        defence_params = replace(entry.resolve(defence_params, dataset=dataset),
                                 **{k: v for k, v in budget.defence_params.items() if k in entry.parameters})
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
                   subset=budget.subset if defence_subset is None else defence_subset,
                   jpeg_fill=budget.jpeg_fill if defence_jpeg_fill is None else defence_jpeg_fill)


def uses_deepsec_checkpoint(model: str, profile: Profile) -> bool:
    """Whether the profile's raw ``model`` is DeepSec's released checkpoint (else it is trained here)."""
    return loads_deepsec_checkpoint(model, profile)


def config_of(ctx: Context, *, defence_params=None) -> TrainConfig:
    p = ctx.params
    extra = {} if defence_params is None else dict(
        defence=ctx.name, defence_params=defence_params, defence_init=p["defence_init"],
        defence_recipe=p["defence_recipe"], defence_epochs=p["defence_epochs"], defence_subset=p["defence_subset"],
        defence_jpeg_fill=p["defence_jpeg_fill"])
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
    return provide_model(ctx, config_of(ctx), "raw")


def defend(ctx: Context, raw: torch.nn.Module) -> torch.nn.Module:
    """Train the column's defence (a :data:`repro.train.DEFENCES` entry) and return it in ``eval()`` mode.

    Fine-tuned from the raw model or trained from scratch as ``defence_init`` says; cached by configuration (the
    same defence is trained once); the training history is recorded in the result.
    """
    p = ctx.params
    params = DEFENCES[ctx.name].params_type(**{k: p[k] for k in defence_parameters(ctx.name) if k in p})
    config = config_of(ctx, defence_params=params)
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
        configs.append(("raw model", config_of(ctx)))
    if ctx.kind == "defence":
        params = DEFENCES[ctx.name].params_type(**{k: p[k] for k in defence_parameters(ctx.name) if k in p})
        configs.append((f"{ctx.name.upper()} defence", config_of(ctx, defence_params=params)))
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
