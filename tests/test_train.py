"""Training: recipes, NAT/PAT effects on real MNIST, exact resume, cache, DDP equivalence, configuration errors.

Fast by construction: a tiny MLP registered for the test (a few thousand MNIST images, a few epochs, a second each),
and DeepSec's ConvNet only for the two-process run, which needs a model the command line can build.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import repro.models
import repro.train.cache
import repro.train.runtime as runtime
from repro.train import augment, defences
from repro.train.__main__ import config_from_args, parse_args
from repro.attacks.llc import llc
from repro.attacks.pgd import pgd
from repro.data import load, load_jpeg
from repro.train.config import effective_config
from repro.study.profiles import get_profile
from repro.study.models import train_config
from repro.train import (NATParams, PATParams, PGDParams, RECIPES, Recipe, TrainConfig, config_key, initial_weights,
                         load_trained, train_cached)
from repro.train import train as _train
from repro.train.loop import step as train_step


def train(config, *, out_dir, resume=True, progress=False):
    """The loop with the initial weights the config names, resolved by the caller as the pipeline does."""
    return _train(config, out_dir=out_dir, initial_weights=initial_weights(config), resume=resume, progress=progress)


def config_for(dataset, *, defence=None, variant=None, profile="quick", wide=False):
    model = ("resnet20_wide" if wide else "resnet20") if dataset == "cifar10" else "mnist_convnet"
    return train_config(dataset=dataset, model=model, profile=profile, defence=defence, defence_params=variant)

from .conftest import needs_cifar10, needs_cifar10_jpeg, needs_deepsec, needs_mnist


def tiny_mlp(*, hidden: int = 64, dropout: float = 0.0) -> nn.Module:
    """784 → hidden → 10, with optional dropout so that resuming must restore the global RNG."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


BASE = dict(dataset="mnist", model="tiny_mlp", subset=5000, epochs=3, history_subset=0, device="cpu")


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """Register ``tiny_mlp`` and point the cache at a temporary folder; returns a small standard-training config."""
    monkeypatch.setitem(repro.models.MODELS, "tiny_mlp", tiny_mlp)
    monkeypatch.setitem(repro.models.MODEL_DATASET, "tiny_mlp", "mnist")
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    return TrainConfig(**BASE)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Standard, PAT and NAT training of the tiny MLP on 4,500 MNIST images for 3 epochs (about a second each)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(repro.models.MODELS, "tiny_mlp", tiny_mlp)
        mp.setitem(repro.models.MODEL_DATASET, "tiny_mlp", "mnist")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        base = TrainConfig(**BASE)
        configs = {
            "standard": base,
            "pat": dataclasses.replace(base, defence="pat",
                                       defence_params=PATParams(eps=0.15, step_size=0.05, steps=5)),
            "nat": dataclasses.replace(base, defence="nat"),
        }
        root = tmp_path_factory.mktemp("trained")
        results = {name: train(cfg, out_dir=root / name, progress=False) for name, cfg in configs.items()}
        torch.set_num_threads(threads)
    return results


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _state(model) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------- recipe building blocks
def test_lr_schedule_matches_deepsec_adjust_learning_rate():
    """DeepSec decays after 0-based epochs 80, 120, 160 (×0.1) and 180 (×0.5), floor 0.5e-6."""
    recipe = RECIPES["deepsec_cifar10"]
    # Per batch (7 batches an epoch): constant within an epoch, DeepSec's value for that epoch.
    lr_batches = [recipe.lr * runtime.lr_factor(recipe, epochs=200, step=s, steps_per_epoch=7) for s in range(1400)]
    assert all(len(set(lr_batches[7 * k:7 * k + 7])) == 1 for k in range(200))
    lr = lr_batches[::7]
    # DeepSec: lr used in epoch k, with adjust_learning_rate(epoch) called after epoch k trains.
    ref, cur = [], recipe.lr
    for k in range(200):
        ref.append(cur)
        if k in (80, 120, 160):
            cur = max(cur * 0.1, 0.5e-6)
        elif k == 180:
            cur = max(cur * 0.5, 0.5e-6)
    np.testing.assert_allclose(lr, ref, rtol=1e-12)
    assert lr[80] == 1e-3 and lr[81] == pytest.approx(1e-4) and lr[199] == pytest.approx(5e-7)


