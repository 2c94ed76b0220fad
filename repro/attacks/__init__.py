"""Adversarial attacks as pure functions, one file per attack, and their named configurations.

Every attack takes ``(model, x, labels, *, hyper-parameters)`` with images float32 NCHW in [0, 1], int64 labels and
a model that returns logits, and returns new detached adversarial images on ``x``'s device. ε and step sizes are in
the same [0, 1] pixel units. Attacks never change the model's mode (the caller owns it: ``eval()`` to attack), never
touch parameter gradients and never modify their inputs. Batching over a dataset lives in :mod:`repro.attacks.runner`.
"""
from __future__ import annotations

from typing import Callable

from .bim import BIM_CONFIGS, bim
from .cw import CW2_CONFIGS, cw2, cw_margin
from .fgsm import FGSM_CONFIGS, fgsm
from .illc import ILLC_CONFIGS, illc
from .llc import LLC_CONFIGS, llc
from .pgd import PGD_CONFIGS, pgd
from .runner import AttackRun, prepare_model, run_attack

ATTACKS: dict[str, Callable] = {"fgsm": fgsm, "llc": llc, "bim": bim, "illc": illc, "pgd": pgd, "cw2": cw2}

# Named hyper-parameter sets per attack (each file says where every set comes from).
CONFIGS: dict[str, dict[str, dict]] = {
    "fgsm": FGSM_CONFIGS, "llc": LLC_CONFIGS, "bim": BIM_CONFIGS, "illc": ILLC_CONFIGS, "pgd": PGD_CONFIGS,
    "cw2": CW2_CONFIGS,
}

# Targeted attacks and the field of repro.data.Candidates that holds their labels (SPEC §3); the others are
# untargeted and take the true labels (Candidates.y).
TARGETED: dict[str, str] = {"llc": "least_likely", "illc": "least_likely", "cw2": "target"}


def labels_field(attack: str) -> str:
    """The :class:`repro.data.Candidates` field an attack takes as labels: ``"y"``, ``"target"`` or ``"least_likely"``.

    Raises:
        ValueError: unknown attack name.
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; allowed: {', '.join(map(repr, ATTACKS))}")
    return TARGETED.get(attack, "y")


def get_config(attack: str, name: str) -> dict:
    """A copy of the named hyper-parameter set ``name`` of ``attack`` (e.g. ``get_config("pgd", "deepsec_mnist")``).

    Raises:
        ValueError: unknown attack or configuration name (the message lists the known ones).
    """
    labels_field(attack)
    if name not in CONFIGS[attack]:
        raise ValueError(f"unknown {attack} configuration {name!r}; allowed: {', '.join(map(repr, CONFIGS[attack]))}")
    return dict(CONFIGS[attack][name])


__all__ = [
    "ATTACKS", "CONFIGS", "TARGETED", "AttackRun", "labels_field", "get_config", "prepare_model", "run_attack",
    "cw_margin",
    "fgsm", "llc", "bim", "illc", "pgd", "cw2",
    "FGSM_CONFIGS", "LLC_CONFIGS", "BIM_CONFIGS", "ILLC_CONFIGS", "PGD_CONFIGS", "CW2_CONFIGS",
]
