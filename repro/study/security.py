"""Security evaluation: every model the study trains or loads, attacked as the field does today, beside DeepSec's
transfer setting.

Carlini's critique of DeepSec (SPEC §8.5): DeepSec scores a defence on adversarial examples crafted on the
*undefended* model (transfer), averages over attacks instead of taking the worst case, and uses ε = 0.1 on CIFAR-10.
Here each model is attacked *itself*, at its threat model (Madry et al.: ε = 8/255 on CIFAR-10, 0.3 on MNIST), with
PGD from several random starts and AutoAttack (Croce & Hein, ICML 2020, the ``pyautoattack`` package); its robust
accuracy is the per-image worst case over every attack run. Beside it: DeepSec's transfer setting against the same
attack run white-box on the defended model, gradient-masking checks on every defended model (a gradient-free attack,
accuracy versus PGD steps and versus ε) with a verdict computed by :data:`repro.metrics.robustness.MASKING_RULES`,
and published anchors (:func:`repro.study.plan.anchors`).

The evaluation itself (rates, worst-case PGD, AutoAttack, transfer, masking checks) is the library's
(:mod:`repro.metrics.robustness`); this module chooses the models, images and budgets of the study and records the
column's result. The models come from the training cache the defence columns fill, through the same configuration
function (:func:`repro.study.roster.notebook_config`).
"""
from __future__ import annotations

from torch import Tensor, nn

from .. import data as data_mod
from ..attacks import get_config
from ..checks import check_integer
from ..metrics.robustness import (AUTOATTACK_ITERATIONS, AUTOATTACK_NAMES, AUTOATTACK_TARGET_CLASSES,
                                  AUTOATTACK_VERSIONS, MASKING_RULES, autoattack_eval, masking_checks, pgd_worst_case,
                                  predict_correct, random_targets, rate, transfer_vs_white_box, unpack)
from . import context, models
from .plan import CW2_DEEPSEC
from .profiles import PAPER, Profile, SecurityBudget
from .roster import (SECURITY_MODELS, THREAT_MODEL, attacked_models, notebook_config, resolve_model_budgets,
                     threat_model)

# ------------------------------------------------------------------------------------------------ threat models
# The threat models are the roster's (repro.study.roster.THREAT_MODEL); DeepSec's own attack parameters (SPEC §4)
# give the transfer attacks and DeepSec's ε.
DEEPSEC_SETTING = {"mnist": "deepsec_mnist", "cifar10": "deepsec_cifar10"}  # names in PGD_ and FGSM_CONFIGS
# Accuracy-vs-ε masking check: up to an ε at which every image can be changed into another class's image (MNIST 1.0:
# the whole box; CIFAR-10 128/255), where a model without masked gradients must fall to ≈ 0.
MASKING_EPS = {"mnist": (0.1, 0.2, 0.3, 0.5, 1.0),
               "cifar10": (2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255, 128 / 255)}


# ------------------------------------------------------------------------------------------------- parameters
# Notebook parameter → the SecurityBudget field it overrides (None in the notebook: the profile's).
BUDGET_PARAMETERS = {
    "n_samples": "n_images", "pgd_steps": "pgd_steps", "pgd_restarts": "pgd_restarts",
    "transfer_samples": "transfer_n", "curve_samples": "masking_n", "curve_steps": "masking_eps_steps",
    "square_queries": "square_queries",
}
def check_budget(budget: SecurityBudget) -> None:
    """Raise ValueError naming the field unless ``budget`` is usable (counts ≥ 1, a known AutoAttack version, ...)."""
    for name in ("pgd_restarts", "masking_eps_steps", "square_queries"):
        check_integer(f"SecurityBudget.{name}", getattr(budget, name))
    for name in ("n_images", "pgd_steps", "autoattack_target_classes", "autoattack_iterations", "transfer_n",
                 "masking_n"):
        check_integer(f"SecurityBudget.{name}", getattr(budget, name), optional=True)
    for dataset in SECURITY_MODELS:
        cw2 = budget.transfer_cw2.get(dataset) if isinstance(budget.transfer_cw2, dict) else None
        if not (isinstance(cw2, tuple) and len(cw2) == 2 and all(isinstance(v, int) and v >= 1 for v in cw2)):
            raise ValueError(f"SecurityBudget.transfer_cw2[{dataset!r}] must be (search steps, iterations), integers "
                             f">= 1, got {cw2!r}")
    if budget.autoattack_version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"SecurityBudget.autoattack_version must be one of {AUTOATTACK_VERSIONS}, got "
                         f"{budget.autoattack_version!r}")
    if budget.autoattack_version == "custom" and not budget.autoattack_attacks:
        raise ValueError("a custom AutoAttack needs SecurityBudget.autoattack_attacks")
    if budget.autoattack_version == "standard" and budget.autoattack_attacks:
        raise ValueError("SecurityBudget.autoattack_attacks applies to version 'custom' only (the standard version "
                         "fixes its attacks)")
    unknown = sorted(set(budget.autoattack_attacks) - set(AUTOATTACK_NAMES))
    if unknown:
        raise ValueError(f"unknown AutoAttack attack(s) {unknown}; allowed: {', '.join(AUTOATTACK_NAMES)}")
    if not budget.masking_steps or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                       for s in budget.masking_steps):
        raise ValueError(f"SecurityBudget.masking_steps must be step counts >= 1, got {budget.masking_steps!r}")


