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
    closure = _rel(_source.module_closure(train_config.TRAINING_CODE, exclude=train_config.TRAINING_CODE_EXCLUDE))
    for needed in ("repro/train/loop.py", "repro/train/defences.py", "repro/train/runtime.py", "repro/train/augment.py",
                   "repro/attacks/pgd.py", "repro/models/resnet.py"):
        assert needed in closure, needed
    # What the key holds value by value (the data digest, the effective configuration) or what only stores models.
    for left_out in ("repro/data.py", "repro/train/config.py", "repro/train/cache.py", "repro/train/rekey.py",
                     "repro/train/carry.py", "repro/train/probe.py"):
        assert left_out not in closure, left_out
    assert not {s for s in closure if s.startswith(("repro/study/", "repro/report/")) or s in (
        "repro/pipeline.py", "repro/results.py")}, closure


def test_an_edit_to_the_loop_changes_the_training_code_hash_and_an_edit_to_the_loader_does_not(monkeypatch):
    """The format-5 scope: the weights' code is hashed, the modules whose output the key holds are not."""
    before = train_config.training_code_hash()
    real = _source.source_hash
    for module, changes in (("repro/train/loop.py", True), ("repro/attacks/pgd.py", True),
                            ("repro/data.py", False), ("repro/train/config.py", False)):
        monkeypatch.setattr(_source, "source_hash", lambda paths, m=module: real(paths) + (
            "edited" if any(str(p).endswith(m) for p in paths) else ""))
        _source._cached_closure_hash.cache_clear()
        assert (train_config.training_code_hash() != before) is changes, module
    monkeypatch.undo()
    _source._cached_closure_hash.cache_clear()


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
    path = publish(trained.checkpoint, folder)
    assert path.name == f"{trained.key}.{_io.sha256_file(trained.checkpoint)}.pt"
    assert read_index(folder) == {trained.key: path} and list(folder.iterdir()) == [path]  # no side table

    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "empty-cache"))  # a new machine: no training cache
    served = train_cached(config, progress=False, published=folder)
    assert served.from_cache and served.checkpoint == path
    for a, b in zip(served.model.state_dict().values(), trained.model.state_dict().values()):
        assert torch.equal(a, b)
    assert publish(trained.checkpoint, folder) == path and read_index(folder) == {trained.key: path}  # idempotent

    with open(path, "ab") as f:  # a damaged or edited published file is refused
        f.write(b"x")
    with pytest.raises(ValueError, match=rf"published model .*{trained.key}\.[0-9a-f]{{64}}\.pt has sha256 "
                                         "[0-9a-f]{64}, its name records"):
        published_file(config, folder)
    path.rename(folder / f"{trained.key}.pt")  # the format-4 name, without its checksum
    with pytest.raises(PublishedModelError, match=r"is named <key>\.<sha256>\.pt"):
        train_cached(config, progress=False, published=folder)


def _format4_folder(tmp_path, trained, *, code: str) -> tuple:
    """A published folder of the format-4 layout (``<key>.pt`` and ``index.json``) holding ``trained``'s model as
    format 4 would have keyed it with training code hash ``code``."""
    saved = _io.load(trained.checkpoint)
    config = {**saved["config"], "format": 4, "code": code,
              "recipe": {k: v for k, v in saved["config"]["recipe"].items() if k not in ("dataset", "fine_tune")}}
    old_key = _io.sha256_text(_io.canonical_json(config))
    folder = tmp_path / "format4"
    folder.mkdir()
    _io.save_atomic({**saved, "format": 4, "key": old_key, "config": config}, folder / f"{old_key}.pt")
    index = {old_key: {"sha256": _io.sha256_file(folder / f"{old_key}.pt")}}
    (folder / "index.json").write_text(json.dumps(index))
    return folder, old_key


