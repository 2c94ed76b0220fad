"""Security evaluation: every model the study trains or loads, attacked as the field does today, beside DeepSec's
transfer setting.

Carlini's critique of DeepSec (SPEC §8.5): DeepSec scores a defence on adversarial examples crafted on the
*undefended* model (transfer), averages over attacks instead of taking the worst case, and uses ε = 0.1 on CIFAR-10.
Here each model is attacked *itself*, at its threat model (Madry et al.: ε = 8/255 on CIFAR-10, 0.3 on MNIST), with
PGD from several random starts and AutoAttack (Croce & Hein, ICML 2020, the ``pyautoattack`` package); its robust
accuracy is the per-image worst case over every attack run. Beside it: DeepSec's transfer setting against the same
attack run white-box on the defended model, gradient-masking checks on every defended model (a gradient-free attack,
accuracy versus PGD steps and versus ε) with a verdict computed by :data:`MASKING_RULES`, and published anchors
(:data:`ANCHORS`).

Every rate is a dict ``{"rate", "k", "n", "low", "high", "level", "correct"}``: the fraction k/n with its exact
Clopper–Pearson interval and ``correct``, the per-image outcomes as a string of ``0``/``1`` (:func:`pack`), so that
intervals and worst cases can be recomputed from the result alone. The models come from the training cache the
defence columns fill, through the same configuration function (:func:`model_config`).
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import data as data_mod
from .._io import lookup
from ..attacks import get_config, labels_field, prepare_model, run_attack
from ..metrics.uncertainty import clopper_pearson
from ..train import DEFENCES, TrainConfig
from . import steps
from .plan import COLUMNS, CW2_DEEPSEC
from .profiles import PAPER, Profile, SecurityBudget, get_profile

# ------------------------------------------------------------------------------------------------ threat models
# Each dataset's threat model is Madry et al.'s evaluation setting (ε, step, and the steps used when the profile
# leaves them to the paper); DeepSec's own attack parameters (SPEC §4) give the transfer attacks and DeepSec's ε.
THREAT_MODEL = {"mnist": "madry_mnist_eval", "cifar10": "madry_cifar10_eval"}  # names in repro.attacks.PGD_CONFIGS
DEEPSEC_SETTING = {"mnist": "deepsec_mnist", "cifar10": "deepsec_cifar10"}  # names in PGD_ and FGSM_CONFIGS
# Accuracy-vs-ε masking check: up to an ε at which every image can be changed into another class's image (MNIST 1.0:
# the whole box; CIFAR-10 128/255), where a model without masked gradients must fall to ≈ 0.
MASKING_EPS = {"mnist": (0.1, 0.2, 0.3, 0.5, 1.0),
               "cifar10": (2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255, 128 / 255)}
# PGD step of the masking curves: 2.5·ε/steps, so that any number of steps can cross the ε-ball (Madry et al.'s
# robustness library uses the same rule of thumb).
MASKING_STEP_FACTOR = 2.5
CONFIDENCE_LEVEL = 0.95

# ------------------------------------------------------------------------------------------ masking verdict rule
# AutoAttack's own check (pyautoattack checks.check_square_sr) flags Square beating the gradient attacks by > 0.2 pp.
SQUARE_MARGIN = 0.002
# "Accuracy at a large ε must fall to ≈ 0": more than 1 % of the images surviving counts as not ≈ 0.
LARGE_EPS_LIMIT = 0.01
# "An iterative attack must not be weaker than a single step" (Carlini et al., "On evaluating adversarial
# robustness", 2019): more steps leaving the accuracy higher by more than this counts. Equal accuracies are not a
# sign: on a model whose loss is nearly linear in the ε-ball one step already reaches PGD's result.
STEPS_MARGIN = 0.02
# "A single step must not be far weaker than many" (Tramèr et al., "Ensemble adversarial training", ICLR 2018:
# single-step adversarial training masks the gradient at the data point, so a one-step attack from there fails where
# an iterative one succeeds). A genuinely robust model loses a few points more to 100 steps than to one (Madry et
# al.'s CIFAR-10 model: FGSM 56.1 %, PGD-20 45.8 %; MNIST: 95.6 % and 93.2 %); a gap above this counts.
SINGLE_STEP_GAP = 0.25
MASKING_RULES = {
    "square_beats_pgd": f"the gradient-free Square attack leaves a lower accuracy than white-box PGD (by more than "
                        f"{100 * SQUARE_MARGIN:g} pp, AutoAttack's own threshold)",
    "large_eps_not_zero": f"accuracy at the largest ε stays above {100 * LARGE_EPS_LIMIT:g} %",
    "steps_hurt": f"PGD with the most steps leaves a higher accuracy than with one step (by more than "
                  f"{100 * STEPS_MARGIN:g} pp): the iterative attack is weaker than a single step",
    "single_step_gap": f"one PGD step leaves an accuracy more than {100 * SINGLE_STEP_GAP:g} pp above the most steps' "
                       f"(the signature of single-step gradient masking: the gradient at the clean image points "
                       f"away from the adversarial examples an iterative attack finds)",
}
VERDICTS = {True: "masking suspected", False: "no sign of masking"}


# ------------------------------------------------------------------------------------------------------ anchors
@dataclass(frozen=True)
class Anchor:
    """A published robustness number to read ours against: accuracies as fractions (``None``: not reported)."""

    model: str
    clean: float | None
    pgd: float | None
    autoattack: float | None
    attack_setting: str
    training_data: str
    training_length: str
    source: str


ANCHORS: tuple[Anchor, ...] = (
    Anchor(model="Madry et al.'s adversarially trained wide ResNet (WRN-34-10), CIFAR-10", clean=0.873, pgd=0.458,
           autoattack=None, attack_setting="PGD-20, ε = 8/255, step 2/255, random start",
           training_data="the full CIFAR-10 training set (50,000 images)",
           training_length="80,000 steps of batch 128, about 205 epochs (released config of "
                           "MadryLab/cifar10_challenge)",
           source="Madry et al., \"Towards deep learning models resistant to adversarial attacks\", ICLR 2018"),
    Anchor(model="the same model as RobustBench lists it (Madry2018Towards)", clean=0.8714, pgd=0.4704,
           autoattack=0.4404, attack_setting="AutoAttack standard, ε = 8/255 (the PGD number is the one the "
                                             "entry reports from the original evaluation)",
           training_data="the full CIFAR-10 training set (50,000 images)",
           training_length="as above",
           source="Croce and Hein, ICML 2020 (AutoAttack); RobustBench model_info/cifar10/Linf/Madry2018Towards.json"),
    Anchor(model="RobustBench's ResNet-20 entry Jang2019Adversarial, CIFAR-10", clean=0.7891, pgd=0.3740,
           autoattack=0.3495, attack_setting="AutoAttack standard, ε = 8/255; PGD as reported by the authors",
           training_data="CIFAR-10 training set, no additional data (RobustBench: additional_data false)",
           training_length="unknown",
           source="Jang et al., \"Adversarial defense via learning to generate diverse attacks\", ICCV 2019; "
                  "RobustBench model_info/cifar10/Linf/Jang2019Adversarial.json"),
    Anchor(model="DeepSec's PAT ResNet-20, CIFAR-10", clean=0.8023, pgd=None, autoattack=None,
           attack_setting="clean accuracy only (DeepSec's defence evaluation scores transferred examples)",
           training_data="the CIFAR-10 training set less DeepSec's 10 % validation split (45,000 images)",
           training_length="DeepSec's CIFAR-10 recipe from scratch, 200 epochs",
           source="Ling et al., DEEPSEC, IEEE S&P 2019, as printed in the follow-up's Table 2 (PAT-DeepSec)"),
)
# The follow-up's comparison (its discussion of Table 2): its PAT "ε = 8" model's accuracy (on clean images) is
# "in line with" Madry et al.'s "47.1 % accuracy on the standard model and 50 % on the wide one", which are
# accuracies under PGD attack.
FOLLOWUP_MADRY_ROBUST = {"standard": 0.471, "wide": 0.50}


# ----------------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class EvaluatedModel:
    """A model of the study the security evaluation attacks: the ``role`` ("raw" or "defended") model of the plan
    column ``column``; a defended model names the raw model DeepSec's security evaluation crafts on
    (``transfer_from``)."""

    id: str
    label: str
    column: str
    role: str
    transfer_from: str | None = None
    width: int | None = None  # the wide ResNet's width when it is not the profile's (a rung of the width ladder)


SECURITY_MODELS: dict[str, tuple[EvaluatedModel, ...]] = {
    "mnist": (
        EvaluatedModel("raw_mnist", "MNIST ConvNet, raw", "nat_mnist", "raw"),
        EvaluatedModel("nat_mnist", "MNIST ConvNet, NAT", "nat_mnist", "defended", "raw_mnist"),
    ),
    "cifar10": (
        EvaluatedModel("raw_resnet20", "ResNet-20, raw", "pat_resnet20", "raw"),
        EvaluatedModel("pat_resnet20", "ResNet-20, PAT ε = 8/255 (DeepSec)", "pat_resnet20", "defended",
                       "raw_resnet20"),
        EvaluatedModel("raw_wide", "wide ResNet, raw", "pat_8_255_wide", "raw"),
        EvaluatedModel("pat_eps8_wide", "wide ResNet, PAT \"ε = 8\" (literal)", "pat_eps8_wide", "defended",
                       "raw_wide"),
        EvaluatedModel("pat_8_255_wide", "wide ResNet, PAT ε = 8/255", "pat_8_255_wide", "defended", "raw_wide"),
    ),
}


def evaluated_models(dataset: str, profile: str | Profile) -> tuple[EvaluatedModel, ...]:
    """The models the security evaluation of ``dataset`` attacks under ``profile``: :data:`SECURITY_MODELS`, then,
    for each width of the profile's :attr:`~repro.study.profiles.Profile.width_ladder`, the wide ResNet's raw and
    PAT ε = 8/255 models at that width (the wide columns' recipe and budget otherwise).

    Raises:
        ValueError: an unknown dataset (the message lists the known ones).
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    base = lookup(SECURITY_MODELS, dataset, what="dataset")
    rungs = [spec for spec in base if spec.id in LADDER_MODELS]
    ladder = tuple(EvaluatedModel(f"{spec.id}_x{w}", f"{spec.label}, width ×{w}", spec.column, spec.role,
                                  spec.transfer_from and f"{spec.transfer_from}_x{w}", width=w)
                   for w in prof.width_ladder if w != prof.wide_width for spec in rungs)
    return base + ladder


# The wide ResNet's models that the width ladder repeats at other widths.
LADDER_MODELS = ("raw_wide", "pat_8_255_wide")


def model_config(spec: EvaluatedModel, profile: str | Profile, *, width: int | None = None,
                 epochs: int | None = None, train_subset: int | None = None, defence_init: str | None = None,
                 defence_recipe: str | None = None, defence_epochs: int | None = None,
                 defence_subset: int | None = None, device: str = "auto") -> TrainConfig | None:
    """The training configuration of ``spec`` under ``profile``, or ``None`` for DeepSec's released checkpoint.

    Built by :func:`repro.study.steps.train_config`, the function the defence columns use, from the plan row of
    ``spec.column`` (its parameters under ``profile``, e.g. PAT's steps cut under smoke), so that the model comes from
    the training cache those columns fill. ``width``/``epochs``/... override the profile's budget as the defence
    notebooks' parameters of the same names do (``None``: the profile's).
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    col = COLUMNS[spec.column]
    p = col.parameters_for(prof.name)
    if spec.role == "raw" and steps.uses_deepsec_checkpoint(p["model"], prof):
        return None
    common = dict(dataset=p["dataset"], model=p["model"], profile=prof, width=spec.width or width,
                  logit_shift=p.get("logit_shift", True), seed=p["seed"], device=device, epochs=epochs,
                  train_subset=train_subset)
    if spec.role == "raw":
        return steps.train_config(**common)
    names = steps.defence_parameters(col.defence)
    params = DEFENCES[col.defence].params_type(**{k: p[k] for k in names if k in p})
    return steps.train_config(**common, defence=col.defence, defence_params=params, defence_init=defence_init,
                              defence_recipe=defence_recipe, defence_epochs=defence_epochs,
                              defence_subset=defence_subset)


# ------------------------------------------------------------------------------------------------- parameters
# Notebook parameter → the SecurityBudget field it overrides (None in the notebook: the profile's).
BUDGET_PARAMETERS = {
    "n_samples": "n_images", "pgd_steps": "pgd_steps", "pgd_restarts": "pgd_restarts",
    "transfer_samples": "transfer_n", "curve_samples": "masking_n", "curve_steps": "masking_eps_steps",
    "square_queries": "square_queries",
}
AUTOATTACK_VERSIONS = ("standard", "custom")
# AutoAttack's standard settings (its APGD-T and FAB-T target classes, APGD iterations), for departures and costs.
AUTOATTACK_TARGET_CLASSES, AUTOATTACK_ITERATIONS = 9, 100
AUTOATTACK_NAMES = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")


def check_budget(budget: SecurityBudget) -> None:
    """Raise ValueError naming the field unless ``budget`` is usable (counts ≥ 1, a known AutoAttack version, ...)."""
    for name in ("pgd_restarts", "masking_eps_steps", "square_queries"):
        value = getattr(budget, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"SecurityBudget.{name} must be an integer >= 1, got {value!r}")
    for name in ("n_images", "pgd_steps", "autoattack_target_classes", "autoattack_iterations", "transfer_n",
                 "masking_n"):
        value = getattr(budget, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"SecurityBudget.{name} must be an integer >= 1 or None, got {value!r}")
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


def resolve_security(p: dict, prof: Profile) -> dict:
    """The security notebook's effective parameters: ``p`` (common parameters already checked by
    :func:`repro.study.steps.resolve`) with every ``None`` budget filled from ``prof.security`` and the
    AutoAttack settings recorded. ``transfer_samples`` and ``curve_samples`` are capped at ``n_samples``.

    Raises:
        repro.study.steps.ParameterError: unknown dataset, a count below 1, a width on a model without one.
    """
    steps.require(p.get("dataset") in SECURITY_MODELS,
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
    steps.check_count(p, "n_samples")
    for name in ("transfer_samples", "curve_samples"):
        steps.check_count(p, name, optional=True)
    for name in ("pgd_steps", "pgd_restarts", "binary_search_steps", "max_iterations", "curve_steps",
                 "square_queries"):
        steps.check_count(p, name)
    for name in ("transfer_samples", "curve_samples"):
        p[name] = p["n_samples"] if p[name] is None else min(p[name], p["n_samples"])
    resolve_model_budgets(p, prof)
    p["autoattack"] = {"version": budget.autoattack_version, "attacks": list(budget.autoattack_attacks),
                       "target_classes": budget.autoattack_target_classes,
                       "iterations": budget.autoattack_iterations}
    p["masking_steps"] = list(budget.masking_steps)
    return p


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


# ------------------------------------------------------------------------------------------------- rates
def pack(correct: Tensor) -> str:
    """Per-image outcomes as a string of ``0``/``1`` (JSON-ready, one character per image, in image order)."""
    return "".join("1" if v else "0" for v in correct.bool().tolist())


def unpack(bits: str) -> Tensor:
    """The bool tensor :func:`pack` stored."""
    return torch.tensor([c == "1" for c in bits], dtype=torch.bool)


def rate(correct: Tensor, *, level: float = CONFIDENCE_LEVEL) -> dict:
    """The fraction of True entries of ``correct`` (N,) with its exact Clopper–Pearson interval and its n.

    Returns ``{"rate", "k", "n", "low", "high", "level", "correct"}`` (``correct`` packed by :func:`pack`).
    """
    correct = correct.bool().flatten()
    n, k = int(correct.numel()), int(correct.sum())
    low, high = clopper_pearson(k, n, level=level)
    return {"rate": k / n, "k": k, "n": n, "low": low, "high": high, "level": level, "correct": pack(correct)}


def rate_of(bits: str, *, level: float = CONFIDENCE_LEVEL) -> dict:
    """:func:`rate` recomputed from a stored ``correct`` string (the interval is recomputable from the result)."""
    return rate(unpack(bits), level=level)


def predict_correct(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 256, device=None) -> Tensor:
    """Whether ``model`` classifies each image of ``x`` (N, C, H, W) as ``y`` (N,): a bool tensor on the CPU."""
    return data_mod.predict_logits(model, x, batch_size=batch_size, device=device).argmax(1) == y.cpu()


# ------------------------------------------------------------------------------------------------------ attacks
def pgd_worst_case(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, step_size: float, steps: int,
                   restarts: int, batch_size: int = 256, device=None, seed: int = 0,
                   correct: Tensor | None = None) -> dict:
    """L∞ PGD (Madry et al., ICLR 2018) from ``restarts`` random starts; an image counts as robust only if the model
    classifies it correctly on every start (the worst case per image).

    Each restart attacks only the images still classified correctly (an image already broken stays broken), with
    the random start drawn from seed ``seed + restart``. ``correct``: the clean outcomes if already known.

    Returns the rate of robust images (:func:`rate`) plus ``eps``, ``step_size``, ``steps``, ``restarts``,
    ``after_restart`` (robust images after each restart: non-increasing) and ``seconds`` (attack time).
    """
    still = predict_correct(model, x, y, batch_size=batch_size, device=device) if correct is None else correct.clone()
    after, seconds = [], 0.0
    for restart in range(restarts):
        idx = still.nonzero().flatten()
        if len(idx):
            run = run_attack("pgd", model, x[idx], y[idx], params=dict(eps=eps, step_size=step_size, steps=steps),
                             batch_size=batch_size, device=device, progress=False, seed=seed + restart)
            seconds += run.seconds
            still[idx] = predict_correct(model, run.x_adv, y[idx], batch_size=batch_size, device=device)
        after.append(int(still.sum()))
    return {**rate(still), "eps": eps, "step_size": step_size, "steps": steps, "restarts": restarts,
            "after_restart": after, "seconds": seconds}


class _Collect(logging.Handler):
    """Keeps the warnings AutoAttack's own checks log (zero gradients, randomised or dynamic defence, ...)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _set_apgd_iterations(apgd, iterations: int) -> None:
    # APGD derives its step-size checkpoints from n_iter in its constructor (pyautoattack autopgd_base.py); set them
    # by the same formulas when the iteration count changes afterwards.
    apgd.n_iter = apgd.n_iter_orig = iterations
    apgd.n_iter_2 = max(int(0.22 * iterations), 1)
    apgd.n_iter_min = max(int(0.06 * iterations), 1)
    apgd.size_decr = max(int(0.03 * iterations), 1)