def test_cosine_schedule_with_warmup_by_hand():
    """Warm-up scales linearly from one batch's share to 1 over warmup_epochs; cosine reaches ~0 at the end."""
    recipe = RECIPES["pat_finetune_cifar10"]  # warm-up 0.5 epoch, cosine
    assert recipe.schedule == "cosine" and recipe.warmup_epochs == 0.5 and recipe.keep == "last"
    f = [runtime.lr_factor(recipe, epochs=2, step=s, steps_per_epoch=10) for s in range(20)]
    # step 0: warm-up 1/5 · cos(0) = 0.2; step 4: 5/5 · (1 + cos(π·4/20))/2
    assert f[0] == pytest.approx(0.2) and f[2] == pytest.approx(0.6 * 0.5 * (1 + math.cos(math.pi * 2 / 20)))
    assert f[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 20)))
    assert f[10] == pytest.approx(0.5) and f[19] == pytest.approx(0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert all(a > b for a, b in zip(f[4:], f[5:]))  # strictly decreasing after the warm-up


def test_recipe_rejects_unknown_schedule_and_rule():
    with pytest.raises(ValueError, match="unknown schedule 'linear'; allowed: 'step', 'cosine'"):
        Recipe(optimiser="sgd", lr=0.1, epochs=1, batch_size=8, schedule="linear")
    with pytest.raises(ValueError, match="unknown keep 'best'"):
        Recipe(optimiser="sgd", lr=0.1, epochs=1, batch_size=8, keep="best")


def test_recipe_rejects_label_smoothing_outside_zero_to_one():
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=f"0 <= label_smoothing < 1, got label_smoothing={bad!r}"):
            Recipe(optimiser="sgd", lr=0.1, epochs=1, batch_size=8, label_smoothing=bad)


def test_label_smoothed_loss_by_hand():
    """Two classes, logits (0, 0) and (ln 3, 0), labels 0 and 0, smoothing 0.2: the targets are (0.9, 0.1), so the
    first image costs ln 2 and the second 0.9·ln(4/3) + 0.1·ln 4; the mean over a global batch of 2 on one rank."""
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    y = torch.tensor([0, 0])
    smoothed = defences.mean_cross_entropy(y, 2.0, label_smoothing=0.2)(logits)
    expected = (math.log(2) + 0.9 * math.log(4 / 3) + 0.1 * math.log(4)) / 2
    assert smoothed.item() == pytest.approx(expected, rel=1e-6)
    plain = defences.mean_cross_entropy(y, 2.0)(logits)  # DeepSec's loss: no smoothing by default
    assert plain.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)


@needs_mnist
def test_the_loop_trains_on_the_recipes_label_smoothing(monkeypatch, tmp_path):
    """The recipe's label smoothing reaches the training loss (and only there): the loop builds every batch's loss
    with it."""
    seen = []
    real = defences.mean_cross_entropy

    def spy(y, per_rank, *, label_smoothing=0.0):
        seen.append(label_smoothing)
        return real(y, per_rank, label_smoothing=label_smoothing)

    import repro.train.loop as loop
    monkeypatch.setattr(loop, "mean_cross_entropy", spy)
    recipe = dataclasses.replace(RECIPES["deepsec_mnist"], epochs=1, batch_size=16, label_smoothing=0.25)
    monkeypatch.setitem(RECIPES, "ls_probe", recipe)
    config = TrainConfig(dataset="mnist", model="mnist_convnet", recipe="ls_probe", epochs=1, subset=64,
                         device="cpu", history_subset=0)
    loop.train(config, out_dir=tmp_path, resume=False, progress=False)
    assert seen and set(seen) == {0.25}


