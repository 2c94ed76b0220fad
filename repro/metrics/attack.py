"""DeepSec's attack utility metrics (Ling et al., S&P 2019, §III-B; DeepSec code ``Evaluations/AttackEvaluations.py``).

Every metric follows DeepSec's released code, which is what produced the published numbers (SPEC §6):

* success is decided once, by :func:`success_mask`, and passed to every metric;
* MR divides by all ``N`` attacked samples; every other metric averages over the ``n`` successful adversarial
  examples (AEs) only, and is NaN when ``n = 0`` (there is nothing to average; 0 would be a fake value);
* an empty input (``N = 0``) is refused with a ValueError ("no samples") by every metric: that is a mistake upstream,
  not a measurement, while ``n = 0`` successful AEs among ``N > 0`` is a result (the NaN above);
* ALD_L0, ASS, RGB and RIC work on 8-bit images, ``round(x · 255)``. DeepSec used ``np.round`` on float32 arrays;
  :func:`to_8bit` does the same product in the input's dtype and rounds half to even, as ``np.round`` does.

Where the paper's text and the code disagree, a keyword selects the paper's definition (``ald(normalized=True)``,
``psd(weighting="inverse_std")``, ``ass(data_range=255)``); the defaults are the code's.

Images are float32 NCHW in [0, 1] (float32 because ``round(x·255)`` must be DeepSec's float32 product); models return
logits, and the functions that take logits refuse probabilities (rows in [0, 1] summing to 1) and labels outside
``0..K-1``. Every refusal is a ValueError naming the value and what is allowed (the checks are the attacks' own,
:mod:`repro.metrics.checks`). Metrics run on the device the tensors are on (in float64,
so MPS, which lacks float64, is not supported); only RGB's Pillow blur and RIC's Guetzli encoder run on the CPU.
CC (DeepSec's classification cost) is the attack runner's wall time per AE, so it is not computed here.
"""
from __future__ import annotations

import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import (check_device, check_eval_mode, check_image_batch, check_labels, check_logits, check_pair,
                     check_success, device_of, mean_over, predict_logits, rate_of, softmax64)
from .uncertainty import DEFAULT_LEVEL, DEFAULT_RESAMPLES, check_interval_args, interval_records

# SSIM constants: Wang et al. (2004), as in scikit-image's structural_similarity, which DeepSec called.
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_WIN_SIZE = 7
# DeepSec passed round(x·255) floats to skimage without data_range; the skimage of 2019 then took the range of a
# float dtype, 1 − (−1) = 2. The data are 0..255, so 255 is the correct value.
DEEPSEC_SSIM_DATA_RANGE = 2.0
# DeepSec's RGB and RIC settings (AttackEvaluations.py): Pillow GaussianBlur radius 0.5; Guetzli quality 90.
DEEPSEC_BLUR_RADIUS = 0.5
DEEPSEC_JPEG_QUALITY = 90
PSD_WEIGHTINGS = ("one_minus_std", "inverse_std")
ALD_NORMS = (0, 2, math.inf)

KEYS = ("MR", "ACAC", "ACTC", "ALD_L0", "ALD_L2", "ALD_Linf", "ASS", "PSD", "NTE", "RGB", "RIC")
# The rates among KEYS (a fraction of a count: Clopper–Pearson interval); the others are means over the n successful
# AEs (bootstrap interval). MR counts over all N, RGB and RIC over the n successful AEs.
RATE_KEYS = ("MR", "RGB", "RIC")
# The values each metric can take (closed bounds): rates and confidences in [0, 1], SSIM in [−1, 1], distances,
# PSD and CC (the study's seconds per AE) non-negative. A stored result outside them is refused on load.
RANGES = {"MR": (0.0, 1.0), "ACAC": (0.0, 1.0), "ACTC": (0.0, 1.0), "ALD_L0": (0.0, math.inf),
          "ALD_L2": (0.0, math.inf), "ALD_Linf": (0.0, math.inf), "ASS": (-1.0, 1.0), "PSD": (0.0, math.inf),
          "NTE": (0.0, 1.0), "RGB": (0.0, 1.0), "RIC": (0.0, 1.0), "CC": (0.0, math.inf)}