def autoattack_eval(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, version: str = "standard",
                    attacks: tuple[str, ...] | list[str] = (), target_classes: int | None = None,
                    iterations: int | None = None, square_queries: int | None = None, batch_size: int = 250,
                    device=None, seed: int = 0) -> dict:
    """AutoAttack (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020) at L∞ ``eps``, with the authors' code (``pyautoattack``).

    ``version="standard"`` runs APGD-CE, APGD-T, FAB-T and Square with AutoAttack's settings; ``"custom"`` runs
    ``attacks`` (names as AutoAttack spells them) with APGD-CE from one start, as the standard version does.
    ``target_classes`` (APGD-T and FAB-T), ``iterations`` (APGD, APGD-T) and ``square_queries`` override
    AutoAttack's 9, 100 and 5,000. The attacks run one after the other, each on the images still classified
    correctly (AutoAttack's cascade), so the per-image outcome is the worst case over them; each stage's images,
    time and the robust images after it are recorded. The model is attacked as a copy with BatchNorm folded
    (:func:`repro.attacks.prepare_model`); outcomes are scored on ``model`` itself. The caller owns its mode.

    Args:
        model: maps (N, C, H, W) images in [0, 1] to logits; on ``device``.
        x, y: images and true labels (any device; results on the CPU).
        eps: L∞ budget in [0, 1] pixel units.
        seed: AutoAttack's seed (its runs are deterministic for a given seed on the CPU).

    Returns:
        The rate of robust images (:func:`rate`) plus ``version``, ``attacks`` (run, in order), ``stages`` (per
        attack: ``attacked``, ``robust_after``, ``seconds``), ``seconds``, ``seconds_per_image`` (all N), the
        effective ``target_classes``/``iterations``/``square_queries``, and ``checks``: the warnings of
        AutoAttack's own sanity checks.
    """
    from pyautoattack import AutoAttack

    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"version must be one of {AUTOATTACK_VERSIONS}, got {version!r}")
    first = next(model.parameters(), None)
    device = torch.device(device if device is not None else first.device if first is not None else "cpu")
    attack_model, _ = prepare_model(model)
    aa = AutoAttack(attack_model, attacks=list(attacks) if version == "custom" else None, device=device, eps=eps,
                    norm="Linf", seed=seed, version=version)
    if version == "custom":
        aa.apgd.n_restarts = 1
    if target_classes is not None:
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = target_classes
    if iterations is not None:
        _set_apgd_iterations(aa.apgd, iterations)
        _set_apgd_iterations(aa.apgd_targeted, iterations)
    if square_queries is not None:
        aa.square.n_queries = square_queries
    order = list(aa.attacks_to_run)
    still = predict_correct(model, x, y, batch_size=batch_size, device=device)
    logger, collect = logging.getLogger("auto-attack"), _Collect()
    propagate, logger.propagate = logger.propagate, False  # recorded in the result instead of printed
    logger.addHandler(collect)
    stages, total = [], 0.0
    try:
        for name in order:
            idx = still.nonzero().flatten()
            stage = {"attack": name, "attacked": int(len(idx)), "seconds": 0.0}
            if len(idx):
                aa.attacks_to_run = [name]
                began = time.perf_counter()
                x_adv, _ = aa.run_standard_evaluation(x[idx].cpu(), y[idx].cpu(), batch_size=batch_size)
                stage["seconds"] = time.perf_counter() - began
                total += stage["seconds"]
                still[idx] = predict_correct(model, x_adv, y[idx], batch_size=batch_size, device=device)
            stage["robust_after"] = int(still.sum())
            stages.append(stage)
    finally:
        aa.attacks_to_run = order
        logger.removeHandler(collect)
        logger.propagate = propagate
    return {**rate(still), "eps": eps, "version": version, "attacks": order, "stages": stages, "seconds": total,
            "seconds_per_image": total / len(y), "target_classes": aa.apgd_targeted.n_target_classes,
            "iterations": aa.apgd.n_iter, "square_queries": aa.square.n_queries,
            "checks": sorted(set(collect.messages))}


