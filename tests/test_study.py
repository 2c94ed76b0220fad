"""The study's seams: plan, registries, profiles, published numbers and the notebooks' parameter validation agree;
the command line and the notebooks configure the same training; fingerprints cover what a column depends on."""
from __future__ import annotations

import ast
import dataclasses
import json
import math

import pytest
import torch

from repro.attacks import ATTACKS
from repro import results as results_mod
from repro.results import repo_root
from repro.study import models, plan, security, training
from repro.study import steps
from repro.study.profiles import PROFILES, get_profile
from repro.train import DEFENCES, config_key

from .conftest import needs_deepsec


def _resolve(col: plan.Column, **params) -> dict:
    """``params`` resolved as the column's notebook resolves them: the chapters (security, training) by their own
    ``resolve``, the other columns by :func:`repro.study.steps.resolve` with the registry entry they run."""
    if col.table in ("security", "training"):
        return {"security": security, "training": training}[col.table].resolve(**params)
    what = {"attack": col.attack} if col.attack else {"defence": col.defence} if col.defence else {"findings": True}
    params.pop("defence", None)  # the notebooks' own parameters: setup takes them as ``defence=``/``attack=``
    params.pop("attack", None)
    return steps.resolve(**what, **params)


def _parameters_cell(notebook: str) -> dict:
    nb = json.loads((repo_root() / "notebooks" / notebook).read_text())
    cells = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(cells) == 1, f"{notebook} must have exactly one cell tagged 'parameters'"
    tree = ast.parse("".join(cells[0]["source"]))
    values = {}
    for node in tree.body:
        assert isinstance(node, ast.Assign), f"{notebook}: the parameters cell holds assignments only"
        values[node.targets[0].id] = ast.literal_eval(node.value)  # literals only (STYLE rule 9)
    return values


def _setup_cell(notebook: str) -> dict:
    """The parameters cell less what it runs (``attack``/``defence``), which :func:`repro.study.steps.setup` takes
    as its own keyword."""
    return {k: v for k, v in _parameters_cell(notebook).items() if k not in ("attack", "defence")}


def test_column_ids_are_unique_and_notebooks_exist():
    assert len({c.id for c in plan.PLAN}) == len(plan.PLAN)
    for col in plan.PLAN:
        assert (repo_root() / "notebooks" / col.notebook).exists(), col.notebook


@pytest.mark.parametrize("col", plan.PLAN, ids=lambda c: c.id)
def test_notebook_declares_every_parameter_the_pipeline_passes(col):
    declared = _parameters_cell(col.notebook)
    for profile in col.profiles:
        passed = set(col.parameters_for(profile)) | {"column", "results_dir", "device"} \
            | ({"defence"} if col.defence else set()) | ({"attack"} if col.attack else set())
        assert passed <= set(declared), f"{col.notebook} lacks {sorted(passed - set(declared))}"


@pytest.mark.parametrize("col", plan.PLAN, ids=lambda c: c.id)
@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_column_resolves_under_every_profile(col, profile):
    params = {**_parameters_cell(col.notebook), **col.parameters_for(profile), "column": col.id, "device": "cpu"}
    effective = _resolve(col, **params)
    assert effective["profile"] == profile
    assert all(v is not None for k, v in effective.items() if k in ("n_samples", "batch_size", "steps",
                                                                      "binary_search_steps", "max_iterations"))


def test_validation_fails_with_clear_messages():
    base = {**_setup_cell("pgd.ipynb"), "device": "cpu"}
    with pytest.raises(steps.ParameterError, match="mnist model but dataset is 'cifar10'"):
        steps.resolve(attack="pgd", **{**base, "model": "mnist_convnet"})
    with pytest.raises(steps.ParameterError, match="eps must be a finite number >= 0, got -0.1"):
        steps.resolve(attack="pgd", **{**base, "eps": -0.1})
    with pytest.raises(steps.ParameterError, match="unknown profile 'fast'"):
        steps.resolve(attack="pgd", **{**base, "profile": "fast"})
    with pytest.raises(steps.ParameterError, match="steps must be an integer >= 1"):
        steps.resolve(attack="pgd", **{**base, "steps": 0})
    with pytest.raises(steps.ParameterError, match="same parameter"):
        steps.resolve(attack="pgd", **{**base, "eps_iter": 0.5, "step_size": 0.01})
    with pytest.raises(steps.ParameterError, match="unknown model"):
        steps.resolve(attack="pgd", **{**base, "model": "vgg16"})


