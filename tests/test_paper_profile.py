"""Dry run of the `paper` profile on CPU: every column's notebook, with the paper's parameters and code paths
(raw models trained from scratch, defences from scratch, DeepSec's full CW2 search rule, ...) but budgets cut to
one batch and one step, so that a GPU run cannot fail on a path nothing exercised.

What is cut: candidates (2), training images (20, one batch), epochs (1), attack and PAT steps (1), CW2 search
(1 × 1), defence evaluation images, the accuracy-vs-ε curves, and — for CPU time only — the wide ResNet's width
(×1 instead of ×10; :func:`test_paper_wide_resnet_builds` runs one forward-backward pass of the ×10 network
instead). Everything
runs in a temporary results folder and training cache.
"""
from __future__ import annotations

import json

import pytest
import torch

from repro.pipeline import execute
from repro.study import plan
from repro.study.profiles import get_profile

from .conftest import needs_deepsec

pytestmark = [pytest.mark.slow, needs_deepsec]

TINY = {
    "n_samples": 2, "batch_size": 20, "epochs": 1, "train_subset": 20, "defence_epochs": 1, "defence_subset": 20,
    "eval_subset": 20, "curve_samples": 2, "curve_steps": 1, "binary_search_steps": 1, "max_iterations": 1,
    "pgd_steps": 1,
}


def _tiny(col: plan.Column) -> dict:
    from repro.attacks import ATTACKS
    from repro.study.context import attack_parameters

    params = col.parameters_for("paper")
    # The attack notebook declares every attack's hyper-parameters: another attack's must stay None.
    others = {n for a in ATTACKS if a != col.attack for n in attack_parameters(a)} - \
        set(attack_parameters(col.attack) if col.attack else ())
    overrides = {k: v for k, v in TINY.items() if k in _declared(col.notebook) and not (col.attack and k in others)}
    if "steps" in params:
        overrides["steps"] = 1
    if params.get("model") == "resnet20_wide" or params.get("dataset") == "cifar10" and col.table in ("security",
                                                                                                      "training"):
        overrides["width"] = 1
    return overrides


def _declared(notebook: str) -> set[str]:
    from .test_study import _parameters_cell

    return set(_parameters_cell(notebook))


@pytest.fixture(scope="module")
def paper_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPRO_CACHE", str(cache))  # inherited by the papermill kernels
        yield cache


# Seed replicates run the same notebooks as their columns with another seed: dry-running them adds nothing.
@pytest.mark.parametrize("col", [c for c in plan.columns_for("paper") if c.replicate_of is None], ids=lambda c: c.id)
def test_paper_column_runs_one_step(col, paper_cache, tmp_path):
    assert get_profile("paper").raw.source == "train"  # the dry run must exercise training the raw models
    overrides = _tiny(col)
    execute(col, "paper", results_dir=str(tmp_path), device="cpu", overrides=overrides, log=lambda *a: None)
    result = json.loads((tmp_path / "paper" / f"{col.id}.json").read_text())
    assert result["profile"] == "paper"
    for key, value in overrides.items():
        assert result["parameters"][key] == value
    assert result["metrics"], "the notebook saved no metrics"
    if col.defence:
        assert result["provenance"]["models"]["defended"]["config"]["train_images"] == 20
        assert result["provenance"]["models"]["defended"]["config"]["init"] == "scratch"
    if col.table in ("security", "training"):  # every model, raw or defended, trained here (from scratch)
        assert {m["source"] for m in result["provenance"]["models"].values()} == {"trained here"}
    elif col.notebook != "findings.ipynb":
        assert result["provenance"]["models"]["raw"]["source"] == "trained here"


def test_paper_wide_resnet_builds():
    from repro.models import build

    model = build("resnet20_wide", width=get_profile("paper").wide_width)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.shape == x.shape and torch.isfinite(grad).all()