def random_targets(y: Tensor, *, seed: int, num_classes: int = data_mod.NUM_CLASSES) -> Tensor:
    """A target class per image, uniform over the ``num_classes − 1`` wrong ones (seeded), for targeted CW2."""
    offsets = torch.randint(1, num_classes, y.shape, generator=torch.Generator().manual_seed(seed))
    return (y.cpu() + offsets) % num_classes


def transfer_attacks(dataset: str, *, cw2_search_steps: int, cw2_iterations: int) -> dict[str, dict]:
    """The transfer comparison's attacks with DeepSec's parameters for ``dataset`` (SPEC §4): FGSM, PGD, and CW2
    with DeepSec's hyper-parameters at the given search steps × iterations."""
    return {"fgsm": get_config("fgsm", DEEPSEC_SETTING[dataset]), "pgd": get_config("pgd", DEEPSEC_SETTING[dataset]),
            "cw2": {**CW2_DEEPSEC, "binary_search_steps": cw2_search_steps, "max_iterations": cw2_iterations,
                    "abort_early": False}}


def transfer_vs_white_box(source: nn.Module, target: nn.Module, x: Tensor, y: Tensor, *, attacks: dict[str, dict],
                          targets: Tensor | None = None, batch_size: int = 256, device=None, seed: int = 0,
                          crafted_on_source: dict[str, Tensor] | None = None) -> dict:
    """DeepSec's security evaluation (examples crafted on ``source``, the undefended model, scored on ``target``)
    against the same attack run on ``target`` itself (white-box).

    Args:
        source, target: models on ``device`` in the caller's mode (``eval()``).
        x, y: images (N, C, H, W) in [0, 1] and true labels.
        attacks: attack name (:data:`repro.attacks.ATTACKS`) → its hyper-parameters.
        targets: target classes for targeted attacks (CW2), e.g. :func:`random_targets`.
        seed: the attacks' random start (the same for both runs).
        crafted_on_source: examples already crafted on ``source`` by attack name (reused; filled in when given), so
            that several defences of one raw model share its transferred examples.

    Returns:
        Per attack: ``params``, ``transfer`` and ``white_box`` (rates of images ``target`` still classifies
        correctly, :func:`rate`) and ``seconds`` (white-box crafting time).
    """
    out = {}
    for name, params in attacks.items():
        field_name = labels_field(name)
        if field_name not in ("y", "target"):
            raise ValueError(f"attack {name!r} takes {field_name} labels; the transfer comparison runs untargeted "
                             "attacks and targeted ones with given targets")
        if field_name == "target" and targets is None:
            raise ValueError(f"attack {name!r} is targeted: pass targets=")
        labels = y if field_name == "y" else targets
        cached = None if crafted_on_source is None else crafted_on_source.get(name)
        if cached is None:
            cached = run_attack(name, source, x, labels, params=params, batch_size=batch_size, device=device,
                                progress=False, seed=seed).x_adv
            if crafted_on_source is not None:
                crafted_on_source[name] = cached
        white = run_attack(name, target, x, labels, params=params, batch_size=batch_size, device=device,
                           progress=False, seed=seed)
        out[name] = {"params": dict(params),
                     "transfer": rate(predict_correct(target, cached, y, batch_size=batch_size, device=device)),
                     "white_box": rate(predict_correct(target, white.x_adv, y, batch_size=batch_size, device=device)),
                     "seconds": white.seconds}
    return out


