"""DeepSec's attack and defence utility metrics: hand-computed values, invariants, scikit-image cross-checks.

Expected values are worked out by hand in the comments; the real-data test runs the suite on DeepSec's MNIST model.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from repro.metrics import (
    ATTACK_KEYS, DEFENCE_KEYS, acac, actc, ald, ass, attack_utility, cav, ccv, cos, crr, csr, defence_utility,
    gaussian_blur_8bit, guetzli_jpeg_8bit, js_divergence, local_std, mr, nte, psd, ric, rgb, ssim, success_mask,
    to_8bit,
)

from .conftest import needs_deepsec


# ------------------------------------------------------------------------------------------------ tiny fixed models
class TableModel(nn.Module):
    """Returns row i of a fixed logit table for an image whose first pixel is i/255: outputs known exactly."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone(), requires_grad=False)

    def forward(self, x):
        return self.table[to_8bit(x[:, 0, 0, 0]).long()]


def table_images(n: int, shape=(1, 8, 8)) -> torch.Tensor:
    return torch.stack([torch.full(shape, i / 255) for i in range(n)])


class CentrePixelModel(nn.Module):
    """Class 1 iff the centre pixel (channel mean) exceeds 0.8, else class 0."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(100.0), requires_grad=False)

    def forward(self, x):
        h, w = x.shape[-2:]
        z = self.scale * (x[:, :, h // 2, w // 2].mean(1) - 0.8)
        return torch.stack([-z, z], 1)


class BrightnessModel(nn.Module):
    """Class 1 iff mean brightness exceeds 127.45/255, a threshold inside the 8-bit level 127 (127 < 127.45 < 127.5)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1000.0), requires_grad=False)

    def forward(self, x):
        z = self.scale * (x.mean((1, 2, 3)) - 127.45 / 255)
        return torch.stack([-z, z], 1)


class SoftmaxModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return torch.softmax(self.fc(x.flatten(1)[:, :4]), 1)


def log_probs(rows) -> torch.Tensor:
    """Logits whose softmax is exactly the given probability rows (up to float32 rounding)."""
    return torch.tensor(rows, dtype=torch.float64).log().float()


# ----------------------------------------------------------------------------------------------------- 8-bit levels
def test_to_8bit_rounds_half_to_even_like_numpy():
    # (k + 0.5)/255 in float32, times 255 in float32, lands exactly on k + 0.5 for every k = 0..254 (checked below);
    # np.round takes ties to the even neighbour: 0.5 → 0, 1.5 → 2, 2.5 → 2.
    x = ((np.arange(255) + 0.5) / 255).astype(np.float32)
    product = x * np.float32(255)
    assert np.all(product - np.floor(product) == 0.5)
    expected = np.round(product)
    assert expected[:3].tolist() == [0.0, 2.0, 2.0]
    got = to_8bit(torch.from_numpy(x))
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), expected)


# --------------------------------------------------------------------------------------------------------- success
def test_success_mask_untargeted_and_targeted():
    # Predictions 1 and 2 for two images of class 0, target class 1 for both:
    # untargeted success = prediction ≠ 0 → [T, T]; targeted success = prediction == 1 → [T, F].
    logits = torch.tensor([[0.0, 5.0, 1.0], [0.0, 1.0, 5.0]])
    y = torch.tensor([0, 0])
    target = torch.tensor([1, 1])
    assert success_mask(logits, y).tolist() == [True, True]
    assert success_mask(logits, y, target=target).tolist() == [True, False]


# ---------------------------------------------------------------------------------------- confidence-based metrics
PROBS = [
    [0.7, 0.2, 0.1],  # y = 1: prediction 0 ≠ 1 → success; max 0.7, p[y] 0.2, top1 − top2 = 0.5
    [0.1, 0.6, 0.3],  # y = 1: prediction 1 = y → failure, excluded from every average
    [0.25, 0.25, 0.5],  # y = 0: prediction 2 ≠ 0 → success; max 0.5, p[y] 0.25, top1 − top2 = 0.25
]
PROBS_Y = torch.tensor([1, 1, 0])


