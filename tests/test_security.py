"""The security chapter: the models' training configurations (the defence columns' cache keys), budgets, notebook
parameters and the chapter end to end on tiny models (the evaluation itself: tests/test_robustness.py). Tiny models
on CPU; no data needed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from repro import results
from repro.metrics import robustness
from repro.study import models, plan, roster, security
from repro.study import steps as study
from repro.study.profiles import PROFILES, get_profile
from repro.train import DEFENCES, config_key

from .test_robustness import CLASSES
from .test_study import _parameters_cell, _setup_cell

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


# ------------------------------------------------------------------------------------------ models and budgets
def _column_context(col: plan.Column, profile: str) -> study.Context:
    what = {"attack": col.attack} if col.attack else {"defence": col.defence}
    params = {**_setup_cell(col.notebook), **col.parameters_for(profile), "column": col.id, "device": "cpu"}
    params.pop("defence", None)  # the defence notebook's own parameter: setup takes it as ``defence=``
    return study.Context(kind="attack" if col.attack else "defence", name=col.attack or col.defence,
                         params=study.resolve(**what, **params), profile=get_profile(profile), device="cpu",
                         started=0.0)


@pytest.mark.parametrize("profile", list(PROFILES))
def test_models_come_from_the_defence_columns_training_cache(profile):
    """Same cache keys as the columns whose models they are: each defended model as its defence column trains it,
    each raw model as that column's raw model (DeepSec's checkpoint where the profile loads it)."""
    prof = get_profile(profile)
    for specs in roster.SECURITY_MODELS.values():
        for spec in specs:
            ctx = _column_context(plan.column(spec.column), profile)
            ours = roster.model_config(spec, profile, device="cpu")
            if spec.role == "defended":
                p = ctx.params
                params = DEFENCES[ctx.name].params_type(
                    **{k: p[k] for k in models.defence_parameters(ctx.name) if k in p})
                assert config_key(ours) == config_key(models.config_of(ctx, defence_params=params)), spec.id
            elif models.uses_deepsec_checkpoint(ctx.params["model"], prof):
                assert ours is None, spec.id
            else:
                assert config_key(ours) == config_key(models.config_of(ctx)), spec.id
    # the wide raw model is the one the corrected PGD column attacks
    wide = next(s for s in roster.SECURITY_MODELS["cifar10"] if s.id == "raw_wide")
    pgd_ctx = _column_context(plan.column("pgd_8_255_wide"), profile)
    assert config_key(roster.model_config(wide, profile)) == config_key(models.config_of(pgd_ctx))


def test_every_transfer_source_is_a_raw_model_of_the_same_dataset():
    for specs in roster.SECURITY_MODELS.values():
        ids = {s.id: s for s in specs}
        for spec in specs:
            assert (spec.role == "defended") == (spec.transfer_from is not None)
            if spec.transfer_from:
                assert ids[spec.transfer_from].role == "raw"
                assert plan.column(spec.column).defence is not None


@pytest.mark.parametrize("profile", list(PROFILES))
def test_security_budgets_are_usable_and_the_paper_runs_standard_autoattack(profile):
    budget = get_profile(profile).security
    security.check_budget(budget)
    if profile == "paper":
        assert budget.autoattack_version == "standard" and budget.n_images is None
    else:
        assert security.budget_departures(get_profile(profile), "mnist")


def test_notebook_parameters_resolve_and_bad_ones_are_refused():
    cell = {**_parameters_cell("security.ipynb"), "device": "cpu", "profile": "quick"}
    p = security.resolve(**{**cell, "dataset": "mnist"})
    quick = get_profile("quick").security
    assert p["n_samples"] == quick.n_images and p["pgd_steps"] == 100  # Madry's MNIST evaluation
    assert p["curve_samples"] <= p["n_samples"] and p["width"] is None
    p = security.resolve(**{**cell, "n_samples": 5})
    assert p["width"] == get_profile("quick").wide_width and p["pgd_steps"] == 20
    assert p["transfer_samples"] == 5 and p["curve_samples"] == 5
    with pytest.raises(study.ParameterError, match="unknown dataset"):
        security.resolve(**{**cell, "dataset": "svhn"})
    with pytest.raises(study.ParameterError, match="width applies"):
        security.resolve(**{**cell, "dataset": "mnist", "width": 2})
    with pytest.raises(study.ParameterError, match="pgd_restarts must be"):
        security.resolve(**{**cell, "pgd_restarts": 0})


# ------------------------------------------------------------------------------------ the whole run, and the page
def test_evaluate_and_the_chapter_on_tiny_models(tmp_path):
    """The column's evaluation end to end under the smoke budget, on tiny MNIST-shaped models and random images,
    then the chapter generated from its result."""
    from repro import results
    from repro.report.security import security_page

    cell = {**_parameters_cell("security.ipynb"), "device": "cpu", "profile": "smoke", "dataset": "mnist",
            "column": "security_mnist", "results_dir": str(tmp_path)}
    ctx = study.Context(kind="security", name="security", params=security.resolve(**cell),
                        profile=get_profile("smoke"), device=torch.device("cpu"), started=0.0)
    torch.manual_seed(0)
    models = {"raw_mnist": nn.Sequential(nn.Flatten(), nn.Linear(784, CLASSES)).eval(),
              "nat_mnist": nn.Sequential(nn.Flatten(), nn.Linear(784, CLASSES)).eval()}
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        y = models["nat_mnist"](x).argmax(1)
    found = security.evaluate(ctx, models, x, y)
    assert set(found["models"]) == {"raw_mnist", "nat_mnist"} and set(found["transfer"]) == {"nat_mnist"}
    assert set(found["transfer"]["nat_mnist"]["attacks"]) == set(security.transfer_attacks("mnist", cw2_search_steps=1, cw2_iterations=1))
    assert found["masking"]["nat_mnist"]["verdict"]["verdict"] in robustness.VERDICTS.values()
    for rec in found["models"].values():
        assert rec["robust"]["rate"] <= min(rec["pgd"]["rate"], rec["autoattack"]["rate"], rec["clean"]["rate"])
        assert rec["robust"]["n"] == 8 and len(rec["robust"]["correct"]) == 8
    metrics = security.headline_metrics(found)
    assert metrics["nat_mnist/robust"] == found["models"]["nat_mnist"]["robust"]["rate"]
    assert ctx.intervals["nat_mnist/robust"]["n"] == 8
    result = results.Result(column="security_mnist", kind="security", notebook="security.ipynb", profile="smoke",
                            parameters=ctx.params, metrics=metrics, extra={"security": found})
    result = results.Result(**result.to_json())  # what a saved result reads back as
    page = security_page({"security_mnist": result}, "smoke", tmp_path / "figures")
    for text in ("## Robust accuracy", "## Gradient-masking checks", "## Anchors", "44.04 %",
                 "Clean accuracy is not robust accuracy", "40.25 %", "apgd-ce, apgd-t", "seconds per image"):
        assert text in page, text
    assert (tmp_path / "figures" / "security_transfer.png").exists()
    assert security_page({}, "smoke", tmp_path).count("Not computed") == 1
    # the transfer table pairs the two settings on the same images: the counts of the test are the bits' own
    from repro.metrics.uncertainty import mcnemar_exact as paired_test

    rec = found["transfer"]["nat_mnist"]["attacks"]["fgsm"]
    t = paired_test(rec["transfer"]["correct"], rec["white_box"]["correct"])
    assert f"{t['only_a']} / {t['only_b']}, p = {t['p']:.3f}" in page
    assert paired_test("1100", "1010") == {"only_a": 1, "only_b": 1, "p": 1.0}
    assert paired_test("1" * 10, "0" * 10)["p"] == pytest.approx(2 / 2**10)  # 10 discordant, all one way
    for bad in (("10", "1"), ("1x", "10")):
        with pytest.raises(ValueError, match="paired outcomes|0 or 1"):
            paired_test(*bad)


def test_ablation_arms_are_attacked_and_checked_for_masking_but_left_out_of_the_transfer_comparison(tmp_path,
                                                                                                       monkeypatch):
    """The profile's ablation arms are defended models of the security evaluation (worst case, masking checks)
    without a transfer source; the landing page's and the follow-up's model lists keep the study's own models."""
    from repro.report import security as report

    cell = {**_parameters_cell("security.ipynb"), "device": "cpu", "profile": "smoke", "dataset": "mnist",
            "column": "security_mnist", "results_dir": str(tmp_path)}
    ctx = study.Context(kind="security", name="security", params=security.resolve(**cell),
                        profile=get_profile("smoke"), device=torch.device("cpu"), started=0.0)
    nat = next(s for s in roster.SECURITY_MODELS["mnist"] if s.role == "defended")
    arm = roster.TrainedModel(roster.EvaluatedModel("nat_mnist_arm0", "MNIST ConvNet, NAT, ablation arm 0: x",
                                                    nat.column, "defended"), arm="x", arm_index=0)
    monkeypatch.setattr(security, "attacked_models",
                        lambda dataset, profile: tuple(roster.TrainedModel(s) for s in roster.SECURITY_MODELS[dataset])
                        + (arm,))
    torch.manual_seed(0)
    models = {mid: nn.Sequential(nn.Flatten(), nn.Linear(784, CLASSES)).eval()
              for mid in ("raw_mnist", "nat_mnist", "nat_mnist_arm0")}
    x = torch.rand(6, 1, 28, 28)
    y = torch.arange(6) % CLASSES
    found = security.evaluate(ctx, models, x, y)
    assert set(found["transfer"]) == {"nat_mnist"} and set(found["masking"]) == {"nat_mnist", "nat_mnist_arm0"}
    assert found["models"]["nat_mnist_arm0"]["arm"] == "x" and found["models"]["nat_mnist"]["arm"] is None
    assert set(security.study_models(found)) == {"raw_mnist", "nat_mnist"}
    assert "nat_mnist_arm0/robust" in security.headline_metrics(found)
    fig = report.masking_figure(found)
    labels = fig.axes[1].get_legend_handles_labels()[1]
    assert labels == ["MNIST ConvNet, NAT", "the training ablation's 1 arm (named in the table)"]
    result = results.Result(column="security_mnist", kind="security", notebook="security.ipynb", profile="smoke",
                            parameters=ctx.params, metrics=security.headline_metrics(found), extra={"security": found})
    page = report.security_page({"security_mnist": result}, "smoke", tmp_path / "figures")
    assert "The 1 arm of the training ablation" in page
    own, arm_rows = page.split("## Robust accuracy")[1].split("## What AutoAttack ran")[0].split(
        "The training ablation's arms (the training chapter), attacked the same way:")
    assert "| MNIST ConvNet, NAT |" in own and "ablation arm 0" not in own
    assert "| MNIST ConvNet, NAT, ablation arm 0: x |" in arm_rows and "| MNIST ConvNet, NAT |" not in arm_rows
    assert "| MNIST ConvNet, NAT, ablation arm 0: x |" in page.split("## Gradient-masking checks")[1]
    transfer = page.split("## Gradient-masking checks")[0].split("DeepSec's transfer")[-1]
    assert "ablation arm 0" not in transfer