# --------------------------------------------------------------------------------------------------------- helpers
def to_8bit(x: Tensor) -> Tensor:
    """8-bit pixel levels ``round(x · 255)`` as floats, as DeepSec computes them (``np.round(x * 255)``).

    Reference: DeepSec code, ``AttackEvaluations.avg_lp_distortion`` / ``avg_SSIM``.

    Args:
        x: images in [0, 1], any shape and floating dtype.

    Returns:
        A tensor of the same shape and dtype holding integers 0..255. The product is taken in ``x``'s dtype (DeepSec:
        float32) and ties are rounded half to even, exactly like ``np.round``.
    """
    return torch.round(x * 255)


def success_mask(logits: Tensor, y: Tensor, *, target: Tensor | None = None) -> Tensor:
    """Which adversarial examples succeed (DeepSec's ``successful``): the one mask every metric is given.

    Reference: DeepSec code, ``AttackEvaluations.successful``.

    Args:
        logits: model outputs on the adversarial examples, (N, K).
        y: true labels (N,), int64.
        target: for targeted attacks the target classes (N,); ``None`` for untargeted ones.

    Returns:
        Bool tensor (N,): untargeted, ``argmax ≠ y``; targeted, ``argmax = target``.

    Raises:
        ValueError: no samples, probabilities instead of logits, labels of the wrong shape or outside ``0..K-1``.
    """
    check_logits(logits, name="logits")
    n, n_classes = logits.shape
    check_labels("y", y, n, n_classes=n_classes)
    pred = logits.argmax(1)
    if target is None:
        return pred != y.to(pred.device)
    check_labels("target", target, n, n_classes=n_classes)
    return pred == target.to(pred.device)


def ssim(a: Tensor, b: Tensor, *, data_range: float, win_size: int = SSIM_WIN_SIZE) -> Tensor:
    """Mean structural similarity per image, for a whole batch at once (no rounding applied here).

    Reference: Wang et al. (2004); reproduces ``skimage.metrics.structural_similarity(a_i, b_i, channel_axis=-1,
    data_range=data_range, win_size=win_size, gaussian_weights=False, use_sample_covariance=True)`` on the HWC
    version of each image: uniform ``win_size``² window, sample covariance (×NP/(NP−1)), K1 0.01, K2 0.03, the SSIM
    map averaged over the interior that skimage keeps (it crops (win_size−1)/2 pixels at each border, which is
    exactly the set of "valid" window positions), then over channels. Computed in float64, like skimage of 2019.

    Args:
        a, b: images (N, C, H, W) on any scale, same shape, H and W ≥ ``win_size``.
        data_range: the data's range ``L`` in C1 = (K1·L)², C2 = (K2·L)².
        win_size: odd window side.

    Returns:
        float64 tensor (N,) on ``a``'s device.
    """
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) tensors of equal shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if not isinstance(win_size, int) or win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be an odd integer >= 3, got {win_size!r}")
    n, c, h, w = a.shape
    if h < win_size or w < win_size:
        raise ValueError(f"images of {h}x{w} pixels are smaller than the {win_size}x{win_size} SSIM window")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    x = a.to(torch.float64).reshape(n * c, 1, h, w)
    y = b.to(torch.float64).reshape(n * c, 1, h, w)

    def window_mean(t: Tensor) -> Tensor:
        return F.avg_pool2d(t, win_size, stride=1)

    mu_x, mu_y = window_mean(x), window_mean(y)
    n_pix = win_size * win_size
    cov_norm = n_pix / (n_pix - 1)
    var_x = cov_norm * (window_mean(x * x) - mu_x * mu_x)
    var_y = cov_norm * (window_mean(y * y) - mu_y * mu_y)
    cov_xy = cov_norm * (window_mean(x * y) - mu_x * mu_y)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    # Equal-sized channels: the mean of the per-channel means is the mean over all channels' maps.
    return ssim_map.reshape(n, -1).mean(1)


def local_std(x: Tensor) -> Tensor:
    """Population standard deviation of each pixel's 3×3 neighbourhood, per channel, with reflect padding.

    Reference: DeepSec code, ``AttackEvaluations.avg_PSD`` (``np.pad(channel, 1, 'reflect')`` then ``np.std`` of the
    9 values). numpy's 'reflect' does not repeat the edge pixel, like torch's.

    Args:
        x: images (N, C, H, W), H and W ≥ 2.

    Returns:
        float64 tensor (N, C, H, W).
    """
    _, _, h, w = x.shape
    x64 = x.to(torch.float64)
    padded = F.pad(x64, (1, 1, 1, 1), mode="reflect")
    # Deviations from the centre pixel: the variance is shift-invariant, the differences are small numbers, and a
    # flat window gives exactly 0 (as np.std does, to ~1e-17) rather than rounding noise whose square root would
    # make the paper's 1/std finite. Nine shifted views cost less than pooling in float64.
    diffs = [padded[..., i : i + h, j : j + w] - x64 for i in range(3) for j in range(3) if (i, j) != (1, 1)]
    mean = sum(diffs) / 9
    var = (sum(d * d for d in diffs) / 9 - mean * mean).clamp_min(0.0)
    return var.sqrt()


