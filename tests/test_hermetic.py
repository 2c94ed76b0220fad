"""What makes the committed results reproducible on a new machine: fingerprints that follow the code a column runs,
training keys that follow the training code and data, trained models published with their checksums, and committed
results that are up to date with the code (or listed as pending, with the reason)."""
from __future__ import annotations

import dataclasses
import json
import shutil
import warnings

import pytest
import torch

from repro import _io, _source, results
from repro.study import plan
from repro.train import (PublishedModelError, TrainConfig, config_key, effective_config, publish, published_file,
                         read_index, train_cached)
from repro.train import config as train_config

from .conftest import needs_cifar10, needs_mnist

ROOT = results.repo_root()
PROFILES = ("smoke", "quick")


# ------------------------------------------------------------------------------------------------ fingerprints
def _rel(paths) -> set[str]:
    return {str(p.relative_to(ROOT)) for p in paths}


def test_a_fingerprint_covers_the_code_the_notebook_runs_and_not_the_report():
    sources = _rel(plan.fingerprint_sources(plan.column("pgd_resnet20")))
    for needed in ("notebooks/pgd.ipynb", "repro/attacks/pgd.py", "repro/metrics/attack.py", "repro/study/steps.py",
                   "repro/data.py", "repro/models/resnet.py", "repro/train/loop.py", "repro/__init__.py"):
        assert needed in sources, needed
    assert not {s for s in sources if s.startswith("repro/report/") or s == "repro/pipeline.py"}, sources


def test_the_closure_follows_relative_function_local_and_package_imports(tmp_path):
    names = _source.imported_names("from .. import data\nfrom ..attacks import pgd\n"
                                   "def f():\n    from .plan import COLUMNS\n", module="repro.study.steps")
    assert {"repro.data", "repro.attacks", "repro.attacks.pgd", "repro.study.plan"} <= names
    closure = _rel(_source.module_closure(["repro.study.plan"]))
    assert "repro/study/__init__.py" in closure and "repro/attacks/pgd.py" in closure
    with pytest.raises(ValueError, match="'repro.nope' is not a module"):
        _source.module_closure(["repro.nope"])


def test_the_fingerprint_changes_with_the_notebook_and_with_a_module_it_runs(monkeypatch):
    col = plan.column("pgd_resnet20")
    before = plan.fingerprint(col, "quick")
    assert plan.fingerprint(dataclasses.replace(col, departures=("other",)), "quick") != before
    assert plan.fingerprint(col, "smoke") != before
    real = _source.source_hash
    monkeypatch.setattr(_source, "source_hash", lambda paths: real(paths) + "planted")
    assert plan.fingerprint(col, "quick") != before


def test_source_hash_follows_file_contents(tmp_path, monkeypatch):
    monkeypatch.setattr(_source, "PACKAGE_DIR", tmp_path / "repro")
    (tmp_path / "repro").mkdir()
    f = tmp_path / "repro" / "a.py"
    f.write_text("x = 1\n")
    base = _source.source_hash([f])
    f.write_text("x = 2\n")
    assert _source.source_hash([f]) != base


# ------------------------------------------------------------------------------------------ training provenance
def test_the_training_code_is_the_library_it_runs_and_not_the_study():
    closure = _rel(_source.module_closure(train_config.TRAINING_CODE))
    for needed in ("repro/train/loop.py", "repro/train/defences.py", "repro/attacks/pgd.py", "repro/models/resnet.py",
                   "repro/data.py"):
        assert needed in closure, needed
    assert not {s for s in closure if s.startswith(("repro/study/", "repro/report/")) or s in (
        "repro/pipeline.py", "repro/results.py")}, closure


@needs_mnist
def test_the_training_key_holds_the_code_hash_and_the_data_digest(monkeypatch):
    config = TrainConfig(dataset="mnist", model="mnist_convnet", epochs=1, subset=100, device="cpu")
    eff = effective_config(config)
    assert eff["code"] == train_config.training_code_hash() and len(eff["train_data"]) == 64
    key = config_key(config)
    monkeypatch.setattr(train_config, "training_code_hash", lambda: "other code")
    assert config_key(config) != key
    monkeypatch.undo()
    monkeypatch.setattr(train_config, "digest", lambda dataset, split: "other images")
    assert config_key(config) != key


@needs_cifar10
def test_the_data_digest_sees_changed_pixels_that_keep_the_image_count(tmp_path):
    from repro import data

    src = data.data_root() / data.CIFAR10_FOLDER
    copy = tmp_path / data.CIFAR10_FOLDER
    shutil.copytree(src, copy)
    before = data.digest("cifar10", split="train", root=tmp_path)
    import pickle

    batch = next(p for p in sorted(copy.glob("data_batch_*")))
    with open(batch, "rb") as f:
        content = pickle.load(f, encoding="latin1")
    content["data"] = 255 - content["data"]
    with open(batch, "wb") as f:
        pickle.dump(content, f)
    n = len(data.load("cifar10", split="train", root=tmp_path)[1])
    assert n == len(data.load("cifar10", split="train", root=src.parent)[1])
    assert data.digest("cifar10", split="train", root=tmp_path) != before