def resolve(*, injected: set | None = None, **params) -> dict:
    """The security notebook's effective parameters: the common ones checked by
    :func:`repro.study.context.resolve_common`, every ``None`` budget filled from the profile's ``security`` budget and
    the AutoAttack settings recorded. ``transfer_samples`` and ``curve_samples`` are capped at ``n_samples``.

    Raises:
        repro.study.context.ParameterError: unknown dataset, a count below 1, a width on a model without one.
    """
    p, prof = context.resolve_common(injected=injected, **params)
    context.require(p.get("dataset") in SECURITY_MODELS,
                  f"unknown dataset {p.get('dataset')!r}; allowed: {', '.join(map(repr, SECURITY_MODELS))}")
    budget = prof.security
    check_budget(budget)
    for name, field_name in BUDGET_PARAMETERS.items():
        if p.get(name) is None:
            p[name] = getattr(budget, field_name)
    search_steps, iterations = budget.transfer_cw2[p["dataset"]]
    p["binary_search_steps"] = search_steps if p.get("binary_search_steps") is None else p["binary_search_steps"]
    p["max_iterations"] = iterations if p.get("max_iterations") is None else p["max_iterations"]
    if p["n_samples"] is None:  # the whole official test split (a partial copy then uses all it has)
        p["n_samples"] = data_mod.FULL_SIZES[p["dataset"]]["test"]
    if p["pgd_steps"] is None:
        p["pgd_steps"] = get_config("pgd", THREAT_MODEL[p["dataset"]])["steps"]
    context.check_count(p, "n_samples")
    for name in ("transfer_samples", "curve_samples"):
        context.check_count(p, name, optional=True)
    for name in ("pgd_steps", "pgd_restarts", "binary_search_steps", "max_iterations", "curve_steps",
                 "square_queries"):
        context.check_count(p, name)
    for name in ("transfer_samples", "curve_samples"):
        p[name] = p["n_samples"] if p[name] is None else min(p[name], p["n_samples"])
    resolve_model_budgets(p, prof)
    p["autoattack"] = {"version": budget.autoattack_version, "attacks": list(budget.autoattack_attacks),
                       "target_classes": budget.autoattack_target_classes,
                       "iterations": budget.autoattack_iterations}
    p["masking_steps"] = list(budget.masking_steps)
    return p


def setup(**params) -> context.Context:
    """:func:`repro.study.context.start` for the security notebook, its parameters resolved by :func:`resolve`.

    Raises:
        repro.study.context.ParameterError: a parameter the notebook does not declare, or a bad value.
    """
    return context.start("security", "security", resolve, **params)