def test_mr_acac_actc_nte_hand_computed():
    logits = log_probs(PROBS)
    success = success_mask(logits, PROBS_Y)
    assert success.tolist() == [True, False, True]
    assert mr(success) == pytest.approx(2 / 3)  # n/N: the only metric over all N
    assert acac(logits, success) == pytest.approx((0.7 + 0.5) / 2, abs=1e-6)  # 0.6
    assert actc(logits, PROBS_Y, success) == pytest.approx((0.2 + 0.25) / 2, abs=1e-6)  # 0.225
    assert nte(logits, success) == pytest.approx((0.5 + 0.25) / 2, abs=1e-6)  # 0.375


def test_actc_uses_true_label_for_targeted_attacks():
    # Targeted at class 2 for the third row: success; ACTC still reads p[y] = p[0] = 0.25 (DeepSec's code).
    logits = log_probs(PROBS)
    success = success_mask(logits, PROBS_Y, target=torch.tensor([1, 0, 2]))
    assert success.tolist() == [False, False, True]
    assert actc(logits, PROBS_Y, success) == pytest.approx(0.25, abs=1e-6)
    assert acac(logits, success) == pytest.approx(0.5, abs=1e-6)


# ------------------------------------------------------------------------------------------------------------- ALD
def _ald_pair():
    # Image A (successful): levels round(255·x) = [0, 128 (127.5, a tie, to even), 255, 51];
    # x_adv levels = [26 (25.5 → even 26), 128, 153, 51 (51.255)]: elements 0 and 2 changed, 0.201 is a sub-level
    # change that L0 ignores but L2 sees. Image B (unsuccessful) changes everything and must not count.
    x = torch.tensor([[[[0.0, 0.5], [1.0, 0.2]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    x_adv = torch.tensor([[[[0.1, 0.5], [0.6, 0.201]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    return x, x_adv, torch.tensor([True, False])


def test_ald_hand_computed_deepsec_code():
    x, x_adv, success = _ald_pair()
    assert ald(x, x_adv, success, p=0) == pytest.approx(2 / 4)  # changed elements / (C·H·W)
    # ‖δ‖₂ = √(0.1² + 0.4² + 0.001²) = √0.170001 ≈ 0.412312; ‖δ‖∞ = 0.4 (float32 differences: 1e-6)
    assert ald(x, x_adv, success, p=2) == pytest.approx(math.sqrt(0.170001), abs=1e-6)
    assert ald(x, x_adv, success, p=math.inf) == pytest.approx(0.4, abs=1e-6)


def test_ald_hand_computed_paper_normalised():
    x, x_adv, success = _ald_pair()
    # Paper: ‖δ‖_p / ‖x‖_p. ‖x‖₀ = 3 non-zero levels; ‖x‖₂ = √(0.25 + 1 + 0.04) = √1.29; ‖x‖∞ = 1.
    assert ald(x, x_adv, success, p=0, normalized=True) == pytest.approx(2 / 3)
    assert ald(x, x_adv, success, p=2, normalized=True) == pytest.approx(math.sqrt(0.170001 / 1.29), abs=1e-6)
    assert ald(x, x_adv, success, p=math.inf, normalized=True) == pytest.approx(0.4, abs=1e-6)


def test_ald_l0_counts_channels_separately():
    # One pixel of a 3-channel 2×2 image changed in 2 of its 3 channels: 2 of C·H·W = 12 elements.
    x = torch.zeros(1, 3, 2, 2)
    x_adv = x.clone()
    x_adv[0, :2, 1, 1] = 0.5
    assert ald(x, x_adv, torch.tensor([True]), p=0) == pytest.approx(2 / 12)


# ------------------------------------------------------------------------------------------------------------- PSD
def test_local_std_reflect_padding_hand_computed():
    # x = [[0, 1], [1, 1]]. numpy/torch 'reflect' mirrors without repeating the edge, so the 3×3 window around
    # (i, j) takes row i once and the other row twice, likewise for columns; the 0 at (0, 0) appears
    # 1·1 = 1 time around (0, 0), 1·2 = 2 around (0, 1) and (1, 0), 2·2 = 4 around (1, 1).
    # With z zeros among 9 values of 0/1 the population variance is z(9 − z)/81.
    x = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    expected = torch.tensor([[math.sqrt(8) / 9, math.sqrt(14) / 9], [math.sqrt(14) / 9, math.sqrt(20) / 9]],
                            dtype=torch.float64)
    torch.testing.assert_close(local_std(x)[0, 0], expected, rtol=0, atol=1e-12)


def test_local_std_matches_numpy_loop():
    rng = np.random.default_rng(1)
    x = rng.random((2, 3, 5, 6)).astype(np.float32)
    expected = np.empty(x.shape)
    for n in range(2):
        for c in range(3):
            padded = np.pad(x[n, c], 1, "reflect")
            for i in range(5):
                for j in range(6):
                    expected[n, c, i, j] = np.std(padded[i : i + 3, j : j + 3].astype(np.float64))
    np.testing.assert_allclose(local_std(torch.from_numpy(x)).numpy(), expected, rtol=0, atol=1e-12)


def test_psd_hand_computed_both_weightings():
    # Image A (successful): x = [[0, 1], [1, 1]] with the local stds above; |δ| = [[0.1, 0.2], [0.3, 0.4]].
    # Image B (unsuccessful) is ignored; image C (successful, x_adv = x) adds 0 but counts in n = 2.
    s1, s2, s4 = math.sqrt(8) / 9, math.sqrt(14) / 9, math.sqrt(20) / 9
    x = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]], [[[0.0, 0.0], [0.0, 0.0]]], [[[0.3, 0.7], [0.1, 0.9]]]])
    x_adv = torch.tensor([[[[0.1, 0.8], [0.7, 0.6]]], [[[1.0, 1.0], [1.0, 1.0]]], [[[0.3, 0.7], [0.1, 0.9]]]])
    success = torch.tensor([True, False, True])
    code = 0.1 * (1 - s1) + 0.2 * (1 - s2) + 0.3 * (1 - s2) + 0.4 * (1 - s4)  # ≈ 0.562 for image A
    paper = 0.1 / s1 + 0.2 / s2 + 0.3 / s2 + 0.4 / s4  # ≈ 2.323 for image A
    assert psd(x, x_adv, success) == pytest.approx(code / 2, abs=1e-6)
    assert psd(x, x_adv, success, weighting="inverse_std") == pytest.approx(paper / 2, abs=1e-6)


def test_psd_paper_weighting_is_infinite_on_flat_background():
    # A flat clean image has std 0 everywhere: 1/std is infinite wherever a pixel changed (the paper's formula).
    x = torch.zeros(1, 1, 4, 4)
    x_adv = x.clone()
    x_adv[0, 0, 1, 1] = 0.1
    success = torch.tensor([True])
    assert psd(x, x_adv, success, weighting="inverse_std") == math.inf
    assert psd(x, x_adv, success) == pytest.approx(0.1, abs=1e-7)  # 1 − 0 = 1


# ------------------------------------------------------------------------------------------------------------ SSIM
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("data_range", [2.0, 255.0])
def test_ssim_matches_scikit_image(channels, data_range):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(channels)
    # 8-bit levels as floats, as DeepSec passes them; a non-square size exercises the border cropping.
    a = np.round(rng.random((4, channels, 12, 15)) * 255)
    noise = rng.normal(0, 20, a.shape) * (rng.random(a.shape) < 0.5)
    b = np.clip(np.round(a + noise), 0, 255)
    b[0] = a[0]  # identical pair: SSIM 1
    ours = ssim(torch.from_numpy(a), torch.from_numpy(b), data_range=data_range).numpy()
    reference = [
        structural_similarity(a[i].transpose(1, 2, 0), b[i].transpose(1, 2, 0), channel_axis=-1,
                              data_range=data_range, win_size=7, gaussian_weights=False, use_sample_covariance=True)
        for i in range(len(a))
    ]
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)
    assert ours[0] == pytest.approx(1.0, abs=1e-12)


def test_ass_hand_computed_single_window():
    # 7×7 images: one SSIM window. Clean all 0, adversarial all 1/255 (level 1): means 0 and 1, no variance, so
    # SSIM = (0 + C1)(0 + C2) / ((0 + 1 + C1)(0 + C2)) = C1 / (1 + C1) with C1 = (0.01 · data_range)².
    # DeepSec's data_range 2: C1 = 4e-4 → 3.998e-4. Correct range 255: C1 = 6.5025 → 0.8667.
    x = torch.zeros(1, 1, 7, 7)
    x_adv = torch.full((1, 1, 7, 7), 1 / 255)
    success = torch.tensor([True])
    assert ass(x, x_adv, success) == pytest.approx(4e-4 / 1.0004, rel=1e-9)
    assert ass(x, x_adv, success, data_range=255.0) == pytest.approx(6.5025 / 7.5025, rel=1e-9)


# ------------------------------------------------------------------------------------------------------ identities
def test_identical_images_give_zero_distortion_and_unit_ssim():
    x = torch.rand(3, 3, 9, 9)
    success = torch.tensor([True, False, True])
    assert ald(x, x, success, p=0) == 0.0
    assert ald(x, x, success, p=2) == 0.0
    assert ald(x, x, success, p=math.inf) == 0.0
    assert ass(x, x, success) == pytest.approx(1.0, abs=1e-12)
    assert psd(x, x, success) == 0.0
    assert psd(x, x, success, weighting="inverse_std") == 0.0


def test_attack_utility_keys_targeted_and_no_success():
    # Images 0..3 give fixed logits; labels y = 0 everywhere.
    table = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [0.0, 5.0, 0.0]])
    model = TableModel(table)
    x_adv = table_images(4)
    x = x_adv.clone()
    y = torch.zeros(4, dtype=torch.int64)
    untargeted = attack_utility(model, x, x_adv, y, jpeg_workers=1)
    assert tuple(untargeted) == ATTACK_KEYS
    assert all(type(v) is float for v in untargeted.values())
    assert untargeted["MR"] == pytest.approx(3 / 4)  # predictions 0, 1, 2, 1
    targeted = attack_utility(model, x, x_adv, y, target=torch.tensor([1, 1, 1, 2]), jpeg_workers=1)
    assert targeted["MR"] == pytest.approx(1 / 4)  # only image 1 predicts its target
    # Nothing succeeds when every prediction is the label: MR 0, every average NaN (nothing to average).
    none = attack_utility(model, x, x_adv, torch.tensor([0, 1, 2, 1]))
    assert none["MR"] == 0.0
    assert all(math.isnan(v) for k, v in none.items() if k != "MR")


# -------------------------------------------------------------------------------------------------------- RGB / RIC
@pytest.mark.parametrize("channels", [1, 3])
def test_rgb_on_a_centre_pixel_model(channels):
    # All labelled 0; the model says 1 iff the centre pixel > 0.8. A lone white centre pixel succeeds, but Pillow's
    # blur (radius 0.5, weight ≈ 0.6 on the centre) leaves level 154 = 0.60 < 0.8: no longer successful. A constant
    # 0.9 image succeeds and blurs to itself (229.5 → even 230). A constant 0.1 image fails and is not counted.
    # RGB = 1 still successful / 2 successful.
    spike = torch.zeros(1, channels, 8, 8)
    spike[..., 4, 4] = 1.0
    x_adv = torch.cat([spike, torch.full((1, channels, 8, 8), 0.9), torch.full((1, channels, 8, 8), 0.1)])
    y = torch.zeros(3, dtype=torch.int64)
    model = CentrePixelModel()
    success = success_mask(model(x_adv), y)
    assert success.tolist() == [True, True, False]
    assert (gaussian_blur_8bit(spike)[..., 4, 4] * 255).round().flatten().tolist() == [154.0] * channels
    assert rgb(model, x_adv, y, success) == pytest.approx(0.5)


@pytest.mark.parametrize("channels", [1, 3])
def test_rgb_and_ric_on_a_brightness_model(channels):
    # The model's threshold 127.45/255 lies inside level 127. Image A, constant (127 + 0.48)/255, succeeds as a
    # float image (mean above the threshold) but rounds to level 127, below it: the 8-bit step alone undoes it.
    # Image B, constant 0.8 (level 204), succeeds and stays 204 through blur and Guetzli (constant images are
    # reproduced exactly). Image C, constant 0.2, is classified correctly: not counted. So RGB = RIC = 1/2.
    x_adv = torch.stack([torch.full((channels, 8, 8), v) for v in ((127 + 0.48) / 255, 0.8, 0.2)])
    y = torch.zeros(3, dtype=torch.int64)
    model = BrightnessModel()
    success = success_mask(model(x_adv), y)
    assert success.tolist() == [True, True, False]
    assert rgb(model, x_adv, y, success) == pytest.approx(0.5)
    assert ric(model, x_adv, y, success, workers=2) == pytest.approx(0.5)
    # The denominator is n: with only B successful, RIC is 1.
    assert ric(model, x_adv, y, torch.tensor([False, True, False]), workers=1) == pytest.approx(1.0)


def test_guetzli_keeps_grey_images_grey_and_threads_agree():
    rng = torch.Generator().manual_seed(3)
    grey = torch.rand(3, 1, 16, 16, generator=rng)
    out = guetzli_jpeg_8bit(grey, workers=1)
    assert out.shape == grey.shape
    assert torch.equal(out, guetzli_jpeg_8bit(grey, workers=3))
    assert torch.equal(out * 255, (out * 255).round())  # decoded 8-bit levels


# ------------------------------------------------------------------------------------------------------- defences
# N = 5, K = 3, labels y = [0, 1, 2, 0, 1].
RAW = [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7]]  # right: 0, 1, 3
DEF = [[0.6, 0.2, 0.2], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1], [0.3, 0.4, 0.3]]  # right: 0, 2, 3, 4
DEF_Y = torch.tensor([0, 1, 2, 0, 1])


