"""The attacks' registry: one entry per attack, the one place the study and the batching helper learn about it.

An entry carries the attack function, its named configurations (each attack file says where every set comes from),
the :class:`repro.data.Candidates` field it takes as labels, a :class:`repro.checks.Rule` for every hyper-parameter,
and its cost per image (in a workload unit that ``benchmarks/gpu.py`` measures). Registration fails on a
hyper-parameter without a rule, a rule without a parameter, an unknown label field or a named configuration outside
the rules, so a new attack cannot run with unchecked parameters.

Adding an attack: its file (a pure function, keyword-only hyper-parameters) and one :class:`Attack` in
:data:`ENTRIES`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from ..checks import FLAG, Rule, check_params, choice, count, number
from .bim import BIM_CONFIGS, bim
from .cw import CW2_CONFIGS, cw2
from .fgsm import FGSM_CONFIGS, fgsm
from .illc import ILLC_CONFIGS, illc
from .llc import LLC_CONFIGS, llc
from .pgd import PGD_CONFIGS, pgd

# Where an attack's labels come from (fields of repro.data.Candidates): the true labels, DeepSec's random wrong-class
# targets, or the model's least-likely classes (SPEC §3).
LABEL_FIELDS = ("y", "target", "least_likely")
# Keyword-only arguments that steer how an attack runs, not what it computes: no rule, never a notebook parameter.
PLUMBING = ("generator", "validate")
# Units of cost per image (repro.study.workload counts them; benchmarks/gpu.py measures their throughput).
COST_UNITS = ("pgd_step", "cw2_iteration")


@dataclass(frozen=True)
class Attack:
    """A registered attack. ``cost(params)`` is its work per image, in ``unit`` (a forward-backward pass to the input
    is one ``pgd_step``)."""

    name: str
    fn: Callable
    configs: dict[str, dict]
    rules: dict[str, Rule]
    cost: Callable[[dict], float]
    labels: str = "y"
    unit: str = "pgd_step"
    defaults: dict[str, str] | None = None  # dataset → configuration name (None: DeepSec's, see default_setting)

    def __post_init__(self) -> None:
        missing = sorted(set(self.parameters) - set(self.rules))
        extra = sorted(set(self.rules) - set(self.parameters))
        if missing or extra:
            raise ValueError(f"attack {self.name!r}: every hyper-parameter needs one rule; without a rule: {missing}, "
                             f"rule without a parameter: {extra}")
        if self.labels not in LABEL_FIELDS:
            raise ValueError(f"attack {self.name!r}: labels {self.labels!r}; allowed: "
                             f"{', '.join(map(repr, LABEL_FIELDS))}")
        if self.unit not in COST_UNITS:
            raise ValueError(f"attack {self.name!r}: unit {self.unit!r}; allowed: {', '.join(map(repr, COST_UNITS))}")
        for name, setting in self.configs.items():
            check_params(setting, self.rules, owner=f"{self.name} configuration {name!r}")
        unknown = sorted(set((self.defaults or {}).values()) - set(self.configs))
        if unknown:
            raise ValueError(f"attack {self.name!r}: defaults name unknown configurations {unknown}")

    @property
    def parameters(self) -> tuple[str, ...]:
        """The hyper-parameters: the function's keyword-only arguments, less :data:`PLUMBING`."""
        sig = inspect.signature(self.fn)
        return tuple(n for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY and n not in PLUMBING)

    def default_setting(self, dataset: str) -> dict:
        """The setting a notebook parameter left ``None`` takes on ``dataset``, a copy: the configuration
        ``defaults`` names for it, else DeepSec's (``deepsec_<dataset>``, else ``deepsec``); empty if there is none."""
        name = (self.defaults or {}).get(dataset) or next(
            (n for n in (f"deepsec_{dataset}", "deepsec") if n in self.configs), None)
        return dict(self.configs.get(name, {}))

    def check(self, params: dict) -> None:
        """Raise ValueError naming the first parameter that is unknown or outside its rule."""
        check_params(params, self.rules, owner=f"attack {self.name!r}")


_EPS, _STEP = number(), number(strict=True)
ENTRIES = (
    Attack("fgsm", fgsm, FGSM_CONFIGS, {"eps": _EPS}, cost=lambda p: 1),
    Attack("llc", llc, LLC_CONFIGS, {"eps": _EPS}, cost=lambda p: 1, labels="least_likely"),
    Attack("bim", bim, BIM_CONFIGS, {"eps": _EPS, "step_size": _STEP, "steps": count()}, cost=lambda p: p["steps"]),
    Attack("illc", illc, ILLC_CONFIGS, {"eps": _EPS, "step_size": _STEP, "steps": count()},
           cost=lambda p: p["steps"], labels="least_likely"),
    Attack("pgd", pgd, PGD_CONFIGS, {"eps": _EPS, "step_size": _STEP, "steps": count(), "random_start": FLAG},
           cost=lambda p: p["steps"]),
    Attack("cw2", cw2, CW2_CONFIGS,
           {"confidence": number(), "initial_const": number(strict=True), "lr": number(strict=True),
            "binary_search_steps": count(), "max_iterations": count(), "abort_early": FLAG,
            "search": choice("deepsec", "carlini")},
           cost=lambda p: p["binary_search_steps"] * p["max_iterations"], labels="target", unit="cw2_iteration"),
)
ATTACKS: dict[str, Attack] = {a.name: a for a in ENTRIES}


def lookup(attack: str) -> Attack:
    """The registry entry of ``attack``.

    Raises:
        ValueError: unknown attack name (the message lists the known ones).
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; allowed: {', '.join(map(repr, ATTACKS))}")
    return ATTACKS[attack]


def labels_field(attack: str) -> str:
    """The :class:`repro.data.Candidates` field an attack takes as labels: ``"y"``, ``"target"`` or ``"least_likely"``.

    Raises:
        ValueError: unknown attack name.
    """
    return lookup(attack).labels


def get_config(attack: str, name: str) -> dict:
    """A copy of the named hyper-parameter set ``name`` of ``attack`` (e.g. ``get_config("pgd", "deepsec_mnist")``).

    Raises:
        ValueError: unknown attack or configuration name (the message lists the known ones).
    """
    configs = lookup(attack).configs
    if name not in configs:
        raise ValueError(f"unknown {attack} configuration {name!r}; allowed: {', '.join(map(repr, configs))}")
    return dict(configs[name])
