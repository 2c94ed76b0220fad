"""repro.data: loading real data, provenance, DeepSec's candidate selection, and clear errors."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from repro import data
from repro.data import DataNotFoundError, candidates, load, provenance

from .conftest import needs_cifar10, needs_cifar10_jpeg, needs_deepsec, needs_mnist


@needs_mnist
def test_mnist_is_complete_float_nchw_in_unit_box():
    x, y = load("mnist", split="test")
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10_000,) and y.dtype == torch.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert y[:3].tolist() == [7, 2, 1]  # the first MNIST test labels
    assert load("mnist", split="train", n=5)[1].tolist() == [5, 0, 4, 1, 9]


@needs_mnist
def test_load_returns_copies():
    x, _ = load("mnist", split="test", n=4)
    x.zero_()
    assert load("mnist", split="test", n=4)[0].sum() > 0


@needs_cifar10
def test_partial_cifar10_is_read_and_reported_as_partial():
    x, y = load("cifar10", split="test")
    assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y[0].item() == 3  # the first official test image is a cat
    prov = provenance("cifar10")
    assert prov["test"] == len(y) and prov["full_test"] == 10_000
    if len(y) < 10_000:
        assert prov["official"] is False
        assert not all(f["matches"] for f in prov["files"].values())


@needs_mnist
def test_mnist_provenance_is_official():
    prov = provenance("mnist")
    assert prov["official"] is True and prov["train"] == 60_000 and prov["test"] == 10_000
    assert all(f["matches"] and f["md5"] == data.MNIST_MD5[name] for name, f in prov["files"].items())


def test_cifar_reader_matches_official_layout(tmp_path):
    # One hand-made image: R plane all 255, G plane 0, B plane row index.
    pixels = np.zeros((2, 3072), dtype=np.uint8)
    pixels[0, :1024] = 255
    pixels[0, 2048:] = np.repeat(np.arange(32, dtype=np.uint8), 32)
    folder = tmp_path / data.CIFAR10_FOLDER
    folder.mkdir()
    for name in data.CIFAR10_MD5:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": pixels, "labels": [4, 9, 1], "batch_label": "x"}, f, protocol=2)
    x, y = load("cifar10", split="test", root=tmp_path, download=False)
    assert y.tolist() == [4, 9]  # extra official labels beyond the stored rows are dropped
    assert torch.all(x[0, 0] == 1.0) and torch.all(x[0, 1] == 0.0)
    assert x[0, 2, 5, 0].item() == pytest.approx(5 / 255)
    assert load("cifar10", split="train", root=tmp_path, download=False)[0].shape == (10, 3, 32, 32)
    prov = provenance("cifar10", root=tmp_path)
    assert prov["official"] is False and prov["test"] == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset="imagenet", split="test"), "unknown dataset 'imagenet'"),
    (dict(dataset="mnist", split="validation"), "unknown split 'validation'"),
    (dict(dataset="mnist", split="test", n=0), "n must be a positive integer"),
])
def test_bad_arguments_are_named(kwargs, message):
    dataset = kwargs.pop("dataset")
    with pytest.raises(ValueError, match=message):
        load(dataset, **kwargs)


def test_missing_data_offline_names_the_files(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"cifar-10-batches-py/test_batch"):
        load("cifar10", split="test", root=tmp_path, download=False)


def test_missing_data_with_failing_download_names_the_files(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def no_network(*args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(tv_utils, "download_url", no_network)
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", no_network)
    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", no_network)
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", no_network)
    with pytest.raises(DataNotFoundError, match=r"MNIST/raw/t10k-images-idx3-ubyte") as err:
        load("mnist", split="test", root=tmp_path)
    assert "REPRO_DATA" in str(err.value)
    with pytest.raises(DataNotFoundError, match=r"network unreachable"):
        load("cifar10", split="test", root=tmp_path)


@needs_deepsec
def test_candidates_follow_deepsec(deepsec_mnist):
    c = candidates(deepsec_mnist, "mnist", n=200, seed=100)
    assert c.x.shape == (200, 1, 28, 28) and c.index.unique().numel() == 200
    logits = deepsec_mnist(c.x)
    assert torch.equal(logits.argmax(1), c.y), "every candidate is classified correctly"
    assert not torch.any(c.target == c.y) and c.target.min() >= 0 and c.target.max() <= 9
    assert torch.equal(c.least_likely, logits.argmin(1))
    x_test, y_test = load("mnist", split="test")
    assert torch.equal(c.x, x_test[c.index]) and torch.equal(c.y, y_test[c.index])
    again = candidates(deepsec_mnist, "mnist", n=200, seed=100)
    assert torch.equal(again.index, c.index) and torch.equal(again.target, c.target)
    other = candidates(deepsec_mnist, "mnist", n=200, seed=101)
    assert not torch.equal(other.index, c.index)
    assert c.n_correct == 9934


@needs_deepsec
def test_candidates_reject_more_than_correct(deepsec_cifar10):
    with pytest.raises(ValueError, match="classifies only"):
        candidates(deepsec_cifar10, "cifar10", n=5000)
    # A partial copy may allow fewer: then every correctly classified image is a candidate, in test order.
    fewer = candidates(deepsec_cifar10, "cifar10", n=5000, allow_fewer=True)
    assert len(fewer.y) == fewer.n_correct < 5000 and fewer.index.tolist() == sorted(fewer.index.tolist())
    assert (deepsec_cifar10(fewer.x).argmax(1) == fewer.y).all()


# ------------------------------------------------------------------------------------------ the lossy JPEG copy
@needs_cifar10_jpeg
def test_jpeg_copy_maps_every_file_to_its_official_image():
    """Every JPEG file lands on its official index: the labels agree with the exact copy's, and each exact image is
    within JPEG distance of its mapped copy (PSNR ≥ 20 dB; the README measured a 23.1 dB minimum), while the image
    one index away is not (a shifted mapping would give far less)."""
    x, y, index = data.load_jpeg("cifar10", split="train")
    assert x.shape == (50_000, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert np.array_equal(index, np.arange(50_000)) and 0.0 <= x.min() and x.max() <= 1.0
    assert torch.bincount(y).tolist() == [5000] * 10
    exact, y_exact = load("cifar10", split="train")
    at = torch.from_numpy(data.official_indices("cifar10", split="train"))
    assert torch.equal(y[at], y_exact)

    def psnr(a, b):
        return (10 * torch.log10(1 / ((a - b) ** 2).flatten(1).mean(1))).numpy()

    assert psnr(exact, x[at]).min() > 20
    assert np.median(psnr(exact[:-1], x[at[1:]])) < 15


def _jpeg_tar(path, files: dict) -> None:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_jpeg_archive_with_other_content_is_refused(tmp_path):
    folder = tmp_path / data.JPEG_FOLDER
    folder.mkdir()
    _jpeg_tar(folder / data.JPEG_ARCHIVE, {"train/cat/0000.jpg": b"not the pinned bytes"})
    with pytest.raises(data.DataCorruptedError, match=r"cifar10_jpeg_q75.tar.gz: its 1 JPEG files have content digest"):
        data.load_jpeg("cifar10", split="train", root=tmp_path, download=False)
    (folder / data.JPEG_ARCHIVE).write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(data.DataCorruptedError, match="not a readable tar archive"):
        data.load_jpeg("cifar10", split="train", root=tmp_path, download=False)


def test_jpeg_download_is_checked_and_a_bad_one_is_not_kept(tmp_path, monkeypatch):
    source = tmp_path / "github.tar.gz"  # GitHub's archives put the files under a top folder
    _jpeg_tar(source, {"CIFAR-10-images-6d04f75/train/cat/0000.jpg": b"wrong bytes"})
    monkeypatch.setattr(data, "JPEG_URL", source.as_uri())
    root = tmp_path / "root"
    with pytest.raises(data.DataCorruptedError, match="download from .*github.tar.gz was refused and removed: .*content digest"):
        data.load_jpeg("cifar10", split="train", root=root)
    assert not (root / data.JPEG_FOLDER / data.JPEG_ARCHIVE).exists()
    assert list((root / data.JPEG_FOLDER).iterdir()) == []  # no temporary file left either
    with pytest.raises(DataNotFoundError, match=r"cifar-10-jpeg/cifar10_jpeg_q75.tar.gz"):
        data.load_jpeg("cifar10", split="train", root=root, download=False)
    monkeypatch.setattr(data, "JPEG_URL", (tmp_path / "nowhere.tar.gz").as_uri())
    with pytest.raises(DataNotFoundError, match="download failed"):
        data.load_jpeg("cifar10", split="train", root=root)


def test_jpeg_copy_is_cifar10_only():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; allowed: 'cifar10'"):
        data.load_jpeg("mnist", split="train")