def test_the_jpeg_copies_follow_the_profile_and_a_subset_needs_them_turned_off():
    """quick's PAT trains on the JPEG copies too; a defence_subset counts exact images, so asking for one alone was a
    TrainConfig error deep in the run with no notebook parameter to get past it."""
    col = plan.column("pat_resnet20")
    base = {**_parameters_cell(col.notebook), **col.parameters_for("quick"), "column": col.id, "device": "cpu"}
    assert _resolve(col, **base)["defence_jpeg_fill"] is True
    assert _resolve(col, **{**base, "profile": "smoke"})["defence_jpeg_fill"] is False
    with pytest.raises(steps.ParameterError, match="defence_subset=1000 counts exact training images .* pass "
                                                   "defence_jpeg_fill=False as well"):
        _resolve(col, **{**base, "defence_subset": 1000})
    p = _resolve(col, **{**base, "defence_subset": 1000, "defence_jpeg_fill": False})
    ctx = steps.Context(kind="defence", name="pat", params=p, profile=get_profile("quick"), device="cpu", started=0.0)
    params = DEFENCES["pat"].params_type(**{k: p[k] for k in steps.defence_parameters("pat") if k in p})
    config = models.config_of(ctx, defence_params=params)
    assert (config.jpeg_fill, config.subset) == (False, 1000)
    with pytest.raises(steps.ParameterError, match="defence_jpeg_fill=True cannot be used under the profile 'smoke': "
                                                   "it trains the defences on the first 256 exact training images"):
        _resolve(col, **{**base, "profile": "smoke", "defence_jpeg_fill": True})
    with pytest.raises(steps.ParameterError, match="defence_jpeg_fill must be True, False or None"):
        _resolve(col, **{**base, "defence_jpeg_fill": "yes"})
    nat = plan.column("nat_mnist")
    nat_base = {**_parameters_cell(nat.notebook), **nat.parameters_for("quick"), "column": nat.id, "device": "cpu"}
    with pytest.raises(steps.ParameterError, match="defence_jpeg_fill=True needs dataset 'cifar10'"):
        _resolve(nat, **{**nat_base, "defence_jpeg_fill": True})
    for chapter in ("security", "training"):  # the chapters resolve it by the same rule
        cell = {**_parameters_cell(f"{chapter}.ipynb"), "device": "cpu", "profile": "quick"}
        with pytest.raises(steps.ParameterError, match="pass defence_jpeg_fill=False"):
            {"security": security, "training": training}[chapter].resolve(**{**cell, "defence_subset": 500})


def test_eps_iter_is_step_size_and_eps_8_is_allowed_with_a_note():
    base = {**_setup_cell("pgd.ipynb"), "device": "cpu"}
    p = steps.resolve(attack="pgd", **{**base, "eps": 8, "eps_iter": 0.875, "step_size": None})
    assert p["step_size"] == 0.875 and "eps_iter" not in p
    assert "box" in p["note"]


def test_eps_iter_alone_under_papermill_replaces_the_default_step_size():
    # `papermill notebooks/pgd.ipynb out.ipynb -p eps_iter 0.02`: step_size keeps the notebook's default 0.01
    base = {**_setup_cell("pgd.ipynb"), "device": "cpu", "eps_iter": 0.02}
    assert base["step_size"] == 0.01
    p = steps.resolve(attack="pgd", injected={"eps_iter"}, **base)
    assert p["step_size"] == 0.02 and "eps_iter" not in p
    # both injected and different: refused, naming both values
    with pytest.raises(steps.ParameterError, match=r"got both, 0\.02 and 0\.01"):
        steps.resolve(attack="pgd", injected={"eps_iter", "step_size"}, **base)


@pytest.mark.parametrize("folder, message", [
    ("results", r"results_dir 'results' is inside the committed results/ tree, which only the pipeline writes"),
    ("results/quick/elsewhere", r"is inside the committed results/ tree"),
    ("/proc/repro-runs", r"results_dir '/proc/repro-runs': cannot write to /proc/repro-runs/quick \(.*\); give a "
                         "writable folder"),
])
def test_a_notebook_run_refuses_the_committed_results_or_an_unwritable_folder_before_any_work(folder, message):
    """Before: `-p results_dir results` replaced a committed result; a read-only folder failed only after the whole
    column ran (and the next run deleted the computed result)."""
    base = {**_setup_cell("pgd.ipynb"), "device": "cpu", "profile": "quick", "results_dir": folder}
    with pytest.raises(steps.ParameterError, match=message):
        steps.resolve(attack="pgd", **base)


def test_an_ad_hoc_run_lists_the_profiles_departures():
    # a column name outside the plan: the profile's budgets (RIC on a sample, 8-epoch wide ResNet) still apply
    base = {**_setup_cell("pgd.ipynb"), "device": "cpu", "column": "mine", "model": "resnet20_wide"}
    p = steps.resolve(attack="pgd", **base)
    ctx = steps.Context(kind="attack", name="pgd", params=p, profile=get_profile("quick"),
                              device="cpu", started=0.0)
    deps = steps.adhoc_departures(ctx)
    assert steps.adhoc_uses(ctx) == frozenset({"attack", "wide", "train_wide"})
    assert any("RIC" in d for d in deps) and any("width" in d or "×" in d for d in deps), deps
    # the same as the plan column with those parts of the budget
    from repro.study import plan

    assert set(deps) <= set(plan.departures(plan.column("pgd_eps8_wide"), "quick"))