def budget_departures(profile: Profile, dataset: str | None = None) -> list[str]:
    """How ``profile``'s security budget departs from the full protocol (the paper profile's) and, for
    ``dataset``, from DeepSec's CW2 budget, in words."""
    ours, paper = profile.security, PAPER.security
    deepsec_cw2 = get_config("cw2", "deepsec")
    out = []
    if ours.n_images != paper.n_images:
        out.append(f"security evaluation on the first {ours.n_images:,} test images instead of the whole test split")
    if ours.autoattack_version != paper.autoattack_version:
        targets = ours.autoattack_target_classes or AUTOATTACK_TARGET_CLASSES
        out.append(f"AutoAttack's cheaper subset {' + '.join(ours.autoattack_attacks)} (APGD-T with {targets} target "
                   "classes) instead of the standard version (APGD-CE, APGD-T with 9, FAB-T, Square)")
    if ours.autoattack_iterations != paper.autoattack_iterations:
        out.append(f"APGD with {ours.autoattack_iterations} iterations instead of AutoAttack's "
                   f"{AUTOATTACK_ITERATIONS}")
    if (ours.pgd_steps, ours.pgd_restarts) != (paper.pgd_steps, paper.pgd_restarts):
        madry = "Madry et al.'s evaluation steps (20 on CIFAR-10, 100 on MNIST)"
        out.append(f"PGD with {ours.pgd_steps or madry} steps and {ours.pgd_restarts} restarts instead of "
                   f"{paper.pgd_steps or madry} and {paper.pgd_restarts} restarts")
    deepsec = (deepsec_cw2["binary_search_steps"], deepsec_cw2["max_iterations"])
    if dataset is not None and ours.transfer_cw2[dataset] != deepsec:
        steps_, iterations = ours.transfer_cw2[dataset]
        out.append(f"transfer comparison's CW2 at {steps_} × {iterations:,} search steps × iterations instead of "
                   f"DeepSec's {deepsec[0]} × {deepsec[1]:,}")
    if ours.square_queries != paper.square_queries:
        out.append(f"masking check's Square attack with {ours.square_queries:,} queries instead of AutoAttack's "
                   f"{paper.square_queries:,}")
    if ours.masking_n != paper.masking_n:
        out.append(f"masking checks on {_count_text(ours.masking_n)} images instead of "
                   f"{_count_text(paper.masking_n)}")
    return out


def _count_text(n: int | None) -> str:
    return "all evaluated" if n is None else f"{n:,}"


def transfer_attacks(dataset: str, *, cw2_search_steps: int, cw2_iterations: int) -> dict[str, dict]:
    """The transfer comparison's attacks with DeepSec's parameters for ``dataset`` (SPEC §4): FGSM, PGD, and CW2
    with DeepSec's hyper-parameters at the given search steps × iterations."""
    return {"fgsm": get_config("fgsm", DEEPSEC_SETTING[dataset]), "pgd": get_config("pgd", DEEPSEC_SETTING[dataset]),
            "cw2": {**CW2_DEEPSEC, "binary_search_steps": cw2_search_steps, "max_iterations": cw2_iterations,
                    "abort_early": False}}


# --------------------------------------------------------------------------------------------- the column's run
def load_models(ctx: context.Context) -> dict[str, nn.Module]:
    """Every model the column attacks (:func:`repro.study.roster.attacked_models`: the study's models of the
    dataset, then the profile's ablation arms), in ``eval()`` mode on the context's device: DeepSec's released
    checkpoints where the profile loads them, the others from the training cache or the published models (trained
    now if absent) with the defence columns' configurations. Each is recorded in the result under its id."""
    from .. import models as models_mod

    p = ctx.params
    out = {}
    for model in attacked_models(p["dataset"], ctx.profile):
        spec, config = model.spec, notebook_config(model, ctx)
        if config is None:
            out[spec.id] = models_mod.load_deepsec(p["dataset"], map_location=ctx.device)
            ctx.models[spec.id] = {"source": models.ModelSource.DEEPSEC.value,
                                   "file": models_mod.deepsec_checkpoint(p["dataset"]).name,
                                   "sha256": models_mod.DEEPSEC_CHECKPOINTS[p["dataset"]]["sha256"],
                                   "deepsec_commit": models_mod.DEEPSEC_COMMIT, "logit_shift": True}
        else:
            out[spec.id] = models.provide_model(ctx, config, spec.id)
        ctx.models[spec.id].update(label=spec.label, column=spec.column, role=spec.role, arm=model.arm)
    return out


