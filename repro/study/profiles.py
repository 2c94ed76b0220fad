"""Compute budgets in one place: ``smoke`` (seconds, CI), ``quick`` (real data, reduced budgets, CPU), ``paper``
(the papers' settings, a GPU job).

A :class:`Profile` holds one typed budget per kind of work: attacks (per attack name, with a default), raw models,
defences, evaluation. Everything that trains, attacks or evaluates takes its budget from the profile; results record
the profile's name and the effective values, and :func:`departures_of` lists, as data, every way a profile departs
from the ``paper`` profile (the papers' own budgets).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .._io import lookup


@dataclass(frozen=True)
class AttackBudget:
    """How much of an attack a column runs: ``n_candidates`` clean images (DeepSec: 1,000) and, for iterative
    attacks whose cost the profile cuts, the attack's own iteration parameters (e.g. CW2's ``binary_search_steps``
    and ``max_iterations``), by their keyword names in the attack function."""

    n_candidates: int
    iterations: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RawBudget:
    """Where the raw (undefended) models come from: ``source="deepsec"`` loads DeepSec's released checkpoints (for
    the architectures DeepSec released), ``"train"`` trains them here with DeepSec's recipe; ``epochs``/``subset``
    cut that recipe (``None``: the recipe's epochs, all training images). Models DeepSec did not release (the wide
    ResNet) are always trained here."""

    source: str
    epochs: int | None
    subset: int | None


@dataclass(frozen=True)
class DefenceTraining:
    """How a defence is trained on one dataset: ``init`` "scratch" (as DeepSec) or "raw" (fine-tuned from the raw
    model); ``recipe`` a :data:`repro.train.RECIPES` name (``None``: DeepSec's recipe for the dataset);
    ``epochs``/``subset`` as in :class:`RawBudget`; ``jpeg_fill`` also trains on the lossy JPEG copies of the
    training images the exact copy lacks (:class:`repro.train.TrainConfig`; CIFAR-10 only, a departure);
    ``defence_params``: the defence parameters this training sets over the column's (e.g. PAT's ``eps_ramp``; the
    loss and ε stay the column's), a departure."""

    init: str
    recipe: str | None
    epochs: int | None
    subset: int | None
    jpeg_fill: bool = False
    defence_params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AblationArm:
    """A variant of a dataset's defence training that the training chapter trains and attacks beside the
    profile's own (:mod:`repro.study.training`): the evidence for the profile's choice of recipe. Its ``training``
    replaces the profile's whole :class:`DefenceTraining`, ``defence_params`` included: an arm that names none
    trains with the column's parameters, not the profile's."""

    label: str
    dataset: str
    training: DefenceTraining


@dataclass(frozen=True)
class DefenceBudget:
    """How the defences are trained (``training``: dataset → :class:`DefenceTraining`) and scored (``eval_subset``
    test images for the defence metrics; ``None``: the whole test split); ``ablation``: the arms compared with the
    profile's training in the training chapter."""

    training: dict
    eval_subset: int | None
    ablation: tuple[AblationArm, ...] = ()

    def for_dataset(self, dataset: str) -> DefenceTraining:
        """The training budget of the defences on ``dataset``."""
        return lookup(self.training, dataset, what="dataset")


@dataclass(frozen=True)
class SecurityBudget:
    """How the security evaluation (:mod:`repro.study.security`, plan table "security") attacks every model.

    ``n_images``: the first test images, the same for every attack on a model (``None``: the whole official test
    split, 10,000 images, as RobustBench). PGD at the threat model: ``pgd_steps`` (``None``: Madry et al.'s
    evaluation, 20 on CIFAR-10 and 100 on MNIST) from ``pgd_restarts`` random starts, worst case per image.
    AutoAttack (Croce & Hein, ICML 2020, package ``pyautoattack``): ``autoattack_version`` ``"standard"`` (APGD-CE,
    APGD-T, FAB-T, Square; its own settings) or ``"custom"`` running ``autoattack_attacks`` with
    ``autoattack_target_classes`` target classes (``None``: AutoAttack's 9) and ``autoattack_iterations`` APGD
    iterations (``None``: its 100). DeepSec's transfer setting: ``transfer_n`` images (``None``: all ``n_images``),
    CW2 at ``transfer_cw2[dataset]`` = (binary-search steps, Adam iterations per step). Gradient-masking checks:
    ``masking_n`` images, PGD with each of ``masking_steps`` steps, ``masking_eps_steps`` steps per point of the
    accuracy-vs-ε check, Square with ``square_queries`` queries (AutoAttack standard: 5,000)."""

    n_images: int | None
    pgd_steps: int | None
    pgd_restarts: int
    autoattack_version: str
    autoattack_attacks: tuple[str, ...]
    autoattack_target_classes: int | None
    autoattack_iterations: int | None
    transfer_n: int | None
    transfer_cw2: dict  # dataset → (binary-search steps, iterations per step)
    masking_n: int | None
    masking_steps: tuple[int, ...]
    masking_eps_steps: int
    square_queries: int


# The full protocol: standard AutoAttack and 5-restart PGD on the whole test split; DeepSec's transfer setting on
# its 1,000 images with CW2 cut to 10 × 1,000 iterations (DeepSec: 10 × 10,000).
PAPER_SECURITY = SecurityBudget(
    n_images=None, pgd_steps=None, pgd_restarts=5, autoattack_version="standard", autoattack_attacks=(),
    autoattack_target_classes=None, autoattack_iterations=None, transfer_n=1000,
    transfer_cw2={"mnist": (10, 1000), "cifar10": (10, 1000)}, masking_n=1000, masking_steps=(1, 5, 20, 100),
    masking_eps_steps=20, square_queries=5000,
)
# About 30 min for both security columns on 2 CPU cores (measured here, batch 128, BN folded): per image, PGD costs
# 0.57 / 1.77 / 5.06 ms a step on the MNIST ConvNet / ResNet-20 / ×2 wide ResNet and CW2 the same per iteration;
# one 100-iteration APGD run 0.085 / 0.19 / 0.60 s, so this AutoAttack subset took 0.085 s per image on DeepSec's raw
# MNIST model, 0.17 s on its raw ResNet-20 (every image broken by APGD-CE) and 2.5 s on a randomly initialised ×2 wide
# ResNet (most images survive into APGD-T's 3 targets: the worst case). With the quick defence columns' robustness
# (accuracy-vs-ε curves) that makes about 1.9 s per image for the five CIFAR-10 models' PGD + AutoAttack, 2.5 s per
# transfer image (CW2 4 × 30 on five models) and 1.3 s per masking image; the MNIST column measured 0.29 s per image
# for PGD + AutoAttack and 1.3 s per transfer image (CW2 5 × 200). The final quick run's machine was about 2.2 times
# slower than these measurements (PGD on ResNet-20: 25 ms instead of 11 ms per image, same code), so the quick
# evaluation uses 200 / 50 / 50 images.
QUICK_SECURITY = SecurityBudget(
    n_images=200, pgd_steps=None, pgd_restarts=5, autoattack_version="custom",
    autoattack_attacks=("apgd-ce", "apgd-t"), autoattack_target_classes=3, autoattack_iterations=None,
    transfer_n=50, transfer_cw2={"mnist": (5, 200), "cifar10": (4, 30)}, masking_n=50,
    # Square at AutoAttack's 5,000 queries. Measured at 500: 8 to 80 s a model on the 50 masking images; the robust
    # images take every query, so 5,000 costs up to 10 times that (about 25 min more for the CIFAR-10 models on one
    # core), the price of a black-box check that can fire.
    masking_steps=(1, 5, 20, 100), masking_eps_steps=10, square_queries=5000,
)


# The quick profile's training ablation for PAT on CIFAR-10, each arm a variant of the fine-tune recipe
# pat_finetune_cifar10 (SGD at a peak learning rate of 0.05 from the raw model); the first is its 5 exact-image
# epochs at a 5× lower learning rate. DeepSec's optimiser (Adam 1e-3, batch 32) is
# what the previous quick profile used (2 epochs on 3,600 images: 61.4 % clean, 1.5 % robust in its security
# evaluation, commit c93ca00); training from scratch with DeepSec's recipe (200 epochs) would take the hours the
# training chapter computes from the measured epoch time, so the from-scratch arm below uses a 15-epoch SGD recipe.
QUICK_ABLATION = (
    AblationArm("5 epochs on the exact images, no ramp, peak learning rate 0.01", "cifar10",
                DefenceTraining(init="raw", recipe="pat_finetune_cifar10_lr0.01", epochs=5, subset=None)),
    # Ngnawé et al.'s fix for the collapse of adversarial fine-tuning (clean validation accuracy from about 92 % to
    # 35 % in the first epoch): ε (and the step) ramped linearly from 0 over the first 2 of the 5 epochs.
    AblationArm("5 epochs on the exact images, ε ramped from 0 over the first 2", "cifar10",
                DefenceTraining(init="raw", recipe="pat_finetune_cifar10", epochs=5, subset=None,
                                defence_params={"eps_ramp": 2.0})),
    # The ramp gave 3 epochs at full ε; robustness needs many more updates (a public fixed-subset trial used about
    # 8,600, five epochs here give about 285): the same fine-tune for 15 epochs (77 min on one core, measured).
    AblationArm("15 epochs on the exact images, ε ramped over the first 2", "cifar10",
                DefenceTraining(init="raw", recipe="pat_finetune_cifar10", epochs=15, subset=None,
                                defence_params={"eps_ramp": 2.0})),
    # The data-matched reference: PAT from random weights on the same training images, 15 epochs, the same ramp.
    AblationArm("from scratch, 15 epochs on the exact images, ε ramped over the first 2", "cifar10",
                DefenceTraining(init="scratch", recipe="pat_scratch_cifar10", epochs=15, subset=None,
                                defence_params={"eps_ramp": 2.0})),
    # The data arm: the exact training images plus the lossy JPEG copies of the 37,706 the exact copy lacks (45,000 in
    # all, validation still on exact images only), at about the updates of the 15-epoch fine-tune (3 epochs: 1,055
    # against 855), the ramp over the same share of the run (0.4 epochs, about 140 updates). 56 min on one core.
    AblationArm("3 epochs with the JPEG copies, ε ramped over the first 0.4 (the recipe, 3× longer)", "cifar10",
                DefenceTraining(init="raw", recipe="pat_finetune_cifar10", epochs=3, subset=None, jpeg_fill=True,
                                defence_params={"eps_ramp": 0.4})),
    # The recipe the profile used before it took the JPEG arm's, at one epoch (5 epochs on the exact images, no
    # ramp): the collapse the ablation set out to fix, the baseline the profile's recipe is judged against.
    AblationArm("5 epochs on the exact images, no ramp (the previous recipe)", "cifar10",
                DefenceTraining(init="raw", recipe="pat_finetune_cifar10", epochs=5, subset=None)),
    # The optimiser and the loss, each changed alone in the profile's recipe (one JPEG-filled epoch, the ramp over
    # 0.4): DeepSec's Adam at its learning rate in place of SGD at 0.05, and label smoothing 0.1. Measured 134 min
    # each on one core, the two trained side by side beside another job (estimated 25 min alone).
    AblationArm("Adam at lr 0.001 (DeepSec's optimiser) in place of SGD", "cifar10",
                DefenceTraining(init="raw", recipe="pat_finetune_cifar10_adam", epochs=1, subset=None,
                                jpeg_fill=True, defence_params={"eps_ramp": 0.4})),
    AblationArm("label smoothing 0.1", "cifar10",
                DefenceTraining(init="raw", recipe="pat_finetune_cifar10_ls0.1", epochs=1, subset=None,
                                jpeg_fill=True, defence_params={"eps_ramp": 0.4})),
    # The data-matched reference on the profile's data: PAT from random weights with the JPEG copies added, 2 epochs
    # (704 updates, about the 855 of the exact-image reference above; 60 min on one core, its first epoch beside
    # another job), the profile's ramp.
    AblationArm("from scratch, 2 epochs with the JPEG copies, ε ramped over the first 0.4", "cifar10",
                DefenceTraining(init="scratch", recipe="pat_scratch_cifar10", epochs=2, subset=None,
                                jpeg_fill=True, defence_params={"eps_ramp": 0.4})),
)


@dataclass(frozen=True)
class Profile:
    """One compute budget. ``None`` means "as the paper did it"."""

    name: str
    description: str
    attacks: dict  # attack name → AttackBudget; "default" for the others
    raw: RawBudget
    defence: DefenceBudget
    wide_width: int  # the follow-up's "Wide ResNet": ResNet-20 × wide_width (paper: 10)
    history_subset: int  # held-out images for the PGD accuracy in training histories
    curve_samples: int  # test images for accuracy-vs-ε curves
    findings_samples: int  # candidates per experiment of the findings notebook (its effects are large)
    batch_size: int
    security: SecurityBudget = PAPER_SECURITY  # the security evaluation's budget (repro.study.security)
    # On a CUDA device: bfloat16 autocast and channels-last tensors in training and attacks (recorded as a departure).
    cuda_bf16: bool = False
    # The training chapter's evaluation (repro.study.training): test images per dataset (None: the whole test split)
    # and PGD steps (None: the threat model's, Madry's evaluation).
    training_images: dict = field(default_factory=lambda: {"mnist": None, "cifar10": None})
    training_pgd_steps: int | None = None
    # RIC on a random sample of this many successful adversarial examples (None: all, as DeepSec): Guetzli JPEG is
    # most of an attack column's time on a CPU.
    ric_samples: int | None = None
    # Other widths of the wide ResNet that the security evaluation and the training chapter also train (raw and
    # PAT ε = 8/255, with the wide columns' recipe and budget) and attack: the capacity ladder that tests the
    # follow-up's "wider is more robust" (the paper profile compares ResNet-20 with its ×10 model).
    width_ladder: tuple[int, ...] = ()
    # CW2's budget ladder: smaller (binary-search steps, Adam iterations per step) budgets, each run on the CW2
    # column's candidates with its targets and compared image by image with the column's own budget
    # (repro.study.steps.budget_ladder): how far the budget moves L2 and the success rate.
    cw2_ladder: tuple[tuple[int, int], ...] = ()

    def attack_budget(self, attack: str) -> AttackBudget:
        """The budget of ``attack`` (its own, or the default)."""
        return self.attacks.get(attack, self.attacks["default"])

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="seconds on a CPU, for CI: tiny budgets, numbers are not meaningful",
        attacks={"default": AttackBudget(16),
                 "cw2": AttackBudget(16, {"binary_search_steps": 2, "max_iterations": 10})},
        raw=RawBudget(source="deepsec", epochs=1, subset=256),
        defence=DefenceBudget(training={"mnist": DefenceTraining(init="raw", recipe=None, epochs=1, subset=256),
                                        "cifar10": DefenceTraining(init="raw", recipe="pat_finetune_cifar10",
                                                                   epochs=1, subset=256)},
                              eval_subset=256),
        wide_width=1, history_subset=64, curve_samples=16, findings_samples=16, batch_size=64,
        security=SecurityBudget(n_images=8, pgd_steps=2, pgd_restarts=2, autoattack_version="custom",
                                autoattack_attacks=("apgd-ce", "apgd-t"), autoattack_target_classes=2,
                                autoattack_iterations=5, transfer_n=None,
                                transfer_cw2={"mnist": (1, 5), "cifar10": (1, 5)}, masking_n=None,
                                masking_steps=(1, 2, 4), masking_eps_steps=2, square_queries=20),
        training_images={"mnist": 16, "cifar10": 16}, training_pgd_steps=2, width_ladder=(2,),
        cw2_ladder=((1, 5),),
    ),
    "quick": Profile(
        name="quick",
        description="real data on 2 CPU cores: DeepSec's released raw models, CW2 at DeepSec's full budget on 100 "
                    "candidates, reduced training and evaluation budgets, and the follow-up's \"wide\" ResNet at "
                    "width ×1 (×2 as well for the width ladder) trained on the available CIFAR-10 images",
        attacks={"default": AttackBudget(1000),
                 # CW2 at DeepSec's full budget (about 70 min on 2 cores for 100 candidates); the budget ladder
                 # and the cw2_mnist_5x500 column measure what the smaller budgets change.
                 "cw2": AttackBudget(100, {"binary_search_steps": 10, "max_iterations": 10_000})},
        raw=RawBudget(source="deepsec", epochs=8, subset=None),
        # NAT: DeepSec's full recipe, 20 epochs from scratch on all 54,000 training images (about 3 min an epoch on
        # one core; seed 100 only, see plan.PAPER_ONLY_REPLICATES). PAT: fine-tuned from the raw model with SGD and
        # a cosine schedule, the ablation's best fine-tune (the JPEG copies added, ε ramped over 0.4 epochs) cut to
        # one epoch of 45,000 images: about the updates of the previous 5 exact-image epochs (352 against 285), so
        # that every PAT model, the width ladder's ×2 included (about 90 min), fits one session on 2 cores.
        defence=DefenceBudget(training={"mnist": DefenceTraining(init="scratch", recipe=None, epochs=None, subset=None),
                                        "cifar10": DefenceTraining(init="raw", recipe="pat_finetune_cifar10",
                                                                   epochs=1, subset=None, jpeg_fill=True,
                                                                   defence_params={"eps_ramp": 0.4})},
                              eval_subset=None, ablation=QUICK_ABLATION),
        # ×1 for the table columns; the ×2 model (raw 8 epochs, 32 min, and PAT one JPEG-filled epoch, about 90 min on
        # one core) is the capacity ladder's second rung, trained and attacked by the security and training columns.
        wide_width=1, width_ladder=(2,), history_subset=500, curve_samples=200, findings_samples=300, batch_size=128,
        security=QUICK_SECURITY,
        # All 1,017 CIFAR-10 test images (PGD-20: ~30 s a model); MNIST's 100-step PGD on 1,000 of its 10,000.
        training_images={"mnist": 1000, "cifar10": None},
        # Guetzli encodes a 32×32 image in ~0.1 s on 2 cores: on all successful AEs RIC is ~3/4 of the quick PGD
        # column's time (benchmarks/metrics.py --column-only). 150 makes it about a third, at an exact 95 % interval
        # of ±8 points at a rate of 1/2 (±6 at 250).
        ric_samples=150, cw2_ladder=((5, 500), (10, 1000)),
    ),
    "paper": Profile(
        name="paper",
        description="the papers' settings (a GPU job): raw models trained from scratch with DeepSec's recipes, "
                    "1000 candidates, CW2 at 10 × 10,000 iterations, the ×10 wide ResNet",
        attacks={"default": AttackBudget(1000),
                 "cw2": AttackBudget(1000, {"binary_search_steps": 10, "max_iterations": 10_000})},
        raw=RawBudget(source="train", epochs=None, subset=None),
        defence=DefenceBudget(training={d: DefenceTraining(init="scratch", recipe=None, epochs=None, subset=None)
                                        for d in ("mnist", "cifar10")},
                              eval_subset=None),
        wide_width=10, history_subset=1000, curve_samples=200, findings_samples=500, batch_size=500,
        cuda_bf16=True, cw2_ladder=((5, 500), (10, 1000)),
    ),
}
PAPER = PROFILES["paper"]


