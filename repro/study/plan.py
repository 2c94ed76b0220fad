"""The plan of the study as data: every table column we run, what it is compared with, and how it departs from
the paper under each compute profile.

One :class:`Column` per executed notebook. The pipeline (:mod:`repro.pipeline`) executes the plan with papermill and
the report (:mod:`repro.report`) turns the results into the book; neither holds column-specific knowledge. Published
numbers live in ``repro/study/published/table{1,2}.csv`` (see :func:`published`); the verdict rule is :mod:`repro.study.verdicts`.
"""
from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from .._io import lookup
from ..attacks import get_config
from ..metrics import ATTACK_KEYS, DEFENCE_KEYS
from ..train import NAT_CONFIGS, PAT_CONFIGS
from .profiles import DEPARTURE_TEXT, PAPER, Profile, departures_of, get_profile

# The unit the papers print each metric in ("%"; the others as fractions), and its label in the book.
PRINTED_UNIT = {"MR": "%", "ACC_raw": "%", "ACC_defended": "%", "CAV": "%", "CRR": "%", "CSR": "%", "CCV": "%"}
METRIC_LABELS = {key: key.replace("_Linf", " L∞").replace("_L", " L").replace("_", " ")
                 for key in ATTACK_KEYS + DEFENCE_KEYS}
# The metrics of each table, in table order (owned by repro.metrics).
TABLE_METRICS = {"1": ATTACK_KEYS, "2": DEFENCE_KEYS}


@dataclass(frozen=True)
class Column:
    """One executed notebook: a table column (or a supporting run) of the study.

    ``parameters`` are the notebook's parameters in the paper's setting (budgets the profile decides are not
    listed: the notebook leaves them ``None`` and :func:`repro.study.steps.setup` fills them in); ``overrides``
    replace some of them under a named profile. ``attack``/``defence`` name the registry entry the column runs
    (:data:`repro.attacks.ATTACKS`, :data:`repro.train.DEFENCES`). ``compare_with`` names the published column in
    ``published/table{N}.csv`` (``None``: nothing published). ``uses`` says which parts of a profile's budget apply
    ("attack", "raw", "train_wide", "wide", "defence"), and so which profile departures it lists; ``departures`` are
    the column's own.
    """

    id: str
    table: str  # "1", "2", "corrected", "measure", "findings", "security", "training"
    title: str
    notebook: str
    parameters: dict
    attack: str | None = None
    defence: str | None = None
    compare_with: str | None = None
    contrasts_with: str | None = None  # a corrected column: the literal column it is shown beside
    replicate_of: str | None = None  # a rerun of that column with another seed (for the spread across seeds)
    # A measurement column: that column's attack on another model, varying one departure (``varies``: the
    # Column.uses part whose budget it changes), so the difference measures how far the departure moves each metric.
    measures: str | None = None
    varies: str | None = None
    model_label: str = ""
    overrides: dict = field(default_factory=dict)
    departures: tuple[str, ...] = ()
    uses: frozenset = frozenset()
    profiles: tuple[str, ...] = ("smoke", "quick", "paper")  # profiles that run this column

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """The metrics this column reports: the attack table's for an attack, the defence table's for a defence."""
        return ATTACK_KEYS if self.attack else DEFENCE_KEYS if self.defence else ()

    def parameters_for(self, profile: str) -> dict:
        """The notebook parameters passed by the pipeline under ``profile`` (before the notebook resolves budgets)."""
        get_profile(profile)
        return {"profile": profile, **self.parameters, **self.overrides.get(profile, {})}


# Under smoke (seconds per notebook, numbers not meaningful) fewer PGD steps and smaller accuracy-vs-ε curves; every
# code path still runs.
SMOKE_PGD = {"smoke": {"steps": 3}}
SMOKE_CURVES = {"smoke": {"curve_steps": 2}}
SMOKE_PAT = {"smoke": {"steps": 2, "curve_steps": 2}}


def _setting(params, *, keep: tuple[str, ...] | None = None, drop: tuple[str, ...] = ()) -> dict:
    """A named attack or defence setting (a dict, or a defence's parameters dataclass) as notebook parameters:
    the plan refers to the registries' named settings instead of copying their numbers."""
    items = dict(params) if isinstance(params, dict) else asdict(params)
    return {k: v for k, v in items.items() if (keep is None or k in keep) and k not in drop}