# ------------------------------------------------------------------------------------------- gradient masking
def masking_verdict(*, white_box: float, square: float, steps_accuracy: dict[int, float],
                    large_eps_accuracy: float) -> dict:
    """The gradient-masking verdict, by the rule :data:`MASKING_RULES` (any one reason suffices).

    Args:
        white_box: accuracy under white-box PGD at the threat model (worst case over restarts).
        square: accuracy under the gradient-free Square attack on the same images.
        steps_accuracy: PGD steps → accuracy at the threat model's ε.
        large_eps_accuracy: accuracy under PGD at the largest ε of the check.

    Returns:
        ``{"suspected": bool, "verdict": "masking suspected" | "no sign of masking", "reasons": [rule keys]}``.
    """
    reasons = []
    if square < white_box - SQUARE_MARGIN:
        reasons.append("square_beats_pgd")
    if large_eps_accuracy > LARGE_EPS_LIMIT:
        reasons.append("large_eps_not_zero")
    fewest, most = min(steps_accuracy), max(steps_accuracy)
    if steps_accuracy[most] > steps_accuracy[fewest] + STEPS_MARGIN:
        reasons.append("steps_hurt")
    if fewest == 1 and steps_accuracy[fewest] > steps_accuracy[most] + SINGLE_STEP_GAP:
        reasons.append("single_step_gap")
    return {"suspected": bool(reasons), "verdict": VERDICTS[bool(reasons)], "reasons": reasons}


