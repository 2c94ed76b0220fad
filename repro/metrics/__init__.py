"""DeepSec's utility metrics: attacks (:mod:`.attack`, MR … RIC) and defences (:mod:`.defence`, CAV … COS).

Both follow DeepSec's released code (SPEC §6); keywords select the paper's definitions where they differ.
:mod:`.uncertainty` gives every reported number its interval (Clopper–Pearson for rates, bootstrap for means).
"""
from .attack import (
    KEYS as ATTACK_KEYS,
    RANGES as ATTACK_RANGES,
    RATE_KEYS as ATTACK_RATE_KEYS,
    acac,
    actc,
    ald,
    ass,
    attack_utility,
    gaussian_blur_8bit,
    guetzli_jpeg_8bit,
    local_std,
    mr,
    nte,
    psd,
    ric,
    rgb,
    ssim,
    success_mask,
    to_8bit,
)
from .defence import (
    KEYS as DEFENCE_KEYS, RANGES as DEFENCE_RANGES, RATE_KEYS as DEFENCE_RATE_KEYS, cav, ccv, cos, crr, csr, defence_utility, js_divergence,
)
from .uncertainty import bootstrap_mean, clopper_pearson, interval_records

# metric name → its closed range of values (attacks and defences: the names are distinct)
RANGES = {**ATTACK_RANGES, **DEFENCE_RANGES}

__all__ = [
    "ATTACK_KEYS", "DEFENCE_KEYS", "attack_utility", "defence_utility", "success_mask", "to_8bit", "ssim",
    "local_std", "gaussian_blur_8bit", "guetzli_jpeg_8bit", "mr", "acac", "actc", "ald", "ass", "psd", "nte", "rgb",
    "ric", "cav", "crr", "csr", "ccv", "cos", "js_divergence", "ATTACK_RATE_KEYS", "DEFENCE_RATE_KEYS",
    "clopper_pearson", "bootstrap_mean", "interval_records", "RANGES",
]
