"""repro.results: one JSON per run, written atomically, numbers stay numbers, fingerprints track code and params."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from repro import results


def _result(**overrides) -> results.Result:
    fields = dict(column="pgd_resnet20", kind="attack", notebook="pgd.ipynb", profile="smoke",
                  parameters={"eps": 0.1, "steps": 15}, metrics={"MR": 1.0, "ASS": 0.78})
    fields.update(overrides)
    return results.Result(**fields)


def test_round_trip(tmp_path):
    path = results.save(_result(extra={"curve": [0.1, 0.2]}), tmp_path / "smoke" / "x.json")
    back = results.load(path)
    assert back.metrics == {"MR": 1.0, "ASS": 0.78}
    assert back.parameters == {"eps": 0.1, "steps": 15}
    assert back.extra == {"curve": [0.1, 0.2]}
    assert back.created  # filled on save
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary file left behind


def test_numbers_are_stored_as_numbers_and_nan_as_null(tmp_path):
    metrics = {"MR": np.float32(0.5), "n": np.int64(3), "ACAC": math.nan, "t": torch.tensor(0.25), "inf": math.inf}
    path = results.save(_result(metrics=metrics), tmp_path / "r.json")
    raw = json.loads(path.read_text())
    assert raw["metrics"] == {"MR": 0.5, "n": 3, "ACAC": None, "t": 0.25, "inf": None}
    assert isinstance(raw["metrics"]["n"], int)


def test_unstorable_value_is_an_error(tmp_path):
    with pytest.raises(TypeError, match="cannot store"):
        results.save(_result(metrics={"MR": object()}), tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = results.save(_result(), tmp_path / "r.json")
    before = path.read_text()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        results.save(_result(metrics={"MR": 0.0}), path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_schema_mismatch_is_refused(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**_result().to_json(), "schema": 999}))
    with pytest.raises(ValueError, match="schema"):
        results.load(path)


def test_relative_paths_are_taken_from_the_repository_root():
    assert results.result_path("results", "quick", "cw2_mnist") == results.repo_root() / "results/quick/cw2_mnist.json"
    assert (results.repo_root() / "pyproject.toml").exists()


def test_load_profile_reads_every_result(tmp_path):
    for name in ("a", "b"):
        results.save(_result(column=name), results.result_path(tmp_path, "smoke", name))
    assert sorted(results.load_profile(tmp_path, "smoke")) == ["a", "b"]


def test_fingerprint_tracks_parameters_and_sources(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "repo_root", lambda: tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "nb.ipynb").write_text("{}")
    sources = ("pkg", "nb.ipynb", "missing.py")
    base = results.fingerprint({"eps": 0.1}, sources)
    assert results.fingerprint({"eps": 0.1}, sources) == base
    assert results.fingerprint({"eps": 0.2}, sources) != base
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert results.fingerprint({"eps": 0.1}, sources) != base


def test_provenance_records_versions_device_and_git():
    prov = results.provenance(device="cpu", wall_time_s=1.5, data={"mnist": {}}, models={"raw": {}})
    assert set(prov["versions"]) >= {"python", "torch", "torchvision"}
    assert prov["device"]["device"] == "cpu" and prov["device"]["name"]
    assert set(prov["git"]) == {"commit", "dirty"}
    assert prov["wall_time_s"] == 1.5
