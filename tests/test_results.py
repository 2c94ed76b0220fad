"""repro.results: one JSON per run, written atomically, numbers stay numbers, fingerprints track code and params."""
from __future__ import annotations

import json
import math
from pathlib import Path

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


def test_provenance_records_versions_device_and_git():
    prov = results.provenance(device="cpu", wall_time_s=1.5, data={"mnist": {}}, models={"raw": {}})
    assert set(prov["versions"]) >= {"python", "torch", "torchvision"}
    assert prov["device"]["device"] == "cpu" and prov["device"]["name"]
    assert set(prov["git"]) == {"commit", "dirty"}
    assert prov["wall_time_s"] == 1.5


# ------------------------------------------------------------------------------------------ validated on load
def _committed(tmp_path, edit, column: str = "pgd_resnet20") -> Path:
    """A copy of the committed quick result of ``column`` with ``edit`` applied to its JSON."""
    data = json.loads((results.repo_root() / "results" / "quick" / f"{column}.json").read_text())
    edit(data)
    path = tmp_path / "quick" / f"{column}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _set(field, key, value):
    def edit(data):
        data[field][key] = value
    return edit


@pytest.mark.parametrize("edit, match", [
    (_set("metrics", "MR", 0.5), r"metrics\.MR = 0\.5; allowed: a value inside its own 95 % interval"),
    (_set("metrics", "MR", 1.5), r"metrics\.MR = 1\.5; allowed: a value in \[0\.0, 1\.0\]"),
    (_set("metrics", "MR", -0.2), r"metrics\.MR = -0\.2; allowed: a value in \[0\.0, 1\.0\]"),
    (_set("metrics", "MR", "99%"), r"metrics\.MR = '99%'; allowed: a finite number"),
    (_set("metrics", "MR", True), r"metrics\.MR = True; allowed: a finite number"),
    (_set("metrics", "MR", None), r"intervals\.MR = .*allowed: null: the metric is undefined"),
    (_set("metrics", "ALD_Linf", 0.0123), r"metrics\.ALD_Linf = 0\.0123; allowed: a value inside its own"),
    (_set("metrics", "ASS", 1.2), r"metrics\.ASS = 1\.2; allowed: a value in \[-1\.0, 1\.0\]"),
    (_set("intervals", "PSD", {"low": 1, "high": 2}), r"intervals\.PSD = .*exactly low, high, method and n"),
    (_set("intervals", "XYZ", None), r"intervals\.XYZ = None; allowed: an interval of a reported metric"),
    (lambda d: d["intervals"]["MR"].update(n=0), r"intervals\.MR\.n = 0; allowed: a positive count"),
    (lambda d: d["intervals"]["MR"].update(method="normal"), r"intervals\.MR\.method = 'normal'"),
    (lambda d: d.pop("metrics"), r"missing fields \['metrics'\]"),
    (lambda d: d.update(bogus=1), r"unknown fields \['bogus'\]"),
    (lambda d: d.update(parameters=[]), r"parameters = \[\]; allowed: a dict"),
    (lambda d: d.update(kind="raw"), r"kind = 'raw'; allowed: attack, defence, findings, security, training"),
])
def test_a_result_that_contradicts_itself_is_refused_by_file_and_field(tmp_path, edit, match):
    path = _committed(tmp_path, edit)
    with pytest.raises(results.ResultError, match=match) as err:
        results.load(path)
    assert str(path) in str(err.value)


def _security(edit):
    def apply(data):
        edit(data["extra"]["security"]["models"]["pat_resnet20"])
    return apply


@pytest.mark.parametrize("column, edit, match", [
    # one success fewer in the per-class counts than MR = 1.0 says
    ("pgd_resnet20", lambda d: d["extra"]["by_class"]["successes_per_true_class"].__setitem__(0, 90),
     r"metrics\.MR = 1\.0; allowed: \d+ / \d+ = 0\.99\d*, the rate of the per-class success counts"),
    # a stored rate that is not its k / n, a bit string with one 1 too many, a metric that is not its record's rate
    ("security_cifar10", _security(lambda m: m["clean"].update(rate=0.5)),
     r"extra\.security\.models\.pat_resnet20\.clean\.rate = 0\.5; allowed: k / n"),
    ("security_cifar10", _security(lambda m: m["pgd"].update(correct="1" + m["pgd"]["correct"][1:]
                                                            if m["pgd"]["correct"][0] == "0" else "0" * m["pgd"]["n"])),
     r"extra\.security\.models\.pat_resnet20\.pgd\.correct = .*allowed: n = 200 outcomes"),
    ("security_cifar10", lambda d: d["metrics"].update({"pat_resnet20/robust": 0.08}),
     r"metrics\.pat_resnet20/robust = 0\.08; allowed: .*the rate in extra\.security\.models\.pat_resnet20\.robust"),
])
def test_a_rate_that_disagrees_with_its_per_image_outcomes_is_refused(tmp_path, column, edit, match):
    path = _committed(tmp_path, edit, column)
    with pytest.raises(results.ResultError, match=match) as err:
        results.load(path)
    assert str(path) in str(err.value)


def test_an_unedited_result_and_a_truncated_one(tmp_path):
    path = _committed(tmp_path, lambda d: None)
    assert results.load(path).metrics["MR"] == 1.0  # the committed result itself passes
    path.write_text(path.read_text()[:200])
    with pytest.raises(results.ResultError, match=rf"{path}: not a JSON result file"):
        results.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(results.ResultError, match="one JSON object, not a list"):
        results.load(path)


def test_every_committed_result_passes_validation():
    paths = sorted((results.repo_root() / "results").glob("*/*.json"))
    assert len(paths) >= 30
    for path in paths:
        results.load(path)