def test_the_chapter_claims_autoattacks_square_check_only_where_it_can_fire():
    """Before: "Square beating the gradient attacks raised no warning" was printed for a subset without Square."""
    from repro.report import security as page

    def evaluation(attacks):
        aa = {"version": "custom", "attacks": attacks, "target_classes": 3, "iterations": 100,
              "seconds_per_image": 0.1, "seconds": 10.0, "checks": []}
        return {"c": {"models": {"m": {"label": "a model", "autoattack": aa}}}}

    found = {"c": results.Result(column="c", kind="security", notebook="security.ipynb", profile="smoke",
                                 parameters={}, metrics={})}
    without = "\n".join(page._autoattack_section(evaluation(["apgd-ce", "apgd-t"]), found))
    assert "Square beating" not in without and "cannot fire for a model" in without
    with_square = "\n".join(page._autoattack_section(evaluation(["apgd-ce", "square"]), found))
    assert "Square beating the gradient attacks) raised no warning" in with_square and "cannot fire" not in with_square
    # several models: all without Square are counted, not listed (their labels hold commas); some are listed
    two = evaluation(["apgd-ce", "apgd-t"])
    two["c"]["models"]["n"] = {**two["c"]["models"]["m"], "label": "another, model"}
    assert "cannot fire for any of the 2 models:" in "\n".join(page._autoattack_section(two, found))
    two["c"]["models"]["n"]["autoattack"] = {**two["c"]["models"]["m"]["autoattack"], "attacks": ["square"]}
    assert "cannot fire for a model:" in "\n".join(page._autoattack_section(two, found))


