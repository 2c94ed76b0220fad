"""The security evaluation: worst cases, intervals, the AutoAttack wrapper, transfer versus white-box, the
gradient-masking rule, and the models' training configurations (the defence columns' cache keys). Tiny models on
CPU; no data needed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from repro import results
from repro.metrics import clopper_pearson
from repro.study import plan, security
from repro.study import steps as study
from repro.study.profiles import PROFILES, get_profile
from repro.train import DEFENCES, config_key

from .test_study import _parameters_cell

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread

N, SIDE, CLASSES = 24, 8, 10
EPS = 0.05


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 32), nn.ReLU(), nn.Linear(32, CLASSES)).eval()


class ZeroGradient(nn.Module):
    """A linear classifier on images rounded to a coarse grid: its input gradient is zero everywhere (a model whose
    gradients tell an attacker nothing, the textbook case of gradient masking)."""

    def __init__(self, side: int = SIDE):
        super().__init__()
        torch.manual_seed(1)
        self.linear = nn.Linear(side * side, CLASSES)

    def forward(self, x):
        return self.linear(torch.round(x * 4).flatten(1) / 4)


def images(model: nn.Module, n: int = N):
    """Random images labelled by ``model`` (so each is clean-correct), plus one mislabelled image."""
    torch.manual_seed(2)
    x = torch.rand(n, 1, SIDE, SIDE)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[-1] = (y[-1] + 1) % CLASSES
    return x, y


# ------------------------------------------------------------------------------------------------------ rates
def test_rate_has_the_exact_interval_its_n_and_recomputable_outcomes():
    correct = torch.tensor([True, False, True, True, False])
    r = security.rate(correct)
    assert (r["k"], r["n"], r["rate"]) == (3, 5, 0.6)
    assert (r["low"], r["high"]) == pytest.approx(clopper_pearson(3, 5))
    assert r["level"] == 0.95 and r["correct"] == "10110"
    assert security.rate_of(r["correct"]) == r
    assert torch.equal(security.unpack(security.pack(correct)), correct)


# ----------------------------------------------------------------------------------------------- worst cases
def test_worst_case_over_restarts_and_attacks_is_at_most_each():
    model = tiny_model()
    x, y = images(model)
    # few short steps, so that the random start matters and later restarts break more images
    one = security.pgd_worst_case(model, x, y, eps=EPS, step_size=EPS / 4, steps=3, restarts=1, seed=3)
    many = security.pgd_worst_case(model, x, y, eps=EPS, step_size=EPS / 4, steps=3, restarts=4, seed=3)
    assert many["rate"] < one["rate"]
    assert many["after_restart"] == sorted(many["after_restart"], reverse=True)
    assert many["after_restart"][0] == one["k"]  # the first start is the same
    clean = security.predict_correct(model, x, y)
    assert not clean[-1] and many["correct"][-1] == "0"  # a misclassified image is never robust
    aa = security.autoattack_eval(model, x, y, eps=EPS, version="custom", attacks=("apgd-ce",), iterations=5, seed=3)
    robust = security.rate(security.unpack(many["correct"]) & security.unpack(aa["correct"]))
    assert robust["rate"] <= min(many["rate"], aa["rate"], security.rate(clean)["rate"])
    worst = security.unpack(robust["correct"])
    assert not (worst & ~security.unpack(many["correct"])).any() and not (worst & ~security.unpack(aa["correct"])).any()


# ------------------------------------------------------------------------------------------------ AutoAttack
def test_autoattack_wrapper_runs_and_returns_per_image_results():
    model = tiny_model()
    x, y = images(model)
    out = security.autoattack_eval(model, x, y, eps=EPS, version="custom", attacks=("apgd-ce", "apgd-t"),
                                   target_classes=2, iterations=5, seed=0)
    assert len(out["correct"]) == N and out["n"] == N
    assert [s["attack"] for s in out["stages"]] == ["apgd-ce", "apgd-t"]
    assert (out["target_classes"], out["iterations"]) == (2, 5)
    assert out["stages"][0]["attacked"] == N - 1  # the mislabelled image is not attacked: already wrong
    assert out["stages"][-1]["robust_after"] == out["k"]
    assert out["stages"][1]["attacked"] == out["stages"][0]["robust_after"]  # the cascade: only survivors go on
    assert out["seconds_per_image"] == pytest.approx(out["seconds"] / N)
    # AutoAttack is deterministic for a seed; robust images are classified correctly on their clean version
    again = security.autoattack_eval(model, x, y, eps=EPS, version="custom", attacks=("apgd-ce", "apgd-t"),
                                     target_classes=2, iterations=5, seed=0)
    assert again["correct"] == out["correct"]
    assert not (security.unpack(out["correct"]) & ~security.predict_correct(model, x, y)).any()


def test_standard_autoattack_runs_its_four_attacks():
    model = tiny_model()
    x, y = images(model, n=6)
    out = security.autoattack_eval(model, x, y, eps=0.01, version="standard", target_classes=1, iterations=2,
                                   square_queries=5, seed=0)
    assert out["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert len(out["stages"]) == 4 and len(out["correct"]) == 6


# --------------------------------------------------------------------------------------- transfer vs white-box
def test_transfer_from_the_model_itself_gives_the_white_box_number_exactly():
    model = tiny_model()
    x, y = images(model)
    attacks = {"fgsm": dict(eps=EPS), "pgd": dict(eps=EPS, step_size=EPS / 4, steps=5)}
    out = security.transfer_vs_white_box(model, model, x, y, attacks=attacks, seed=5)
    for name in attacks:
        assert out[name]["transfer"] == out[name]["white_box"]


def test_transfer_scores_examples_crafted_on_the_source_model():
    source, target = tiny_model(0), tiny_model(1)
    x, y = images(target)
    targets = security.random_targets(y, seed=0)
    assert (targets != y).all()
    attacks = {"fgsm": dict(eps=EPS), "cw2": dict(binary_search_steps=1, max_iterations=5, initial_const=1.0)}
    crafted: dict = {}
    out = security.transfer_vs_white_box(source, target, x, y, attacks=attacks, targets=targets, seed=0,
                                         crafted_on_source=crafted)
    from repro.attacks import run_attack

    on_source = run_attack("fgsm", source, x, y, params=attacks["fgsm"], progress=False, seed=0).x_adv
    assert torch.equal(crafted["fgsm"], on_source)
    assert out["fgsm"]["transfer"]["correct"] == security.pack(security.predict_correct(target, on_source, y))
    # a second defence of the same raw model reuses the crafted examples
    again = security.transfer_vs_white_box(source, target, x, y, attacks=attacks, targets=targets, seed=0,
                                           crafted_on_source=crafted)
    assert again["fgsm"]["transfer"] == out["fgsm"]["transfer"]


# ----------------------------------------------------------------------------------------- gradient masking
@pytest.mark.parametrize("case, expected", [
    (dict(white_box=0.40, square=0.30, steps_accuracy={1: 0.6, 100: 0.4}, large_eps_accuracy=0.0),
     ["square_beats_pgd"]),
    (dict(white_box=0.40, square=0.41, steps_accuracy={1: 0.6, 100: 0.4}, large_eps_accuracy=0.2),
     ["large_eps_not_zero"]),
    (dict(white_box=0.40, square=0.45, steps_accuracy={1: 0.4, 5: 0.5, 100: 0.43}, large_eps_accuracy=0.0),
     ["steps_hurt"]),
    # one step already as strong as 100 (a nearly linear loss): not a sign of masking
    (dict(white_box=0.24, square=0.32, steps_accuracy={1: 0.24, 5: 0.24, 100: 0.24}, large_eps_accuracy=0.0), []),
    (dict(white_box=0.40, square=0.45, steps_accuracy={1: 0.4, 100: 0.42}, large_eps_accuracy=0.0), []),
    # one step leaving 30 points more than 100 steps: single-step masking
    (dict(white_box=0.40, square=0.45, steps_accuracy={1: 0.7, 20: 0.45, 100: 0.4}, large_eps_accuracy=0.01),
     ["single_step_gap"]),
    # NAT on MNIST under quick (1 step 90 %, 100 steps 22 %) and Madry et al.'s CIFAR-10 model (FGSM 56.1 %, PGD
    # 45.8 %): the first is flagged, the second is not
    (dict(white_box=0.12, square=0.84, steps_accuracy={1: 0.90, 5: 0.6, 20: 0.3, 100: 0.22}, large_eps_accuracy=0.0),
     ["single_step_gap"]),
    (dict(white_box=0.458, square=0.47, steps_accuracy={1: 0.561, 100: 0.458}, large_eps_accuracy=0.0), []),
    (dict(white_box=0.40, square=0.45, steps_accuracy={1: 0.64, 100: 0.40}, large_eps_accuracy=0.0), []),
    (dict(white_box=0.0, square=0.0, steps_accuracy={1: 0.0, 100: 0.0}, large_eps_accuracy=0.0), []),
])
def test_masking_verdict_rule(case, expected):
    verdict = security.masking_verdict(**case)
    assert verdict["reasons"] == expected
    assert verdict["suspected"] is bool(expected)
    assert verdict["verdict"] == security.VERDICTS[bool(expected)]
    assert set(verdict["reasons"]) <= set(security.MASKING_RULES)


def test_a_model_whose_gradient_is_zero_everywhere_is_flagged():
    model = ZeroGradient().eval()
    x, y = images(model)
    x_probe = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x_probe), y), x_probe)
    assert (grad == 0).all()
    white = security.pgd_worst_case(model, x, y, eps=EPS, step_size=EPS / 4, steps=5, restarts=2, seed=0)
    out = security.masking_checks(model, x, y, eps=EPS, white_box=security.unpack(white["correct"]),
                                  steps_list=(1, 5, 20), eps_list=(EPS, 0.5, 1.0), eps_steps=5, square_queries=50)
    assert out["verdict"]["suspected"] and out["verdict"]["verdict"] == "masking suspected"
    assert "large_eps_not_zero" in out["verdict"]["reasons"]
    assert [r["steps"] for r in out["steps"]] == [1, 5, 20] and out["eps"][-1]["eps"] == 1.0


# ------------------------------------------------------------------------------------------ models and budgets
def _column_context(col: plan.Column, profile: str) -> study.Context:
    what = {"attack": col.attack} if col.attack else {"defence": col.defence}
    params = {**_parameters_cell(col.notebook), **col.parameters_for(profile), "column": col.id, "device": "cpu"}
    return study.Context(kind="attack" if col.attack else "defence", name=col.attack or col.defence,
                         params=study.resolve(**what, **params), profile=get_profile(profile), device="cpu",
                         started=0.0)


@pytest.mark.parametrize("profile", list(PROFILES))
def test_models_come_from_the_defence_columns_training_cache(profile):
    """Same cache keys as the columns whose models they are: each defended model as its defence column trains it,
    each raw model as that column's raw model (DeepSec's checkpoint where the profile loads it)."""
    prof = get_profile(profile)
    for specs in security.SECURITY_MODELS.values():
        for spec in specs:
            ctx = _column_context(plan.column(spec.column), profile)
            ours = security.model_config(spec, profile, device="cpu")
            if spec.role == "defended":
                p = ctx.params
                params = DEFENCES[ctx.name].params_type(
                    **{k: p[k] for k in study.defence_parameters(ctx.name) if k in p})
                assert config_key(ours) == config_key(study._config_of(ctx, defence_params=params)), spec.id
            elif study.uses_deepsec_checkpoint(ctx.params["model"], prof):
                assert ours is None, spec.id
            else:
                assert config_key(ours) == config_key(study._config_of(ctx)), spec.id
    # the wide raw model is the one the corrected PGD column attacks
    wide = next(s for s in security.SECURITY_MODELS["cifar10"] if s.id == "raw_wide")
    pgd_ctx = _column_context(plan.column("pgd_8_255_wide"), profile)
    assert config_key(security.model_config(wide, profile)) == config_key(study._config_of(pgd_ctx))


def test_every_transfer_source_is_a_raw_model_of_the_same_dataset():
    for specs in security.SECURITY_MODELS.values():
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
    p = study.resolve(security=True, **{**cell, "dataset": "mnist"})
    quick = get_profile("quick").security
    assert p["n_samples"] == quick.n_images and p["pgd_steps"] == 100  # Madry's MNIST evaluation
    assert p["curve_samples"] <= p["n_samples"] and p["width"] is None
    p = study.resolve(security=True, **{**cell, "n_samples": 5})
    assert p["width"] == get_profile("quick").wide_width and p["pgd_steps"] == 20
    assert p["transfer_samples"] == 5 and p["curve_samples"] == 5
    with pytest.raises(study.ParameterError, match="unknown dataset"):
        study.resolve(security=True, **{**cell, "dataset": "svhn"})
    with pytest.raises(study.ParameterError, match="width applies"):
        study.resolve(security=True, **{**cell, "dataset": "mnist", "width": 2})
    with pytest.raises(study.ParameterError, match="pgd_restarts must be"):
        study.resolve(security=True, **{**cell, "pgd_restarts": 0})


# ------------------------------------------------------------------------------------ the whole run, and the page
def test_evaluate_and_the_chapter_on_tiny_models(tmp_path):
    """The column's evaluation end to end under the smoke budget, on tiny MNIST-shaped models and random images,
    then the chapter generated from its result."""
    from repro import results
    from repro.report.security import security_page

    cell = {**_parameters_cell("security.ipynb"), "device": "cpu", "profile": "smoke", "dataset": "mnist",
            "column": "security_mnist", "results_dir": str(tmp_path)}
    ctx = study.Context(kind="security", name="security", params=study.resolve(security=True, **cell),
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
    assert found["masking"]["nat_mnist"]["verdict"]["verdict"] in security.VERDICTS.values()
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


def test_the_landing_pages_masking_summary_names_the_rule_and_its_numbers():
    from repro.report.security import MASKING_SHORT, masking_summary

    steps = [{"steps": s, "rate": r} for s, r in ((1, 0.9), (5, 0.6), (100, 0.22))]
    verdict = security.masking_verdict(white_box=0.12, square=0.84, steps_accuracy={1: 0.9, 5: 0.6, 100: 0.22},
                                       large_eps_accuracy=0.0)
    text = masking_summary({"verdict": verdict, "steps": steps})
    assert text == "masking suspected: one PGD step leaves far more than many (1 step: 90.0 %, 100: 22.0 %)"
    clean = security.masking_verdict(white_box=0.2, square=0.3, steps_accuracy={1: 0.26, 100: 0.22},
                                     large_eps_accuracy=0.0)
    assert masking_summary({"verdict": clean, "steps": steps}) == "no sign of masking"
    assert masking_summary(None) == "–"
    assert set(MASKING_SHORT) == set(security.MASKING_RULES)  # every rule has its few words