# ------------------------------------------------------------------------------------------------------ the metrics
def mr(success: Tensor) -> float:
    """MR, misclassification rate: ``n / N``, the fraction of all N attacked samples that are successful AEs.

    Reference: DeepSec paper §III-B1; code ``misclassification_rate``. Denominator: all N.

    Args:
        success: bool (N,) from :func:`success_mask`.

    Returns:
        A fraction in [0, 1] (0.0 when nothing succeeds).

    Raises:
        ValueError: ``success`` is empty (no samples) or not a 1-D bool tensor.
    """
    check_success(success)
    return rate_of(success)


def acac(logits: Tensor, success: Tensor) -> float:
    """ACAC, average confidence of the adversarial class: mean of max softmax(x_adv) over the n successful AEs.

    Reference: DeepSec paper §III-B1; code ``avg_confidence_adv_class``. Denominator: n successful.

    Args:
        logits: model logits on x_adv, (N, K).
        success: bool (N,) from :func:`success_mask`.

    Returns:
        A value in [0, 1]; NaN if n = 0.

    Raises:
        ValueError: no samples, probabilities instead of logits, or ``success`` of the wrong shape.
    """
    check_logits(logits, name="logits")
    check_success(success, len(logits))
    return mean_over(_acac_values(logits, success))


def _acac_values(logits: Tensor, success: Tensor) -> Tensor:
    return softmax64(logits).amax(1)[success]


def actc(logits: Tensor, y: Tensor, success: Tensor) -> float:
    """ACTC, average confidence of the true class: mean of softmax(x_adv)[y] over the n successful AEs.

    Reference: DeepSec paper §III-B1; code ``avg_confidence_true_class`` (true label even for targeted attacks).
    Denominator: n successful.

    Args:
        logits: model logits on x_adv, (N, K).
        y: true labels (N,), int64.
        success: bool (N,) from :func:`success_mask`.

    Returns:
        A value in [0, 1]; NaN if n = 0.

    Raises:
        ValueError: no samples, probabilities instead of logits, ``y`` outside ``0..K-1`` or of the wrong shape, or
            ``success`` of the wrong shape.
    """
    check_logits(logits, name="logits")
    check_labels("y", y, len(logits), n_classes=logits.shape[1])
    check_success(success, len(logits))
    return mean_over(_actc_values(logits, y, success))


def _actc_values(logits: Tensor, y: Tensor, success: Tensor) -> Tensor:
    probs = softmax64(logits)
    return probs.gather(1, y.to(probs.device, torch.int64)[:, None])[:, 0][success]


class _SuccessfulPairs:
    """The successful (x, x_adv) pairs and the arrays ALD, ASS and PSD share, each derived once, on x's device."""

    def __init__(self, x: Tensor, x_adv: Tensor, success: Tensor):
        success = success.to(x.device)
        self.x = x[success]
        self.x_adv = x_adv.to(x.device)[success]
        self.n = len(self.x)

    @cached_property
    def x64(self) -> Tensor:
        return self.x.double()

    @cached_property
    def delta64(self) -> Tensor:
        return self.x_adv.double() - self.x64

    @cached_property
    def x_levels(self) -> Tensor:
        return to_8bit(self.x)

    @cached_property
    def x_adv_levels(self) -> Tensor:
        return to_8bit(self.x_adv)


def _ald_values(pairs: _SuccessfulPairs, *, p: float, normalized: bool) -> Tensor:
    if p not in ALD_NORMS:
        raise ValueError(f"p must be 0, 2 or math.inf, got {p!r}")
    if pairs.n == 0:
        return pairs.x.new_empty(0, dtype=torch.float64)
    if p == 0:
        clean = pairs.x_levels.flatten(1)
        distance = (pairs.x_adv_levels.flatten(1) != clean).sum(1).double()
        scale = (clean != 0).sum(1).double() if normalized else float(clean.shape[1])
    else:
        distance = torch.linalg.vector_norm(pairs.delta64.flatten(1), ord=p, dim=1)
        scale = torch.linalg.vector_norm(pairs.x64.flatten(1), ord=p, dim=1) if normalized else 1.0
    return distance / scale