def get_profile(name: str) -> Profile:
    """The profile called ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    return lookup(PROFILES, name, what="profile")


# ----------------------------------------------------------------------------------------------------- departures
# How a budget field that differs from the paper profile's is worded, by the part of the work it applies to. A plan
# column lists the parts it uses (Column.uses); :func:`departures_of` applies the rules.
DEPARTURE_TEXT: dict[tuple[str, str], str] = {
    ("attack", "n_candidates"): "{value} clean candidates attacked instead of {paper}",
    ("attack", "binary_search_steps"): "CW2 binary search of {value} steps instead of DeepSec's {paper}",
    ("attack", "max_iterations"): "CW2 with {value} Adam iterations per search step instead of DeepSec's {paper}",
    ("attack", "ric_samples"): "RIC on a random {value} of the successful adversarial examples instead of all (its "
                               "interval has that n)",
    ("raw", "source"): "raw model: DeepSec's released checkpoint (retrained by DeepSec's authors after the paper), "
                       "not a model trained here with the paper's recipe",
    ("train_wide", "epochs"): "wide ResNet trained for {value} epochs instead of the recipe's 200",
    ("train_wide", "subset"): "wide ResNet trained on {value} training images",
    ("wide", "wide_width"): "wide ResNet with stage widths ×{value} instead of ×{paper}",
    # The init's wording depends on where the raw model comes from: see init_departure.
    ("defence", "init"): "defence fine-tuned from the raw model instead of trained from scratch: the optimiser "
                         "starts afresh on {origin}",
    ("defence", "recipe"): "defence trained with the recipe {value} instead of DeepSec's (the training ablation in "
                           "the book compares them)",
    ("defence", "epochs"): "defence trained for {value} epochs instead of the recipe's (20 MNIST, 200 CIFAR-10)",
    ("defence", "subset"): "defence trained on the first {value} training images (less those in DeepSec's 10 % "
                           "validation hold-out) instead of all",
    ("defence", "eval_subset"): "defence metrics on {value} test images instead of the whole test split",
    ("defence", "defence_params"): "defence parameters set by the profile where the papers have none: {value} "
                                    "(eps_ramp: the epochs over which ε and the step grow linearly from 0)",
    ("defence", "jpeg_fill"): "defence also trained on the lossy JPEG copies (quality 75) of the official training "
                              "images the exact copy lacks; validated and evaluated on exact images only",
}


def _fmt(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} = {_fmt(v)}" for k, v in sorted(value.items()))
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _differences(ours, paper) -> list[tuple[str, object, object]]:
    """(field, ours, paper's) for every field of a budget dataclass (or iteration dict) that differs."""
    if isinstance(ours, dict):
        return [(k, ours.get(k), paper.get(k)) for k in sorted(set(ours) | set(paper)) if ours.get(k) != paper.get(k)]
    return [(f.name, getattr(ours, f.name), getattr(paper, f.name)) for f in fields(ours)
            if getattr(ours, f.name) != getattr(paper, f.name)]


def budget_differences(profile: Profile, *, uses: frozenset, attack: str | None = None,
                       dataset: str | None = None) -> list[tuple[str, str, object, object]]:
    """(part, field, ours, paper's) for every budget field of ``profile`` that differs from the paper profile's
    and that a column using the parts ``uses`` ("attack", "raw", "train_wide", "wide", "defence") depends on; for
    "attack" the budget of ``attack``, for "defence" the training on ``dataset``. Starting a defence from scratch
    is the paper's own choice and never a departure."""
    diffs: list[tuple[str, str, object, object]] = []
    if "attack" in uses and attack is not None:
        ours, paper = profile.attack_budget(attack), PAPER.attack_budget(attack)
        diffs += [("attack", "n_candidates", ours.n_candidates, paper.n_candidates)] \
            if ours.n_candidates != paper.n_candidates else []
        diffs += [("attack", *d) for d in _differences(ours.iterations, paper.iterations)]
        if profile.ric_samples != PAPER.ric_samples:
            diffs.append(("attack", "ric_samples", profile.ric_samples, PAPER.ric_samples))
    if "raw" in uses:
        diffs += [("raw", *d) for d in _differences(profile.raw, PAPER.raw) if d[0] == "source"]
    if "train_wide" in uses:
        diffs += [("train_wide", *d) for d in _differences(profile.raw, PAPER.raw) if d[0] != "source"]
    if "wide" in uses and profile.wide_width != PAPER.wide_width:
        diffs.append(("wide", "wide_width", profile.wide_width, PAPER.wide_width))
    if "defence" in uses and dataset is not None:
        ours, paper = profile.defence.for_dataset(dataset), PAPER.defence.for_dataset(dataset)
        diffs += [("defence", *d) for d in _differences(ours, paper) if not (d[0] == "init" and d[1] == "scratch")]
        if profile.defence.eval_subset != PAPER.defence.eval_subset:
            diffs.append(("defence", "eval_subset", profile.defence.eval_subset, PAPER.defence.eval_subset))
    return diffs


def loads_deepsec_checkpoint(model: str | None, profile: Profile) -> bool:
    """Whether ``profile``'s raw ``model`` is DeepSec's released checkpoint (else it is trained here)."""
    from ..models import DEEPSEC_CHECKPOINTS

    return profile.raw.source == "deepsec" and any(c["model"] == model for c in DEEPSEC_CHECKPOINTS.values())


def learning_rate_after(recipe, epochs: int | None = None) -> float:
    """The learning rate a step-schedule recipe (:class:`repro.train.Recipe`) has reached after ``epochs`` epochs
    (``None``: all of its own): its rate times the factor of every decay whose 0-based epoch has finished, never
    below its floor."""
    epochs = recipe.epochs if epochs is None else epochs
    lr = recipe.lr
    for at, factor in recipe.lr_decays:
        if at < epochs:
            lr = max(lr * factor, recipe.min_lr)
    return lr


DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}