def test_budgets_come_from_the_profile_unless_given():
    base = {**_setup_cell("cw2.ipynb"), "device": "cpu"}
    p = steps.resolve(attack="cw2", **{**base, "profile": "quick"})
    quick = get_profile("quick")
    budget = quick.attack_budget("cw2")
    assert (p["n_samples"], p["binary_search_steps"], p["max_iterations"]) == (
        budget.n_candidates, budget.iterations["binary_search_steps"], budget.iterations["max_iterations"])
    assert steps.resolve(attack="pgd", **{**_setup_cell("pgd.ipynb"), "device": "cpu"})["n_samples"] == \
        get_profile("quick").attack_budget("pgd").n_candidates
    p = steps.resolve(attack="cw2", **{**base, "profile": "quick", "n_samples": 3, "max_iterations": 7})
    assert (p["n_samples"], p["max_iterations"]) == (3, 7)


def test_compared_columns_exist_in_the_published_tables():
    for col in plan.PLAN:
        if col.compare_with is not None:
            assert any(r.column == col.compare_with for r in plan.published(col.table)), col.id


@pytest.mark.parametrize("table", ["1", "2"])
def test_published_rows_are_complete_and_converted(table):
    rows = plan.published(table)
    metrics = plan.TABLE_METRICS[table]
    for row in rows:
        assert row.metric in metrics and row.source in ("follow-up", "deepsec")
        assert row.value == pytest.approx(row.printed / 100 if row.unit == "%" else row.printed)
    # each published column has every metric the paper printed for it, once
    for column in {r.column for r in rows}:
        for source in {r.source for r in rows if r.column == column}:
            got = [r.metric for r in rows if (r.column, r.source) == (column, source)]
            assert len(got) == len(set(got))
            assert set(got) == set(metrics) - {"RIC"}


def test_mislabelled_rows_are_corrected_and_say_so():
    rows = plan.published("1")
    for row in rows:
        if row.printed_metric == "L1":
            assert row.metric == "ALD_L2" and "L2" in row.correction
        if row.printed_metric == "L2":
            assert row.metric == "ALD_Linf" and "L∞" in row.correction
        if row.printed_metric == "ACTA":
            assert row.metric == "ACTC" and "ACTC" in row.correction
    pgd = [r for r in rows if r.column == "pgd_resnet20" and r.source == "follow-up"]
    assert all("0.1" in r.correction for r in pgd)
    assert plan.published_value("1", "pgd_resnet20", "follow-up", "ALD_Linf").value == pytest.approx(0.1)
    pat = [r for r in plan.published("2") if r.column == "pat_resnet20" and r.source == "follow-up"]
    assert all("8/255" in r.correction for r in pat)


def test_pat_eps8_arithmetic_is_inconsistent_as_published():
    get = lambda m: plan.published_value("2", "pat_eps8_wide", "follow-up", m).printed  # noqa: E731
    assert get("CRR") - get("CSR") == pytest.approx(get("CAV"))
    assert get("ACC_raw") + get("CAV") == pytest.approx(44.40)
    assert get("ACC_defended") != pytest.approx(44.40)
    # Before: the CAV note said CAV was inconsistent "with CRR − CSR" as well, which it equals.
    note = plan.published_value("2", "pat_eps8_wide", "follow-up", "CAV").note
    assert "equal to the printed CRR − CSR" in note and "and with CRR" not in note


def test_departures_follow_the_profile():
    cw2 = plan.column("cw2_mnist")
    quick, smoke = plan.departures(cw2, "quick"), plan.departures(cw2, "smoke")
    # quick runs DeepSec's 10 × 10,000 budget on fewer candidates; smoke cuts the budget too
    assert any("100 clean candidates" in d for d in quick) and any("released checkpoint" in d for d in quick)
    assert not any("Adam iterations" in d for d in quick) and any("instead of DeepSec's 10,000" in d for d in smoke)
    assert plan.departures(cw2, "paper") == list(cw2.departures)  # only the column's own, e.g. the target order
    pat = plan.departures(plan.column("pat_eps8_wide"), "quick")
    assert any("fine-tuned" in d for d in pat) and any(f"×{get_profile('quick').wide_width} " in d for d in pat)
    assert not any("fine-tuned" in d for d in plan.departures(plan.column("pat_eps8_wide"), "paper"))


def test_printed_units():
    assert plan.to_printed_unit("MR", 0.998) == pytest.approx(99.8)
    assert plan.to_printed_unit("ASS", 0.5) == 0.5
    assert plan.to_printed_unit("CAV", None) is None


# ------------------------------------------------------------------------------------------------ registries agree
def test_plan_rows_name_registered_attacks_and_defences_and_their_notebooks_run_them():
    for col in plan.PLAN:
        assert (col.attack is None) or col.attack in ATTACKS, col.id
        assert (col.defence is None) or col.defence in DEFENCES, col.id
        nb = (repo_root() / "notebooks" / col.notebook).read_text()
        # An attack or defence column runs the attack or defence notebook with its registry entry as the
        # ``attack``/``defence`` parameter (passed by the pipeline); the chapters run their own setup.
        what = "attack=attack" if col.attack else "defence=defence" if col.defence \
            else f"{col.table}.setup(" if col.table in ("security", "training") else "findings=True"
        assert what in nb, f"{col.notebook} does not run {what} for column {col.id}"
        assert not col.defence or col.notebook == "defence.ipynb", col.id
        assert not col.attack or col.notebook in ATTACK_NOTEBOOKS, col.id
        if col.contrasts_with:
            assert col.contrasts_with in plan.COLUMNS