def test_defence_utility_hand_computed():
    raw, defended = TableModel(log_probs(RAW)), TableModel(log_probs(DEF))
    got = defence_utility(raw, defended, table_images(5), DEF_Y)
    assert tuple(got) == DEFENCE_KEYS
    assert got["ACC_raw"] == pytest.approx(3 / 5)
    assert got["ACC_defended"] == pytest.approx(4 / 5)
    assert got["CAV"] == pytest.approx(0.2)
    assert got["CRR"] == pytest.approx(2 / 5)  # images 2 and 4: raw wrong, defended right
    assert got["CSR"] == pytest.approx(1 / 5)  # image 1: raw right, defended wrong
    assert got["CAV"] == pytest.approx(got["CRR"] - got["CSR"])
    # Both right on images 0 and 3. CCV = (|0.6 − 0.8| + |0.5 − 0.5|) / 2 = 0.1.
    assert got["CCV"] == pytest.approx(0.1, abs=1e-6)
    # COS = (JS(RAW[0], DEF[0]) + 0) / 2 with m = [0.7, 0.15, 0.15]:
    # KL(p‖m) = 0.8 ln(8/7) + 0.2 ln(2/3) ≈ 0.025732; KL(q‖m) = 0.6 ln(6/7) + 0.4 ln(4/3) ≈ 0.022583; JS ≈ 0.024157.
    js0 = 0.5 * (0.8 * math.log(8 / 7) + 0.2 * math.log(2 / 3)) + 0.5 * (0.6 * math.log(6 / 7) + 0.4 * math.log(4 / 3))
    assert got["COS"] == pytest.approx(js0 / 2, abs=1e-6)


