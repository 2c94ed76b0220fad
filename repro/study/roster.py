"""The models the security and training chapters evaluate (the roster), each dataset's threat model, and the
images and budgets those chapters share.

A roster entry (:class:`repro.study.plan.EvaluatedModel`, listed in the plan's :data:`~repro.study.plan.SECURITY_MODELS`
beside the columns it names) is the raw or defended model of a plan column; its training configuration
comes from that column's plan row through :func:`repro.study.models.train_config`, so that the chapters use the very
models the defence columns trained (the training cache and the published models). The profile's training ablation
(:class:`repro.study.profiles.AblationArm`) adds variants of a dataset's first defended model
(:func:`ablation_models`): the training chapter compares them with it, the security chapter attacks them as it
attacks the study's models. Both chapters import this module; neither imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .. import data as data_mod
from .._io import lookup
from ..attacks import get_config
from ..train import DEFENCES, TrainConfig
from . import context, models
from .plan import COLUMNS, SECURITY_MODELS, EvaluatedModel
from .profiles import Profile, get_profile

# ------------------------------------------------------------------------------------------------ threat models
# Each dataset's threat model is Madry et al.'s evaluation setting (ε, step, and the steps used when the profile
# leaves them to the paper).
THREAT_MODEL = {"mnist": "madry_mnist_eval", "cifar10": "madry_cifar10_eval"}  # names in repro.attacks.PGD_CONFIGS


# ----------------------------------------------------------------------------------------------------- models
WIDTH_SUFFIX = "_x"  # a width-ladder model's id: the id of its role at the profile's width + "_x<width>"
ARM_SUFFIX = "_arm"  # an ablation arm's id: the id of the model it varies + "_arm<index in the profile's ablation>"


@dataclass(frozen=True)
class TrainedModel:
    """A model the chapters train or load: ``spec`` names the plan column and role it comes from; ``arm`` is the
    label of the profile's ablation arm whose training replaces the column's, ``arm_index`` its index in
    :attr:`repro.study.profiles.DefenceBudget.ablation` (both ``None``: the column's own configuration)."""

    spec: EvaluatedModel
    arm: str | None = None
    arm_index: int | None = None


def evaluated_models(dataset: str, profile: str | Profile) -> tuple[EvaluatedModel, ...]:
    """The models the security evaluation of ``dataset`` attacks under ``profile``: :data:`SECURITY_MODELS`, then,
    for each width of the profile's :attr:`~repro.study.profiles.Profile.width_ladder`, the wide ResNet's raw and
    PAT ε = 8/255 models at that width (the wide columns' recipe and budget otherwise).

    Raises:
        ValueError: an unknown dataset (the message lists the known ones).
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    base = lookup(SECURITY_MODELS, dataset, what="dataset")
    rungs = [spec for spec in base if spec.ladder]
    ladder = tuple(EvaluatedModel(f"{spec.id}{WIDTH_SUFFIX}{w}", f"{spec.label}, width ×{w}", spec.column,
                                  spec.role, spec.transfer_from and f"{spec.transfer_from}{WIDTH_SUFFIX}{w}", width=w)
                   for w in prof.width_ladder if w != prof.wide_width for spec in rungs)
    return base + ladder


def ablation_models(dataset: str, profile: str | Profile) -> tuple[TrainedModel, ...]:
    """The profile's ablation arms on ``dataset``, in the profile's order: each a defended model of the column of
    the dataset's first defended model (:data:`SECURITY_MODELS`), trained as its arm says. An arm has no transfer
    source: the security chapter judges it white-box (DeepSec's transfer setting is compared on the study's models).

    Raises:
        ValueError: an unknown dataset (the message lists the known ones).
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    first = next(spec for spec in lookup(SECURITY_MODELS, dataset, what="dataset") if spec.role == "defended")
    # The model's name without the parenthesis after it (where the column's model starts): an arm's own label says
    # how it is trained, from scratch included.
    name = first.label.split(" (")[0]
    return tuple(TrainedModel(EvaluatedModel(f"{first.id}{ARM_SUFFIX}{i}", f"{name}, ablation arm {i}: {arm.label}",
                                             first.column, "defended"), arm=arm.label, arm_index=i)
                 for i, arm in enumerate(prof.defence.ablation) if arm.dataset == dataset)


def attacked_models(dataset: str, profile: str | Profile) -> tuple[TrainedModel, ...]:
    """The models the security evaluation of ``dataset`` attacks under ``profile``: :func:`evaluated_models`, then
    :func:`ablation_models`.

    Raises:
        ValueError: an unknown dataset (the message lists the known ones).
    """
    return tuple(TrainedModel(spec) for spec in evaluated_models(dataset, profile)) + ablation_models(dataset, profile)


def model_config(spec: EvaluatedModel, profile: str | Profile, *, arm: int | None = None, width: int | None = None,
                 epochs: int | None = None, train_subset: int | None = None, defence_init: str | None = None,
                 defence_recipe: str | None = None, defence_epochs: int | None = None,
                 defence_subset: int | None = None, defence_jpeg_fill: bool | None = None,
                 defence_params: dict | None = None, device: str = "auto") -> TrainConfig | None:
    """The training configuration of ``spec`` under ``profile``, or ``None`` for DeepSec's released checkpoint.

    Built by :func:`repro.study.models.train_config`, the function the defence columns use, from the plan row of
    ``spec.column`` (its parameters under ``profile``, e.g. PAT's steps cut under smoke), so that the model comes from
    the training cache those columns fill. ``width``/``epochs``/... override the profile's budget as the defence
    notebooks' parameters of the same names do (``None``: the profile's); ``defence_params`` replaces some of the
    column's defence parameters (``None``: those the profile's defence training sets). ``arm``: the index of the
    profile's ablation arm whose :class:`~repro.study.profiles.DefenceTraining` replaces the defence's
    initialisation, recipe, epochs, images, JPEG fill and parameters (the ``defence_*`` arguments must then be
    ``None``).

    Raises:
        ValueError: ``arm`` not an index of the profile's ablation, or given with a ``defence_*`` argument.
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    if arm is not None:
        if not (isinstance(arm, int) and 0 <= arm < len(prof.defence.ablation)):
            raise ValueError(f"arm must index the {prof.name} profile's ablation (0 to "
                             f"{len(prof.defence.ablation) - 1}), got {arm!r}")
        given = {name: value for name, value in (("defence_init", defence_init), ("defence_recipe", defence_recipe),
                                                 ("defence_epochs", defence_epochs),
                                                 ("defence_subset", defence_subset),
                                                 ("defence_jpeg_fill", defence_jpeg_fill),
                                                 ("defence_params", defence_params)) if value is not None}
        if given:
            raise ValueError(f"ablation arm {arm} fixes its own training; got {', '.join(sorted(given))} too")
        t = prof.defence.ablation[arm].training
        defence_init, defence_recipe, defence_epochs = t.init, t.recipe, t.epochs
        defence_subset, defence_jpeg_fill, defence_params = t.subset, t.jpeg_fill, t.defence_params
    col = COLUMNS[spec.column]
    p = col.parameters_for(prof.name)
    if spec.role == "raw" and models.uses_deepsec_checkpoint(p["model"], prof):
        return None
    common = dict(dataset=p["dataset"], model=p["model"], profile=prof, width=spec.width or width,
                  logit_shift=p.get("logit_shift", True), seed=p["seed"], device=device, epochs=epochs,
                  train_subset=train_subset)
    if spec.role == "raw":
        return models.train_config(**common)
    names = context.defence_parameters(col.defence)
    if defence_params is None:  # the profile's training sets them for whichever defence it trains on the dataset
        defence_params = {k: v for k, v in prof.defence.for_dataset(p["dataset"]).defence_params.items() if k in names}
    params = DEFENCES[col.defence].params_type(**{**{k: p[k] for k in names if k in p}, **defence_params})
    return models.train_config(**common, defence=col.defence, defence_params=params, defence_init=defence_init,
                              defence_recipe=defence_recipe, defence_epochs=defence_epochs,
                              defence_subset=defence_subset, defence_jpeg_fill=defence_jpeg_fill)


def notebook_config(model: TrainedModel, ctx: context.Context) -> TrainConfig | None:
    """:func:`model_config` of ``model`` with the budget overrides of the notebook's parameters (``ctx.params``, as
    :func:`resolve_model_budgets` filled them): ``width``, ``epochs`` and ``train_subset``, and for the column's own
    defended models ``defence_epochs``, ``defence_subset`` and ``defence_jpeg_fill`` (an ablation arm keeps its own
    defence training); on the context's device. The one path from a chapter's model to its configuration."""
    p = ctx.params
    defence = {} if model.arm_index is not None else dict(
        defence_epochs=p["defence_epochs"], defence_subset=p["defence_subset"],
        defence_jpeg_fill=p["defence_jpeg_fill"])
    return model_config(model.spec, ctx.profile, arm=model.arm_index, width=p["width"], epochs=p["epochs"],
                        train_subset=p["train_subset"], device=str(ctx.device), **defence)


def resolve_model_budgets(p: dict, prof: Profile) -> None:
    """Fill, in ``p``, the budgets of the models a per-dataset column loads (the wide ResNet's width on CIFAR-10,
    the raw and defence training budgets), each ``None`` from ``prof`` as the defence columns do.

    Raises:
        repro.study.context.ParameterError: a count below 1, or a width on MNIST.
    """
    if p["dataset"] == "cifar10":
        p["width"] = prof.wide_width if p.get("width") is None else p["width"]
        context.check_count(p, "width")
    else:
        context.require(p.get("width") in (None, 1), f"width applies to the wide ResNet of the cifar10 column only, "
                                                    f"got width={p.get('width')!r} with dataset {p['dataset']!r}")
        p["width"] = None
    defence = prof.defence.for_dataset(p["dataset"])
    for name, default in (("epochs", prof.raw.epochs), ("train_subset", prof.raw.subset),
                          ("defence_epochs", defence.epochs), ("defence_subset", defence.subset)):
        p[name] = default if p.get(name) is None else p[name]
        context.check_count(p, name, optional=True)
    context.resolve_jpeg_fill(p, defence.jpeg_fill, profile_subset=defence.subset)


def evaluation_images(ctx: context.Context) -> tuple[Tensor, Tensor]:
    """The first ``n_samples`` test images and their labels: the same for every attack on every model of the
    column. On a partial copy with fewer images, all are used and the result says so."""
    p = ctx.params
    x, y = data_mod.load(p["dataset"], split="test", n=p["n_samples"])
    if len(y) < p["n_samples"]:
        ctx.departures.append(f"{len(y):,} test images evaluated instead of {p['n_samples']:,}: the copy of "
                              f"{p['dataset']} has no more")
        p["n_samples_requested"], p["n_samples"] = p["n_samples"], len(y)
        for name in ("transfer_samples", "curve_samples"):
            if name in p:
                p[name] = min(p[name], len(y))
    ctx.data["security_images"] = {"n": len(y), "split": "test", "first": len(y)}
    return x, y


def threat_model(dataset: str) -> dict:
    """The dataset's threat model: ``eps``, ``step_size`` and Madry et al.'s evaluation ``steps``, with its name."""
    setting = get_config("pgd", THREAT_MODEL[dataset])
    return {"name": THREAT_MODEL[dataset], **setting}


__all__ = ["ARM_SUFFIX", "EvaluatedModel", "SECURITY_MODELS", "THREAT_MODEL", "TrainedModel", "WIDTH_SUFFIX",
           "ablation_models", "attacked_models", "evaluated_models", "evaluation_images", "model_config",
           "notebook_config", "resolve_model_budgets", "threat_model"]