@needs_mnist
def test_split_is_deepsecs_on_official_indices():
    """On a subset, the validation images are exactly the subset's images in DeepSec's full-set hold-out (seed
    100: the first 10 % of a RandomState(100) shuffle of all 60,000 MNIST indices), in DeepSec's order."""
    cfg = TrainConfig(dataset="mnist", model="mnist_convnet", subset=3000, device="cpu")
    data = runtime.split_data(cfg, torch.device("cpu"))
    order = np.arange(60_000)
    np.random.RandomState(100).shuffle(order)
    held_out = [i for i in order[:6000] if i < 3000]
    x, _ = load("mnist", split="train", n=3000)
    assert len(data.x_val) == len(held_out) and len(data.x_train) == 3000 - len(held_out)
    assert torch.equal(data.x_val, x[held_out])
    full = runtime.split_data(TrainConfig(dataset="mnist", model="mnist_convnet", device="cpu"), torch.device("cpu"))
    x_all, _ = load("mnist", split="train")
    assert torch.equal(full.x_val, x_all[order[:6000]]) and torch.equal(full.x_train, x_all[order[6000:]])


@needs_deepsec
def test_partial_cifar10_validation_is_what_deepsec_held_out(deepsec_cifar10):
    """On the partial CIFAR-10 copy the validation images are those DeepSec's own split held out, so DeepSec's
    released model scores there like on the test split (~90 %), not like on its training images (~99 %)."""
    data = runtime.split_data(TrainConfig(dataset="cifar10", model="resnet20", device="cpu"), torch.device("cpu"))
    with torch.no_grad():
        val = (deepsec_cifar10(data.x_val).argmax(1) == data.y_val).float().mean().item()
        train = (deepsec_cifar10(data.x_train[:800]).argmax(1) == data.y_train[:800]).float().mean().item()
    assert 0.85 < val < 0.95 and train > 0.98, (val, train)


@needs_cifar10_jpeg
def test_jpeg_fill_trains_on_the_missing_images_and_validates_on_exact_ones_only():
    """``jpeg_fill``: the training part gains the JPEG copies of the official training images the exact copy lacks
    (DeepSec's hold-out excluded), the validation part is unchanged, and the key changes."""
    exact_cfg = TrainConfig(dataset="cifar10", model="resnet20", device="cpu")
    fill_cfg = dataclasses.replace(exact_cfg, jpeg_fill=True)
    exact, fill = (runtime.split_data(c, torch.device("cpu")) for c in (exact_cfg, fill_cfg))
    assert torch.equal(fill.x_val, exact.x_val) and torch.equal(fill.y_val, exact.y_val)
    assert len(fill.x_train) == 45_000  # every official image outside DeepSec's 5,000 held out
    assert len(exact.x_train) < 45_000
    # The exact training images are all there, exact: each one's row is found unchanged in the filled set.
    filled_rows = {tuple(r) for r in fill.x_train.flatten(1)[:, :64].tolist()}
    assert all(tuple(r) in filled_rows for r in exact.x_train.flatten(1)[:200, :64].tolist())
    x_jpeg, _, _ = load_jpeg("cifar10", split="train")
    order = np.arange(50_000)
    np.random.RandomState(100).shuffle(order)
    held_out_jpeg = {tuple(r) for r in x_jpeg[order[:5000]].flatten(1)[:, :64].tolist()}
    assert not held_out_jpeg & filled_rows
    assert config_key(fill_cfg) != config_key(exact_cfg)
    assert "jpeg_fill" not in effective_config(exact_cfg)  # the keys of every configuration without it stay


def test_jpeg_fill_is_refused_for_mnist():
    with pytest.raises(ValueError, match="jpeg_fill=True needs dataset 'cifar10'"):
        TrainConfig(dataset="mnist", model="mnist_convnet", jpeg_fill=True)
    with pytest.raises(ValueError, match="jpeg_fill=True needs dataset 'cifar10'"):
        config_from_args(parse_args(["--dataset", "mnist", "--jpeg-fill"]))
    assert config_from_args(parse_args(["--dataset", "cifar10", "--defence", "pat", "--profile", "paper",
                                        "--jpeg-fill"])).jpeg_fill is True
    quick = ["--dataset", "cifar10", "--defence", "pat", "--profile", "quick", "--subset", "500"]
    with pytest.raises(ValueError, match="--subset 500 counts exact training images.* add --no-jpeg-fill"):
        config_from_args(parse_args(quick))
    assert config_from_args(parse_args([*quick, "--no-jpeg-fill"])).subset == 500
    with pytest.raises(ValueError, match="jpeg_fill must be True or False, got 1"):
        TrainConfig(dataset="cifar10", model="resnet20", jpeg_fill=1)
    # subset counts exact rows: with the fill it would name no well-defined set of images (nor a key of its own)
    with pytest.raises(ValueError, match="subset must be None, got subset=5000"):
        TrainConfig(dataset="cifar10", model="resnet20", jpeg_fill=True, subset=5000)