def _ass_values(pairs: _SuccessfulPairs, *, data_range: float) -> Tensor:
    if pairs.n == 0:
        return pairs.x.new_empty(0, dtype=torch.float64)
    return ssim(pairs.x_levels, pairs.x_adv_levels, data_range=data_range)


def _psd_values(pairs: _SuccessfulPairs, *, weighting: str) -> Tensor:
    if weighting not in PSD_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {PSD_WEIGHTINGS}, got {weighting!r}")
    if pairs.n == 0:
        return pairs.x.new_empty(0, dtype=torch.float64)
    delta = pairs.delta64.abs()
    std = local_std(pairs.x64)
    if weighting == "one_minus_std":
        terms = delta * (1.0 - std)
    else:
        terms = torch.where(delta == 0, torch.zeros_like(delta), delta / std)
    return terms.flatten(1).sum(1)


def ald(x: Tensor, x_adv: Tensor, success: Tensor, *, p: float, normalized: bool = False) -> float:
    """ALD_p, average Lp distortion of the n successful AEs, for p = 0, 2 or ∞.

    Reference: DeepSec code ``avg_lp_distortion`` (default) and paper §III-B2 (``normalized=True``).

    DeepSec's code: L0 counts the elements (channels separately) whose 8-bit level changed, divided by C·H·W;
    L2 = ‖x_adv − x‖₂ and L∞ = max |x_adv − x| on the float images, not normalised. The paper's text divides each
    norm by ‖x‖_p (for L0: by the number of non-zero 8-bit levels of x); ``normalized=True`` selects that.

    Args:
        x, x_adv: clean and adversarial images (N, C, H, W) in [0, 1].
        success: bool (N,) from :func:`success_mask`.
        p: 0, 2 or ``math.inf``.
        normalized: divide by ‖x‖_p (the paper) instead of C·H·W for L0 and 1 for L2/L∞ (the code).

    Returns:
        The mean over the n successful AEs (L0 a fraction; L2, L∞ in [0, 1] pixel units); NaN if n = 0.
    """
    check_pair(x, x_adv)
    check_success(success, len(x))
    return mean_over(_ald_values(_SuccessfulPairs(x, x_adv, success), p=p, normalized=normalized))


def ass(x: Tensor, x_adv: Tensor, success: Tensor, *, data_range: float = DEEPSEC_SSIM_DATA_RANGE) -> float:
    """ASS, average structural similarity between clean and adversarial 8-bit images over the n successful AEs.

    Reference: DeepSec paper §III-B3; code ``avg_SSIM``: ``skimage.measure.compare_ssim(round(x·255),
    round(x_adv·255), multichannel=True)`` on HWC float arrays, 7×7 uniform window, sample covariance, channels
    averaged, and — because no data_range was passed for float input — ``data_range = 2`` although the data are
    0..255. ``data_range=255`` gives the correct SSIM. Denominator: n successful.

    Args:
        x, x_adv: clean and adversarial images (N, C, H, W) in [0, 1], H, W ≥ 7.
        success: bool (N,) from :func:`success_mask`.
        data_range: 2.0 (DeepSec's code) or 255.0 (correct for 8-bit levels).

    Returns:
        Mean SSIM (1 for identical images); NaN if n = 0.
    """
    check_pair(x, x_adv)
    check_success(success, len(x))
    return mean_over(_ass_values(_SuccessfulPairs(x, x_adv, success), data_range=data_range))


