"""No silent wrong numbers: every bad input is refused with an error that names the value (or file) and what is
allowed. One test per fault; data faults use temporary copies (never the shared data)."""
from __future__ import annotations

import gzip
import math
import pickle
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from repro import data
from repro.attacks import ATTACKS, labels_field, run_attack
from repro.data import DataCorruptedError, load
from repro.metrics import (
    acac, actc, ald, ass, attack_utility, cav, ccv, cos, crr, csr, defence_utility, js_divergence, mr, nte, psd, rgb,
    success_mask,
)

from .conftest import needs_cifar10, needs_mnist

CLASSES = 3
# Every registered attack at tiny budgets (its DeepSec setting, ε, step and iterations capped; CW2 at 1 × 2).
SMALL = {name: {k: {"eps": 0.1, "step_size": 0.05, "steps": 2}.get(k, v)
                for k, v in ATTACKS[name].default_setting("cifar10").items()} for name in ATTACKS} | {
    "cw2": dict(binary_search_steps=1, max_iterations=2)}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def linear_model(channels: int = 1, side: int = 8) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, CLASSES)).eval()


def logits_and_labels():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0], [1.0, 0.5, 2.5]])
    return logits, torch.tensor([1, 1, 0])


# ------------------------------------------------------------------------------------------------------------ data
def _mnist_test_copy(tmp_path, monkeypatch, *, unzipped: bool = True, gz: bool = False):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.MNIST_FILES["test"]:
        source = data.data_root() / "MNIST" / "raw" / name
        if unzipped:
            shutil.copyfile(source, raw / name)
        if gz:
            shutil.copyfile(source.with_name(name + ".gz"), raw / f"{name}.gz")
    monkeypatch.setenv("REPRO_DATA", str(tmp_path))
    return raw


@needs_mnist
def test_mnist_unzipped_file_with_changed_pixels_is_refused(tmp_path, monkeypatch):
    raw = _mnist_test_copy(tmp_path, monkeypatch, gz=True)
    images = raw / "t10k-images-idx3-ubyte"
    payload = bytearray(images.read_bytes())
    payload[16 + 300] ^= 0xFF  # one pixel of the first image; the header stays valid
    images.write_bytes(bytes(payload))
    # A valid .gz beside it must not be used instead: the damaged file is named, nothing falls back.
    with pytest.raises(DataCorruptedError, match=r"t10k-images-idx3-ubyte: md5 \w+ is not the official 2646ac64"):
        load("mnist", split="test", download=False)


@needs_mnist
def test_mnist_read_from_gz_alone_is_verified_and_equal(tmp_path, monkeypatch):
    reference_x, reference_y = load("mnist", split="test", download=False)  # the shared, unzipped copy
    raw = _mnist_test_copy(tmp_path, monkeypatch, unzipped=False, gz=True)
    x, y = load("mnist", split="test", download=False)
    assert torch.equal(reference_x, x) and torch.equal(reference_y, y)
    labels = raw / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[8] = (content[8] + 1) % 10  # the first label, a valid class, but not the official one
    labels.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataCorruptedError, match=r"t10k-labels-idx1-ubyte\.gz \(decompressed\): md5 .* not the official"):
        load("mnist", split="test", root=tmp_path, download=False)


@needs_mnist
def test_mnist_truncated_gz_is_named(tmp_path, monkeypatch):
    raw = _mnist_test_copy(tmp_path, monkeypatch, unzipped=False, gz=True)
    archive = raw / "t10k-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:50_000])
    with pytest.raises(DataCorruptedError, match=r"t10k-images-idx3-ubyte\.gz: not a valid gzip file .* truncated"):
        load("mnist", split="test", download=False)


def _cifar_copy(tmp_path, monkeypatch):
    folder = tmp_path / data.CIFAR10_FOLDER
    folder.mkdir()
    pixels = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    for name in data.CIFAR10_MD5:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": pixels, "labels": [4, 9], "batch_label": "x"}, f, protocol=2)
    monkeypatch.setenv("REPRO_DATA", str(tmp_path))
    return folder


def test_truncated_cifar10_batch_is_named(tmp_path, monkeypatch):
    folder = _cifar_copy(tmp_path, monkeypatch)
    batch = folder / "test_batch"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(DataCorruptedError, match=r"test_batch: not a readable CIFAR-10 batch \(UnpicklingError: "
                                                 r".*truncated or corrupted \(md5 [0-9a-f]{32}\)"):
        load("cifar10", split="test", download=False)


def test_cifar10_batch_without_data_is_named(tmp_path, monkeypatch):
    folder = _cifar_copy(tmp_path, monkeypatch)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({"labels": [1, 2]}, f, protocol=2)
    with pytest.raises(DataCorruptedError, match=r"data_batch_3: not a readable CIFAR-10 batch \(KeyError"):
        load("cifar10", split="train", download=False)