def test_translate_flip_on_tensors():
    x = torch.rand(3, 2, 20, 12)  # shifts up to ⌈0.1·20⌉ = 2 pixels
    zero = torch.zeros(3, dtype=torch.long)
    no_flip = torch.zeros(3, dtype=torch.bool)
    assert torch.equal(augment.translate_flip(x, zero, zero, no_flip), x)
    assert torch.equal(augment.translate_flip(x, zero, zero, ~no_flip), x.flip(-1))
    dx, dy = torch.tensor([1, -2, 0]), torch.tensor([0, 1, -1])
    out = augment.translate_flip(x, dx, dy, no_flip)
    # Image 0 moves one pixel right: column 0 is zero fill, the rest is the original shifted.
    assert torch.equal(out[0, :, :, 1:], x[0, :, :, :-1]) and out[0, :, :, 0].abs().sum() == 0
    assert torch.equal(out[1, :, 1:, :-2], x[1, :, :-1, 2:]) and out[1, :, 0].abs().sum() == 0
    assert torch.equal(out[2, :, :-1], x[2, :, 1:])
    # Shifts as RandomAffine(translate=(0.1, 0.1)) draws them on 32-pixel images: integers in -3..3.
    dx, dy, flip = augment.draw_augmentation(10_000, 32, 32, torch.Generator().manual_seed(0))
    assert dx.min() == -3 and dx.max() == 3 and dy.abs().max() == 3 and 0.45 < flip.float().mean() < 0.55


def test_nat_eps_distribution():
    eps = defences.draw_nat_eps(100_000, NATParams(sigma=50.0, eps_max=0.3), torch.Generator().manual_seed(0))
    assert eps.min() >= 0 and eps.max() == pytest.approx(0.3)
    # E|N(0, 50)|/255 = 50·√(2/π)/255 ≈ 0.156 before clipping (clipping at 0.3 ≈ 1.5σ lowers it a little).
    assert 0.13 < eps.mean().item() < 0.16


# -------------------------------------------------------------------------------------------- defences work
@needs_mnist
def test_pat_raises_pgd_accuracy_over_standard_training(trained):
    x, y = load("mnist", split="test", n=1000)
    robust = {}
    for name in ("standard", "pat"):
        model = trained[name].model
        assert not model.training
        x_adv = pgd(model, x, y, eps=0.1, step_size=0.02, steps=10, generator=torch.Generator().manual_seed(0))
        robust[name] = _accuracy(model, x_adv, y)
        assert _accuracy(model, x, y) > 0.8, name
    # Measured: standard ≈ 0.24, PAT ≈ 0.58 (PGD-10, ε = 0.1, 1000 test images).
    assert robust["pat"] > robust["standard"] + 0.15, robust


@needs_mnist
def test_nat_raises_llc_accuracy_over_standard_training(trained):
    x, y = load("mnist", split="test", n=1000)
    assert trained["nat"].config.defence_params == NATParams(sigma=50.0, eps_max=0.3, adv_weight=0.3)
    robust = {}
    for name in ("standard", "nat"):
        model = trained[name].model
        with torch.no_grad():
            least_likely = model(x).argmin(1)
        robust[name] = _accuracy(model, llc(model, x, least_likely, eps=0.2), y)
    # Measured: standard ≈ 0.17, NAT ≈ 0.44 (LLC, ε = 0.2, 1000 test images).
    assert robust["nat"] > robust["standard"] + 0.1, robust


def _out(name: str) -> Path:
    return Path(os.environ["REPRO_CACHE"]) / name


# --------------------------------------------------------------------------------------------- resume and cache
class _Killed(Exception):
    pass