def test_defense_metric_functions_and_identities():
    raw_logits, def_logits = log_probs(RAW), log_probs(DEF)
    raw_right, def_right = raw_logits.argmax(1) == DEF_Y, def_logits.argmax(1) == DEF_Y
    assert cav(raw_right, def_right) == pytest.approx(crr(raw_right, def_right) - csr(raw_right, def_right))
    # A model compared with itself: no accuracy change, no confidence change, no output change.
    assert cav(raw_right, raw_right) == 0.0
    assert ccv(raw_logits, raw_logits, raw_right, raw_right) == 0.0
    assert cos(raw_logits, raw_logits, raw_right, raw_right) == 0.0
    # No image right for both: CCV and COS have nothing to average.
    nobody = torch.zeros(5, dtype=torch.bool)
    assert math.isnan(ccv(raw_logits, def_logits, nobody, def_right))
    assert math.isnan(cos(raw_logits, def_logits, raw_right, nobody))


def test_js_divergence_hand_computed_and_zero_probabilities():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    q = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # Disjoint supports: ln 2. Second row: m = [0.75, 0.25]; KL(p‖m) = ½ ln(2/3) + ½ ln 2 = ½ ln(4/3);
    # KL(q‖m) = ln(4/3); JS = ¼ ln(4/3) + ½ ln(4/3) = ¾ ln(4/3). Zero entries contribute 0, not NaN.
    torch.testing.assert_close(js_divergence(p, q), torch.tensor([math.log(2), 0.75 * math.log(4 / 3)],
                                                                 dtype=torch.float64))