def psd(x: Tensor, x_adv: Tensor, success: Tensor, *, weighting: str = "one_minus_std") -> float:
    """PSD, perturbation sensitivity distance: Σ_c,i,j |δ_cij|·w_cij per image, averaged over the n successful AEs.

    Reference: DeepSec code ``avg_PSD`` (default ``"one_minus_std"``: w = 1 − std of the clean channel's 3×3
    neighbourhood, reflect-padded, population std) and paper §III-B3 (``"inverse_std"``: w = 1/std, the paper's
    "sensitivity", infinite where the neighbourhood is flat and the pixel was changed; unchanged pixels add 0).
    δ = x_adv − x on the float images, in [0, 1] units. Denominator: n successful.

    Args:
        x, x_adv: clean and adversarial images (N, C, H, W) in [0, 1], H, W ≥ 2.
        success: bool (N,) from :func:`success_mask`.
        weighting: ``"one_minus_std"`` (DeepSec's code) or ``"inverse_std"`` (its paper).

    Returns:
        Mean PSD; NaN if n = 0 (``inf`` possible with ``"inverse_std"``).
    """
    check_pair(x, x_adv)
    check_success(success, len(x))
    return mean_over(_psd_values(_SuccessfulPairs(x, x_adv, success), weighting=weighting))


def nte(logits: Tensor, success: Tensor) -> float:
    """NTE, noise tolerance estimation: mean of (top-1 − top-2 softmax probability) over the n successful AEs.

    Reference: DeepSec paper §III-B4; code ``avg_noise_tolerance_estimation``. Denominator: n successful.

    Args:
        logits: model logits on x_adv, (N, K).
        success: bool (N,) from :func:`success_mask`.

    Returns:
        A value in [0, 1]; NaN if n = 0.

    Raises:
        ValueError: no samples, probabilities instead of logits, or ``success`` of the wrong shape.
    """
    check_logits(logits, name="logits")
    check_success(success, len(logits))
    return mean_over(_nte_values(logits, success))


def _nte_values(logits: Tensor, success: Tensor) -> Tensor:
    top2 = softmax64(logits).topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1])[success]


# ------------------------------------------------------------------------------------ RGB and RIC (image transforms)
def _to_pil_images(x: Tensor) -> list:
    from PIL import Image

    c = x.shape[1]
    if c not in (1, 3):
        raise ValueError(f"images have {c} channels; RGB and RIC handle 1 (grey) or 3 (RGB) channels")
    levels = to_8bit(x.detach()).to("cpu", torch.uint8).permute(0, 2, 3, 1).numpy()
    # uint8 (H, W) arrays become mode "L" images, (H, W, 3) ones mode "RGB".
    if c == 1:
        return [Image.fromarray(np.ascontiguousarray(a[..., 0])) for a in levels]
    return [Image.fromarray(np.ascontiguousarray(a)) for a in levels]


def _from_pil_images(images: list, like: Tensor) -> Tensor:
    mode = "L" if like.shape[1] == 1 else "RGB"
    # Guetzli writes a grey JPEG for some grey-looking inputs and Pillow decodes it as "L"; convert to the input's
    # mode so that the model sees the channels it was given.
    arrays = [np.asarray(im.convert(mode) if im.mode != mode else im, dtype=np.uint8) for im in images]
    stacked = np.stack(arrays)
    if stacked.ndim == 3:
        stacked = stacked[..., None]
    out = torch.from_numpy(stacked).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return out.to(like.device)


def _check_blur_radius(radius, *, name: str) -> None:
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0 <= radius < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0 (pixels; DeepSec: {DEEPSEC_BLUR_RADIUS}), "
                         f"got {radius!r}")


def gaussian_blur_8bit(x: Tensor, *, radius: float = DEEPSEC_BLUR_RADIUS) -> Tensor:
    """RGB's transform: 8-bit round, Pillow ``ImageFilter.GaussianBlur(radius)``, back to [0, 1].

    Reference: DeepSec code ``robust_gaussian_blur`` (radius 0.5). Pillow's blur (an approximating box blur on
    uint8) is used itself rather than imitated, so the pixels are DeepSec's.

    Args:
        x: images (N, C, H, W) in [0, 1], C = 1 (encoded as mode "L") or 3 ("RGB").
        radius: Gaussian radius in pixels.

    Returns:
        float32 tensor like ``x`` (multiples of 1/255), on ``x``'s device.
    """
    from PIL import ImageFilter

    _check_blur_radius(radius, name="radius")
    blur = ImageFilter.GaussianBlur(radius=radius)
    return _from_pil_images([im.filter(blur) for im in _to_pil_images(x)], x)


def _guetzli_roundtrip(image, quality: int):
    import pyguetzli
    from PIL import Image

    # pyguetzli takes RGB only (process_pil_image pastes an "L" image into RGB, R = G = B); the decoded JPEG is
    # converted back to the input's mode by _from_pil_images, so grey MNIST stays one channel.
    data = pyguetzli.process_pil_image(image, quality=quality)
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    return decoded


