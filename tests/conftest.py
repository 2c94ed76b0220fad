"""Shared test fixtures.

Tests on real data need the official files under ``$REPRO_DATA`` (CI points it at ../shared/data); without them
those tests are skipped with a reason that says so, never faked with synthetic data.
"""
from __future__ import annotations

import os

import pytest
import torch

from repro.data import data_root

# Two cores on CI; more threads only add contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_configure(config):
    """Run the suite on a training and attack cache of its own (``$REPRO_CACHE``, inherited by the papermill kernels),
    as CI does on a new machine. Before: the tests trained the smoke models into the user's cache, from whatever
    uncommitted tree they ran in, and a later ``make book`` loaded those entries (same key) instead of the published
    models and recorded them as trained by a dirty tree. ``REPRO_TEST_CACHE`` names a folder to keep between runs."""
    import atexit
    import shutil
    import tempfile

    folder = os.environ.get("REPRO_TEST_CACHE")
    if not folder:
        folder = tempfile.mkdtemp(prefix="repro-test-cache-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["REPRO_CACHE"] = folder


def _have(*relative: str) -> bool:
    return all((data_root() / r).exists() for r in relative)


HAVE_MNIST = _have("MNIST/raw/t10k-images-idx3-ubyte")
HAVE_CIFAR10 = _have("cifar-10-batches-py/test_batch")
HAVE_DEEPSEC = _have("deepsec-raw-models/MNIST_raw.pt", "deepsec-raw-models/CIFAR10_raw.pt")

needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason="no MNIST under the data root (set REPRO_DATA): real-data test skipped")
needs_cifar10 = pytest.mark.skipif(not HAVE_CIFAR10,
                                   reason="no CIFAR-10 under the data root (set REPRO_DATA): real-data test skipped")
HAVE_CIFAR10_JPEG = HAVE_CIFAR10 and _have("cifar-10-jpeg/cifar10_jpeg_q75.tar.gz")
needs_cifar10_jpeg = pytest.mark.skipif(not HAVE_CIFAR10_JPEG, reason="no CIFAR-10 and its JPEG copy under the data root "
                                        "(set REPRO_DATA): real-data test skipped")
needs_deepsec = pytest.mark.skipif(not (HAVE_DEEPSEC and HAVE_MNIST and HAVE_CIFAR10),
                                   reason="the data root (REPRO_DATA) lacks DeepSec's checkpoints or the datasets: test skipped")


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models gain nothing from more, and on a shared 2-core machine a second thread's
    synchronisation and spin-waiting made those tests up to 10× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def deepsec_mnist():
    from repro.models import load_deepsec
    return load_deepsec("mnist")


@pytest.fixture(scope="session")
def deepsec_cifar10():
    from repro.models import load_deepsec
    return load_deepsec("cifar10")


def random_bn_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Give every BatchNorm2d non-trivial running statistics and affine parameters; returns the model in eval()."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()