def masking_checks(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, white_box: Tensor,
                   steps_list: tuple[int, ...] | list[int], eps_list: tuple[float, ...] | list[float],
                   eps_steps: int, square_queries: int, batch_size: int = 256, device=None, seed: int = 0) -> dict:
    """Gradient-masking checks (Athalye, Carlini and Wagner, ICML 2018; Carlini et al., "On evaluating adversarial
    robustness", 2019): a gradient-free attack, accuracy versus PGD steps, accuracy versus ε.

    Args:
        model: the model under test, on ``device`` (caller's mode: ``eval()``).
        x, y: the images and labels.
        eps: the threat model's ε.
        white_box: per-image outcomes of white-box PGD at ``eps`` on these images (True: still correct).
        steps_list: PGD step counts for accuracy versus steps (step 2.5·ε/steps, one random start).
        eps_list: ε values for accuracy versus ε (``eps_steps`` steps of 2.5·ε/eps_steps); the last is the large ε.
        square_queries: queries of AutoAttack's Square attack (gradient-free) at ``eps``.

    Returns:
        ``square`` (an :func:`autoattack_eval` record), ``white_box`` (rate), ``steps`` and ``eps`` (lists of rate
        records with their ``steps``/``eps``), and ``verdict`` (:func:`masking_verdict`).
    """
    clean = predict_correct(model, x, y, batch_size=batch_size, device=device)

    def pgd_at(e: float, s: int) -> Tensor:
        still = clean.clone()
        idx = still.nonzero().flatten()
        if len(idx):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # ε = 1 on MNIST: the whole box, on purpose
                run = run_attack("pgd", model, x[idx], y[idx], batch_size=batch_size, device=device, progress=False,
                                 params=dict(eps=e, step_size=MASKING_STEP_FACTOR * e / s, steps=s), seed=seed)
            still[idx] = predict_correct(model, run.x_adv, y[idx], batch_size=batch_size, device=device)
        return still

    square = autoattack_eval(model, x, y, eps=eps, version="custom", attacks=("square",),
                             square_queries=square_queries, batch_size=batch_size, device=device, seed=seed)
    by_steps = [{"steps": s, **rate(pgd_at(eps, s))} for s in steps_list]
    with_large = [{"eps": e, **rate(pgd_at(e, eps_steps))} for e in eps_list]
    verdict = masking_verdict(white_box=float(white_box.float().mean()), square=square["rate"],
                              steps_accuracy={r["steps"]: r["rate"] for r in by_steps},
                              large_eps_accuracy=with_large[-1]["rate"])
    return {"square": square, "white_box": rate(white_box), "steps": by_steps, "eps": with_large,
            "eps_steps": eps_steps, "verdict": verdict}