def _outside_the_rules(columns) -> list:
    """Plan columns' hyper-parameters that their attack or defence does not take, or that its registry rule refuses."""
    from repro.train import DEFENCES

    bad = []
    for col in columns:
        if not (col.attack or col.defence):
            continue
        rules = ATTACKS[col.attack].rules if col.attack else DEFENCES[col.defence].params_type.RULES
        names = set(steps.attack_parameters(col.attack) if col.attack else steps.defence_parameters(col.defence))
        for k, v in col.parameters.items():
            if k in names:
                try:
                    rules[k].check(k, v)
                except ValueError as err:
                    bad.append((col.id, k, str(err)))
    return bad


def test_every_hyper_parameter_a_plan_column_passes_is_within_its_registry_rule():
    # The rules live in the registry entries (a parameter without one cannot register: test_attacks, test_train);
    # here every plan value passes them, and a planted bad value is caught.
    assert not _outside_the_rules(plan.PLAN)
    col = plan.COLUMNS["pgd_resnet20"]
    planted = dataclasses.replace(col, parameters={**col.parameters, "step_size": 0})
    assert _outside_the_rules([planted]) == [("pgd_resnet20", "step_size",
                                              "step_size must be a finite number > 0, got 0")]


def test_the_command_line_and_the_notebooks_check_defence_parameters_by_the_same_rules():
    """Before: ``python -m repro.train`` accepted sigma = 0, eps_max = 2 and step_size = 0, which the notebooks
    refused (two homes that disagreed). Both now read the parameters type's rules."""
    from repro.train import NATParams, PATParams

    base = {k: v for k, v in _parameters_cell("defence.ipynb").items() if k != "defence"} | {"device": "cpu"}
    for defence, params_type, bad in (("nat", NATParams, {"sigma": 0.0}), ("nat", NATParams, {"eps_max": 2.0}),
                                      ("pat", PATParams, {"step_size": 0.0})):
        name, value = next(iter(bad.items()))
        setting = {**dataclasses.asdict(DEFENCES[defence].configs["deepsec_mnist"]), **bad}
        with pytest.raises(ValueError, match=f"{name} must be"):
            params_type(**setting).check()
        with pytest.raises(steps.ParameterError, match=f"{name} must be"):
            steps.resolve(defence=defence, **{**base, "dataset": "mnist", "model": "mnist_convnet", name: value})


def test_profile_attack_budgets_name_real_attack_parameters():
    for prof in PROFILES.values():
        for attack, budget in prof.attacks.items():
            if attack != "default":
                assert set(budget.iterations) <= set(steps.attack_parameters(attack)), (prof.name, attack)


def test_corrected_columns_change_only_the_unit_of_eps():
    for col in plan.PLAN:
        if col.contrasts_with:
            literal = plan.COLUMNS[col.contrasts_with].parameters
            ours = col.parameters
            assert {k for k in ours if ours[k] != literal[k]} == {"eps", "step_size"}, col.id
            assert ours["eps"] == pytest.approx(literal["eps"] / 255)
            assert ours["step_size"] == pytest.approx(literal["step_size"] / 255)


# ---------------------------------------------------------------------- one profile → TrainConfig, for CLI and book
@pytest.mark.parametrize("col_id", ["nat_mnist", "pat_resnet20", "pat_eps8_wide"])
@pytest.mark.parametrize("profile", ["quick", "paper"])  # smoke cuts PAT's steps, which no named variant has
def test_command_line_and_notebook_configure_the_same_training(col_id, profile):
    from repro.train.__main__ import config_from_args, parse_args

    col = plan.column(col_id)
    params = {**_parameters_cell(col.notebook), **col.parameters_for(profile), "column": col.id, "device": "cpu"}
    ctx = steps.Context(kind="defence", name=col.defence, params=_resolve(col, **params),
                              profile=get_profile(profile), device="cpu", started=0.0)
    p = ctx.params
    defence_params = DEFENCES[col.defence].params_type(
        **{k: p[k] for k in steps.defence_parameters(col.defence) if k in p})
    notebook = models.config_of(ctx, defence_params=defence_params)
    variant = {("pat", 8.0): "followup_eps8", ("pat", 8 / 255): "deepsec_cifar10"}.get(
        (col.defence, p.get("eps")), "deepsec_mnist")
    argv = ["--dataset", p["dataset"], "--model", p["model"], "--defence", col.defence, "--variant", variant,
            "--profile", profile, "--device", "cpu"]
    cli = config_from_args(parse_args(argv))
    assert config_key(cli) == config_key(notebook)
    assert config_key(cli.init) == config_key(notebook.init) if not isinstance(cli.init, str) else \
        cli.init == notebook.init


