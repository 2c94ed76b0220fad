"""Adversarial attacks as pure functions, one file per attack, and their registry.

Every attack takes ``(model, x, labels, *, hyper-parameters)`` with images float32 NCHW in [0, 1], int64 labels and
a model that returns logits, and returns new detached adversarial images on ``x``'s device. ε and step sizes are in
the same [0, 1] pixel units. Attacks never change the model's mode (the caller owns it: ``eval()`` to attack), never
touch parameter gradients and never modify their inputs. Each attack has one entry in
:data:`repro.attacks.registry.ATTACKS` (its function, named configurations, label field, parameter rules and cost);
batching over a dataset lives in :mod:`repro.attacks.runner`.
"""
from __future__ import annotations

from .bim import BIM_CONFIGS, bim
from .cw import CW2_CONFIGS, cw2, cw_margin
from .fgsm import FGSM_CONFIGS, fgsm
from .illc import ILLC_CONFIGS, illc
from .llc import LLC_CONFIGS, llc
from .pgd import PGD_CONFIGS, pgd
from .registry import ATTACKS, Attack, get_config, labels_field, lookup
from .runner import AttackRun, prepare_model, run_attack

__all__ = [
    "ATTACKS", "Attack", "AttackRun", "labels_field", "get_config", "lookup", "prepare_model", "run_attack",
    "cw_margin",
    "fgsm", "llc", "bim", "illc", "pgd", "cw2",
    "FGSM_CONFIGS", "LLC_CONFIGS", "BIM_CONFIGS", "ILLC_CONFIGS", "PGD_CONFIGS", "CW2_CONFIGS",
]
