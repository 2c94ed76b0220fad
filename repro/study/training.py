"""Training: every model the study trains, judged by how it was trained and by attacking it.

Per dataset (plan tables "training"), each model of the security evaluation (:data:`repro.study.roster.SECURITY_MODELS`),
the seed replicates of the defence columns, and the profile's training ablation (:class:`repro.study.profiles.
AblationArm`): where its weights come from, its recipe, epochs, training images, wall time, kept epoch and keep rule,
its per-epoch validation curves (clean and PGD accuracy on DeepSec's held-out images), and its accuracy on the test
images, clean and under PGD at the dataset's threat model (Madry et al.'s evaluation: CIFAR-10 ε = 8/255, step 2/255,
20 steps; MNIST ε = 0.3, step 0.01, 100 steps; one random start), each with its exact 95 % interval. This is where
the issue's target for an adversarially trained ResNet-20 (clean ≥ 75 %, PGD-20 ≥ 30 %) is checked, and where the
quick profile's PAT recipe is compared with the alternatives it was chosen over.
"""
from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from .. import data as data_mod
from ..metrics import robustness
from ..train import TrainConfig, config_key
from . import context, models, roster
from .roster import TrainedModel
from .plan import columns_for
from .profiles import DEPARTURE_TEXT, Profile, get_profile


def trained_models(dataset: str, profile: str | Profile) -> list[TrainedModel]:
    """The models of ``dataset``'s training column under ``profile``, in table order: the security evaluation's
    models, each defended model's seed replicates run under the profile, then the ablation arms
    (:func:`repro.study.roster.ablation_models`, variants of the first defended model's training)."""
    prof = get_profile(profile) if isinstance(profile, str) else profile
    specs = roster.evaluated_models(dataset, prof)
    out = [TrainedModel(spec) for spec in specs]
    running = {c.id: c for c in columns_for(prof.name)}
    for spec in specs:
        for col in (c for c in running.values() if c.replicate_of == spec.column and spec.role == "defended"):
            seed = col.parameters["seed"]
            out.append(TrainedModel(roster.EvaluatedModel(f"{spec.id}_seed{seed}", f"{spec.label}, seed {seed}",
                                                            col.id, "defended")))
    return out + list(roster.ablation_models(dataset, prof))


def resolve(*, injected: set | None = None, **params) -> dict:
    """The training notebook's effective parameters: the common ones checked by
    :func:`repro.study.context.resolve_common`, then ``n_samples`` (``None``: the profile's, else the whole official
    test split; a partial copy then uses all it has), ``pgd_steps`` (``None``: the profile's, else the threat
    model's), the raw and defence budgets (``None``: the profile's, as the defence columns).

    Raises:
        repro.study.context.ParameterError: unknown dataset, a count below 1, a width on a model without one.
    """
    p, prof = context.resolve_common(injected=injected, **params)
    context.require(p.get("dataset") in roster.SECURITY_MODELS,
                  f"unknown dataset {p.get('dataset')!r}; allowed: {', '.join(map(repr, roster.SECURITY_MODELS))}")
    if p.get("n_samples") is None:
        p["n_samples"] = prof.training_images.get(p["dataset"]) or data_mod.FULL_SIZES[p["dataset"]]["test"]
    if p.get("pgd_steps") is None:
        p["pgd_steps"] = prof.training_pgd_steps or roster.threat_model(p["dataset"])["steps"]
    context.check_count(p, "n_samples")
    context.check_count(p, "pgd_steps")
    roster.resolve_model_budgets(p, prof)
    return p


def setup(**params) -> context.Context:
    """:func:`repro.study.context.start` for the training notebook, its parameters resolved by :func:`resolve`.

    Raises:
        repro.study.context.ParameterError: a parameter the notebook does not declare, or a bad value.
    """
    return context.start("training", "training", resolve, **params)


def planned_work(ctx: context.Context) -> str:
    """Where each model comes from (cache key, or trained now) and the evaluation, in words."""
    p, lines = ctx.params, []
    for model in trained_models(p["dataset"], ctx.profile):
        config = roster.notebook_config(model, ctx)
        where = ("DeepSec's released checkpoint" if config is None else
                 f"trained model {config_key(config)[:12]} (cached or published)"
                 if models.model_available(config, ctx.profile) else
                 "NOT in the training cache: trained now")
        lines.append(f"{model.spec.label}: {where}")
    threat = roster.threat_model(p["dataset"])
    lines.append(f"per model: the first {p['n_samples']:,} test images, clean and under PGD ε = {threat['eps']:.4g}, "
                 f"step {threat['step_size']:.4g}, {p['pgd_steps']} steps, one random start")
    return "\n".join(lines)