# ----------------------------------------------------------------------------------------------------- error cases
def test_errors_name_the_value_and_what_is_allowed():
    model = TableModel(5 * torch.eye(3))  # one-hot rows would be indistinguishable from probabilities
    x = table_images(3)
    y = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"x has shape \(3, 1, 8, 8\) but x_adv has shape \(3, 1, 7, 8\)"):
        attack_utility(model, x, x[..., :7, :], y)
    too_bright = x.clone()
    too_bright[0, 0, 3, 3] = 1.5
    with pytest.raises(ValueError, match=r"x_adv has values in \[0, 1\.5\]; images must lie in \[0, 1\]"):
        attack_utility(model, x, too_bright, y)
    with pytest.raises(ValueError, match=r"x has values in \[-0\.25, .*\]; images must lie in \[0, 1\]"):
        defence_utility(model, model, x - 0.25, y)
    with pytest.raises(ValueError, match="model's outputs: .* probabilities, not logits"):
        attack_utility(SoftmaxModel(), x, x, y)
    with pytest.raises(ValueError, match="defended_model's outputs: .* probabilities, not logits"):
        defence_utility(model, SoftmaxModel(), x, y)
    with pytest.raises(ValueError, match=r"y has shape \(2,\); it must be a 1-D tensor of 3 class indices"):
        attack_utility(model, x, x, y[:2])
    with pytest.raises(ValueError, match=r"quality must be an integer in \[84, 100\] \(Guetzli's range\), got 50"):
        attack_utility(model, x, x, y, jpeg_quality=50)
    with pytest.raises(ValueError, match="p must be 0, 2 or math.inf, got 1"):
        ald(x, x, torch.ones(3, dtype=torch.bool), p=1)
    with pytest.raises(ValueError, match="weighting must be one of"):
        psd(x, x, torch.ones(3, dtype=torch.bool), weighting="std")