def per_255(setting: dict) -> dict:
    """``setting`` with ε and its step divided by 255 (the 0..255 reading of the follow-up's "ε = 8")."""
    return {**setting, "eps": setting["eps"] / 255, "step_size": setting["step_size"] / 255}


# CW2's hyper-parameters the plan fixes (its iteration budget comes from the profile); PAT's loss is DeepSec's
# mixed loss in every column (the pat notebook has no loss parameter).
CW2_DEEPSEC = _setting(get_config("cw2", "deepsec"), keep=("confidence", "initial_const", "lr", "search"))
PGD_DEEPSEC_CIFAR10 = get_config("pgd", "deepsec_cifar10")
FOLLOWUP_PGD_EPS8 = get_config("pgd", "followup_eps8")
NAT_DEEPSEC_MNIST = _setting(NAT_CONFIGS["deepsec_mnist"])
# The papers' PAT settings without the training schedule's ε ramp (both papers: none), which the profile's defence
# training decides (DefenceTraining.defence_params; None in the notebook: the profile's, else DeepSec's 0).
PAT_DEEPSEC_CIFAR10 = _setting(PAT_CONFIGS["deepsec_cifar10"], drop=("loss", "eps_ramp"))
FOLLOWUP_PAT_EPS8 = _setting(PAT_CONFIGS["followup_eps8"], drop=("loss", "eps_ramp"))