@pytest.mark.parametrize("label", [42, -3, 10])
def test_cifar10_labels_outside_the_classes_are_refused_at_load(tmp_path, label):
    """Before: labels 42 and -3 loaded (a partial copy has no md5 to vouch for it) and counted as misclassified."""
    folder = tmp_path / data.CIFAR10_FOLDER
    folder.mkdir()
    for name in data.CIFAR10_MD5:
        labels = [3, label, 5] if name == "data_batch_2" else [3, 4, 5]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": np.zeros((3, 3072), dtype=np.uint8), "labels": labels}, f, protocol=2)
    assert load("cifar10", split="test", root=tmp_path, download=False)[1].tolist() == [3, 4, 5]
    with pytest.raises(DataCorruptedError, match=rf"data_batch_2: label {label} at row 1 \(1 such rows\); CIFAR-10 "
                                                 r"labels are 0\.\.9"):
        load("cifar10", split="train", root=tmp_path, download=False)


@needs_cifar10
def test_real_cifar10_batch_cut_short_is_named_and_partial_copy_still_loads(tmp_path, monkeypatch):
    folder = tmp_path / data.CIFAR10_FOLDER
    folder.mkdir()
    shared = data.data_root() / data.CIFAR10_FOLDER
    for name in data.CIFAR10_MD5:
        (folder / name).symlink_to(shared / name)
    x, _ = load("cifar10", split="test", root=tmp_path, download=False)  # the partial copy (non-official md5s) loads
    assert len(x) > 0
    (folder / "test_batch").unlink()
    (folder / "test_batch").write_bytes((shared / "test_batch").read_bytes()[:2_000_000])
    monkeypatch.setenv("REPRO_DATA", str(tmp_path))
    with pytest.raises(DataCorruptedError, match=r"test_batch: not a readable CIFAR-10 batch .* truncated"):
        load("cifar10", split="test", download=False)


# --------------------------------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("metric", ["acac", "nte", "actc", "success_mask", "ccv", "cos"])
def test_probabilities_instead_of_logits_are_refused(metric):
    logits, y = logits_and_labels()
    probs = torch.softmax(logits, 1)
    success = torch.tensor([True, False, True])
    calls = {
        "acac": lambda: acac(probs, success), "nte": lambda: nte(probs, success),
        "actc": lambda: actc(probs, y, success), "success_mask": lambda: success_mask(probs, y),
        "ccv": lambda: ccv(logits, probs, success, success), "cos": lambda: cos(probs, logits, success, success),
    }
    with pytest.raises(ValueError, match=r"every row lies in \[0, 1\] and sums to 1, so these are probabilities, "
                                         r"not logits"):
        calls[metric]()


@pytest.mark.parametrize("bad, index", [(3, 1), (-1, 1)])
def test_success_mask_and_actc_refuse_labels_outside_the_classes(bad, index):
    logits, y = logits_and_labels()
    y[index] = bad
    message = rf"y\[{index}\] = {bad} is not a class index: y must lie in 0\.\.2 \(the logits have 3 columns\)"
    with pytest.raises(ValueError, match=message):
        success_mask(logits, y)
    with pytest.raises(ValueError, match=message):
        actc(logits, y, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"target\[0\] = 7 is not a class index"):
        success_mask(logits, logits_and_labels()[1], target=torch.tensor([7, 0, 0]))


def test_js_divergence_takes_probabilities_and_says_so():
    logits, _ = logits_and_labels()
    with pytest.raises(ValueError, match=r"p is not a probability distribution per row \(values in \[-1, 3\].*"
                                         r"js_divergence takes probabilities, so pass softmax\(logits\)"):
        js_divergence(logits, torch.softmax(logits, 1))
    with pytest.raises(ValueError, match=r"p has shape \(3, 3\) but q has \(2, 3\)"):
        js_divergence(torch.softmax(logits, 1), torch.softmax(logits[:2], 1))


def _empty_calls():
    logits, empty_y = torch.empty(0, CLASSES), torch.empty(0, dtype=torch.int64)
    none, images = torch.empty(0, dtype=torch.bool), torch.empty(0, 1, 8, 8)
    model = linear_model()
    return {
        "mr": lambda: mr(none), "acac": lambda: acac(logits, none), "actc": lambda: actc(logits, empty_y, none),
        "nte": lambda: nte(logits, none), "success_mask": lambda: success_mask(logits, empty_y),
        "ald": lambda: ald(images, images, none, p=2), "ass": lambda: ass(images, images, none),
        "psd": lambda: psd(images, images, none), "rgb": lambda: rgb(model, images, empty_y, none),
        "cav": lambda: cav(none, none), "crr": lambda: crr(none, none), "csr": lambda: csr(none, none),
        "ccv": lambda: ccv(logits, logits, none, none), "cos": lambda: cos(logits, logits, none, none),
        "js_divergence": lambda: js_divergence(logits, logits),
        "attack_utility": lambda: attack_utility(model, images, images, empty_y),
        "defence_utility": lambda: defence_utility(model, model, images, empty_y),
    }