# --------------------------------------------------------------------------------------------------------- real data
@needs_deepsec
def test_attack_utility_on_deepsec_mnist_fgsm(deepsec_mnist):
    """FGSM (ε 0.3) on 50 correctly classified MNIST test images; metrics agree with DeepSec-style per-sample code."""
    from skimage.metrics import structural_similarity

    from repro.data import load

    model = deepsec_mnist
    x, y = load("mnist", split="test", n=64)
    with torch.no_grad():
        right = model(x).argmax(1) == y
    x, y = x[right][:50], y[right][:50]
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x_req), y), x_req)
    x_adv = (x + 0.3 * grad.sign()).clamp(0, 1)

    got = attack_utility(model, x, x_adv, y)
    with torch.no_grad():
        success = model(x_adv).argmax(1) != y
    n = int(success.sum())
    assert 0 < n <= 50 and got["MR"] == pytest.approx(n / 50)
    # The ε-ball bounds L∞; PGD-like steps touch most pixels.
    assert 0.29 < got["ALD_Linf"] <= 0.3 + 1e-6
    for key in ("ACAC", "ACTC", "ALD_L0", "ASS", "NTE", "RGB", "RIC"):
        assert 0.0 <= got[key] <= 1.0, key
    # DeepSec's loops on the successful images: L0 of 8-bit levels per element, L2 on floats, skimage SSIM.
    xs, xa = x[success].numpy(), x_adv[success].numpy()
    xs8, xa8 = np.round(xs * 255), np.round(xa * 255)
    l0 = np.mean([np.count_nonzero(xa8[i] - xs8[i]) / xs[i].size for i in range(n)])
    l2 = np.mean([np.linalg.norm((xa[i] - xs[i]).astype(np.float64).ravel()) for i in range(n)])
    hwc_clean, hwc_adv = xs8.transpose(0, 2, 3, 1).astype(np.float64), xa8.transpose(0, 2, 3, 1).astype(np.float64)
    ssim_ref = np.mean([
        structural_similarity(hwc_clean[i], hwc_adv[i], channel_axis=-1, data_range=2.0, win_size=7,
                              gaussian_weights=False, use_sample_covariance=True)
        for i in range(n)
    ])
    assert got["ALD_L0"] == pytest.approx(l0, abs=1e-12)
    assert got["ALD_L2"] == pytest.approx(l2, abs=1e-5)
    assert got["ASS"] == pytest.approx(ssim_ref, abs=1e-6)