PLAN: tuple[Column, ...] = (
    # ------------------------------------------------------------------------------------------ Table 1: attacks
    Column(
        id="cw2_mnist", table="1", title="CW2 on DeepSec's MNIST ConvNet", notebook="cw2.ipynb", attack="cw2",
        model_label="MNIST ConvNet",
        parameters=dict(dataset="mnist", model="mnist_convnet", **CW2_DEEPSEC, seed=100),
        compare_with="cw2_mnist", uses=frozenset({"attack", "raw"}),
        departures=("random targets drawn after sorting the candidates by index, not in DeepSec's sampling order, "
                    "so most targets differ from DeepSec's (both uniform over the nine wrong classes)",
                    "a sample CW2 never fools keeps its clean image (DeepSec returns an all-zero image, which its "
                    "MNIST model may classify as the target; the findings chapter measures the effect)"),
    ),
    Column(
        id="pgd_resnet20", table="1", title="PGD, DeepSec's CIFAR-10 parameters (ε = 0.1), ResNet-20",
        notebook="pgd.ipynb", attack="pgd", model_label="CIFAR-10 ResNet-20",
        parameters=dict(dataset="cifar10", model="resnet20", **PGD_DEEPSEC_CIFAR10, seed=100),
        compare_with="pgd_resnet20", overrides=SMOKE_PGD, uses=frozenset({"attack", "raw"}),
        departures=("the follow-up labels this column ε = 0.3137; its L∞ of 0.100 shows that it ran DeepSec's "
                    "ε = 0.1, which is what we run",),
    ),
    Column(
        id="pgd_eps8_wide", table="1", title="PGD \"ε = 8\" taken literally, wide ResNet", notebook="pgd.ipynb",
        attack="pgd", model_label="CIFAR-10 wide ResNet-20",
        parameters=dict(dataset="cifar10", model="resnet20_wide", **FOLLOWUP_PGD_EPS8, seed=100),
        compare_with="pgd_eps8_wide", overrides=SMOKE_PGD, uses=frozenset({"attack", "wide", "train_wide"}),
        departures=("the follow-up gives ε = 8 and ε_iter = 0.875 but not the number of steps; we keep "
                    "DeepSec's 15",),
    ),
    # ------------------------------------------------------------------------------------------ Table 2: defences
    Column(
        id="nat_mnist", table="2", title="NAT on DeepSec's MNIST ConvNet", notebook="defence.ipynb", defence="nat",
        model_label="MNIST ConvNet",
        parameters=dict(dataset="mnist", model="mnist_convnet", **NAT_DEEPSEC_MNIST, seed=100),
        compare_with="nat_mnist", overrides=SMOKE_CURVES, uses=frozenset({"defence", "raw"}),
    ),
    Column(
        id="pat_resnet20", table="2", title="PAT, DeepSec's CIFAR-10 parameters (ε = 8/255), ResNet-20",
        notebook="defence.ipynb", defence="pat", model_label="CIFAR-10 ResNet-20",
        parameters=dict(dataset="cifar10", model="resnet20", **PAT_DEEPSEC_CIFAR10, seed=100),
        compare_with="pat_resnet20", overrides=SMOKE_PAT, uses=frozenset({"defence", "raw"}),
        departures=("the follow-up labels this column ε = 0.1 (and its text 0.3137); DeepSec's PAT uses "
                    "ε = 0.03137 = 8/255, which is what we run",),
    ),
    Column(
        id="pat_eps8_wide", table="2", title="PAT \"ε = 8\" taken literally, wide ResNet", notebook="defence.ipynb",
        defence="pat", model_label="CIFAR-10 wide ResNet-20",
        parameters=dict(dataset="cifar10", model="resnet20_wide", **FOLLOWUP_PAT_EPS8, seed=100),
        compare_with="pat_eps8_wide", overrides=SMOKE_PAT, uses=frozenset({"defence", "wide", "train_wide"}),
    ),
    # ----------------------------------------------- corrected columns: the follow-up's settings with ε in /255
    Column(
        id="pgd_8_255_wide", table="corrected", title="PGD at ε = 8/255 (the follow-up's setting, ε in /255), "
        "wide ResNet", notebook="pgd.ipynb", attack="pgd", model_label="CIFAR-10 wide ResNet-20 (raw)",
        parameters=dict(dataset="cifar10", model="resnet20_wide", **per_255(FOLLOWUP_PGD_EPS8), seed=100),
        overrides=SMOKE_PGD, uses=frozenset({"attack", "wide", "train_wide"}), contrasts_with="pgd_eps8_wide",
        departures=("the follow-up's PGD (ε = 8, ε_iter = 0.875, 15 steps) with ε and ε_iter divided by 255: "
                    "only the unit of ε differs from the literal column; it attacks the raw wide model, as the "
                    "literal column does",),
    ),
    Column(
        id="pat_8_255_wide", table="corrected", title="PAT at ε = 8/255 (the follow-up's setting, ε in /255), "
        "wide ResNet", notebook="defence.ipynb", defence="pat", model_label="CIFAR-10 wide ResNet-20",
        parameters=dict(dataset="cifar10", model="resnet20_wide", **per_255(FOLLOWUP_PAT_EPS8), seed=100),
        overrides=SMOKE_PAT, uses=frozenset({"defence", "wide", "train_wide"}), contrasts_with="pat_eps8_wide",
        departures=("the follow-up's PAT (ε = 8, step 2, 10 steps) with ε and step divided by 255: only the unit "
                    "of ε differs from the literal column",),
    ),
    # ----------------------------------------- measurement columns: how far a departure moves the attack metrics
    # The literal "ε = 8" attack of pgd_eps8_wide, unchanged, on the ×1 model's architecture trained to convergence
    # by DeepSec (ResNet-20 is the ×1 wide ResNet) and on the ×2 wide ResNet trained as the ×1 one: the differences
    # measure the training-length and the width departures.
    Column(
        id="pgd_eps8_resnet20", table="measure", title="PGD \"ε = 8\" taken literally, DeepSec's converged "
        "ResNet-20", notebook="pgd.ipynb", attack="pgd", model_label="CIFAR-10 ResNet-20 (DeepSec's)",
        parameters=dict(dataset="cifar10", model="resnet20", **FOLLOWUP_PGD_EPS8, seed=100),
        overrides=SMOKE_PGD, uses=frozenset({"attack", "raw"}), measures="pgd_eps8_wide", varies="train_wide",
        profiles=("smoke", "quick"),
    ),
    Column(
        id="pgd_eps8_wide_x2", table="measure", title="PGD \"ε = 8\" taken literally, wide ResNet ×2",
        notebook="pgd.ipynb", attack="pgd", model_label="CIFAR-10 wide ResNet-20 ×2",
        parameters=dict(dataset="cifar10", model="resnet20_wide", width=2, **FOLLOWUP_PGD_EPS8, seed=100),
        overrides=SMOKE_PGD, uses=frozenset({"attack", "train_wide"}), measures="pgd_eps8_wide", varies="wide",
        profiles=("smoke", "quick"),
        departures=(DEPARTURE_TEXT[("wide", "wide_width")].format(value=2, paper=PAPER.wide_width),),
    ),
    # CW2's budget arm: the column's attack at the budget the quick profile used to run (5 × 500 on 200 candidates),
    # beside the column at DeepSec's 10 × 10,000 on 100 candidates; the cw2 notebook's budget ladder compares the
    # budgets image by image on the column's own candidates.
    Column(
        id="cw2_mnist_5x500", table="measure", title="CW2 at 5 × 500 iterations (budget arm), DeepSec's MNIST ConvNet",
        notebook="cw2.ipynb", attack="cw2", model_label="MNIST ConvNet",
        parameters=dict(dataset="mnist", model="mnist_convnet", **CW2_DEEPSEC, seed=100),
        overrides={"quick": {"n_samples": 200, "binary_search_steps": 5, "max_iterations": 500}},
        # Its budget is the column's own (overrides), not the profile's: its departures are listed here.
        uses=frozenset({"raw"}), profiles=("quick",),
        departures=(DEPARTURE_TEXT[("attack", "n_candidates")].format(value="200", paper="1,000"),
                    DEPARTURE_TEXT[("attack", "binary_search_steps")].format(value=5, paper=10),
                    DEPARTURE_TEXT[("attack", "max_iterations")].format(value=500, paper="10,000"),
                    DEPARTURE_TEXT[("attack", "ric_samples")].format(value=get_profile("quick").ric_samples,
                                                                    paper=None)),
    ),
    # ------------------------------------------------------------------------- evidence for the known problems
    Column(
        id="findings", table="findings", title="Evidence for the known problems", notebook="findings.ipynb",
        model_label="MNIST ConvNet, CIFAR-10 ResNet-20", parameters=dict(seed=100),
    ),
    # ------------------------- security evaluation: every model attacked itself, beside DeepSec's transfer setting
    Column(
        id="security_mnist", table="security", title="Security evaluation, MNIST: raw ConvNet and NAT",
        notebook="security.ipynb", model_label="MNIST ConvNet (raw, NAT)", parameters=dict(dataset="mnist", seed=100),
        uses=frozenset({"raw", "defence"}),
    ),
    Column(
        id="security_cifar10", table="security", title="Security evaluation, CIFAR-10: ResNet-20 and wide ResNet, "
        "raw and PAT", notebook="security.ipynb", model_label="CIFAR-10 ResNet-20 and wide ResNet-20 (raw, PAT)",
        parameters=dict(dataset="cifar10", seed=100), uses=frozenset({"raw", "defence", "wide", "train_wide"}),
    ),
    # ------------------------------ training: how each model was trained, its curves, clean and PGD test accuracy
    Column(
        id="training_mnist", table="training", title="Training, MNIST: the NAT models", notebook="training.ipynb",
        model_label="MNIST ConvNet (raw, NAT)", parameters=dict(dataset="mnist", seed=100),
        uses=frozenset({"raw", "defence"}),
    ),
    Column(
        id="training_cifar10", table="training", title="Training, CIFAR-10: the PAT models and the training ablation",
        notebook="training.ipynb", model_label="CIFAR-10 ResNet-20 and wide ResNet-20 (raw, PAT)",
        parameters=dict(dataset="cifar10", seed=100), uses=frozenset({"raw", "defence", "wide", "train_wide"}),
    ),
)