# --------------------------------------------------------------------------------------------- the column's run
def resolve_model_budgets(p: dict, prof: Profile) -> None:
    """Fill, in ``p``, the budgets of the models a per-dataset column loads (the wide ResNet's width on CIFAR-10,
    the raw and defence training budgets), each ``None`` from ``prof`` as the defence columns do.

    Raises:
        repro.study.steps.ParameterError: a count below 1, or a width on MNIST.
    """
    if p["dataset"] == "cifar10":
        p["width"] = prof.wide_width if p.get("width") is None else p["width"]
        steps.check_count(p, "width")
    else:
        steps.require(p.get("width") in (None, 1), f"width applies to the wide ResNet of the cifar10 column only, "
                                                    f"got width={p.get('width')!r} with dataset {p['dataset']!r}")
        p["width"] = None
    defence = prof.defence.for_dataset(p["dataset"])
    for name, default in (("epochs", prof.raw.epochs), ("train_subset", prof.raw.subset),
                          ("defence_epochs", defence.epochs), ("defence_subset", defence.subset)):
        p[name] = default if p.get(name) is None else p[name]
        steps.check_count(p, name, optional=True)


def load_models(ctx: steps.Context) -> dict[str, nn.Module]:
    """Every model of the column's dataset (:data:`SECURITY_MODELS`), in ``eval()`` mode on the context's device:
    DeepSec's released checkpoints where the profile loads them, the others from the training cache (trained now if
    absent) with the defence columns' configurations. Each is recorded in the result under its id."""
    from .. import models as models_mod

    p = ctx.params
    out = {}
    for spec in evaluated_models(p["dataset"], ctx.profile):
        config = model_config(spec, ctx.profile, width=p["width"], epochs=p["epochs"], train_subset=p["train_subset"],
                              defence_epochs=p["defence_epochs"], defence_subset=p["defence_subset"],
                              device=str(ctx.device))
        if config is None:
            out[spec.id] = models_mod.load_deepsec(p["dataset"], map_location=ctx.device)
            ctx.models[spec.id] = {"source": steps.ModelSource.DEEPSEC.value,
                                   "file": models_mod.deepsec_checkpoint(p["dataset"]).name,
                                   "sha256": models_mod.DEEPSEC_CHECKPOINTS[p["dataset"]]["sha256"],
                                   "deepsec_commit": models_mod.DEEPSEC_COMMIT, "logit_shift": True}
        else:
            out[spec.id] = steps.provide_model(ctx, config, spec.id)
        ctx.models[spec.id].update(label=spec.label, column=spec.column, role=spec.role)
    return out