@needs_mnist
def test_resume_after_kill_reaches_identical_weights(tiny, monkeypatch):
    """Augmentation, Adam with its schedule, dropout, PGD random starts: every RNG and state must be restored."""
    # DeepSec's CIFAR-10 recipe (Adam, step schedule, augmentation), released for any dataset for this MNIST run
    monkeypatch.setitem(RECIPES, "adam_augment_any", dataclasses.replace(RECIPES["deepsec_cifar10"], dataset=None))
    cfg = dataclasses.replace(tiny, model_kwargs={"dropout": 0.3}, recipe="adam_augment_any", subset=600, epochs=2,
                              history_subset=50, defence="pat",
                              defence_params=PATParams(eps=0.1, step_size=0.05, steps=2))
    straight = train(cfg, out_dir=_out("straight"), progress=False)

    write = runtime.write_checkpoint

    def write_then_die(payload, path):
        write(payload, path)
        raise _Killed  # the process dies right after epoch 1's checkpoint is on disk

    monkeypatch.setattr(runtime, "write_checkpoint", write_then_die)
    with pytest.raises(_Killed):
        train(cfg, out_dir=_out("resumed"), progress=False)
    monkeypatch.setattr(runtime, "write_checkpoint", write)
    assert torch.load(_out("resumed") / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = train(cfg, out_dir=_out("resumed"), resume=True, progress=False)

    a, b = _state(straight.model), _state(resumed.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = [torch.load(_out(d) / "checkpoint.pt", weights_only=True)["model"] for d in ("straight", "resumed")]
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]
    assert [h["pgd_acc"] for h in straight.history] == [h["pgd_acc"] for h in resumed.history]

    # A checkpoint of another configuration is an error naming what differs, never a silent restart.
    with pytest.raises(ValueError, match=r"another configuration.*seed"):
        train(dataclasses.replace(cfg, seed=101), out_dir=_out("straight"), progress=False)


@needs_mnist
def test_cache_returns_the_trained_model_without_training(tiny, monkeypatch):
    cfg = dataclasses.replace(tiny, subset=300, epochs=1)
    first = train_cached(cfg, progress=False)
    assert not first.from_cache and first.checkpoint.parent.name == config_key(cfg)

    def no_training(*args, **kwargs):
        raise AssertionError("train() called although the model is cached")

    monkeypatch.setattr(repro.train.cache, "train", no_training)
    second = train_cached(dataclasses.replace(cfg, device="auto"))  # the device is not part of the key
    assert second.from_cache and not second.model.training
    a, b = _state(first.model), _state(second.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert second.history == first.history
    assert load_trained(cfg).from_cache
    with pytest.raises(FileNotFoundError, match="no trained model"):
        load_trained(dataclasses.replace(cfg, seed=7))
    record = json.loads((first.checkpoint.parent / "result.json").read_text())
    assert record["config"]["train_images"] == 300 and record["provenance"]["data"]["dataset"] == "mnist"


@needs_mnist
def test_key_resolves_defaults_and_tracks_every_setting(tiny):
    explicit = dataclasses.replace(tiny, epochs=20, batch_size=100, recipe="deepsec_mnist")
    assert config_key(dataclasses.replace(tiny, epochs=None)) == config_key(explicit)
    pat = dataclasses.replace(tiny, defence="pat")
    assert config_key(pat) == config_key(dataclasses.replace(tiny, defence="pat", defence_params="deepsec_mnist"))
    others = [dataclasses.replace(tiny, seed=1), dataclasses.replace(tiny, bf16=True), pat,
              dataclasses.replace(pat, defence_params=PATParams(eps=0.3, step_size=0.01, steps=40, loss="adversarial")),
              dataclasses.replace(tiny, history_pgd=PGDParams(eps=0.1, step_size=0.01, steps=3))]
    assert len({config_key(c) for c in [tiny, *others]}) == 1 + len(others)


# ----------------------------------------------------------------------------------------------- data parallel
@needs_mnist
def test_two_process_ddp_matches_one_process(tmp_path):
    """torchrun with 2 gloo processes vs one process, same global batch of 100.

    NAT on DeepSec's ConvNet with dropout disabled (dropout masks are per-rank random streams, so with dropout the
    runs would differ by design). Augmentation, order and NAT's ε are drawn for the global batch on every rank, and
    the loss is normalised by the global batch, so both runs take the same steps; what remains is float summation
    order (gradient all-reduce, batch-size-dependent kernels): measured max |Δw| 7e-9, asserted < 1e-5.
    """
    args = ["--dataset", "mnist", "--defence", "nat", "--profile", "smoke", "--init", "scratch", "--subset", "700",
            "--epochs", "1", "--history-subset", "0", "--disable-dropout", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REPRO_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "repro.train",
           *args, "--out-dir", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])

    config = config_from_args(parse_args(args))
    assert summary["key"] == config_key(config)
    single = train(config, out_dir=tmp_path / "single", progress=False)
    ddp = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)
    # 700 images less the 72 of them in DeepSec's full-set hold-out
    assert ddp["history"][0]["images"] == single.history[0]["images"] == 628
    worst = max((ddp["state_dict"][k] - v).abs().max().item() for k, v in _state(single.model).items())
    assert worst < 1e-5, worst
    assert ddp["history"][0]["loss"] == pytest.approx(single.history[0]["loss"], rel=1e-4)
    assert ddp["best_val_acc"] == pytest.approx(single.best_val_acc, abs=0.02)