def _check_jpeg_args(quality: int, workers: int | None) -> int:
    """Validate RIC's settings before any work; return the thread count (default: the CPUs we may use)."""
    if not isinstance(quality, int) or not 84 <= quality <= 100:
        raise ValueError(f"quality must be an integer in [84, 100] (Guetzli's range), got {quality!r}")
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    return workers


def guetzli_jpeg_8bit(x: Tensor, *, quality: int = DEEPSEC_JPEG_QUALITY, workers: int | None = None) -> Tensor:
    """RIC's transform: 8-bit round, Guetzli JPEG at ``quality`` (PyPI ``pyguetzli``), decoded by Pillow, /255.

    Reference: DeepSec code ``robust_image_compression`` (quality 90; DeepSec went through a PNG file first, which
    is lossless, so the pixels handed to Guetzli are the same). Each image is encoded exactly once. Guetzli is slow
    (~0.1–0.5 s per 32×32 RGB image); pyguetzli's cffi call releases the GIL (measured: a Python loop keeps running
    while another thread encodes), so images are spread over a pool of ``workers`` threads (default: the CPUs this
    process may use) — no process pool, no pickling.

    Args:
        x: images (N, C, H, W) in [0, 1], C = 1 (grey; Guetzli encodes R = G = B, decoded back to grey) or 3.
        quality: JPEG quality for Guetzli (≥ 84, Guetzli's minimum).
        workers: number of encoder threads; 1 runs serially.

    Returns:
        float32 tensor like ``x`` (multiples of 1/255), on ``x``'s device.
    """
    workers = _check_jpeg_args(quality, workers)
    images = _to_pil_images(x)
    if workers == 1 or len(images) < 2:
        decoded = [_guetzli_roundtrip(im, quality) for im in images]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(images))) as pool:
            decoded = list(pool.map(_guetzli_roundtrip, images, [quality] * len(images)))
    return _from_pil_images(decoded, x)


def _still_successful(transform, model, x_adv, y, success, target, *, batch_size: int, device) -> Tensor:
    """Which of the n successful AEs stay successful after ``transform`` (bool (n,)); only those are transformed."""
    check_labels("y", y, len(x_adv))
    if target is not None:
        check_labels("target", target, len(x_adv))
    success = success.to(x_adv.device)
    if not bool(success.any()):
        return torch.zeros(0, dtype=torch.bool, device=x_adv.device)
    transformed = transform(x_adv[success])
    logits = predict_logits(model, transformed, batch_size=batch_size, device=device, who="model")
    y_s = y.to(x_adv.device)[success].to(logits.device)
    t_s = None if target is None else target.to(x_adv.device)[success].to(logits.device)
    return success_mask(logits, y_s, target=t_s)


def rgb(
    model: torch.nn.Module,
    x_adv: Tensor,
    y: Tensor,
    success: Tensor,
    *,
    target: Tensor | None = None,
    radius: float = DEEPSEC_BLUR_RADIUS,
    batch_size: int = 256,
    device=None,
) -> float:
    """RGB, robustness to Gaussian blur: fraction of the n successful AEs still successful after blurring.

    Reference: DeepSec paper §III-B4; code ``robust_gaussian_blur`` (8-bit round, Pillow GaussianBlur radius 0.5,
    /255, predict). Denominator: n successful; only those are blurred.

    Args:
        model: the attacked model (returns logits; the caller sets its mode).
        x_adv: adversarial images (N, C, H, W) in [0, 1].
        y: true labels (N,); success after blurring uses the same rule as ``success``.
        success: bool (N,) from :func:`success_mask`.
        target: target classes (N,) for a targeted attack, else ``None``.
        radius: blur radius in pixels.
        batch_size: images per forward pass.
        device: where the model runs; default the model's device.

    Returns:
        A fraction in [0, 1]; NaN if n = 0.

    Raises:
        ValueError: as :func:`attack_utility` (no samples, bad images, labels or device, probabilities).
    """
    check_image_batch("x_adv", x_adv)
    check_success(success, len(x_adv))
    device = check_device(device) if device is not None else device_of(model, x_adv.device)
    _check_blur_radius(radius, name="radius")
    return rate_of(_still_successful(lambda images: gaussian_blur_8bit(images, radius=radius), model, x_adv, y,
                                   success, target, batch_size=batch_size, device=device))