def init_departure(profile: Profile, *, model: str | None, dataset: str | None) -> str:
    """The "fine-tuned instead of from scratch" departure, worded for where the column's raw model comes from:
    DeepSec's checkpoint (and the learning rate DeepSec's recipe ends at) or a model trained here (its epochs and the
    learning rate the recipe had reached then)."""
    from ..train import RECIPES
    from ..train.config import DEEPSEC_RECIPE

    recipe = RECIPES[DEEPSEC_RECIPE[dataset]] if dataset in DEEPSEC_RECIPE else None
    name = f"DeepSec's {DATASET_NAMES.get(dataset, dataset)} recipe"
    if recipe is None:
        origin = "the raw model"
    elif loads_deepsec_checkpoint(model, profile):
        origin = (f"DeepSec's released checkpoint, trained with {name}, which " +
                  (f"ends at a learning rate of {learning_rate_after(recipe):g}" if recipe.lr_decays else
                   f"keeps a constant learning rate of {recipe.lr:g}"))
    else:
        epochs = recipe.epochs if profile.raw.epochs is None else profile.raw.epochs
        origin = (f"the raw model trained here for {epochs:,} of the {recipe.epochs:,} epochs of {name}, at a learning "
                  f"rate of {learning_rate_after(recipe, epochs):g} when it stopped")
    return DEPARTURE_TEXT[("defence", "init")].format(origin=origin)


def departures_of(profile: Profile, *, uses: frozenset, attack: str | None = None,
                  dataset: str | None = None, model: str | None = None) -> list[str]:
    """Every departure of ``profile`` from the paper's budgets (:func:`budget_differences`), worded; ``model``
    (the column's raw model) decides the wording of a fine-tuned defence's starting point."""
    out = []
    for part, name, value, paper in budget_differences(profile, uses=uses, attack=attack, dataset=dataset):
        if (part, name) == ("defence", "init"):
            out.append(init_departure(profile, model=model, dataset=dataset))
        elif (part, name) in DEPARTURE_TEXT:
            out.append(DEPARTURE_TEXT[(part, name)].format(value=_fmt(value), paper=_fmt(paper)))
    return out