# ----------------------------------------------------------------------------------------------- bad configurations
@pytest.mark.parametrize("make, message", [
    (lambda: TrainConfig(dataset="mnist", model="mnist_convnet", defence="adv"), r"unknown defence 'adv'.*'nat'"),
    (lambda: TrainConfig(dataset="mnist", model="mnist_convnet", defence="pat",
                         defence_params=PATParams(eps=-0.1, step_size=0.01, steps=5)), r"PAT: eps must be .*>= 0"),
    (lambda: TrainConfig(dataset="mnist", model="mnist_convnet", defence="pat",
                         defence_params=PATParams(eps=0.3, step_size=0.01, steps=0)), r"PAT: steps must be .*>= 1"),
    (lambda: TrainConfig(dataset="mnist", model="mnist_convnet", defence="nat",
                         defence_params=NATParams(sigma=-1.0, eps_max=0.3)), r"NAT: sigma must be"),
    (lambda: TrainConfig(dataset="mnist", model="mnist_convnet", defence="pat", defence_params="fast"),
     r"unknown PAT configuration 'fast'.*'madry_cifar10'"),
    (lambda: TrainConfig(dataset="mnist", model="mnist_convnet", defence="pat", defence_params=NATParams(1.0, 0.1)),
     r"needs PATParams"),
    (lambda: TrainConfig(dataset="svhn", model="mnist_convnet"), r"unknown dataset 'svhn'.*'mnist'"),
    (lambda: TrainConfig(dataset="mnist", model="vgg16"), r"unknown model 'vgg16'.*'resnet20'"),
    (lambda: TrainConfig(dataset="cifar10", model="mnist_convnet"), r"is for 'mnist'"),
    (lambda: TrainConfig(dataset="mnist", model="mnist_convnet", init="nowhere.pt"), r"unknown init 'nowhere.pt'"),
    (lambda: TrainConfig(dataset="mnist", model="mnist_convnet", epochs=0), r"epochs must be an integer >= 1"),
    (lambda: TrainConfig(dataset="mnist", model="mnist_convnet", recipe="sgd"), r"unknown recipe 'sgd'"),
    (lambda: config_for("mnist", profile="fast"), r"unknown profile 'fast'.*'quick'"),
    (lambda: config_for("mnist", defence="pat", variant="eps8"), r"unknown PAT configuration 'eps8'"),
])
def test_bad_configurations_name_the_value_and_the_alternatives(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_profiles_map_to_configs():
    quick_nat = config_for("mnist", defence="nat", profile="quick")
    # NAT as DeepSec: from scratch with DeepSec's recipe, all 20 epochs on all training images; PAT fine-tuned.
    assert quick_nat.init == "scratch" and quick_nat.effective_epochs == 20 and quick_nat.defence_params.sigma == 50.0
    assert quick_nat.recipe == "deepsec_mnist" and quick_nat.subset is None
    quick_pat = config_for("cifar10", defence="pat", profile="quick")
    assert quick_pat.init == "deepsec" and quick_pat.recipe == "pat_finetune_cifar10" and quick_pat.subset is None
    paper_pat = config_for("cifar10", defence="pat", profile="paper")
    assert paper_pat.init == "scratch" and paper_pat.effective_epochs == 200 and paper_pat.effective_batch_size == 32
    assert paper_pat.defence_params == PATParams(eps=8 / 255, step_size=2 / 255, steps=7, loss="mixed")
    wide = config_for("cifar10", defence="pat", variant="followup_eps8", profile="quick", wide=True)
    # Not DeepSec's architecture: fine-tuned from the raw wide model this module trains with the same profile.
    width = get_profile("quick").wide_width
    assert wide.model == "resnet20_wide" and wide.model_kwargs == {"width": width}
    assert isinstance(wide.init, TrainConfig) and wide.init.defence is None
    # the literal setting, with the ε ramp quick's PAT training sets (DefenceTraining.defence_params)
    assert wide.defence_params == PATParams(eps=8.0, step_size=2.0, steps=10, eps_ramp=0.4)
    assert quick_pat.defence_params.eps_ramp == 0.4 and quick_pat.jpeg_fill and quick_pat.epochs == 1


# ------------------------------------------------------------------------------------------------ sync-free hot path
SYNC_METHODS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@pytest.mark.parametrize("defence_name, model_name, params", [
    ("pat", "resnet20", PATParams(eps=8 / 255, step_size=2 / 255, steps=3)),
    ("nat", "mnist_convnet", NATParams(sigma=50.0, eps_max=0.3)),
])
def test_training_step_never_waits_on_the_device(monkeypatch, defence_name, model_name, params):
    """One PAT/NAT training step (craft on the folded copy, loss, backward, SGD step) calls nothing that copies a
    tensor's value to the host (.item(), bool(tensor), .tolist(), ...): every such call raises here. On a GPU each
    would stall the pipeline; with none, the step can be captured whole (CUDA graphs, torch.compile)."""
    torch.manual_seed(0)
    net = repro.models.build(model_name)
    shape = (6, 1, 28, 28) if model_name == "mnist_convnet" else (6, 3, 32, 32)
    x, y = torch.rand(shape), torch.randint(0, 10, (6,))
    optimiser = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    nat_eps = defences.draw_nat_eps(6, params, torch.Generator().manual_seed(0)) if defence_name == "nat" else None
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def synchronises(name):
        def refuse(*args, **kwargs):
            raise AssertionError(f"host synchronisation in the training step: Tensor.{name}")
        return refuse

    with monkeypatch.context() as patch:
        for name in SYNC_METHODS:
            patch.setattr(torch.Tensor, name, synchronises(name))
        loss = train_step(net, net, optimiser, x, y, defence=defences.DEFENCES[defence_name], params=params,
                          mean_ce=defences.mean_cross_entropy(y, 6), autocast=contextlib.nullcontext,
                          generator=torch.Generator().manual_seed(1), drawn=nat_eps, progress=0.0,
                          clocks=(runtime.Clock(torch.device("cpu")), runtime.Clock(torch.device("cpu"))))
    assert torch.isfinite(loss).item() and any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    # The guard does catch a synchronisation: the public (validating) attack makes several.
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "tolist", synchronises("tolist"))
        with pytest.raises(AssertionError, match="host synchronisation"):
            pgd(net.eval(), x, y, eps=0.1, step_size=0.01, steps=1)


