"""The optimality benchmark's arithmetic (benchmarks/optimality.py) and the appendix built from its output.

The benchmark itself needs adv-lib, ART and DeepSec's checkpoints and runs for most of an hour, so it is run by hand
(its output is committed); here its metric is checked against hand-computed values and its pass counter against a
known number of passes.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import torch
from torch import nn

from repro import results
from repro.report import pages

pytestmark = pytest.mark.usefixtures("one_thread")


def _benchmark():
    path = results.repo_root() / "benchmarks" / "optimality.py"
    spec = importlib.util.spec_from_file_location("optimality_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_optimality_matches_hand_computed_areas():
    """Distances (per image) A = [1, 2, ∞], B = [2, 1, 2.5], C = [∞, ∞, ∞]: best = [1, 1, 2.5], d_max = 2.5,
    A* = mean(1, 1, 2.5) = 1.5; area(A) = mean(1, 2, 2.5) = 11/6, so optimality 1 − (11/6 − 1.5)/(2.5 − 1.5) = 2/3;
    B the same; C finds nothing: area 2.5, optimality 0. The per-image best itself scores 1."""
    inf = math.inf
    scores, d_max = _benchmark().optimality({"A": [1.0, 2.0, inf], "B": [2.0, 1.0, 2.5], "C": [inf, inf, inf],
                                             "best": [1.0, 1.0, 2.5]})
    assert d_max == 2.5
    assert scores["A"] == pytest.approx(2 / 3) and scores["B"] == pytest.approx(2 / 3)
    assert scores["C"] == pytest.approx(0.0) and scores["best"] == pytest.approx(1.0)


def test_pass_counter_counts_images_through_forward_and_backward():
    """Three forwards of 4 images, two of them differentiated: 12 forward and 8 backward image-passes."""
    counted = _benchmark().Counted(nn.Linear(3, 2))
    x = torch.rand(4, 3, requires_grad=True)
    for _ in range(2):
        torch.autograd.grad(counted(x).sum(), x)
    with torch.no_grad():
        counted(x)
    assert (counted.forwards, counted.backwards) == (12, 8)


def test_optimality_appendix_comes_from_the_benchmark_output(tmp_path, monkeypatch):
    """The appendix section is built from benchmarks/results/optimality_<device>.json: each attack's optimality and
    counted passes, and for each of ours the gap to the best library implementation (references excluded) with
    the ≤ 2-point verdict; without the file it says how to make one."""
    monkeypatch.setattr(pages.results_mod, "repo_root", lambda: tmp_path)
    figures = tmp_path / "figures"
    assert "has not been run" in pages.optimality_section(figures)
    folder = tmp_path / "benchmarks" / "results"
    folder.mkdir(parents=True)

    def attack(opt, d):
        return {"optimality": opt, "success": 1.0, "distances": d, "forwards_per_image": 10.0,
                "backwards_per_image": 9.0, "wall_s": 1.0, "ms_per_forward": 0.5}

    check = {"device": "a test CPU", "threads": 1, "torch": "x", "settings": {"cifar10_linf": {
        "dataset": "cifar10", "norm": "linf", "targeted": False, "n": 2, "budget": 10, "d_max": 0.02, "probes": 2,
        "steps": 5, "eps_max": 16 / 255, "attacks": {
            "ours PGD": attack(0.95, [0.01, 0.02]), "adv-lib PGD": attack(0.98, [0.01, 0.015]),
            "torchattacks PGD": attack(0.90, [0.02, 0.02]), "adv-lib FMN-L∞ (reference)": attack(1.0, [0.005, 0.01]),
        }}}}
    (folder / "optimality_cpu.json").write_text(json.dumps(check), encoding="utf-8")
    text = pages.optimality_section(figures)
    assert "a test CPU" in text and "| ours PGD | 0.950 |" in text and "10 / 9" in text
    assert "adv-lib PGD (0.980)" in text and "| -3.0 | **no** |" in text
    assert (figures / "optimality.png").is_file()
    # book/appendix.md includes this section: only a path from the source root resolves from the including page
    # (the build in tests/test_book.py checks that it does).
    assert "```{figure} /book/generated/figures/optimality.png" in text
