"""The attack cache: a run is reused only for the same attack code, model, inputs and parameters, never across a
change to any of them; an edit to the study or the report does not change a key; a damaged entry is recomputed.
And CW2's budget ladder, which runs through it, compares budgets image by image."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from repro import _source
from repro.study import attack_cache
from repro.study import steps as study

from .conftest import needs_deepsec
from .test_study import _setup_cell


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path))
    return tmp_path / attack_cache.FOLDER


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    x, y = torch.rand(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    return model, x, y


def _run(model, x, y, **over):
    kw = dict(params={"eps": 0.1, "step_size": 0.05, "steps": 3}, batch_size=2, device="cpu", seed=1)
    kw.update(over)
    return attack_cache.run_cached("pgd", model, x, y, **kw)


def test_a_second_identical_run_is_reused_bit_for_bit(cache, tiny, monkeypatch):
    model, x, y = tiny
    first, reuse1 = _run(model, x, y)
    calls = []
    monkeypatch.setattr(attack_cache, "run_attack", lambda *a, **k: calls.append(1))
    second, reuse2 = _run(model, x, y)
    assert not reuse1.reused and reuse2.reused and reuse1.key == reuse2.key and not calls
    assert torch.equal(first.x_adv, second.x_adv) and first.seconds == second.seconds
    assert "reused from the attack cache" in reuse2.note and reuse1.note == ""


def test_every_input_that_decides_the_run_changes_the_key(tiny):
    model, x, y = tiny

    def key(m=model, xx=x, yy=y, **over):
        kw = dict(params={"eps": 0.1, "step_size": 0.05, "steps": 3}, batch_size=2, seed=1, device="cpu",
                  options={"autocast_bf16": False, "compile_model": False})
        kw.update(over)
        return attack_cache.run_key("pgd", m, xx, yy, **kw)

    base = key()
    x2 = x.clone()
    x2[0, 0, 0, 0] += 1e-6
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    other.load_state_dict(model.state_dict())
    assert key(m=other) == base  # the same weights in another object: the same run
    with torch.no_grad():
        other[1].weight[0, 0] += 1e-6
    changed = [key(xx=x2), key(yy=torch.tensor([1, 1, 2, 0, 1])), key(m=other), key(seed=2), key(batch_size=3),
               key(params={"eps": 0.1, "step_size": 0.05, "steps": 4}),
               key(options={"autocast_bf16": False, "compile_model": True})]
    assert base not in changed and len(set(changed)) == len(changed)


def test_a_model_with_batchnorm_buffers_has_a_digest_that_follows_them():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2)).eval()  # a 0-d counter buffer
    before = attack_cache.model_digest(model)
    model[1].running_mean += 1e-3
    assert attack_cache.model_digest(model) != before
    assert attack_cache.tensor_digest(torch.tensor(3)) != attack_cache.tensor_digest(torch.tensor([3]))


def test_the_key_covers_the_attack_and_model_code_but_not_the_study_or_report():
    files = {_source.module_name(p) for p in _source.module_closure(attack_cache.CODE_ROOTS)}
    assert "repro.attacks.cw" in files and "repro.models.mnist_convnet" in files
    assert not [f for f in files if f.startswith(("repro.study", "repro.report", "repro.pipeline"))]


def test_a_damaged_entry_is_recomputed_and_replaced(cache, tiny):
    model, x, y = tiny
    first, reuse = _run(model, x, y)
    path = cache / f"{reuse.key}.pt"
    path.write_bytes(b"not a torch file")
    again, reuse2 = _run(model, x, y)
    assert not reuse2.reused and torch.equal(first.x_adv, again.x_adv)
    assert _run(model, x, y)[1].reused  # the replaced entry is readable


@needs_deepsec
def test_budget_ladder_compares_each_budget_with_the_columns_own_image_by_image(cache, one_thread):
    ctx = study.setup(attack="cw2", **{**_setup_cell("cw2.ipynb"), "profile": "smoke", "device": "cpu",
                                       "binary_search_steps": 3, "max_iterations": 60, "n_samples": 6,
                                       "initial_const": 1.0, "lr": 0.1})
    ctx.profile = replace(ctx.profile, cw2_ladder=((1, 20), (3, 60)))
    raw = study.raw_model(ctx)
    cands = study.candidates(ctx, raw)
    run = study.attack(ctx, raw, cands)
    ladder = study.budget_ladder(ctx, raw, cands, run)
    assert ladder is ctx.extra["budget_ladder"]
    assert [(a["binary_search_steps"], a["max_iterations"]) for a in ladder["arms"]] == [(1, 20), (3, 60)]
    small, own = ladder["arms"]
    assert own["success"]["k"] >= 1, "the column's own budget should fool some of the 6 candidates"
    assert own["n_paired"] == own["success"]["k"] and own["l2_ratio"]["median"] == pytest.approx(1.0)
    assert own["seconds_per_example"] == run.seconds_per_example
    for arm in ladder["arms"]:
        ok = arm["success"]
        assert ok["rate"] == ok["k"] / ok["n"] and ok["low"] <= ok["rate"] <= ok["high"] and ok["n"] == 6
        assert sum(v is not None for v in arm["l2"]) == ok["k"]
    assert small["n_paired"] <= min(small["success"]["k"], own["success"]["k"])
    # Run again: both attacks come from the cache, the ladder is the same.
    again = study.budget_ladder(ctx, raw, cands, run)
    assert again["arms"] == ladder["arms"] and any("budget ladder 1 × 20" in n for n in ctx.notes)


def test_budget_ladder_is_empty_without_a_ladder_or_for_another_attack():
    ctx = study.setup(attack="pgd", **{**_setup_cell("pgd.ipynb"), "profile": "smoke", "device": "cpu"})
    assert study.budget_ladder(ctx, None, None, None) == {}


# ------------------------------------------------------------------------------------------------- carry
def test_a_carried_code_pair_lets_todays_run_find_the_old_codes_entry(cache, tiny, monkeypatch):
    """After a carry records (old code → today's code), a miss under today's key finds the run stored under the
    old code's key, files it under the new key and says so; without the record it is recomputed."""
    model, x, y = tiny
    first, _ = _run(model, x, y)
    today = attack_cache.attack_code_hash(model)
    monkeypatch.setattr(attack_cache, "attack_code_hash", lambda model=None: "f" * 64)  # the code was edited
    recomputed = []
    real_run = attack_cache.run_attack
    monkeypatch.setattr(attack_cache, "run_attack", lambda *a, **k: recomputed.append(1) or real_run(*a, **k))
    (cache / attack_cache.CARRIED).write_text(f'[{{"from_code": "{today}", "to_code": "{"f" * 64}"}}]')
    carried, reuse = _run(model, x, y)
    assert reuse.reused and reuse.carried_from == today and not recomputed
    assert torch.equal(carried.x_adv, first.x_adv) and "a probe found to compute the same" in reuse.note
    again, reuse2 = _run(model, x, y)  # now under its own key, and still saying where it came from
    assert reuse2.reused and reuse2.carried_from == today and not recomputed and reuse2.note == reuse.note
    (cache / attack_cache.CARRIED).unlink()
    _run(model, x, y, seed=2)
    assert recomputed == [1]


def test_a_carry_refuses_attack_code_that_computes_otherwise(tmp_path):
    """The probe runs every configuration of every attack under both trees; a planted change to PGD's step (0.1 %
    more step) is caught and named, and nothing is recorded."""
    import shutil

    root = _source.PACKAGE_DIR.parent
    old = tmp_path / "old"
    shutil.copytree(root / "repro", old / "repro", ignore=shutil.ignore_patterns("__pycache__"))
    pgd_file = old / "repro" / "attacks" / "pgd.py"
    source = pgd_file.read_text(encoding="utf-8")
    planted = 'step_size = check_nonnegative(step_size, name="step_size")'
    assert planted in source
    pgd_file.write_text(source.replace(planted, planted.replace("step_size = ", "step_size = 1.001 * ")),
                        encoding="utf-8")
    with pytest.raises(attack_cache.CarryError, match=r"other adversarial images for .*pgd/deepsec_cifar10"):
        attack_cache.carry(old_tree=old, folder=tmp_path / "cache")
    assert not (tmp_path / "cache" / attack_cache.CARRIED).exists()
    # the same tree on both sides: nothing to carry
    with pytest.raises(attack_cache.CarryError, match="is the same"):
        attack_cache.carry(old_tree=root, folder=tmp_path / "cache")