# Seed replicates: the columns cheap enough on CPU, rerun with other seeds (candidate draw, random targets and
# starts; NAT's training seed), so the book can show the spread across seeds beside each single run's interval.
SEED_REPLICATES = (101, 102)
REPLICATED = ("cw2_mnist", "cw2_mnist_5x500", "pgd_resnet20", "nat_mnist", "findings")
# Replicates run under quick and paper alike (where their column runs), except those too long for 2 cores: NAT's
# (under quick trained by DeepSec's full 20-epoch recipe, about an hour a seed on one core) and CW2's at DeepSec's
# full budget (about 70 minutes a seed on 2 cores; under quick its 5 × 500 budget arm is replicated instead).
PAPER_ONLY_REPLICATES: tuple[str, ...] = ("nat_mnist", "cw2_mnist")


def _replicate(col: Column, seed: int) -> Column:
    runs = ("paper",) if col.id in PAPER_ONLY_REPLICATES else ("quick", "paper")
    return replace(col, id=f"{col.id}_seed{seed}", parameters={**col.parameters, "seed": seed}, replicate_of=col.id,
                   title=f"{col.title} (seed {seed})", profiles=tuple(p for p in runs if p in col.profiles))


PLAN = PLAN + tuple(_replicate(c, seed) for c in PLAN if c.id in REPLICATED for seed in SEED_REPLICATES)
COLUMNS: dict[str, Column] = {c.id: c for c in PLAN}