def test_the_profiles_defence_parameters_reach_every_path_and_an_arm_or_an_explicit_value_keeps_its_own():
    """quick's PAT training ramps ε over 0.4 epochs (DefenceTraining.defence_params): the notebook, the command line
    and the chapters' roster all train with it; an explicit eps_ramp in the notebook, an ablation arm that names
    none, and the paper profile do not. Before, the ramp was an arm's alone and the profile could not set it."""
    from repro.study import roster
    from repro.train.__main__ import config_from_args, parse_args

    col = plan.column("pat_resnet20")

    def notebook(profile: str, **given):
        params = {**_parameters_cell(col.notebook), **col.parameters_for(profile), "column": col.id, "device": "cpu",
                  **given}
        return _resolve(col, **params)["eps_ramp"]

    assert notebook("quick") == 0.4 and notebook("quick", eps_ramp=0.0) == 0.0 and notebook("paper") == 0.0
    spec = next(s for s in roster.SECURITY_MODELS["cifar10"] if s.id == "pat_resnet20")
    assert roster.model_config(spec, "quick", device="cpu").defence_params.eps_ramp == 0.4
    assert roster.model_config(spec, "paper", device="cpu").defence_params.eps_ramp == 0.0
    cli = config_from_args(parse_args(["--dataset", "cifar10", "--defence", "pat", "--variant", "deepsec_cifar10",
                                       "--profile", "quick", "--device", "cpu"]))
    assert cli.defence_params.eps_ramp == 0.4 and cli.jpeg_fill and cli.epochs == 1
    # the chapters' own path to each arm's configuration (study.roster.notebook_config)
    cell = {**_parameters_cell("training.ipynb"), "device": "cpu", "profile": "quick", "dataset": "cifar10"}
    ctx = steps.Context(kind="training", name="training", params=training.resolve(**cell),
                        profile=get_profile("quick"), device="cpu", started=0.0)
    arms = [m for m in training.trained_models("cifar10", "quick") if m.arm_index is not None]
    previous = [a for a in get_profile("quick").defence.ablation if not a.training.defence_params]
    assert previous and len(arms) == len(get_profile("quick").defence.ablation)
    for model in arms:
        arm = get_profile("quick").defence.ablation[model.arm_index]
        config = roster.notebook_config(model, ctx)
        want = arm.training.defence_params.get("eps_ramp", 0.0)  # an arm naming none keeps the column's 0
        assert (config.defence_params.eps_ramp, config.jpeg_fill, config.epochs) == \
            (want, arm.training.jpeg_fill, arm.training.epochs), arm.label
    own = next(m for m in training.trained_models("cifar10", "quick") if m.spec.id == "pat_resnet20")
    assert roster.notebook_config(own, ctx).defence_params.eps_ramp == 0.4
    # a notebook's defence budget reaches the column's own model, never an arm (whose training is its own)
    longer = dataclasses.replace(ctx, params={**ctx.params, "defence_epochs": 7})
    assert roster.notebook_config(own, longer).epochs == 7
    assert [roster.notebook_config(m, longer).epochs for m in arms] == [roster.notebook_config(m, ctx).epochs
                                                                        for m in arms]
    # the command line reaches the previous recipe's arm (and its published model's key) by its flags
    (before,) = [a for a in previous if a.training.recipe == "pat_finetune_cifar10"]
    argv = ["--dataset", "cifar10", "--defence", "pat", "--profile", "quick", "--device", "cpu", "--epochs", "5",
            "--no-jpeg-fill", "--eps-ramp", "0"]
    arm_config = roster.model_config(spec, "quick", defence_epochs=5, defence_jpeg_fill=False, defence_params={},
                                     device="cpu")
    assert config_key(config_from_args(parse_args(argv))) == config_key(arm_config)
    # the arms that change only the recipe (the optimiser, label smoothing) are reached by --recipe alone
    own_training = get_profile("quick").defence.for_dataset("cifar10")
    recipe_only = [m for m in arms if dataclasses.replace(get_profile("quick").defence.ablation[m.arm_index].training,
                                                          recipe=own_training.recipe) == own_training]
    assert len(recipe_only) == 2
    for model in recipe_only:
        recipe = get_profile("quick").defence.ablation[model.arm_index].training.recipe
        argv = ["--dataset", "cifar10", "--defence", "pat", "--profile", "quick", "--device", "cpu", "--recipe", recipe]
        assert config_key(config_from_args(parse_args(argv))) == config_key(roster.notebook_config(model, ctx))
    (text,) = [d for d in plan.departures(col, "quick") if "eps_ramp" in d]
    assert "DeepSec" not in text  # the follow-up's columns have the ramp too, and neither paper has one
    assert "eps_ramp = 0.4" in text and not [d for d in plan.departures(col, "paper") if "eps_ramp" in d]


# Fingerprints: tests/test_hermetic.py.