def test_paper_profile_takes_bf16_and_channels_last_on_cuda_only():
    """Under paper on a CUDA device the training configuration enables bfloat16 autocast and channels-last (in the
    key, since bf16 changes the numbers); on the CPU, or under quick, it does not."""
    make = lambda profile, device: train_config(dataset="cifar10", model="resnet20", profile=profile,  # noqa: E731
                                                defence="pat", device=device)
    cuda, cpu, quick = make("paper", "cuda"), make("paper", "cpu"), make("quick", "cuda")
    assert cuda.bf16 and cuda.channels_last and cuda.compile and config_key(cuda) != config_key(cpu)
    assert not (cpu.bf16 or cpu.channels_last or cpu.compile or quick.bf16 or quick.channels_last or quick.compile)
    # compiling changes where the work runs, not what is trained: like the device, not in the cache key
    assert config_key(dataclasses.replace(cuda, compile=False)) == config_key(cuda)


@needs_cifar10
def test_bf16_and_channels_last_reach_the_training_loop(monkeypatch, tmp_path):
    """Run on the CPU with both options: every forward pass of the step runs under bfloat16 autocast on
    channels-last batches (recorded by a forward hook)."""
    seen = []
    build = runtime.build_model

    def recording_build(config):
        model = build(config)
        model.register_forward_pre_hook(lambda m, args: seen.append(
            (m.training, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
             args[0].is_contiguous(memory_format=torch.channels_last))))
        return model

    monkeypatch.setattr(runtime, "build_model", recording_build)
    config = TrainConfig(dataset="cifar10", model="resnet20", defence="nat", init="scratch", subset=150, epochs=1,
                         batch_size=64, history_subset=0, device="cpu", bf16=True, channels_last=True)
    _train(config, out_dir=tmp_path, progress=False)
    steps = [s[1:] for s in seen if s[0]]  # the update's forward passes (train mode)
    assert len(steps) == 3 * 2 and all(on and dtype == torch.bfloat16 and nhwc for on, dtype, nhwc in steps)