@pytest.mark.parametrize("metric", list(_empty_calls()))
def test_every_metric_refuses_an_empty_batch(metric):
    with pytest.raises(ValueError, match=r"has no samples"):
        _empty_calls()[metric]()


def test_no_successful_example_among_some_is_nan_not_an_error():
    logits, y = logits_and_labels()
    none = torch.zeros(3, dtype=torch.bool)
    assert mr(none) == 0.0
    assert all(math.isnan(v) for v in (acac(logits, none), actc(logits, y, none), nte(logits, none)))


def test_ccv_and_cos_name_both_lengths():
    logits, _ = logits_and_labels()
    right = torch.ones(3, dtype=torch.bool)
    for metric in (ccv, cos):
        with pytest.raises(ValueError, match=r"raw_logits has shape \(3, 3\) but defended_logits has \(2, 3\)"):
            metric(logits, logits[:2], right, right)
        with pytest.raises(ValueError, match=r"raw_correct and defended_correct have 2 entries but the logits have 3"):
            metric(logits, logits, right[:2], right[:2])
        with pytest.raises(ValueError, match=r"raw_correct has shape \(3,\) but defended_correct has \(2,\)"):
            metric(logits, logits, right, right[:2])


def test_nan_logits_and_defence_labels_out_of_range_are_refused():
    logits, y = logits_and_labels()
    logits[1, 2] = math.nan
    with pytest.raises(ValueError, match=r"logits contains NaN or \+inf"):
        acac(logits, torch.ones(3, dtype=torch.bool))
    model, x = linear_model(), torch.rand(3, 1, 8, 8)
    with pytest.raises(ValueError, match=r"y\[2\] = 10 is not a class index: y must lie in 0\.\.2"):
        defence_utility(model, model, x, torch.tensor([0, 1, 10]))


def test_metric_images_must_be_float32_nchw():
    x = torch.rand(2, 8, 8, 3)
    success = torch.ones(2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"x has shape \(2, 8, 8, 3\), which looks channels-last .* "
                                         r"x\.permute\(0, 3, 1, 2\)"):
        psd(x, x, success)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"x has dtype torch\.float64; images must be float32"):
        ald(x, x, success, p=2)


@no_cuda
def test_metrics_on_missing_cuda_say_so():
    model, x = linear_model(), torch.rand(3, 1, 8, 8)
    with pytest.raises(ValueError, match=r"device 'cuda' asked for, but CUDA is not available .* allowed here: 'cpu'"):
        defence_utility(model, model, x, torch.tensor([0, 1, 2]), device="cuda")


# --------------------------------------------------------------------------------------------------------- attacks
def _labels(name: str, n: int) -> torch.Tensor:
    y = torch.arange(n) % CLASSES
    return (y + 1) % CLASSES if labels_field(name) != "y" else y


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_refuse_float64_images(name):
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"x has dtype torch\.float64; images must be float32 .* use x\.float\(\)"):
        ATTACKS[name].fn(linear_model(), x, _labels(name, 4), **SMALL[name])


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_refuse_channels_last_images(name):
    x = torch.rand(4, 8, 8, 3)  # a CIFAR-like batch in NHWC
    with pytest.raises(ValueError, match=r"x has shape \(4, 8, 8, 3\), which looks channels-last \(N, H, W, C\); "
                                         r"images must be channels-first \(N, C, H, W\): use x\.permute\(0, 3, 1, 2\)"):
        ATTACKS[name].fn(linear_model(channels=3), x, _labels(name, 4), **SMALL[name])


def test_run_attack_refuses_an_empty_batch_and_bad_images_before_any_work():
    calls = []

    def attack(model, x, y):
        calls.append(len(x))
        return x

    model = linear_model()
    for x, message in [(torch.empty(0, 1, 8, 8), r"x has no samples \(shape \(0, 1, 8, 8\)\)"),
                       (torch.rand(2, 1, 8, 8).double(), r"x has dtype torch\.float64"),
                       (torch.rand(2, 8, 8, 1), r"looks channels-last")]:
        with pytest.raises(ValueError, match=message):
            run_attack(attack, model, x, torch.zeros(len(x), dtype=torch.int64), params={}, progress=False)
    with pytest.raises(ValueError, match=r"x has no samples"):
        run_attack("pgd", model, torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.int64), params=SMALL["pgd"],
                   progress=False)
    assert calls == []


