"""Carrying published models across a change of the training code (repro.train.carry): a change that does not alter
what training computes is carried with its evidence; one that does is refused, and nothing is removed."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from repro import _io
from repro._source import PACKAGE_DIR
from repro.train import TrainConfig, publish, read_index, train_cached
from repro.train import carry as carry_mod
from repro.train import config as train_config

from .conftest import needs_cifar10_jpeg, needs_mnist

LOOP = "repro/train/loop.py"


def _tree(tmp_path, name: str, edit=None):
    """A copy of today's ``repro`` package under ``tmp_path/name`` with ``edit(loop_source) -> source`` applied."""
    root = tmp_path / name
    shutil.copytree(PACKAGE_DIR, root / "repro", ignore=shutil.ignore_patterns("__pycache__"))
    if edit:
        path = root / LOOP
        path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
    return root


def _key_in(tree, config_args: str) -> str:
    """The training key the ``repro`` package of ``tree`` gives a configuration (run there, in its own process)."""
    out = subprocess.run([sys.executable, "-c", "from repro.train import TrainConfig, config_key; "
                          f"print(config_key(TrainConfig({config_args})))"],
                         cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


@needs_mnist
def test_a_change_that_trains_the_same_is_carried_and_one_that_does_not_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    args = 'dataset="mnist", model="mnist_convnet", epochs=2, subset=64, history_subset=4, device="cpu"'
    config = TrainConfig(dataset="mnist", model="mnist_convnet", epochs=2, subset=64, history_subset=4,
                         device="cpu")
    folder = tmp_path / "published"
    original = publish(train_cached(config, progress=False).checkpoint, folder)
    (old_key,) = read_index(folder)
    assert _io.load(original)["config"]["code"] == train_config.training_code_hash()
    today = _tree(tmp_path, "today")

    # a behaviour change (another initialisation seed): the probe trains differently; nothing is written or removed
    seeded = _tree(tmp_path, "seeded", lambda s: s.replace("torch.manual_seed(config.seed)\n",
                                                              "torch.manual_seed(config.seed + 1)\n", 1))
    with pytest.raises(carry_mod.CarryError, match="trains differently under the new code"):
        carry_mod.carry([folder], old_tree=today, new_tree=seeded, log=lambda *_: None)
    assert list(folder.iterdir()) == [original]

    # no change at all: refused, nothing to carry
    with pytest.raises(carry_mod.CarryError, match="nothing to carry"):
        carry_mod.carry([folder], old_tree=today, new_tree=_tree(tmp_path, "same"), log=lambda *_: None)

    # a comment: another code hash, the same training
    commented = _tree(tmp_path, "commented", lambda s: s + "\n# a comment changes the hash, not the training\n")
    renamed = carry_mod.carry([folder], old_tree=today, new_tree=commented, checked="abc", log=lambda *_: None)
    (new_key,) = renamed.values()
    assert renamed == {old_key: new_key} and new_key != old_key
    assert new_key == _key_in(commented, args)  # exactly the key the new code gives this configuration
    (path,) = folder.iterdir()
    carried = _io.load(path)
    assert path == folder / f"{new_key}.{_io.sha256_file(path)}.pt" and carried["key"] == new_key
    record = carried["carried"][-1]
    assert record["from_key"] == old_key and record["checked_commit"] == "abc" and record["probe"]["identical"]
    assert carried["provenance"]["code"] == train_config.training_code_hash()  # what trained it stays recorded
    old = _io.load(tmp_path / "cache" / "trained" / old_key / "model.pt")
    assert all((carried["state_dict"][k] == v).all() for k, v in old["state_dict"].items())  # weights untouched

    # a model whose stored code is not the old tree's is refused
    with pytest.raises(carry_mod.CarryError, match="not by the old tree's"):
        carry_mod.carry([folder], old_tree=today, new_tree=commented, log=lambda *_: None)


def test_a_carry_allows_only_the_code_hash_the_renamed_start_and_new_fields():
    old = {"code": "a", "init": {"trained": "k1"}, "epochs": 5, "defence_params": {"eps": 0.03}}
    new = {"code": "b", "init": {"trained": "k2"}, "epochs": 5, "defence_params": {"eps": 0.03, "eps_ramp": 0.0}}
    assert carry_mod.config_changes(old, new, renamed={"k1": "k2"}) == []  # a new field: the probe judges it
    assert carry_mod.config_changes(old, {**new, "epochs": 6}, renamed={"k1": "k2"}) == ["epochs (5 → 6)"]
    assert carry_mod.config_changes(old, new, renamed={}) == ["init.trained ('k1' → 'k2')"]
    gone = {**new, "defence_params": {"eps_ramp": 0.0}}
    assert carry_mod.config_changes(old, gone, renamed={"k1": "k2"}) == ["defence_params.eps (removed)"]


def test_a_carry_allows_a_field_todays_recipe_adds_but_no_changed_or_removed_one():
    """Before: a recipe field added with its default (label smoothing 0) refused every published model."""
    import dataclasses

    stored = {"name": "pat_finetune_cifar10", **dataclasses.asdict(train_config.RECIPES["pat_finetune_cifar10"])}
    del stored["label_smoothing"]  # as a model trained before the field existed stored it
    assert carry_mod.recipe_changes(stored) == []
    assert carry_mod.recipe_changes({**stored, "lr": 0.1}) == ["recipe.lr (0.1 → 0.05)"]
    assert carry_mod.recipe_changes({**stored, "gone": 1}) == ["recipe.gone (removed)"]
    assert carry_mod.recipe_changes({**stored, "name": "nope"}) == ["recipe 'nope' (not a recipe today)"]


def test_a_carry_refuses_uncommitted_training_code(monkeypatch, capsys):
    """The carried keys must belong to a commit: an uncommitted edit to the training code is refused up front."""
    monkeypatch.setattr(carry_mod, "uncommitted_training_code", lambda root=None: ["repro/train/loop.py"])
    assert carry_mod.main(["--from", "HEAD", "results/smoke/models"]) == 1
    assert "uncommitted edits to the training code (repro/train/loop.py)" in capsys.readouterr().err


@needs_cifar10_jpeg
def test_the_probe_rebuilds_a_jpeg_filled_models_configuration_and_key():
    """Before: the probe passed ``subset`` twice for a JPEG-filled configuration (a TypeError), so the next carry of
    the JPEG ablation arm would have failed. The published model's configuration comes back with its own key; its
    probe trains without the fill (the first official images are exact)."""
    from pathlib import Path

    from repro import results
    from repro.train import config_key
    from repro.train.probe import probe_config

    folder = results.repo_root() / "results" / "quick" / "models"
    filled = [p for p in sorted(Path(folder).glob("*.pt")) if "jpeg_fill" in _io.load(p)["config"]]
    assert filled, "the quick results publish the JPEG data arm's model"
    saved = _io.load(filled[0])
    config = probe_config({"config": saved["config"]}, probe=False)
    assert config.jpeg_fill is True and config.subset is None and config_key(config) == saved["key"]
    probe = probe_config({"config": saved["config"], "init_file": str(filled[0]), "subset": 64,
                          "history_subset": 8})
    assert probe.jpeg_fill is False and probe.subset == 64