def test_a_fine_tuned_defences_starting_point_is_worded_from_its_own_raw_model():
    """Before: every fine-tuned column said its weights came from DeepSec's checkpoint, "ended at a learning rate of
    1e-4", also the wide columns, which start from a model trained here (and DeepSec's schedule ends at 5e-7)."""
    def init_text(column: str, profile: str) -> str:
        (text,) = [d for d in plan.departures(plan.COLUMNS[column], profile) if "fine-tuned" in d]
        return text

    on_checkpoint, on_ours = init_text("pat_resnet20", "quick"), init_text("pat_eps8_wide", "quick")
    assert "DeepSec's released checkpoint" in on_checkpoint and "5e-07" in on_checkpoint
    raw_epochs = get_profile("quick").raw.epochs
    assert "trained here" in on_ours and f"for {raw_epochs} of the 200 epochs" in on_ours
    assert "checkpoint" not in on_ours and "1e-4" not in on_ours + on_checkpoint
    # DeepSec's MNIST recipe has no schedule: a constant rate, not an end of one
    assert "constant learning rate of 0.05" in init_text("nat_mnist", "smoke")
    assert not [d for d in plan.departures(plan.COLUMNS["pat_resnet20"], "paper") if "fine-tuned" in d]


def test_findings_tables_print_every_success_rate_with_its_interval():
    """Before: the ε = 8 and logit-shift tables printed MR as a bare percentage, although Methods promises an
    interval for every rate."""
    import re

    from repro.report import findings as findings_report

    evidence = json.loads((repo_root() / "results" / "smoke" / "findings.json").read_text())["extra"]
    tables = findings_report.evidence_tables(evidence)
    with_interval = re.compile(r"^\d+\.\d % \[\d+\.\d, \d+\.\d\]$")
    assert all(with_interval.match(cell) for cell in tables["eps8"][1][1:3]), tables["eps8"][1]
    rates = [row for row in tables["shift"][1:] if ": MR" in row[0]]
    assert len(rates) == 6 and all(with_interval.match(cell) for row in rates for cell in row[1:]), tables["shift"]
    # shares of pixels too (before: "68.8 %" bare), their interval over images
    shares = [row for row in tables["eps8"] if "0 or 1" in row[0]]
    assert len(shares) == 2 and all(with_interval.match(cell) for row in shares for cell in row[1:3]), shares


def test_float32_rounds_a_confident_true_class_to_probability_one_and_only_the_shift_restores_its_gradient():
    """The arithmetic behind Findings §4, by hand: logits (30, 0, 0): in float32 softmax gives the true class
    exactly 1 while each other class keeps e^-30 ≈ 9.4e-14. PyTorch's cross-entropy gradient for the true logit,
    p − 1, is then exactly 0 (exact value −2e^-30); through the max-shift the subtracted maximum's gradient path
    adds it back."""
    for shifted, expected_true in ((False, 0.0), (True, -2 * math.exp(-30))):
        z = torch.tensor([[30.0, 0.0, 0.0]], requires_grad=True)
        logits = z - z.amax(dim=1, keepdim=True) if shifted else z  # DeepSec's shift (repro.models' MNIST model)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, torch.tensor([0])), z)
        assert torch.softmax(z, 1)[0, 0].item() == 1.0
        assert grad[0, 1].item() == pytest.approx(math.exp(-30), rel=1e-5)  # the other classes' pull survives
        assert grad[0, 0].item() == pytest.approx(expected_true, rel=1e-5, abs=0.0)


def test_the_logit_shift_judgement_needs_the_gap_on_the_rounded_images_and_the_gradients_apart():
    from repro.study import findings

    def evidence(*, shift_rounded, plain_rounded, far, near=1.0, shift_other=140, plain_other=140):
        return {"float32": {"rounded": 150, "other": 150,
                            "cosine_to_float64": {"shift": {"rounded": near, "other": 1.0},
                                                  "no_shift": {"rounded": far, "other": 1.0}},
                            "successes": {"fgsm": {"shift": {"rounded": shift_rounded, "other": shift_other},
                                                   "no_shift": {"rounded": plain_rounded, "other": plain_other}}}}}

    assert findings.shift_explained(evidence(shift_rounded=100, plain_rounded=10, far=-0.5)) == \
        {"gap": 90, "gap_rounded": 90, "explained": True}
    # the gradients agree on the rounded images: the rounding is not why
    assert not findings.shift_explained(evidence(shift_rounded=100, plain_rounded=10, far=0.95))["explained"]
    # most of the gap is on the other images
    assert not findings.shift_explained(evidence(shift_rounded=20, plain_rounded=10, far=-0.5,
                                                 shift_other=140, plain_other=60))["explained"]
    assert not findings.shift_explained(evidence(shift_rounded=10, plain_rounded=10, far=-0.5))["explained"]