def test_pat_eps_ramp_grows_the_budget_linearly_from_zero_and_is_off_by_default():
    """PATParams.eps_ramp (issue: adversarial fine-tuning collapses when it starts at the full budget): the crafted
    perturbation is exactly 0 at the start, at most half the budget half way through the ramp, the full budget
    after it; without a ramp, the full budget from the first batch (DeepSec's PAT)."""
    torch.manual_seed(0)
    net = repro.models.build("resnet20").eval()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    ramped = defences.PATParams(eps=8 / 255, step_size=2 / 255, steps=3, eps_ramp=2.0)
    assert [ramped.scale_at(p) for p in (0.0, 0.5, 2.0, 3.5)] == [0.0, 0.25, 1.0, 1.0]
    assert defences.PAT_CONFIGS["deepsec_cifar10"].scale_at(0.0) == 1.0  # off by default

    def linf(params, progress):
        x_adv = defences.craft_pat(net, x, y, params, drawn=None, progress=progress,
                                   generator=torch.Generator().manual_seed(1))
        return (x_adv - x).abs().max().item()

    assert linf(ramped, 0.0) == 0.0
    assert 0 < linf(ramped, 1.0) <= 4 / 255 + 1e-7
    assert 4 / 255 < linf(ramped, 2.5) <= 8 / 255 + 1e-7
    assert linf(defences.PAT_CONFIGS["deepsec_cifar10"], 0.0) > 4 / 255
    for bad in (-1.0, math.inf, True):
        with pytest.raises(ValueError, match="PAT: eps_ramp must be a finite number >= 0"):
            dataclasses.replace(ramped, eps_ramp=bad).check()


def test_a_defence_without_a_rule_for_a_parameter_cannot_register():
    """A defence entry checks at registration that its parameters type has exactly one rule per field, a known
    crafting mode and named settings within the rules (the minimum a throwaway defence needs)."""
    import dataclasses as dc

    from repro.checks import number
    from repro.train.defences import Checked, Defence, craft_pat, loss_pat

    @dc.dataclass(frozen=True)
    class ToyParams(Checked):
        eps: float
        alpha: float = 1.0
        RULES = {"eps": number()}  # alpha left out (no annotation: a class attribute)

    with pytest.raises(ValueError, match=r"defence 'toy'.*without a rule: \['alpha'\]"):
        Defence(name="toy", params_type=ToyParams, configs={}, craft=craft_pat, loss=loss_pat, passes=lambda p: 3)

    @dc.dataclass(frozen=True)
    class FullParams(Checked):
        eps: float
        RULES = {"eps": number()}

    with pytest.raises(ValueError, match="craft_mode 'test'; allowed: 'eval', 'train'"):
        Defence(name="toy", params_type=FullParams, configs={}, craft=craft_pat, loss=loss_pat, passes=lambda p: 3,
                craft_mode="test")
    with pytest.raises(ValueError, match="FullParams: eps must be a finite number >= 0, got -1"):
        Defence(name="toy", params_type=FullParams, configs={"bad": FullParams(eps=-1)}, craft=craft_pat,
                loss=loss_pat, passes=lambda p: 3)
    assert Defence(name="toy", params_type=FullParams, configs={}, craft=craft_pat, loss=loss_pat,
                   passes=lambda p: 3).parameters == ("eps",)