def planned_work(ctx: context.Context) -> str:
    """What the column is about to do, in words: where each model comes from (and which must be trained first)
    and the attack budget."""
    from ..train import config_key

    p, lines = ctx.params, []
    for model in attacked_models(p["dataset"], ctx.profile):
        spec, config = model.spec, notebook_config(model, ctx)
        where = ("DeepSec's released checkpoint" if config is None else
                 f"trained model {config_key(config)[:12]} (cached or published; column {spec.column})"
                 if models.model_available(config, ctx.profile) else
                 f"NOT in the training cache: trained now with column {spec.column}'s configuration")
        lines.append(f"{spec.label}: {where}")
    aa = p["autoattack"]
    lines.append(f"per model: the first {p['n_samples']:,} test images; PGD {p['pgd_steps']} steps × "
                 f"{p['pgd_restarts']} restarts; AutoAttack {aa['version']}"
                 + (f" ({', '.join(aa['attacks'])}, {aa['target_classes'] or 9} target classes)"
                    if aa["version"] == "custom" else ""))
    lines.append(f"per defended model: transfer vs white-box (the study's models) on {p['transfer_samples']:,} "
                 f"images (FGSM, PGD, CW2 "
                 f"{p['binary_search_steps']} × {p['max_iterations']}); masking checks on {p['curve_samples']:,} "
                 f"images (Square {p['square_queries']} queries, PGD steps {p['masking_steps']})")
    return "\n".join(lines)


def evaluate(ctx: context.Context, models: dict[str, nn.Module], x: Tensor, y: Tensor) -> dict:
    """The column's security evaluation, JSON-ready.

    Per model (:func:`repro.study.roster.attacked_models`; an ablation arm's record names its ``arm``): clean
    accuracy; PGD at the threat model (worst case over the restarts) and,
    on CIFAR-10, at DeepSec's ε = 0.1 (step in Madry's ratio, ε/4); AutoAttack as the profile says; the robust
    accuracy, the per-image worst case over clean, PGD and AutoAttack at the threat model. Per defended model: the
    masking checks (:func:`~repro.metrics.robustness.masking_checks`) and, where it has a transfer source (the
    study's models, not the ablation's arms), DeepSec's transfer setting against white-box
    (:func:`repro.metrics.robustness.transfer_vs_white_box`). Progress (one bar over the stages) when
    :func:`repro.study.context.progress_enabled`.
    """
    from tqdm import tqdm

    p = ctx.params
    dataset, bs, dev, seed = p["dataset"], p["batch_size"], ctx.device, p["seed"]
    attacked = attacked_models(dataset, ctx.profile)
    arms = {m.spec.id: m.arm for m in attacked}
    specs = [m.spec for m in attacked]
    threat = threat_model(dataset)
    deepsec_eps = get_config("pgd", DEEPSEC_SETTING[dataset])["eps"]
    defended = [s for s in specs if s.role == "defended"]
    transferred = [s for s in defended if s.transfer_from]
    aa = p["autoattack"]
    out = {"dataset": dataset, "n": len(y), "threat_model": threat,
           "deepsec_eps": deepsec_eps if deepsec_eps != threat["eps"] else None,
           "models": {}, "transfer": {}, "masking": {},
           "masking_rules": dict(MASKING_RULES), "masking_eps": list(MASKING_EPS[dataset])}
    total = 2 * len(specs) + len(transferred) + len(defended)
    with tqdm(total=total, desc="security evaluation", unit="stage", disable=not context.progress_enabled()) as bar:
        for spec in specs:
            model = models[spec.id]
            bar.set_postfix_str(f"{spec.id}: PGD")
            clean = predict_correct(model, x, y, batch_size=bs, device=dev)
            pgd_rec = pgd_worst_case(model, x, y, eps=threat["eps"], step_size=threat["step_size"],
                                     steps=p["pgd_steps"], restarts=p["pgd_restarts"], batch_size=bs, device=dev,
                                     seed=seed, correct=clean)
            rec = {"label": spec.label, "role": spec.role, "column": spec.column, "arm": arms[spec.id],
                   "clean": rate(clean), "pgd": pgd_rec}
            if out["deepsec_eps"] is not None:
                rec["pgd_deepsec_eps"] = pgd_worst_case(
                    model, x, y, eps=deepsec_eps, step_size=deepsec_eps * threat["step_size"] / threat["eps"],
                    steps=p["pgd_steps"], restarts=p["pgd_restarts"], batch_size=bs, device=dev, seed=seed,
                    correct=clean)
            bar.update()
            bar.set_postfix_str(f"{spec.id}: AutoAttack")
            rec["autoattack"] = autoattack_eval(model, x, y, eps=threat["eps"], version=aa["version"],
                                                attacks=aa["attacks"], target_classes=aa["target_classes"],
                                                iterations=aa["iterations"], batch_size=bs, device=dev, seed=seed)
            rec["robust"] = rate(unpack(pgd_rec["correct"]) & unpack(rec["autoattack"]["correct"]))
            out["models"][spec.id] = rec
            bar.update()

        n_t, n_m = p["transfer_samples"], p["curve_samples"]
        attacks = transfer_attacks(dataset, cw2_search_steps=p["binary_search_steps"],
                                   cw2_iterations=p["max_iterations"])
        targets = random_targets(y[:n_t], seed=seed)
        crafted: dict[str, dict] = {}
        for spec in transferred:
            bar.set_postfix_str(f"{spec.id}: transfer vs white-box")
            out["transfer"][spec.id] = {
                "source": spec.transfer_from, "n": n_t,
                "attacks": transfer_vs_white_box(models[spec.transfer_from], models[spec.id], x[:n_t], y[:n_t],
                                                 attacks=attacks, targets=targets, batch_size=bs, device=dev,
                                                 seed=seed, crafted_on_source=crafted.setdefault(spec.transfer_from,
                                                                                                 {}))}
            bar.update()
        for spec in defended:
            bar.set_postfix_str(f"{spec.id}: masking checks")
            # Square is judged against the gradient attacks' per-image worst case (PGD and AutoAttack's APGD), as
            # AutoAttack's own check does: an image APGD breaks and PGD misses is no sign of masking.
            white = unpack(out["models"][spec.id]["robust"]["correct"])[:n_m]
            out["masking"][spec.id] = masking_checks(
                models[spec.id], x[:n_m], y[:n_m], eps=threat["eps"], white_box=white, steps_list=p["masking_steps"],
                eps_list=MASKING_EPS[dataset], eps_steps=p["curve_steps"], square_queries=p["square_queries"],
                batch_size=bs, device=dev, seed=seed)
            bar.update()
    ctx.departures.extend(d for d in budget_departures(ctx.profile, dataset) if d not in ctx.departures)
    for key, value in headline_records(out).items():
        ctx.intervals[key] = {"low": value["low"], "high": value["high"], "method": "clopper-pearson",
                              "n": value["n"]}
    return out