@no_cuda
def test_run_attack_on_missing_cuda_says_so():
    x, y = torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"device 'cuda' asked for, but CUDA is not available on this machine "
                                         r"\(torch .*\); allowed here: 'cpu'"):
        run_attack("fgsm", linear_model(), x, y, params=SMALL["fgsm"], device="cuda", progress=False)
    with pytest.raises(ValueError, match=r"device 'gpu' is not a device .* allowed here: 'cpu'"):
        run_attack("fgsm", linear_model(), x, y, params=SMALL["fgsm"], device="gpu", progress=False)


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "mnist", "--variant", "madry"], "--variant only applies to a defence; add --defence"),
    (["--dataset", "mnist", "--init", "raw", "--recipe", "x"], "--init, --recipe only apply to a defence"),
    (["--dataset", "cifar10", "--eps-ramp", "1"], "--eps-ramp only applies to a defence"),
    (["--dataset", "cifar10", "--defence", "pat", "--eps-ramp", "-1"], "argument --eps-ramp: -1 is not a finite"),
    (["--dataset", "cifar10", "--defence", "pat", "--eps-ramp", "nan"], "argument --eps-ramp: nan is not a finite"),
    (["--dataset", "cifar10", "--width", "0"], "argument --width: 0 is below the minimum 1"),
    (["--dataset", "mnist", "--epochs", "0"], "argument --epochs: 0 is below the minimum 1"),
    (["--dataset", "mnist", "--seed", str(2 ** 70)], "does not fit a 64-bit generator seed"),
    (["--dataset", "mnist", "--device", "cuda:99" if torch.cuda.is_available() else "cuda"], "--device: device"),
    (["--dataset", "mnist", "--out-dir", "/etc/passwd"], "--out-dir /etc/passwd: not a folder"),
    (["--dataset", "mnist", "--out-dir", "/proc/repro-out"], "--out-dir /proc/repro-out: cannot write there"),
])
def test_the_training_command_line_refuses_flags_it_would_ignore_or_crash_on(argv, message, capsys):
    """Before: --variant/--init without --defence trained the raw model under the same key (ignored), --width 0
    and a huge seed gave tracebacks, --device cuda without a GPU a driver traceback, a bad --out-dir a traceback
    after the data had loaded."""
    from repro.train.__main__ import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@needs_mnist
@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset="mnist", model="mnist_convnet", recipe="deepsec_cifar10"),
     r"recipe 'deepsec_cifar10' is written for 'cifar10', not 'mnist'; allowed for 'mnist': 'deepsec_mnist'$"),
    (dict(dataset="cifar10", model="resnet20", defence="pat", recipe="pat_finetune_cifar10", init="scratch"),
     r"recipe 'pat_finetune_cifar10' fine-tunes trained weights, so init 'scratch' is refused"),
])
def test_a_recipe_for_another_dataset_or_a_fine_tune_from_scratch_is_refused(kwargs, message, capsys):
    """Before: both were accepted, trained, and recorded no departure. The command line says so in one line."""
    from repro.train import TrainConfig
    from repro.train.__main__ import main

    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)
    argv = ["--dataset", kwargs["dataset"], "--profile", "quick", "--recipe", kwargs["recipe"],
            "--defence", kwargs.get("defence", "nat"), *(["--init", "scratch"] if "init" in kwargs else [])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: recipe ") and len(err.strip().splitlines()) == 1


def test_the_pipeline_checks_the_device_before_any_notebook_runs(capsys):
    from repro.pipeline import main

    bad = "cuda:99" if torch.cuda.is_available() else "cuda"
    assert main(["--profile", "smoke", "--device", bad, "--only", "pgd_resnet20"]) == 1
    assert "not available on this machine" in capsys.readouterr().err


def test_rgb_with_a_negative_blur_radius_is_refused():
    x, y, success = torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), torch.tensor([True, False])
    model = linear_model()
    with pytest.raises(ValueError, match=r"radius must be a finite number >= 0 .*got -1"):
        rgb(model, x, y, success, radius=-1)
    with pytest.raises(ValueError, match="radius must be a finite number"):
        rgb(model, x, y, success, radius=float("nan"))
    with pytest.raises(ValueError, match=r"blur_radius must be a finite number >= 0 .*got -0\.5"):
        attack_utility(model, x, x, y, blur_radius=-0.5)


def test_a_row_of_minus_inf_logits_is_refused_not_a_nan_acac():
    # NaN is the documented "no successful example"; an all -inf row would give the same NaN for another reason
    logits, _ = logits_and_labels()
    logits[1] = -math.inf
    with pytest.raises(ValueError, match=r"row 1 is -inf for every class"):
        acac(logits, torch.tensor([True, True, False]))
    logits[1, 0] = 0.0  # one class left: a legitimate row
    assert math.isfinite(acac(logits, torch.tensor([True, True, False])))
