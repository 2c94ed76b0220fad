"""Compute budgets in one place: ``smoke`` (seconds, CI), ``quick`` (real data, reduced budgets, CPU), ``paper``
(the papers' settings, a GPU job).

Everything that trains, attacks or evaluates takes its budget from a :class:`Profile`; results record the profile's
name and the effective values, and the book lists every departure from the paper's setting under its column.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Profile:
    """One compute budget. ``None`` means "as the paper did it"."""

    name: str
    description: str
    # Attacks (Table 1).
    n_candidates: int  # clean candidates attacked per column (DeepSec: 1000)
    cw2_n_candidates: int  # clean candidates attacked by CW2 (DeepSec: 1000); CW2 is by far the costliest attack
    cw2_binary_search_steps: int  # DeepSec: 10
    cw2_max_iterations: int  # DeepSec: 10,000 Adam steps per search step
    # Raw models: "deepsec" loads DeepSec's released checkpoints, "train" trains them with DeepSec's recipes.
    raw_source: str
    # Training (raw models and defences).
    train_epochs: int | None  # None: the recipe's epochs (SPEC §2: 20 MNIST, 200 CIFAR-10)
    train_subset: int | None  # training images used; None: all that are available
    defence_init: str  # "scratch" (as DeepSec) or "raw" (fine-tune from the raw model: cheaper)
    defence_epochs: int | None  # None: the recipe's epochs
    defence_subset: int | None  # training images for the defences; None: all that are available
    # The follow-up's "Wide ResNet": DeepSec's ResNet-20 with stage widths × wide_width (paper: 10).
    wide_width: int
    # Evaluation.
    eval_subset: int | None  # test images for defence metrics; None: the whole test split
    history_subset: int  # held-out images for the PGD accuracy in training histories
    batch_size: int

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="seconds on a CPU, for CI: tiny budgets, numbers are not meaningful",
        n_candidates=16,
        cw2_n_candidates=16,
        cw2_binary_search_steps=2,
        cw2_max_iterations=10,
        raw_source="deepsec",
        train_epochs=1,
        train_subset=256,
        defence_init="raw",
        defence_epochs=1,
        defence_subset=256,
        wide_width=1,
        eval_subset=256,
        history_subset=64,
        batch_size=64,
    ),
    "quick": Profile(
        name="quick",
        description="real data on 2 CPU cores in under an hour: DeepSec's released raw models, reduced CW2 and "
                    "training budgets, a narrower wide ResNet trained on the available CIFAR-10 images",
        n_candidates=1000,
        cw2_n_candidates=300,
        cw2_binary_search_steps=5,
        cw2_max_iterations=500,
        raw_source="deepsec",
        train_epochs=8,
        train_subset=None,
        defence_init="raw",
        defence_epochs=2,
        defence_subset=4000,
        wide_width=2,
        eval_subset=None,
        history_subset=500,
        batch_size=128,
    ),
    "paper": Profile(
        name="paper",
        description="the papers' settings (a GPU job): raw models trained from scratch with DeepSec's recipes, "
                    "1000 candidates, CW2 at 10 × 10,000 iterations, the ×10 wide ResNet",
        n_candidates=1000,
        cw2_n_candidates=1000,
        cw2_binary_search_steps=10,
        cw2_max_iterations=10_000,
        raw_source="train",
        train_epochs=None,
        train_subset=None,
        defence_init="scratch",
        defence_epochs=None,
        defence_subset=None,
        wide_width=10,
        eval_subset=None,
        history_subset=1000,
        batch_size=500,
    ),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(map(repr, PROFILES))}")
    return PROFILES[name]