def headline_records(found: dict) -> dict[str, dict]:
    """Per model, the clean, PGD, AutoAttack and robust (worst-case) rate records, keyed ``"<model id>/<what>"``."""
    return {f"{mid}/{what}": rec[what] for mid, rec in found["models"].items()
            for what in ("clean", "pgd", "autoattack", "robust")}


def headline_metrics(found: dict) -> dict:
    """The result's metrics: per model, clean, PGD, AutoAttack and robust (worst-case) accuracy as fractions,
    keyed ``"<model id>/<what>"``."""
    return {key: value["rate"] for key, value in headline_records(found).items()}


def study_models(found: dict) -> dict[str, dict]:
    """The records of the study's own models (its columns' raw and defended models, the width ladder's), by id:
    every model of the evaluation but the ablation's arms."""
    return {mid: rec for mid, rec in found["models"].items() if rec.get("arm") is None}


def summary_rows(found: dict) -> list[dict]:
    """One row per model for tables: label, role, and each accuracy's rate record."""
    return [{"id": mid, "label": rec["label"], "role": rec["role"],
             **{what: rec[what] for what in ("clean", "pgd", "pgd_deepsec_eps", "autoattack", "robust") if what in rec}}
            for mid, rec in found["models"].items()]


__all__ = [
    "MASKING_EPS", "budget_departures", "evaluate", "headline_metrics", "load_models",
    "planned_work", "resolve", "setup", "study_models", "summary_rows", "transfer_attacks",
]