# ---------------------------------------------------------------------------------- the chapters' model roster
@dataclass(frozen=True)
class EvaluatedModel:
    """A model of the study the security and training chapters evaluate: the ``role`` ("raw" or "defended") model of
    the plan column ``column``; a defended model names the raw model DeepSec's security evaluation crafts on
    (``transfer_from``). ``id`` keys the model in those chapters' results; ``ladder``: the width ladder repeats it at
    the profile's other widths (:func:`repro.study.roster.evaluated_models`)."""

    id: str
    label: str
    column: str
    role: str
    transfer_from: str | None = None
    width: int | None = None  # the wide ResNet's width when it is not the profile's (a rung of the width ladder)
    ladder: bool = False


SECURITY_MODELS: dict[str, tuple[EvaluatedModel, ...]] = {
    "mnist": (
        EvaluatedModel("raw_mnist", "MNIST ConvNet, raw", "nat_mnist", "raw"),
        EvaluatedModel("nat_mnist", "MNIST ConvNet, NAT", "nat_mnist", "defended", "raw_mnist"),
    ),
    "cifar10": (
        EvaluatedModel("raw_resnet20", "ResNet-20, raw", "pat_resnet20", "raw"),
        EvaluatedModel("pat_resnet20", "ResNet-20, PAT ε = 8/255 (DeepSec)", "pat_resnet20", "defended",
                       "raw_resnet20"),
        EvaluatedModel("raw_wide", "wide ResNet, raw", "pat_8_255_wide", "raw", ladder=True),
        EvaluatedModel("pat_eps8_wide", "wide ResNet, PAT \"ε = 8\" (literal)", "pat_eps8_wide", "defended",
                       "raw_wide"),
        EvaluatedModel("pat_8_255_wide", "wide ResNet, PAT ε = 8/255", "pat_8_255_wide", "defended", "raw_wide",
                       ladder=True),
    ),
}


def replicates(column_id: str, profile: str) -> list[Column]:
    """The seed replicates of ``column_id`` run under ``profile`` (empty when it has none)."""
    return [c for c in columns_for(profile) if c.replicate_of == column_id]


def column(column_id: str) -> Column:
    """The plan's column called ``column_id``.

    Raises:
        ValueError: unknown id (the message lists the known ones).
    """
    return lookup(COLUMNS, column_id, what="column")


def columns_for(profile: str) -> list[Column]:
    """The columns run under ``profile``, in plan order."""
    get_profile(profile)
    return [c for c in PLAN if profile in c.profiles]