def planned_work(ctx: steps.Context) -> str:
    """What the column is about to do, in words: where each model comes from (and which must be trained first)
    and the attack budget."""
    from ..train import config_key

    p, lines = ctx.params, []
    for spec in evaluated_models(p["dataset"], ctx.profile):
        config = model_config(spec, ctx.profile, width=p["width"], epochs=p["epochs"], train_subset=p["train_subset"],
                              defence_epochs=p["defence_epochs"], defence_subset=p["defence_subset"])
        where = ("DeepSec's released checkpoint" if config is None else
                 f"trained model {config_key(config)[:12]} (cached or published; column {spec.column})"
                 if steps.model_available(config, ctx.profile) else
                 f"NOT in the training cache: trained now with column {spec.column}'s configuration")
        lines.append(f"{spec.label}: {where}")
    aa = p["autoattack"]
    lines.append(f"per model: the first {p['n_samples']:,} test images; PGD {p['pgd_steps']} steps × "
                 f"{p['pgd_restarts']} restarts; AutoAttack {aa['version']}"
                 + (f" ({', '.join(aa['attacks'])}, {aa['target_classes'] or 9} target classes)"
                    if aa["version"] == "custom" else ""))
    lines.append(f"per defence: transfer vs white-box on {p['transfer_samples']:,} images (FGSM, PGD, CW2 "
                 f"{p['binary_search_steps']} × {p['max_iterations']}); masking checks on {p['curve_samples']:,} "
                 f"images (Square {p['square_queries']} queries, PGD steps {p['masking_steps']})")
    return "\n".join(lines)