@needs_mnist
def test_a_trained_model_records_what_trained_it_and_is_served_from_a_published_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(dataset="mnist", model="mnist_convnet", epochs=1, subset=100, history_subset=0,
                         device="cpu")
    trained = train_cached(config, progress=False)
    assert not trained.from_cache and trained.provenance["code"] == train_config.training_code_hash()
    assert set(trained.provenance["git"]) == {"commit", "dirty"}
    folder = tmp_path / "published"
    entry = publish(trained.checkpoint, folder)
    assert entry["sha256"] == _io.sha256_file(folder / f"{trained.key}.pt")
    assert read_index(folder)[trained.key] == entry

    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "empty-cache"))  # a new machine: no training cache
    served = train_cached(config, progress=False, published=folder)
    assert served.from_cache and served.checkpoint == folder / f"{trained.key}.pt"
    for a, b in zip(served.model.state_dict().values(), trained.model.state_dict().values()):
        assert torch.equal(a, b)

    with open(folder / f"{trained.key}.pt", "ab") as f:  # a damaged or edited published file is refused
        f.write(b"x")
    with pytest.raises(ValueError, match=rf"published model .*{trained.key}\.pt has sha256"):
        published_file(config, folder)
    (folder / "index.json").write_text("{}")
    with pytest.raises(PublishedModelError, match="is not listed in"):
        train_cached(config, progress=False, published=folder)


# --------------------------------------------------------------------------------------- the committed results
def _committed_trained_models(profile: str) -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted((ROOT / "results" / profile).glob("*.json")):
        for role, rec in results.load(path).provenance.get("models", {}).items():
            if isinstance(rec, dict) and rec.get("key"):
                out[(path.stem, role)] = rec
    return out


@pytest.mark.parametrize("profile", PROFILES)
def test_published_models_match_their_index_and_the_results_that_use_them(profile):
    folder = results.models_dir("results", profile)
    index = read_index(folder)
    files = {p.stem for p in folder.glob("*.pt")}
    assert files == set(index), f"{folder}: files and index.json disagree: {sorted(files ^ set(index))}"
    for key, entry in index.items():
        assert _io.sha256_file(folder / f"{key}.pt") == entry["sha256"], f"{folder}/{key}.pt: sha256 differs"
    used = {}
    for (column, role), rec in _committed_trained_models(profile).items():
        if (profile, column) in PENDING:
            continue
        assert rec.get("sha256") and rec.get("code"), f"{profile}/{column} {role}: no sha256 or code hash recorded"
        assert index.get(rec["key"], {}).get("sha256") == rec["sha256"], \
            f"{profile}/{column} {role}: model {rec['key']} is not published with the sha256 the result records"
        used[rec["key"]] = rec["sha256"]
    assert set(index) <= set(used) | {rec["key"] for rec in _committed_trained_models(profile).values()}, \
        f"{folder}: published models that no committed result names: {sorted(set(index) - set(used))}"


# Planned columns whose committed result is knowingly stale for the current code (or missing), each with the reason
# it could not be recomputed; `make book` recomputes them. An entry must go as soon as its result is fresh (the test
# below fails otherwise), and the book marks these columns as pending.
PENDING: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize("profile", PROFILES)
def test_every_committed_result_is_up_to_date_with_the_code_or_pending(profile):
    """A fresh clone's `make book` executes nothing but the pending columns: every other planned column has a result
    whose fingerprint is the current code's, its executed notebook and its published models."""
    from repro.pipeline import is_fresh
    from repro.study.plan import columns_for

    stale = []
    for col in columns_for(profile):
        fresh = is_fresh(col, profile, "results")
        if (profile, col.id) in PENDING:
            assert not fresh, f"{profile}/{col.id} is up to date now: remove it from PENDING"
            warnings.warn(f"{profile}/{col.id} pending: {PENDING[(profile, col.id)]}")
        elif not fresh:
            stale.append(col.id)
    assert not stale, (f"committed {profile} results stale for the current code: {', '.join(stale)}; recompute them "
                       f"from a committed tree (python -m repro.pipeline --profile {profile}) in the same change")


def test_no_checked_notebook_cell_prints_a_wall_time():
    """nbval compares the cells marked # NBVAL_CHECK_OUTPUT on another machine: no training or attack times there."""
    for path in sorted((ROOT / "results" / "smoke").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code" and "NBVAL_CHECK_OUTPUT" in "".join(cell["source"]):
                text = json.dumps(cell.get("outputs", []))
                assert "training (min)" not in text and "wall" not in text and " s per " not in text, path.name
