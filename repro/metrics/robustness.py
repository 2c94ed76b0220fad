"""Robustness evaluation as the field does it today: per-image outcomes with exact intervals, worst-case PGD over
random restarts, AutoAttack (the authors' ``pyautoattack``), transfer against white-box, and gradient-masking checks
with a rule-based verdict (:data:`MASKING_RULES`).

Every rate is a dict ``{"rate", "k", "n", "low", "high", "level", "correct"}``: the fraction k/n with its exact
Clopper–Pearson interval and ``correct``, the per-image outcomes as a string of ``0``/``1`` (:func:`pack`), so that
intervals and worst cases can be recomputed from a stored record alone (:func:`rate_of`).

Models are attacked in the caller's mode, which must be ``eval()``: :func:`repro.attacks.run_attack` refuses a model
in training mode. This module knows nothing of the study: its callers choose the models, images and budgets.
"""
from __future__ import annotations

import logging
import time
import warnings

import torch
from torch import Tensor, nn

from .. import data as data_mod
from ..attacks import labels_field, prepare_model, run_attack
from .uncertainty import DEFAULT_LEVEL, clopper_pearson

# ----------------------------------------------------------------------------------------- gradient masking
# PGD step of the masking curves: 2.5·ε/steps, so that any number of steps can cross the ε-ball (Madry et al.'s
# robustness library uses the same rule of thumb).
MASKING_STEP_FACTOR = 2.5

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
    "square_beats_gradient": f"the gradient-free Square attack leaves a lower accuracy than the white-box gradient "
                             f"attacks (their per-image worst case; by more than {100 * SQUARE_MARGIN:g} pp, "
                             f"AutoAttack's own check against its gradient attacks)",
    "large_eps_not_zero": f"accuracy at the largest ε stays above {100 * LARGE_EPS_LIMIT:g} %",
    "steps_hurt": f"PGD with the most steps leaves a higher accuracy than with one step (by more than "
                  f"{100 * STEPS_MARGIN:g} pp): the iterative attack is weaker than a single step",
    "single_step_gap": f"one PGD step leaves an accuracy more than {100 * SINGLE_STEP_GAP:g} pp above the most steps' "
                       f"(the signature of single-step gradient masking: the gradient at the clean image points "
                       f"away from the adversarial examples an iterative attack finds)",
}
VERDICTS = {True: "masking suspected", False: "no sign of masking"}

# --------------------------------------------------------------------------------------------------- AutoAttack
AUTOATTACK_VERSIONS = ("standard", "custom")
# AutoAttack's standard settings (its APGD-T and FAB-T target classes, APGD iterations), for departures and costs.
AUTOATTACK_TARGET_CLASSES, AUTOATTACK_ITERATIONS = 9, 100
AUTOATTACK_NAMES = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")


# ------------------------------------------------------------------------------------------------- rates
def pack(correct: Tensor) -> str:
    """Per-image outcomes as a string of ``0``/``1`` (JSON-ready, one character per image, in image order)."""
    return "".join("1" if v else "0" for v in correct.bool().tolist())


def unpack(bits: str) -> Tensor:
    """The bool tensor :func:`pack` stored."""
    return torch.tensor([c == "1" for c in bits], dtype=torch.bool)


def rate(correct: Tensor, *, level: float = DEFAULT_LEVEL) -> dict:
    """The fraction of True entries of ``correct`` (N,) with its exact Clopper–Pearson interval and its n.

    Returns ``{"rate", "k", "n", "low", "high", "level", "correct"}`` (``correct`` packed by :func:`pack`).
    """
    correct = correct.bool().flatten()
    n, k = int(correct.numel()), int(correct.sum())
    low, high = clopper_pearson(k, n, level=level)
    return {"rate": k / n, "k": k, "n": n, "low": low, "high": high, "level": level, "correct": pack(correct)}


def rate_of(bits: str, *, level: float = DEFAULT_LEVEL) -> dict:
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
    """A target class per image, uniform over the ``num_classes − 1`` wrong ones, for targeted CW2: the rule of
    :func:`repro.data.wrong_classes` (DeepSec's candidates draw theirs by it too) from ``random.Random(seed)``."""
    import random

    return data_mod.wrong_classes(y, random.Random(seed), num_classes=num_classes)


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
        white_box: accuracy under the white-box gradient attacks at the threat model, their per-image worst case
            (PGD with restarts and, where it ran, AutoAttack's APGD).
        square: accuracy under the gradient-free Square attack on the same images.
        steps_accuracy: PGD steps → accuracy at the threat model's ε.
        large_eps_accuracy: accuracy under PGD at the largest ε of the check.

    Returns:
        ``{"suspected": bool, "verdict": "masking suspected" | "no sign of masking", "reasons": [rule keys]}``.
    """
    reasons = []
    if square < white_box - SQUARE_MARGIN:
        reasons.append("square_beats_gradient")
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
        white_box: per-image outcomes of the white-box gradient attacks at ``eps`` on these images, their worst case
            (True: correct under every one), against which the gradient-free Square attack is judged.
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


__all__ = [
    "AUTOATTACK_NAMES", "AUTOATTACK_VERSIONS", "MASKING_RULES", "MASKING_STEP_FACTOR", "VERDICTS", "autoattack_eval",
    "masking_checks", "masking_verdict", "pack", "pgd_worst_case", "predict_correct", "random_targets", "rate",
    "rate_of", "transfer_vs_white_box", "unpack",
]