def evaluate(ctx: context.Context, x: Tensor, y: Tensor) -> dict:
    """Load (or train) every model of the column and measure it, JSON-ready: per model id its label, column, role,
    ablation arm, training record (recipe, epochs, images, init, history, kept epoch and rule, wall time; ``None``
    for DeepSec's checkpoint), and ``clean`` and ``pgd`` rate records (:func:`repro.study.robustness.rate`)."""
    from .. import models as models_mod

    p = ctx.params
    threat = roster.threat_model(p["dataset"])
    out = {"dataset": p["dataset"], "threat_model": {**threat, "steps": p["pgd_steps"], "restarts": 1}, "models": {}}
    for model in trained_models(p["dataset"], ctx.profile):
        config, mid = roster.notebook_config(model, ctx), model.spec.id
        if config is None:
            net: nn.Module = models_mod.load_deepsec(p["dataset"], map_location=ctx.device).eval()
            record = None
            out["deepsec_split"] = _split_accuracy(net, p["dataset"], model.spec, ctx)
        else:
            net = models.provide_model(ctx, config, mid)
            if config.jpeg_fill and not ctx.profile.defence.for_dataset(p["dataset"]).jpeg_fill:  # an arm's own
                ctx.departures.append(f"{model.spec.label}: {DEPARTURE_TEXT['defence', 'jpeg_fill']}")
            trained = ctx.models[mid]
            recipe = trained["config"]["recipe"]
            record = {"init": trained["config"]["init"], "recipe": recipe["name"], "optimiser": recipe["optimiser"],
                      "lr": recipe["lr"], "schedule": recipe["schedule"], "keep": recipe["keep"],
                      "label_smoothing": recipe.get("label_smoothing", 0.0), "epochs": trained["config"]["epochs"],
                      "batch_size": trained["config"]["batch_size"],
                      "train_images": _images(trained["history"]), "kept_epoch": trained["best_epoch"],
                      "train_time_s": trained["train_time_s"], "history": trained["history"],
                      "jpeg_fill": config.jpeg_fill,
                      "start": starting_point(config, published=models.published_models(ctx.profile))}
        clean = robustness.predict_correct(net, x, y, batch_size=p["batch_size"], device=ctx.device)
        pgd = robustness.pgd_worst_case(net, x, y, eps=threat["eps"], step_size=threat["step_size"],
                                      steps=p["pgd_steps"], restarts=1, batch_size=p["batch_size"],
                                      device=ctx.device, seed=p["seed"], correct=clean)
        out["models"][mid] = {"label": model.spec.label, "column": model.spec.column, "role": model.spec.role,
                              "arm": model.arm, "training": record, "clean": robustness.rate(clean), "pgd": pgd}
        ctx.models.setdefault(mid, {}).update(label=model.spec.label, column=model.spec.column, role=model.spec.role)
    return out


def starting_point(config: TrainConfig, *, published) -> dict | None:
    """The epoch-0 point of a fine-tuned model's validation curves: the weights it started from, measured as the
    training loop measures every epoch (clean accuracy on all held-out validation images, accuracy under the
    training's validation PGD on the first ``history_subset`` of them with the same random starts), so that what
    the first epoch does to the starting model shows. ``{"epoch": 0, "val_acc", "pgd_acc"}``; ``None`` for a model
    trained from scratch (it starts at chance). ``published``: the folder of published models a trained starting
    model may come from (:func:`repro.train.initial_weights`)."""
    import torch

    from ..train import initial_weights
    from ..train import runtime as rt

    weights = initial_weights(config, published=published)
    if weights is None:
        return None
    device = rt.device_for(config)
    net = rt.build_model(config)
    net.load_state_dict(weights, strict=True)
    net = net.to(device).eval()
    data = rt.split_data(config, device)
    x_val, y_val = data.x_val[:config.history_subset], data.y_val[:config.history_subset]

    def autocast():  # as the loop's
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)

    return {"epoch": 0, "val_acc": rt.clean_accuracy(net, data.x_val, data.y_val, autocast),
            "pgd_acc": rt.pgd_accuracy(net, x_val, y_val, config.history_pgd, config.seed, autocast)}


SPLIT_CONTRAST_IMAGES = 10_000


def _split_accuracy(net: nn.Module, dataset: str, spec: roster.EvaluatedModel, ctx: context.Context) -> dict:
    """DeepSec's released model on the training images available here, split as the training loop splits them
    (DeepSec's own seeded hold-out): the held-out part should score like the test split, the rest (which DeepSec
    trained on) near 100 %, evidence that validation here uses images the checkpoint never saw."""
    from ..train.runtime import split_data

    # the defended column's split of the exact images (the JPEG copies, were the profile's defence to use them,
    # are no images DeepSec's checkpoint trained on as such)
    config = roster.model_config(replace(spec, role="defended"), ctx.profile, defence_jpeg_fill=False,
                                 device=str(ctx.device))
    data = split_data(config, ctx.device)
    # The trained-on part is only the contrast: its first SPLIT_CONTRAST_IMAGES (in the split's order) suffice to
    # tell ~100 % from the held-out rate, where predicting all 54,000 MNIST images would not add anything.
    held_out = robustness.predict_correct(net, data.x_val, data.y_val, batch_size=ctx.params["batch_size"],
                                        device=ctx.device)
    trained_on = robustness.predict_correct(net, data.x_train[:SPLIT_CONTRAST_IMAGES],
                                          data.y_train[:SPLIT_CONTRAST_IMAGES], batch_size=ctx.params["batch_size"],
                                          device=ctx.device)
    return {"model": spec.label, "held_out": robustness.rate(held_out), "trained_on": robustness.rate(trained_on)}


def _images(history: list[dict]) -> int | None:
    """Training images per epoch, from a training history."""
    return history[0]["images"] if history else None


def headline_records(found: dict) -> dict[str, dict]:
    """Per model, the clean and PGD rate records, keyed ``"<model id>/<what>"``."""
    return {f"{mid}/{what}": rec[what] for mid, rec in found["models"].items() for what in ("clean", "pgd")}


def headline_metrics(found: dict) -> dict:
    """The result's metrics: per model, clean and PGD accuracy as fractions, keyed ``"<model id>/<what>"``."""
    return {key: value["rate"] for key, value in headline_records(found).items()}


__all__ = ["TrainedModel", "evaluate", "headline_metrics", "headline_records",
           "planned_work", "resolve", "setup", "starting_point", "trained_models"]