def evaluation_images(ctx: steps.Context) -> tuple[Tensor, Tensor]:
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


def evaluate(ctx: steps.Context, models: dict[str, nn.Module], x: Tensor, y: Tensor) -> dict:
    """The column's security evaluation, JSON-ready.

    Per model (:data:`SECURITY_MODELS`): clean accuracy; PGD at the threat model (worst case over the restarts) and,
    on CIFAR-10, at DeepSec's ε = 0.1 (step in Madry's ratio, ε/4); AutoAttack as the profile says; the robust
    accuracy, the per-image worst case over clean, PGD and AutoAttack at the threat model. Per defended model:
    DeepSec's transfer setting against white-box (:func:`transfer_vs_white_box`) and the masking checks
    (:func:`masking_checks`). Progress (one bar over the stages) when :func:`repro.study.steps.progress_enabled`.
    """
    from tqdm import tqdm

    p = ctx.params
    dataset, bs, dev, seed = p["dataset"], p["batch_size"], ctx.device, p["seed"]
    specs = evaluated_models(dataset, ctx.profile)
    threat = threat_model(dataset)
    deepsec_eps = get_config("pgd", DEEPSEC_SETTING[dataset])["eps"]
    defended = [s for s in specs if s.role == "defended"]
    aa = p["autoattack"]
    out = {"dataset": dataset, "n": len(y), "threat_model": threat,
           "deepsec_eps": deepsec_eps if deepsec_eps != threat["eps"] else None,
           "models": {}, "transfer": {}, "masking": {},
           "masking_rules": dict(MASKING_RULES), "masking_eps": list(MASKING_EPS[dataset])}
    total = 2 * len(specs) + 2 * len(defended)
    with tqdm(total=total, desc="security evaluation", unit="stage", disable=not steps.progress_enabled()) as bar:
        for spec in specs:
            model = models[spec.id]
            bar.set_postfix_str(f"{spec.id}: PGD")
            clean = predict_correct(model, x, y, batch_size=bs, device=dev)
            pgd_rec = pgd_worst_case(model, x, y, eps=threat["eps"], step_size=threat["step_size"],
                                     steps=p["pgd_steps"], restarts=p["pgd_restarts"], batch_size=bs, device=dev,
                                     seed=seed, correct=clean)
            rec = {"label": spec.label, "role": spec.role, "column": spec.column, "clean": rate(clean),
                   "pgd": pgd_rec}
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
        for spec in defended:
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
            white = unpack(out["models"][spec.id]["pgd"]["correct"])[:n_m]
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


def summary_rows(found: dict) -> list[dict]:
    """One row per model for tables: label, role, and each accuracy's rate record."""
    return [{"id": mid, "label": rec["label"], "role": rec["role"],
             **{what: rec[what] for what in ("clean", "pgd", "pgd_deepsec_eps", "autoattack", "robust") if what in rec}}
            for mid, rec in found["models"].items()]


__all__ = [
    "ANCHORS", "Anchor", "EvaluatedModel", "SECURITY_MODELS", "MASKING_RULES", "MASKING_EPS", "THREAT_MODEL",
    "autoattack_eval", "budget_departures", "evaluate", "evaluation_images", "headline_metrics", "load_models",
    "masking_checks", "masking_verdict", "model_config", "pack", "pgd_worst_case", "planned_work", "predict_correct",
    "random_targets", "rate", "rate_of", "resolve_security", "summary_rows", "transfer_attacks",
    "transfer_vs_white_box", "unpack",
]