def test_ric_on_a_sample_encodes_only_the_sample(monkeypatch):
    """ric_samples=k encodes exactly k of the successful AEs (drawn with the seed), RIC's interval has n = k, and the
    other metrics do not change."""
    import repro.metrics.attack as attack_mod

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    x = torch.rand(40, 3, 8, 8)
    x_adv = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    y = model(x).argmax(1)  # clean images classified "correctly" by construction
    encoded = []
    monkeypatch.setattr(attack_mod, "guetzli_jpeg_8bit", lambda images, **kw: encoded.append(len(images)) or images)
    full, full_iv = attack_mod.attack_utility(model, x, x_adv, y, intervals=True, seed=3)
    n = full_iv["RIC"]["n"]
    assert n > 10 and encoded == [n]
    part, part_iv = attack_mod.attack_utility(model, x, x_adv, y, intervals=True, seed=3, ric_samples=10)
    assert encoded[-1] == 10 and part_iv["RIC"]["n"] == 10
    assert {k: v for k, v in part.items() if k != "RIC"} == {k: v for k, v in full.items() if k != "RIC"}
    with pytest.raises(ValueError, match="ric_samples must be a positive integer or None, got 0"):
        attack_mod.attack_utility(model, x, x_adv, y, ric_samples=0)


# ------------------------------------------------------------------------------------------------ training mode
def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
                         nn.Linear(2 * 6 * 6, 3))


@pytest.mark.parametrize("entry", ["attack_utility", "defence_utility_raw", "defence_utility_defended"])
def test_utilities_refuse_a_model_in_training_mode_and_leave_its_buffers(entry):
    """In train() mode batch norm scores with the batch's statistics and updates the caller's running buffers (CAV
    of a model against itself was measured at −0.0156): both utilities refuse, naming the model to put in eval()."""
    training, other = _bn_model().train(), _bn_model().eval()
    state = {k: v.clone() for k, v in training.state_dict().items()}
    x, y = table_images(4), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"training mode.*\.eval\(\)"):
        if entry == "attack_utility":
            attack_utility(training, x, x.clone(), y, jpeg_workers=1)
        elif entry == "defence_utility_raw":
            defence_utility(training, other, x, y)
        else:
            defence_utility(other, training, x, y)
    assert training.training and all(torch.equal(v, training.state_dict()[k]) for k, v in state.items())
    assert not defence_utility(other, other, x, y)["CAV"]  # the same model in eval mode: no change at all
