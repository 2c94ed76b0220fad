"""repro.models: architectures, the registry, DeepSec's released checkpoints."""
from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from repro import models
from repro.data import load, predict_logits
from repro.models import ChecksumError, build, fold_batchnorm, load_deepsec, madry_wrn, resnet20

from .conftest import needs_cifar10, needs_deepsec, needs_mnist, random_bn_statistics


def n_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name, kwargs, shape, count", [
    ("mnist_convnet", {}, (2, 1, 28, 28), 312_202),
    ("resnet20", {}, (2, 3, 32, 32), 272_586),
    ("resnet20_wide", {"width": 2}, (2, 3, 32, 32), None),
    ("madry_wrn", {"depth": 10, "widen_factor": 1}, (2, 3, 32, 32), None),
])
def test_shapes_and_parameter_counts(name, kwargs, shape, count):
    model = build(name, **kwargs).eval()
    out = model(torch.rand(shape))
    assert out.shape == (2, 10)
    if count is not None:
        assert n_params(model) == count


def test_wide_resnet_34_10_has_madry_size_and_robustbench_keys():
    model = build("madry_wrn")  # WRN-34-10: 46.16M parameters, as published
    assert n_params(model) == 46_160_474
    keys = model.state_dict().keys()
    for key in ["conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight",
                "block3.layer.4.conv2.weight", "bn1.running_mean", "fc.weight"]:
        assert key in keys
    assert "block1.layer.1.convShortcut.weight" not in keys


def test_follow_up_wide_resnet_is_resnet20_times_ten():
    wide = build("resnet20_wide", width=10)
    assert wide.fc.in_features == 640 and wide.layer1[0].conv1.out_channels == 160
    assert "layer1.0.downsample.0.bias" in wide.state_dict()  # the width change needs a projection in stage 1


def test_logit_shift_changes_logits_not_probabilities():
    torch.manual_seed(1)
    shifted = build("mnist_convnet", logit_shift=True).eval()
    plain = build("mnist_convnet", logit_shift=False).eval()
    plain.load_state_dict(shifted.state_dict())
    x = torch.rand(4, 1, 28, 28)
    a, b = shifted(x), plain(x)
    assert torch.allclose(a.amax(1), torch.zeros(4))
    assert torch.allclose(a.softmax(1), b.softmax(1), atol=1e-6)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("bad", [dict(name="vgg16"), dict(name="resnet20_wide", width=0),
                                 dict(name="madry_wrn", depth=33)])
def test_bad_model_arguments(bad):
    name = bad.pop("name")
    with pytest.raises(ValueError, match=r"vgg16|width|depth"):
        build(name, **bad)


@needs_deepsec
@needs_mnist
def test_deepsec_mnist_checkpoint_accuracy(deepsec_mnist):
    x, y = load("mnist", split="test")
    accuracy = (predict_logits(deepsec_mnist, x).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.990  # measured 99.34 % (paper: 99.27 %)
    assert deepsec_mnist.training is False


@needs_deepsec
@needs_cifar10
def test_deepsec_cifar10_checkpoint_accuracy(deepsec_cifar10):
    x, y = load("cifar10", split="test")
    accuracy = (predict_logits(deepsec_cifar10, x).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.85  # measured 89.58 % on the 1,017 available test images (paper: 85.95 % on 10k)


@needs_deepsec
def test_corrupted_checkpoint_is_refused(tmp_path, monkeypatch):
    from repro.data import data_root

    fake_root = tmp_path / "data"
    (fake_root / "deepsec-raw-models").mkdir(parents=True)
    target = fake_root / "deepsec-raw-models" / "MNIST_raw.pt"
    shutil.copy(data_root() / "deepsec-raw-models" / "MNIST_raw.pt", target)
    with open(target, "r+b") as f:  # flip one byte
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setenv("REPRO_DATA", str(fake_root))
    with pytest.raises(ChecksumError, match=r"MNIST_raw.pt has sha256 [0-9a-f]{64}, expected e04a324e"):
        load_deepsec("mnist")


def test_wrong_hash_download_is_refused_and_not_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    served = tmp_path / "served.pt"
    served.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(models, "DEEPSEC_URL", served.as_uri())
    with pytest.raises(ChecksumError, match="expected e04a324e"):
        load_deepsec("mnist")
    assert not list((tmp_path / "cache" / "deepsec").iterdir()), "nothing half-written is left behind"


def test_missing_checkpoint_offline_names_the_places(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "DEEPSEC_URL", (tmp_path / "nowhere.pt").as_uri())
    with pytest.raises(FileNotFoundError, match=r"deepsec-raw-models/CIFAR10_raw.pt"):
        load_deepsec("cifar10")


def test_unknown_deepsec_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_deepsec("svhn")


# ---------------------------------------------------------------------------------------------- BN folding
def test_fold_batchnorm_same_function_no_bn_left_original_untouched():
    model = random_bn_statistics(resnet20())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert sum(isinstance(m, nn.Conv2d) for m in folded.modules()) == sum(
        isinstance(m, nn.Conv2d) for m in model.modules())
    assert not model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fold_batchnorm_leaves_bn_that_does_not_follow_a_conv_alone():
    # Pre-activation BN (after a ReLU or an addition) is not an affine map of a conv's output alone.
    model = random_bn_statistics(madry_wrn(depth=10, widen_factor=1))
    folded = fold_batchnorm(model)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # Each block's second BN follows its first conv (folded); the pre-activation BNs stay.
    assert 0 < sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) < n_bn
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_fold_batchnorm_skips_a_shared_conv_and_a_conv_with_two_users():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.bn2 = nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.BatchNorm2d(2)

        def forward(self, x):
            h = self.conv(x)
            return (self.bn(h) + h + self.bn2(self.conv(x))).flatten(1)

    model = random_bn_statistics(Shared())
    folded = fold_batchnorm(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 2
    x = torch.rand(3, 1, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


def test_fold_batchnorm_refuses_training_mode_and_untraceable_models():
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(resnet20().train())

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)

        def forward(self, x):
            return self.bn(self.conv(x)).flatten(1) if x.sum() > 0 else x.flatten(1)

    with pytest.raises(ValueError, match="cannot trace DataDependent"):
        fold_batchnorm(DataDependent().eval())


def test_compile_or_eager_falls_back_to_the_eager_model(monkeypatch):
    """A backend that fails at the first call (no compiler, unsupported operation) warns once and the wrapper then
    computes exactly what the eager model computes; disabled, the model itself is returned."""
    import warnings

    from repro.models.compiled import compile_or_eager

    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    calls = []

    def broken(model, **kwargs):
        def run(*args, **kw):
            calls.append(1)
            raise RuntimeError("no backend here")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    wrapped = compile_or_eager(net)
    x = torch.randn(2, 4)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no backend here"):
        out = wrapped(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = wrapped(x)  # no second attempt, no second warning
    assert torch.equal(out, net(x)) and torch.equal(again, out) and len(calls) == 1
    assert list(wrapped.parameters()) == list(net.parameters())  # training the wrapper trains the model
    assert compile_or_eager(net, enabled=False) is net