@needs_deepsec
def test_on_deepsecs_mnist_model_the_shifted_gradient_is_the_float64_one_and_the_plain_one_is_not():
    """The measurement behind Findings §4 on real data: on DeepSec's released MNIST model some candidates round
    their true-class probability to 1 in float32; there the unshifted model's input gradient points away from the
    float64 gradient, the shifted one's does not, and elsewhere both agree with it."""
    from repro.study import findings

    ev = findings.logit_shift_evidence("mnist", n=60, batch_size=60, device="cpu", seed=100)
    f32 = ev["float32"]
    assert f32["rounded"] + f32["other"] == ev["n"] == 60 and f32["rounded"] >= 10
    cos = f32["cosine_to_float64"]
    assert cos["shift"]["rounded"] > 0.99 and cos["shift"]["other"] > 0.99 and cos["no_shift"]["other"] > 0.99
    assert cos["no_shift"]["rounded"] < 0.5
    for attack in ("fgsm", "pgd"):
        for key in ("shift", "no_shift"):
            hits = f32["successes"][attack][key]
            assert hits["rounded"] <= f32["rounded"] and hits["other"] <= f32["other"]
            assert hits["rounded"] + hits["other"] == round(ev[attack][key] * 60)


def test_one_defence_notebook_serves_every_defence():
    """defence.ipynb's hyper-parameters default to None: DeepSec's setting for the dataset (the registry's
    ``deepsec_<dataset>``); a parameter of the other defence must stay None."""
    cell = {**_parameters_cell("defence.ipynb"), "device": "cpu"}
    cell.pop("defence")
    nat = steps.resolve(defence="nat", **{**cell, "dataset": "mnist", "model": "mnist_convnet"})
    assert (nat["sigma"], nat["eps_max"], nat["adv_weight"]) == (50.0, 0.3, 0.3)
    assert not {"eps", "step_size", "steps"} & set(nat)  # PAT's, dropped
    pat = steps.resolve(defence="pat", **cell)
    assert (pat["eps"], pat["step_size"], pat["steps"]) == (8 / 255, 2 / 255, 7)
    assert "sigma" not in pat
    assert steps.resolve(defence="pat", **{**cell, "eps": 8.0})["eps"] == 8.0
    with pytest.raises(steps.ParameterError, match="eps is a parameter of defence 'pat', not of 'nat'"):
        steps.resolve(defence="nat", **{**cell, "dataset": "mnist", "model": "mnist_convnet", "eps": 0.3})
    with pytest.raises(steps.ParameterError, match="sigma"):
        steps.resolve(defence="pat", **{**cell, "sigma": 0.0})


def test_figures_are_titled_by_the_column_or_by_what_ran():
    # Before: the adversarial grid was titled with the result's file name ("pgd_adhoc", "pgd_resnet20").
    base = {**_setup_cell("pgd.ipynb"), "device": "cpu"}
    p = steps.resolve(attack="pgd", **{**base, "eps": 8.0})
    ctx = steps.Context(kind="attack", name="pgd", params=p, profile=get_profile(p["profile"]), device="cpu",
                              started=0.0)
    title = steps.run_title(ctx)
    assert title.startswith("pgd on resnet20: ") and "eps 8" in title and "steps " in title
    staged = {**p, "column": "pgd_resnet20", "results_dir": str(results_mod.PIPELINE_STAGING)}
    assert steps.run_title(steps.Context(kind="attack", name="pgd", params=staged,
                                                     profile=ctx.profile, device="cpu", started=0.0)) \
        == plan.column("pgd_resnet20").title


def test_anchors_are_read_from_the_published_folder_and_looked_up_by_id():
    madry = plan.anchor("madry_wrn")
    assert (madry.clean, madry.pgd) == pytest.approx((0.873, 0.458)) and madry.autoattack is None
    assert plan.anchor("followup_cites_madry_standard").pgd == pytest.approx(0.471)
    assert all(a.clean is None or 0 < a.clean <= 1 for a in plan.anchors())
    with pytest.raises(ValueError, match="unknown anchor 'madry'"):
        plan.anchor("madry")


# ------------------------------------------------------------------------------ one notebook per kind, no copies
ATTACK_NOTEBOOKS = ("attack.ipynb", "pgd.ipynb", "cw2.ipynb")