def test_the_landing_pages_masking_summary_names_the_rule_and_its_numbers():
    from repro.report.security import masking_summary
    from repro.report.templates import phrase

    steps = [{"steps": s, "rate": r} for s, r in ((1, 0.9), (5, 0.6), (100, 0.22))]
    verdict = robustness.masking_verdict(white_box=0.12, square=0.84, steps_accuracy={1: 0.9, 5: 0.6, 100: 0.22},
                                       large_eps_accuracy=0.0)
    text = masking_summary({"verdict": verdict, "steps": steps})
    assert text == "masking suspected: one PGD step leaves far more than many (1 step: 90.0 %, 100: 22.0 %)"
    clean = robustness.masking_verdict(white_box=0.2, square=0.3, steps_accuracy={1: 0.26, 100: 0.22},
                                     large_eps_accuracy=0.0)
    assert masking_summary({"verdict": clean, "steps": steps}) == "no sign of masking"
    assert masking_summary(None) == "–"
    # every rule has its few words (an unknown key would be shown as itself)
    assert all(phrase("masking_reason", key=k) != k for k in robustness.MASKING_RULES)
    assert phrase("masking_reason", key="new_rule") == "new_rule"


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_square_is_judged_against_the_gradient_attacks_worst_case(profile):
    """Before: Square was compared with PGD alone, so on the quick ResNet-20 PAT model one image that APGD and Square
    break and PGD misses read as "masking suspected" (AutoAttack's own check compares Square with its gradient
    attacks). The masking check's white-box outcomes are the robust (worst-case) record's, image by image."""
    from repro.report import pages

    found = pages.load_found(profile)
    checked = 0
    for result in found.values():
        sec = result.extra.get("security")
        for mid, chk in (sec or {}).get("masking", {}).items():
            n = chk["white_box"]["n"]
            assert chk["white_box"]["correct"] == sec["models"][mid]["robust"]["correct"][:n], mid
            checked += 1
    assert checked, f"no masking check in the committed {profile} results"