@needs_mnist
@pytest.mark.skipif(_source.git_info()["commit"] is None, reason="re-keying checks the code against a git commit")
def test_a_format4_model_is_rekeyed_to_the_key_todays_code_gives_and_refused_when_its_code_differs(tmp_path,
                                                                                                monkeypatch):
    from repro.train import rekey

    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(dataset="mnist", model="mnist_convnet", epochs=1, subset=100, history_subset=0,
                         device="cpu")
    trained = train_cached(config, progress=False)
    try:
        rekey.check_code_unchanged("HEAD")
    except rekey.RekeyError as err:
        pytest.skip(f"the training code differs from HEAD in this checkout: {err}")
    folder, old_key = _format4_folder(tmp_path, trained, code=rekey.format4_code_hash("HEAD"))
    assert rekey.rekey_folder(folder, log=lambda *_: None) == {old_key: trained.key}  # exactly today's key
    (path,) = folder.iterdir()
    assert path == published_file(config, folder)
    saved = _io.load(path)
    assert saved["rekeyed"]["from_key"] == old_key and saved["state_dict"].keys() == trained.model.state_dict().keys()

    # Planted violations: trained by other code; the file changed after indexing; the recipe changed since.
    for plant, message in (("code", "trained by training code"), ("bytes", "sha256 differs from"),
                           ("recipe", "is not today's recipe")):
        sub = tmp_path / plant
        sub.mkdir()
        folder, old_key = _format4_folder(sub, trained, code="other" if plant == "code" else
                                          rekey.format4_code_hash("HEAD"))
        if plant == "bytes":
            with open(folder / f"{old_key}.pt", "ab") as f:
                f.write(b"x")
        if plant == "recipe":
            monkeypatch.setitem(train_config.RECIPES, "deepsec_mnist",
                                dataclasses.replace(train_config.RECIPES["deepsec_mnist"], lr=0.5))
        with pytest.raises(rekey.RekeyError, match=message):
            rekey.rekey_folder(folder, log=lambda *_: None)
        assert sorted(p.name for p in folder.iterdir()) == sorted([f"{old_key}.pt", "index.json"])  # untouched


# --------------------------------------------------------------------------------------- the committed results
def _committed_trained_models(profile: str) -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted((ROOT / "results" / profile).glob("*.json")):
        for role, rec in results.load(path).provenance.get("models", {}).items():
            if isinstance(rec, dict) and rec.get("key"):
                out[(path.stem, role)] = rec
    return out


@pytest.mark.parametrize("profile", PROFILES)
def test_published_models_match_their_names_and_the_results_that_use_them(profile):
    folder = results.models_dir("results", profile)
    index = read_index(folder)  # refuses a misnamed file or two files of one key
    assert {p.name for p in folder.iterdir()} == {p.name for p in index.values()}, f"{folder}: not only models"
    for key, path in index.items():
        saved = _io.load(path)
        assert _io.sha256_file(path) == path.name.split(".")[1], f"{path}: sha256 differs from its name"
        assert saved["key"] == key == _io.sha256_text(_io.canonical_json(saved["config"])), path
        assert saved["config"]["format"] == train_config.FORMAT_VERSION, path
    published = {key: path.name.split(".")[1] for key, path in index.items()}
    used = {}
    for (column, role), rec in _committed_trained_models(profile).items():
        if (profile, column) in PENDING:
            continue
        assert rec.get("sha256") and rec.get("code"), f"{profile}/{column} {role}: no sha256 or code hash recorded"
        assert published.get(rec["key"]) == rec["sha256"], \
            f"{profile}/{column} {role}: model {rec['key']} is not published with the sha256 the result records"
        used[rec["key"]] = rec["sha256"]
    named = set(used) | {rec["key"] for rec in _committed_trained_models(profile).values()}
    # a model carried to today's training code (repro.train.carry) since a pending result named it keeps its old keys
    # in its carry records: the same weights, which that column's recompute will use
    carried = {key for key, path in index.items() if key not in named
               and named & {c["from_key"] for c in _io.load(path).get("carried", [])}}
    assert set(index) <= named | carried, \
        f"{folder}: published models that no committed result names: {sorted(set(index) - named - carried)}"


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


@pytest.mark.parametrize("dataset", [pytest.param("mnist", marks=needs_mnist),
                                     pytest.param("cifar10", marks=needs_cifar10)])
def test_the_subset_rule_the_training_key_relies_on_is_the_first_n_images_of_the_split(dataset):
    """The format-5 training key leaves ``repro.data`` out of its code hash and holds the digest of the whole
    training split with the number of images used: those decide the images a run trains on only while a subset is
    the first n images :func:`repro.data.load` returns, with their official indices. If this fails, the subset rule
    changed: bump FORMAT_VERSION or put the digest of the images actually used in the key, so that no model trained
    on other images is served."""
    from repro.data import FULL_SIZES, load, official_indices

    x, y = load(dataset, split="train")
    index = official_indices(dataset, split="train")
    xs, ys = load(dataset, split="train", n=1000)
    assert torch.equal(xs, x[:1000]) and torch.equal(ys, y[:1000])
    assert (official_indices(dataset, split="train", n=1000) == index[:1000]).all()
    assert FULL_SIZES == {"mnist": {"train": 60_000, "test": 10_000}, "cifar10": {"train": 50_000, "test": 10_000}}


def test_the_suite_never_writes_the_users_cache():
    """The suite's cache is its own folder (tests/conftest.py), never ~/.cache/repro or a REPRO_CACHE the user set."""
    import os
    from pathlib import Path

    from repro.models import cache_dir

    assert "repro-test-cache-" in cache_dir().name or os.environ.get("REPRO_TEST_CACHE") == str(cache_dir())
    assert cache_dir() != Path.home() / ".cache" / "repro"