def _code_cells(notebook: str) -> list[str]:
    nb = json.loads((repo_root() / "notebooks" / notebook).read_text())
    return ["".join(c["source"]) for c in nb["cells"]
            if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", [])]


def test_the_attack_notebooks_are_one_notebook_with_other_defaults():
    """pgd.ipynb and cw2.ipynb (the documented interfaces) are attack.ipynb with PGD's and CW2's defaults: the same
    code cells and the same parameter names, so a new attack column needs no copied notebook."""
    reference = _code_cells("attack.ipynb")
    for notebook in ATTACK_NOTEBOOKS[1:]:
        assert _code_cells(notebook) == reference, f"{notebook}'s code differs from attack.ipynb's"
        assert list(_parameters_cell(notebook)) == list(_parameters_cell("attack.ipynb")), notebook
    assert _parameters_cell("pgd.ipynb")["attack"] == "pgd" and _parameters_cell("cw2.ipynb")["attack"] == "cw2"


def test_the_attack_and_defence_notebooks_declare_every_registered_hyper_parameter():
    """A new attack or defence whose hyper-parameter the shared notebook lacks fails here, naming it (one line to add
    to the parameters cells, not a notebook to copy)."""
    from repro.study.context import attack_parameters, defence_parameters

    # Library switches the study never varies: PGD's random start and CW2's early abort (both DeepSec's settings),
    # and PAT's loss (DeepSec's mixed loss in every table column; Madry's is a named setting, madry_cifar10).
    unvaried = {"random_start", "abort_early", "loss"}
    declared = set(_parameters_cell("attack.ipynb")) | unvaried
    assert not {(a, n) for a in ATTACKS for n in attack_parameters(a) if n not in declared}
    declared = set(_parameters_cell("defence.ipynb")) | unvaried
    assert not {(d, n) for d in DEFENCES for n in defence_parameters(d) if n not in declared}
    assert ("pgd", "eps") in {(a, n) for a in ATTACKS for n in attack_parameters(a)} - (declared - {"eps"})


def _setup_keywords(notebook: str) -> dict[str, str]:
    """keyword → the name passed, for the ``study.setup(...)`` call of ``notebook``'s code cells."""
    out = {}
    for source in _code_cells(notebook):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "setup":
                out.update({k.arg: getattr(k.value, "id", None) for k in node.keywords})
    return out


@pytest.mark.parametrize("notebook", [*ATTACK_NOTEBOOKS, "defence.ipynb"])
def test_every_declared_parameter_reaches_the_setup_call(notebook):
    """Found by adding MI-FGSM in a scratch branch: a new name declared in the parameters cell but not passed to
    ``study.setup`` is refused when the pipeline injects it ("unknown notebook parameter"), with every test green."""
    passed = _setup_keywords(notebook)
    assert {name: name for name in _parameters_cell(notebook)} == passed, notebook
    assert _setup_keywords("pgd.ipynb")["eps"] == "eps"


@pytest.fixture
def throwaway(monkeypatch, tmp_path):
    """A throwaway attack and a throwaway defence registered with the minimum: a function with a rule per
    hyper-parameter and a DeepSec-named setting; a parameters type with its rules, a craft, a loss and a cost."""
    import dataclasses as dc

    from repro.attacks import Attack
    from repro.attacks import registry as attack_registry
    from repro.checks import number
    from repro.train import defences

    def shove(model, x, y, *, eps: float):
        """Every pixel moved by ε towards grey: an attack with one hyper-parameter."""
        return (x + eps * torch.sign(0.5 - x)).clamp(0, 1)

    monkeypatch.setitem(attack_registry.ATTACKS, "shove", Attack(
        "shove", shove, {"deepsec_mnist": {"eps": 0.3}}, {"eps": number()}, cost=lambda p: 0))

    @dc.dataclass(frozen=True)
    class ShoveParams(defences.Checked):
        eps: float
        RULES = {"eps": number()}

    def craft(net, x, y, params, *, drawn, progress, generator):
        return shove(net, x, y, eps=params.eps)

    monkeypatch.setitem(defences.DEFENCES, "shove", defences.Defence(
        name="shove", params_type=ShoveParams, configs={"deepsec_mnist": ShoveParams(eps=0.3)}, craft=craft,
        loss=lambda logits_of, mean_ce, x, x_adv, params: mean_ce(logits_of(x_adv)), passes=lambda params: 2))
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    return tmp_path


@needs_deepsec
def test_a_throwaway_attack_and_defence_run_as_columns(throwaway, one_thread):
    """Registered with the minimum, both run through the shared notebooks' steps under smoke, end to end, to one
    result each; their parameters are checked by their rules."""
    cell = {k: v for k, v in _parameters_cell("attack.ipynb").items() if k != "attack"}
    common = {"profile": "smoke", "dataset": "mnist", "model": "mnist_convnet", "device": "cpu",
              "results_dir": str(throwaway / "runs")}
    ctx = steps.setup(attack="shove", **{**cell, **common, "column": "shove_adhoc"})
    assert ctx.params["eps"] == 0.3 and "steps" not in ctx.params  # DeepSec's setting; PGD's parameters dropped
    raw = steps.raw_model(ctx)
    cands = steps.candidates(ctx, raw)
    run = steps.attack(ctx, raw, cands)
    result = steps.finish(ctx, steps.attack_metrics(ctx, raw, cands, run))
    assert result.kind == "attack" and 0 <= result.metrics["MR"] <= 1
    with pytest.raises(steps.ParameterError, match="eps must be a finite number >= 0, got -1"):
        steps.resolve(attack="shove", **{**cell, **common, "column": "shove_adhoc", "eps": -1})

    cell = {k: v for k, v in _parameters_cell("defence.ipynb").items() if k != "defence"}
    ctx = steps.setup(defence="shove", **{**cell, **common, "column": "shove_defence", "steps": None,
                                          "step_size": None, "eps_ramp": None, "defence_epochs": 1,
                                          "defence_subset": 200, "eval_subset": 100, "curve_samples": 20,
                                          "curve_steps": 2})
    raw = steps.raw_model(ctx)
    defended = steps.defend(ctx, raw)
    result = steps.finish(ctx, steps.defence_metrics(ctx, raw, defended))
    assert result.kind == "defence" and 0 <= result.metrics["ACC_defended"] <= 1
    assert ctx.models["defended"]["config"]["defence"] == "shove"