def departures(col: Column, profile: str | Profile) -> list[str]:
    """Every departure of ``col`` from the paper's setting under ``profile``: the profile-driven ones, then the
    column's own. Departures that depend on the data found at run time (a partial CIFAR-10) are added from the
    result's provenance by :func:`repro.study.steps.data_departures`.
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    return departures_of(prof, uses=col.uses, attack=col.attack, dataset=col.parameters.get("dataset"),
                         model=col.parameters_for(prof.name).get("model")) \
        + list(col.departures)


# --------------------------------------------------------------------------------------------------- fingerprints
PUBLISHED_DIR = Path(__file__).with_name("published")
NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
# Code that shapes how a result is shown or scheduled, never a number in it: not part of a fingerprint.
NOT_NUMBERS = ("repro.report", "repro.pipeline")


def notebook_code(notebook: str) -> str:
    """The code cells of ``notebooks/<notebook>``, joined (IPython magics and shell lines dropped)."""
    import json

    cells = json.loads((NOTEBOOK_DIR / notebook).read_text(encoding="utf-8"))["cells"]
    lines = [line for c in cells if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()]
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def fingerprint_sources(col: Column) -> tuple[Path, ...]:
    """The files a result of ``col`` depends on: its notebook and every ``repro`` module the notebook imports,
    transitively (library and study; not :data:`NOT_NUMBERS`)."""
    from .._source import imported_names, module_closure

    roots = sorted(n for n in imported_names(notebook_code(col.notebook)) if n.split(".")[:2] != ["repro", "report"])
    return (NOTEBOOK_DIR / col.notebook, *module_closure(roots, exclude=NOT_NUMBERS))


def fingerprint(col: Column, profile: str) -> str:
    """The fingerprint a fresh result of ``col`` under ``profile`` carries: sha256 over the column's plan row, the
    profile's budgets, the published CSVs and :func:`fingerprint_sources` (the notebook and the code it runs). Any
    edit to them makes the column stale; an edit to the report or the pipeline does not."""
    import json

    from .._io import canonical_json
    from .._source import source_hash

    row = {"column": {**asdict(col), "uses": sorted(col.uses)}, "profile": get_profile(profile).as_dict()}
    digest = hashlib.sha256(canonical_json(json.loads(json.dumps(row, default=str))).encode())
    notebook, *modules = fingerprint_sources(col)
    digest.update(notebook.read_bytes())
    digest.update(source_hash(modules).encode())
    for path in sorted(PUBLISHED_DIR.glob("*.csv")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- published numbers
@dataclass(frozen=True)
class Published:
    """One published number, converted to fractions (``value``) from what the paper printed (``printed``)."""

    column: str
    source: str  # "follow-up" or "deepsec"
    metric: str
    value: float
    printed: float
    unit: str
    printed_column: str
    printed_metric: str
    correction: str
    note: str
    second_hand: bool  # a DeepSec value copied from the follow-up's table, not found in DeepSec's paper (SPEC)


def published(table: str) -> tuple[Published, ...]:
    """The published numbers of Table ``table`` ("1" or "2"), as printed plus converted to fractions.

    The CSV is read once per table (the book looks up every cell of every column).
    """
    if table not in ("1", "2"):
        raise ValueError(f"unknown table {table!r}; allowed: '1', '2'")
    return _read_published(table)


@lru_cache(maxsize=None)
def _read_published(table: str) -> tuple[Published, ...]:
    text = (PUBLISHED_DIR / f"table{table}.csv").read_text(encoding="utf-8")
    rows = []
    for row in csv.DictReader(text.splitlines()):
        printed = float(row["value"])
        if row["unit"] not in ("%", "1"):
            raise ValueError(f"table{table}.csv: unit must be '%' or '1', got {row['unit']!r}")
        value = printed / 100.0 if row["unit"] == "%" else printed
        rows.append(Published(column=row["column"], source=row["source"], metric=row["metric"], value=value,
                              printed=printed, unit=row["unit"], printed_column=row["printed_column"],
                              printed_metric=row["printed_metric"], correction=row["correction"], note=row["note"],
                              second_hand=row["second_hand"] == "yes"))
    return tuple(rows)


@lru_cache(maxsize=None)
def _published_index(table: str) -> dict[tuple[str, str, str], Published]:
    return {(row.column, row.source, row.metric): row for row in published(table)}


@dataclass(frozen=True)
class Anchor:
    """A published robustness number to read ours against (``published/anchors.csv``): accuracies as fractions
    (``None``: not reported), with the attack setting and what the model was trained on and for how long."""

    id: str
    model: str
    clean: float | None
    pgd: float | None
    autoattack: float | None
    attack_setting: str
    training_data: str
    training_length: str
    source: str


@lru_cache(maxsize=None)
def anchors() -> tuple[Anchor, ...]:
    """Every anchor of ``published/anchors.csv``, in file order (accuracies printed in %, converted to fractions)."""
    text = (PUBLISHED_DIR / "anchors.csv").read_text(encoding="utf-8")
    pct = lambda v: None if v == "" else float(v) / 100.0  # noqa: E731
    return tuple(Anchor(id=r["id"], model=r["model"], clean=pct(r["clean"]), pgd=pct(r["pgd"]),
                        autoattack=pct(r["autoattack"]), attack_setting=r["attack_setting"],
                        training_data=r["training_data"], training_length=r["training_length"], source=r["source"])
                 for r in csv.DictReader(text.splitlines()))


def anchor(anchor_id: str) -> Anchor:
    """The anchor called ``anchor_id``.

    Raises:
        ValueError: unknown id (the message lists the known ones).
    """
    return lookup({a.id: a for a in anchors()}, anchor_id, what="anchor")


def published_value(table: str, column_id: str, source: str, metric: str) -> Published | None:
    """The published entry for (column, source, metric), or ``None`` when that paper has no such number."""
    return _published_index(table).get((column_id, source, metric))


def to_printed_unit(metric: str, value: float | None) -> float | None:
    """A fraction in the unit the papers print ``metric`` in (percent for MR, ACC, CAV, CRR, CSR, CCV)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value * 100.0 if PRINTED_UNIT.get(metric) == "%" else value