def ric(
    model: torch.nn.Module,
    x_adv: Tensor,
    y: Tensor,
    success: Tensor,
    *,
    target: Tensor | None = None,
    quality: int = DEEPSEC_JPEG_QUALITY,
    workers: int | None = None,
    batch_size: int = 256,
    device=None,
) -> float:
    """RIC, robustness to image compression: fraction of the n successful AEs still successful after Guetzli JPEG.

    Reference: DeepSec paper §III-B4; code ``robust_image_compression`` (8-bit round, Guetzli quality 90, decode,
    /255, predict). Denominator: n successful; only those are encoded, each once (see :func:`guetzli_jpeg_8bit`).

    Args:
        model: the attacked model (returns logits; the caller sets its mode).
        x_adv: adversarial images (N, C, H, W) in [0, 1], C = 1 or 3.
        y: true labels (N,).
        success: bool (N,) from :func:`success_mask`.
        target: target classes (N,) for a targeted attack, else ``None``.
        quality: Guetzli JPEG quality.
        workers: encoder threads (default: the usable CPUs).
        batch_size: images per forward pass.
        device: where the model runs; default the model's device.

    Returns:
        A fraction in [0, 1]; NaN if n = 0.

    Raises:
        ValueError: as :func:`attack_utility` (no samples, bad images, labels or device, probabilities).
    """
    check_image_batch("x_adv", x_adv)
    check_success(success, len(x_adv))
    _check_jpeg_args(quality, workers)
    device = check_device(device) if device is not None else device_of(model, x_adv.device)
    return rate_of(_still_successful(lambda images: guetzli_jpeg_8bit(images, quality=quality, workers=workers), model,
                                   x_adv, y, success, target, batch_size=batch_size, device=device))


def _sample(success: Tensor, k: int | None, *, seed: int) -> Tensor:
    """``success`` with only ``k`` of its True entries kept, drawn uniformly with ``seed`` (all when ``k`` is None
    or not smaller than their number)."""
    if k is None:
        return success
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"ric_samples must be a positive integer or None, got {k!r}")
    chosen = success.nonzero().flatten()
    if len(chosen) <= k:
        return success
    keep = chosen[torch.randperm(len(chosen), generator=torch.Generator().manual_seed(seed))[:k].to(chosen.device)]
    out = torch.zeros_like(success)
    out[keep] = True
    return out


