"""The defences a model can be trained with, as a registry: their parameters, named settings, how each crafts its
training examples and what loss it minimises.

References: DeepSec ``Defenses/DefenseMethods/NAT.py`` and ``PAT.py`` (Ling et al., S&P 2019); Kurakin, Goodfellow
and Bengio, ICLR 2017 (NAT); Madry et al., ICLR 2018 (PAT). SPEC §5.

Adding a defence = its parameters dataclass (each field with its :class:`repro.checks.Rule` in ``RULES``, the one
home of those checks for the command line and the notebooks alike), a ``craft`` and a ``loss`` function and one
:data:`DEFENCES` entry (its crafting mode, cost and any per-epoch draw); the training loop (:mod:`repro.train.loop`)
calls them without knowing which defence it trains.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks.llc import llc
from ..attacks.pgd import pgd
from ..checks import Rule, check_params, choice, count, number


class Checked:
    """A parameters dataclass whose every field is checked by its rule in ``RULES`` (:meth:`check`)."""

    RULES: ClassVar[dict[str, Rule]] = {}
    LABEL: ClassVar[str] = ""

    def check(self) -> None:
        """Raise ValueError naming the first field outside its rule (and what is allowed)."""
        check_params(asdict(self), self.RULES, owner=self.LABEL or type(self).__name__)


@dataclass(frozen=True)
class NATParams(Checked):
    """NAT (DeepSec's version of Kurakin et al.): per-image ε_i = clip(|N(0, σ)|/255, 0, eps_max); the loss is
    (CE(x) + adv_weight·CE(x_adv)) / (1 + adv_weight). ``sigma`` in 0..255 units, ``eps_max`` in [0, 1] units."""

    sigma: float
    eps_max: float
    adv_weight: float = 0.3

    RULES: ClassVar = {"sigma": number(strict=True), "eps_max": number(strict=True, high=1.0),
                       "adv_weight": number()}
    LABEL: ClassVar = "NAT"


@dataclass(frozen=True)
class PATParams(Checked):
    """PAT: PGD with a random start (ε, step in [0, 1] units), crafted in eval() mode. ``loss="mixed"`` is DeepSec's
    0.5·(CE(x) + CE(x_adv)); ``"adversarial"`` is Madry et al.'s CE(x_adv) alone. ``eps_ramp`` (epochs, 0: off, as
    DeepSec): ε and the step grow linearly from 0 to their values over the first ``eps_ramp`` epochs, batch by
    batch, so that adversarial fine-tuning of a trained model does not start at the full budget (the collapse of
    Ngnawé et al.'s "suboptimal transfer"; their fix)."""

    eps: float
    step_size: float
    steps: int
    loss: str = "mixed"
    eps_ramp: float = 0.0

    RULES: ClassVar = {"eps": number(), "step_size": number(strict=True), "steps": count(),
                       "loss": choice("mixed", "adversarial"), "eps_ramp": number()}
    LABEL: ClassVar = "PAT"

    def scale_at(self, progress: float) -> float:
        """The fraction of ε (and of the step) in use after ``progress`` epochs (fractional): 1 without a ramp."""
        return 1.0 if self.eps_ramp == 0 else min(1.0, progress / self.eps_ramp)


@dataclass(frozen=True)
class PGDParams(Checked):
    """An L∞ PGD attack with random start, for the robust accuracy recorded in training histories."""

    eps: float
    step_size: float
    steps: int

    RULES: ClassVar = {"eps": number(), "step_size": number(strict=True), "steps": count()}
    LABEL: ClassVar = "history PGD"


# ----------------------------------------------------------------------------------------- crafting and losses
# draw(n, params, generator) (optional) draws what a defence needs per training image for one epoch, from the
# loop's data generator at the start of the epoch; the loop hands each batch its share as ``drawn``.
# craft(net, x, y, params, *, drawn, progress, generator) runs with the network in eval() mode (the loop sets it)
# and returns the adversarial batch without a host synchronisation (the loop checks the data once per run, so the
# attacks run with validate=False); ``progress`` is the training's progress in epochs (fractional) at this batch.
# loss(logits_of, mean_ce, x, x_adv, params) returns the training loss, where logits_of(images) is the network in
# train() mode and mean_ce(logits) the batch-mean cross-entropy.
def craft_nat(net: nn.Module, x: Tensor, y: Tensor, params: NATParams, *, drawn: Tensor, progress: float,
              generator: torch.Generator | None) -> Tensor:
    """One LLC step of per-image size ε_i (``drawn``, :func:`draw_nat_eps`) towards the current model's
    least-likely class (DeepSec's NAT.py)."""
    with torch.no_grad():
        least_likely = net(x).argmin(1)
    return llc(net, x, least_likely, eps=drawn, validate=False)


def craft_pat(net: nn.Module, x: Tensor, y: Tensor, params: PATParams, *, drawn: None, progress: float,
              generator: torch.Generator | None) -> Tensor:
    """PGD from a random start against the true labels (DeepSec's PAT.py, Madry et al.), at the fraction of ε and
    step the ramp has reached (:meth:`PATParams.scale_at`); at 0 the clean batch itself."""
    scale = params.scale_at(progress)
    if scale == 0:
        return x.clone()
    return pgd(net, x, y, eps=params.eps * scale, step_size=params.step_size * scale, steps=params.steps,
               random_start=True, generator=generator, validate=False)


def loss_nat(logits_of: Callable, mean_ce: Callable, x: Tensor, x_adv: Tensor, params: NATParams) -> Tensor:
    """(CE(x) + w·CE(x_adv)) / (1 + w) over the whole clean and the whole adversarial batch."""
    return (mean_ce(logits_of(x)) + params.adv_weight * mean_ce(logits_of(x_adv))) / (1.0 + params.adv_weight)


def loss_pat(logits_of: Callable, mean_ce: Callable, x: Tensor, x_adv: Tensor, params: PATParams) -> Tensor:
    """DeepSec's 0.5·(CE(x) + CE(x_adv)), or Madry's CE(x_adv) alone (``loss="adversarial"``)."""
    if params.loss == "adversarial":
        return mean_ce(logits_of(x_adv))
    return 0.5 * (mean_ce(logits_of(x)) + mean_ce(logits_of(x_adv)))


def draw_nat_eps(n: int, params: NATParams, generator: torch.Generator) -> Tensor:
    """DeepSec's NAT.py: ε_i = clip(|N(0, σ)| / 255, 0, eps_max) per image."""
    return (torch.randn(n, generator=generator) * params.sigma).abs().div(255.0).clamp(0.0, params.eps_max)


CRAFT_MODES = ("eval", "train")


@dataclass(frozen=True)
class Defence:
    """A registered defence: its parameter type (a :class:`Checked` dataclass whose ``RULES`` cover every field),
    named settings, crafting step and the mode the network is in while it crafts (``"eval"``: BatchNorm on running
    statistics, on the folded copy, as DeepSec's NAT.py and PAT.py; ``"train"``: batch statistics), loss, cost
    (``passes(params)``: forward-backward passes per training image and epoch, crafting and update together) and,
    if it needs one, its per-epoch draw for every training image (NAT's ε_i).

    Raises:
        ValueError: at registration, a parameter without a rule (or a rule without a parameter), an unknown
            crafting mode, or a named setting outside the rules.
    """

    name: str
    params_type: type
    configs: dict
    craft: Callable
    loss: Callable
    passes: Callable
    craft_mode: str = "eval"
    draw: Callable | None = None
    defaults: dict[str, str] | None = None  # dataset → configuration name (None: DeepSec's, "deepsec_<dataset>")

    def __post_init__(self) -> None:
        names = [f.name for f in fields(self.params_type)]
        rules = getattr(self.params_type, "RULES", {})
        if sorted(names) != sorted(rules):
            raise ValueError(f"defence {self.name!r}: {self.params_type.__name__} needs exactly one rule per "
                             f"parameter; without a rule: {sorted(set(names) - set(rules))}, rule without a "
                             f"parameter: {sorted(set(rules) - set(names))}")
        if self.craft_mode not in CRAFT_MODES:
            raise ValueError(f"defence {self.name!r}: craft_mode {self.craft_mode!r}; allowed: "
                             f"{', '.join(map(repr, CRAFT_MODES))}")
        for setting in self.configs.values():
            setting.check()
        unknown = sorted(set((self.defaults or {}).values()) - set(self.configs))
        if unknown:
            raise ValueError(f"defence {self.name!r}: defaults name unknown configurations {unknown}")

    def default_setting(self, dataset: str):
        """The setting a parameter left ``None`` takes on ``dataset``: the configuration ``defaults`` names for it,
        else DeepSec's (``deepsec_<dataset>``).

        Raises:
            ValueError: no such setting (the message lists the configurations).
        """
        name = (self.defaults or {}).get(dataset, f"deepsec_{dataset}")
        if name not in self.configs:
            raise ValueError(f"defence {self.name!r} has no setting for {dataset!r} ({name!r}); its configurations: "
                             f"{', '.join(map(repr, self.configs))}")
        return self.configs[name]

    @property
    def parameters(self) -> tuple[str, ...]:
        """The defence's hyper-parameters (the fields of its parameters type)."""
        return tuple(f.name for f in fields(self.params_type))

    def resolve(self, params, *, dataset: str):
        """``params`` as a validated instance: ``None`` → DeepSec's setting for ``dataset``, a name → that
        named setting.

        Raises:
            ValueError: unknown name, or parameters of the wrong type or out of range.
        """
        if params is None:
            params = self.default_setting(dataset)
        if isinstance(params, str):
            if params not in self.configs:
                raise ValueError(f"unknown {self.name.upper()} configuration {params!r}; allowed: "
                                 f"{', '.join(map(repr, self.configs))}")
            params = self.configs[params]
        if not isinstance(params, self.params_type):
            raise ValueError(f"defence {self.name!r} needs {self.params_type.__name__}, got {params!r}")
        params.check()
        return params


NAT_CONFIGS: dict[str, NATParams] = {
    # DeepSec Defenses/NAT_Test.py defaults (mu 0, sigma 50, clip 0..0.3, adv_ratio 0.3) and README for CIFAR-10.
    "deepsec_mnist": NATParams(sigma=50.0, eps_max=0.3),
    "deepsec_cifar10": NATParams(sigma=15.0, eps_max=0.1),
}
PAT_CONFIGS: dict[str, PATParams] = {
    # DeepSec Defenses/PAT_Test.py (SPEC §5): mixed loss; MNIST as Madry's mnist_challenge config.
    "deepsec_mnist": PATParams(eps=0.3, step_size=0.01, steps=40),
    # DeepSec's CIFAR-10 PAT: Madry's cifar10_challenge ε 8/255, step 2/255, 7 steps, with DeepSec's mixed loss.
    "deepsec_cifar10": PATParams(eps=8 / 255, step_size=2 / 255, steps=7),
    # Madry et al. (ICLR 2018) themselves train on adversarial examples only.
    "madry_cifar10": PATParams(eps=8 / 255, step_size=2 / 255, steps=7, loss="adversarial"),
    # The follow-up study's PAT on the wide ResNet, literally "ε=8, 10 steps, step 2" on [0, 1] images: only the
    # box constrains (SPEC §5, §8.1). It re-ran DeepSec's PAT code, hence the mixed loss.
    "followup_eps8": PATParams(eps=8.0, step_size=2.0, steps=10),
    # ... and what it meant: the same run with ε and step on the 0..255 scale divided by 255 (only ε's unit changes).
    "followup_eps8_255": PATParams(eps=8 / 255, step_size=2 / 255, steps=10),
}

# The registry: one entry per defence. Passes per image and epoch: NAT one LLC step, then the clean and the
# adversarial batch; PAT ``steps`` PGD steps, then both batches.
DEFENCES: dict[str, Defence] = {
    "nat": Defence(name="nat", params_type=NATParams, configs=NAT_CONFIGS, craft=craft_nat, loss=loss_nat,
                   passes=lambda params: 1 + 2, draw=draw_nat_eps),
    "pat": Defence(name="pat", params_type=PATParams, configs=PAT_CONFIGS, craft=craft_pat, loss=loss_pat,
                   passes=lambda params: params.steps + 2),
}


def mean_cross_entropy(y: Tensor, per_rank: float, *, label_smoothing: float = 0.0) -> Callable[[Tensor], Tensor]:
    """Cross-entropy summed over this rank's share of the batch and divided by global batch / world, so that DDP's
    gradient average equals the one-process mean over the global batch; against labels smoothed by
    ``label_smoothing`` (the target puts 1 − s + s/C on the label and s/C on each other class)."""
    return lambda logits: (F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=label_smoothing)
                           / per_rank)