# -------------------------------------------------------------------------------------------------------- the suite
def attack_utility(
    model: torch.nn.Module,
    x: Tensor,
    x_adv: Tensor,
    y: Tensor,
    *,
    target: Tensor | None = None,
    batch_size: int = 256,
    device=None,
    blur_radius: float = DEEPSEC_BLUR_RADIUS,
    jpeg_quality: int = DEEPSEC_JPEG_QUALITY,
    jpeg_workers: int | None = None,
    ric_samples: int | None = None,
    intervals: bool = False,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, float] | tuple[dict[str, float], dict[str, dict | None]]:
    """DeepSec's ten attack utility metrics (all but CC), as its released code computes them, optionally with intervals.

    Reference: DeepSec paper §III-B and Table III; code ``Evaluations/AttackEvaluations.py`` (SPEC §6). The success
    mask is computed once from the model's prediction on ``x_adv`` and shared by every metric.

    Args:
        model: the attacked model, returning logits; the caller owns its mode (use ``eval()``).
        x: clean images (N, C, H, W) float in [0, 1].
        x_adv: adversarial images, same shape, in [0, 1].
        y: true labels (N,), int64.
        target: target classes (N,) for a targeted attack (success = prediction equals target); ``None`` for an
            untargeted one (success = prediction differs from ``y``).
        batch_size: images per forward pass.
        device: where the model runs and the metrics are computed; default the model's device.
        blur_radius: RGB's Gaussian radius (DeepSec: 0.5).
        jpeg_quality: RIC's Guetzli quality (DeepSec: 90).
        jpeg_workers: Guetzli threads for RIC (default: the usable CPUs).
        ric_samples: encode only this many of the successful AEs for RIC, drawn at random with ``seed`` (``None``:
            all, as DeepSec). Guetzli dominates the suite's time on a CPU; RIC is then the rate on the sample and
            its Clopper–Pearson interval has the sample's n.
        intervals: also return a 95 % (``level``) interval for every metric, computed from the same per-image
            values as the point (:mod:`.uncertainty`): Clopper–Pearson for the rates MR (k = n successful of N) and
            RGB, RIC (k still successful of the n successful AEs); percentile bootstrap of the mean over the n
            successful AEs for ACAC, ACTC, ALD_L0/L2/L∞, ASS, PSD and NTE.
        n_resamples: bootstrap resamples (≥ 1,000).
        seed: bootstrap seed; every averaged metric is resampled with the same seed, hence the same image indices.
        level: confidence level of the intervals.

    Returns:
        ``{"MR", "ACAC", "ACTC", "ALD_L0", "ALD_L2", "ALD_Linf", "ASS", "PSD", "NTE", "RGB", "RIC"}`` → Python
        floats. MR over all N; the others over the n successful AEs, NaN when n = 0. Fractions, not percent;
        ALD_L2/L∞ and PSD in [0, 1] pixel units. With ``intervals=True``, the pair ``(metrics, intervals)``:
        ``intervals[key]`` is ``{"low", "high", "method": "clopper-pearson" | "bootstrap", "n": denominator}`` (n = N
        for MR, the number of successful AEs for every other key), or None where the metric is NaN (n = 0).

    Raises:
        ValueError: no samples (N = 0), images not float32 (N, C, H, W) or outside [0, 1], shapes that differ,
            labels of the wrong shape or outside ``0..K-1``, the model returns probabilities instead of logits, or
            a device this machine lacks, or bad interval settings (n_resamples < 1000, seed, level).
    """
    check_pair(x, x_adv)
    check_labels("y", y, len(x))
    if target is not None:
        check_labels("target", target, len(x))
    check_eval_mode(model)
    _check_blur_radius(blur_radius, name="blur_radius")
    _check_jpeg_args(jpeg_quality, jpeg_workers)
    if intervals:
        check_interval_args(n_resamples=n_resamples, seed=seed, level=level)
    device = check_device(device) if device is not None else device_of(model, x_adv.device)
    x, x_adv, y = x.to(device), x_adv.to(device), y.to(device)
    target = None if target is None else target.to(device)

    logits = predict_logits(model, x_adv, batch_size=batch_size, device=device, who="model")
    success = success_mask(logits, y, target=target)
    pairs = _SuccessfulPairs(x, x_adv, success)
    # One vector per metric: MR's outcomes over all N, every other metric's per-AE values (or, for RGB and RIC,
    # outcomes) over the n successful AEs. Both the point and its interval are computed from these.
    per_sample = {
        "MR": success,
        "ACAC": _acac_values(logits, success),
        "ACTC": _actc_values(logits, y, success),
        "ALD_L0": _ald_values(pairs, p=0, normalized=False),
        "ALD_L2": _ald_values(pairs, p=2, normalized=False),
        "ALD_Linf": _ald_values(pairs, p=math.inf, normalized=False),
        "ASS": _ass_values(pairs, data_range=DEEPSEC_SSIM_DATA_RANGE),
        "PSD": _psd_values(pairs, weighting="one_minus_std"),
        "NTE": _nte_values(logits, success),
        "RGB": _still_successful(lambda images: gaussian_blur_8bit(images, radius=blur_radius), model, x_adv, y,
                                 success, target, batch_size=batch_size, device=device),
        "RIC": _still_successful(
            lambda images: guetzli_jpeg_8bit(images, quality=jpeg_quality, workers=jpeg_workers), model, x_adv, y,
            _sample(success, ric_samples, seed=seed), target, batch_size=batch_size, device=device),
    }
    metrics = {key: rate_of(values) if key in RATE_KEYS else mean_over(values) for key, values in per_sample.items()}
    if not intervals:
        return metrics
    return metrics, interval_records(per_sample, metrics, rate_keys=RATE_KEYS, n_resamples=n_resamples, seed=seed,
                                     level=level)


__all__ = [
    "KEYS", "RATE_KEYS", "RANGES", "attack_utility", "success_mask", "to_8bit", "ssim", "local_std", "gaussian_blur_8bit",
    "guetzli_jpeg_8bit", "mr", "acac", "actc", "ald", "ass", "psd", "nte", "rgb", "ric",
    "DEEPSEC_SSIM_DATA_RANGE", "DEEPSEC_BLUR_RADIUS", "DEEPSEC_JPEG_QUALITY",
]
