"""Evidence for the known problems of the published numbers (SPEC §8), computed on DeepSec's released models.

Each function runs one small experiment and returns JSON-ready numbers; ``notebooks/findings.ipynb`` calls them and
formats them with :mod:`repro.report.findings`, which the book's findings chapter uses too. Fractions throughout, distances in [0, 1] pixel units.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from .. import data as data_mod
from ..attacks import get_config
from .lookup import column_running
from .plan import FOLLOWUP_PGD_EPS8, per_255, published_value

def printed_column(**criteria) -> str:
    """The published column (its name in ``published/table{1,2}.csv``) of the plan column that runs ``criteria``
    (:func:`repro.study.lookup.column_running`; the names are the same under every profile)."""
    col = column_running("paper", **criteria)
    if col is None or col.compare_with is None:
        raise LookupError(f"no plan column with published values runs {criteria}")
    return col.compare_with


# The follow-up's literal "ε = 8" PGD (ε_iter 0.875; steps not given, DeepSec's 15) and the same setting with ε and
# ε_iter read on the 0..255 scale, so that only the unit of ε differs (the plan's corrected column).
EPS8_SETTINGS = {"eps8": FOLLOWUP_PGD_EPS8, "eps8_255": per_255(FOLLOWUP_PGD_EPS8)}


def _deepsec(attack: str, dataset: str) -> dict:
    """DeepSec's evaluation parameters of ``attack`` on ``dataset`` (SPEC §4), from the attack's named configs."""
    return get_config(attack, f"deepsec_{dataset}")


def _attack(name: str, model, cands, params: dict, *, batch_size: int, device, seed: int) -> Tensor:
    from ..attacks import run_attack

    with warnings.catch_warnings():
        if params.get("eps", 0) >= 1:
            warnings.simplefilter("ignore", UserWarning)  # the ε ≥ 1 warning is the point of this experiment
        return run_attack(name, model, cands.x, cands.y, params=params, batch_size=batch_size, device=device,
                          progress=False, seed=seed).x_adv


def _success(model, x_adv: Tensor, y: Tensor, *, batch_size: int, device) -> Tensor:
    from ..metrics import success_mask

    logits = data_mod.predict_logits(model, x_adv, batch_size=batch_size, device=device)
    return success_mask(logits, y)


def eps8_evidence(model, cands, *, batch_size: int, device, seed: int) -> dict:
    """PGD "ε = 8" versus ε = 8/255 on the same candidates: distortion, saturation and SSIM with both data ranges.

    Returns ``{setting: {"MR", "ALD_Linf", "ALD_L2", "PSD", "ASS_code", "ASS_255", "saturated", ...}}`` where
    ``saturated`` is the fraction of adversarial pixel values at exactly 0 or 1 (``saturated_clean`` the same
    for the clean images), all over the successful AEs except MR.
    """
    from ..metrics import ald, ass, mr, psd

    out = {"n": len(cands.y)}
    for key, params in EPS8_SETTINGS.items():
        x_adv = _attack("pgd", model, cands, params, batch_size=batch_size, device=device, seed=seed)
        ok = _success(model, x_adv, cands.y, batch_size=batch_size, device=device)
        adv, clean = x_adv[ok], cands.x[ok]
        out[key] = {
            "params": params, "MR": mr(ok),
            "ALD_Linf": ald(cands.x, x_adv, ok, p=math.inf), "ALD_L2": ald(cands.x, x_adv, ok, p=2),
            "PSD": psd(cands.x, x_adv, ok), "ASS_code": ass(cands.x, x_adv, ok, data_range=2.0),
            "ASS_255": ass(cands.x, x_adv, ok, data_range=255.0),
            "saturated": float(((adv == 0) | (adv == 1)).float().mean()) if len(adv) else math.nan,
            # per image, so that the interval resamples images (pixels of one image are not independent)
            "saturated_interval": _mean_interval(((adv == 0) | (adv == 1)).flatten(1).float().mean(1), seed=seed),
            "saturated_clean": float(((clean == 0) | (clean == 1)).float().mean()) if len(clean) else math.nan,
            "saturated_clean_interval": _mean_interval(((clean == 0) | (clean == 1)).flatten(1).float().mean(1),
                                                       seed=seed),
            "centred_cosine": _centred_cosine(clean, adv),
            "adversarial_class_counts": _predicted_counts(model, adv, batch_size=batch_size, device=device),
            "n_per_true_class": torch.bincount(cands.y, minlength=10).tolist(),
            "successes_per_true_class": torch.bincount(cands.y[ok], minlength=10).tolist(),
        }
    # If the output ignores the input, random images land in the same classes as the "ε = 8" examples.
    generator = torch.Generator().manual_seed(seed)
    noise = (torch.rand((out["n"], *cands.x.shape[1:]), generator=generator) < 0.5).float()
    out["binary_noise_class_counts"] = _predicted_counts(model, noise, batch_size=batch_size, device=device)
    return out


def _mean_interval(values: Tensor, *, seed: int) -> list[float] | None:
    """The 95 % bootstrap interval of the mean of per-image ``values`` (``None`` without an image)."""
    from ..metrics.uncertainty import bootstrap_mean

    return list(bootstrap_mean(values, seed=seed)) if len(values) else None


def _centred_cosine(clean: Tensor, adv: Tensor) -> float:
    """Mean over images of the cosine between the clean and the adversarial image, each centred on its own mean:
    about 0 when the adversarial image keeps nothing of the clean one."""
    if len(adv) == 0:
        return math.nan
    a = clean.flatten(1).double()
    b = adv.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    return float(cos.mean())


def _predicted_counts(model, x: Tensor, *, batch_size: int, device) -> list[int]:
    """How many of ``x`` the model puts in each class."""
    if len(x) == 0:
        return []
    logits = data_mod.predict_logits(model, x, batch_size=batch_size, device=device)
    return torch.bincount(logits.argmax(1), minlength=logits.shape[1]).tolist()


def definition_evidence(model, cands, *, dataset: str, batch_size: int, device, seed: int) -> dict:
    """DeepSec's PGD on ``model``, scored with the code's and the paper's metric definitions, plus the L1 norm.

    Returns ``{"n", "MR", "code": {...}, "paper": {...}, "norms": {"L1", "L2", "Linf"}}``; ``code``/``paper`` hold
    ALD_L0, ALD_L2, ALD_Linf, PSD and ASS (code: unnormalised ALD, 1 − std PSD, SSIM range 2; paper: ALD divided
    by ‖x‖_p, 1/std PSD, and the correct SSIM range 255).
    """
    from ..metrics import ald, ass, mr, psd

    x_adv = _attack("pgd", model, cands, _deepsec("pgd", dataset), batch_size=batch_size, device=device, seed=seed)
    ok = _success(model, x_adv, cands.y, batch_size=batch_size, device=device)
    delta = (x_adv[ok].double() - cands.x[ok].double()).flatten(1)

    def mean_norm(p):
        return float(torch.linalg.vector_norm(delta, ord=p, dim=1).mean()) if len(delta) else math.nan

    def scored(normalized: bool, weighting: str, data_range: float) -> dict:
        return {"ALD_L0": ald(cands.x, x_adv, ok, p=0, normalized=normalized),
                "ALD_L2": ald(cands.x, x_adv, ok, p=2, normalized=normalized),
                "ALD_Linf": ald(cands.x, x_adv, ok, p=math.inf, normalized=normalized),
                "PSD": psd(cands.x, x_adv, ok, weighting=weighting),
                "ASS": ass(cands.x, x_adv, ok, data_range=data_range)}

    from ..metrics import local_std

    # The paper's PSD weights each perturbed element by 1/std of its 3×3 neighbourhood: infinite wherever a
    # perturbed element sits in a flat neighbourhood. Count those images instead of asserting it.
    flat = (local_std(cands.x[ok]) == 0) & (x_adv[ok] != cands.x[ok]) if bool(ok.any()) else torch.zeros(0, 1)
    return {"n": len(cands.y), "params": _deepsec("pgd", dataset), "MR": mr(ok),
            "code": scored(False, "one_minus_std", 2.0), "paper": scored(True, "inverse_std", 255.0),
            "norms": {"L1": mean_norm(1), "L2": mean_norm(2), "Linf": mean_norm(math.inf)},
            "n_successful": int(ok.sum()),
            "paper_PSD_infinite": math.isinf(psd(cands.x, x_adv, ok, weighting="inverse_std")),
            "images_with_flat_perturbed_element": int(flat.flatten(1).any(1).sum()),
            "clean_images_with_flat_neighbourhood": int((local_std(cands.x) == 0).flatten(1).any(1).sum())}


def logit_shift_evidence(dataset: str, *, n: int, batch_size: int, device, seed: int) -> dict:
    """FGSM and PGD (DeepSec's parameters) against DeepSec's released model with and without the logit max-shift,
    and the float32 arithmetic that makes them differ.

    The two variants compute the same function (same predictions, same candidates, the same gradient in exact
    arithmetic); only float32 gradients differ. Returns ``{"n", "fgsm": {"shift", "no_shift"}, "pgd": {...}}``
    with MR values, and ``"float32"``: :func:`_float32_evidence` (which candidates are so confident that their
    true-class probability rounds to exactly 1, how close each variant's input gradient is to a float64 reference,
    and each attack's successes split by that rounding).
    """
    from ..metrics import mr
    from ..models import load_deepsec

    shifted = load_deepsec(dataset, logit_shift=True, map_location=device)
    plain = load_deepsec(dataset, logit_shift=False, map_location=device)
    cands = data_mod.candidates(shifted, dataset, n=n, seed=seed, batch_size=batch_size, device=device)
    out: dict = {"n": len(cands.y), "dataset": dataset}
    success = {}
    for attack, params in (("fgsm", _deepsec("fgsm", dataset)), ("pgd", _deepsec("pgd", dataset))):
        out[attack] = {"params": params}
        for key, model in (("shift", shifted), ("no_shift", plain)):
            x_adv = _attack(attack, model, cands, params, batch_size=batch_size, device=device, seed=seed)
            success[attack, key] = _success(model, x_adv, cands.y, batch_size=batch_size, device=device).cpu()
            out[attack][key] = mr(success[attack, key])
    out["float32"] = _float32_evidence({"shift": shifted, "no_shift": plain}, cands, success,
                                       batch_size=batch_size, device=device)
    return out


# How the float32 explanation of the logit shift is judged (see shift_explained).
EXPLAINED_SHARE, FAR_COSINE, NEAR_COSINE = 0.8, 0.5, 0.9


def shift_explained(shift: dict, *, attack: str = "fgsm") -> dict:
    """Whether float32 rounding explains ``attack``'s MR gap between the two variants of
    :func:`logit_shift_evidence`: ``gap`` (successes with the shift minus without, all candidates), ``gap_rounded``
    (the same on the candidates whose true-class probability rounds to 1), and ``explained``: the gap is positive,
    at least :data:`EXPLAINED_SHARE` of it lies in the rounded candidates, and there the unshifted gradient's median
    cosine to the float64 one is below :data:`FAR_COSINE` while the shifted one's is at least :data:`NEAR_COSINE`."""
    f32 = shift["float32"]
    by_key = f32["successes"][attack]
    gap_rounded = by_key["shift"]["rounded"] - by_key["no_shift"]["rounded"]
    gap = gap_rounded + by_key["shift"]["other"] - by_key["no_shift"]["other"]
    cos = f32["cosine_to_float64"]
    near, far = cos["shift"]["rounded"], cos["no_shift"]["rounded"]
    explained = (gap > 0 and gap_rounded >= EXPLAINED_SHARE * gap and near is not None and far is not None
                 and far < FAR_COSINE and near >= NEAR_COSINE)
    return {"gap": gap, "gap_rounded": gap_rounded, "explained": explained}


def _input_gradients(model, cands, *, dtype: torch.dtype, batch_size: int, device) -> Tensor:
    """The input gradient of the cross-entropy of every candidate (summed loss), computed in ``dtype``."""
    import copy

    model = copy.deepcopy(model).to(dtype)
    grads = []
    for i in range(0, len(cands.y), batch_size):
        x = cands.x[i:i + batch_size].to(device, dtype).requires_grad_(True)
        y = cands.y[i:i + batch_size].to(device)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y, reduction="sum"), x)
        grads.append(grad.detach().cpu())
    return torch.cat(grads)


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Per-image cosine between two gradients, in float64 without an epsilon (float32 gradients of confident
    images are tiny but not zero); 0 where either gradient is exactly zero."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    ok = (na > 0) & (nb > 0)
    cos = torch.zeros(len(a), dtype=torch.float64)
    cos[ok] = (a[ok] / na[ok, None] * (b[ok] / nb[ok, None])).sum(1)
    return cos


def _float32_evidence(models: dict, cands, success: dict, *, batch_size: int, device) -> dict:
    """Why the logit shift changes float32 attacks. ``rounded``: the candidates whose true-class softmax probability
    is exactly 1 in float32 (the other classes' probabilities are tiny but not zero): there PyTorch's cross-entropy
    gradient for the true logit, p_y − 1, is exactly 0, so without the shift the input gradient loses its largest
    term; with the shift, the max's own gradient path adds back minus the sum of the others, which is that term.
    Per variant: the median cosine of its float32 input gradient to a float64 reference (the float64 gradients of
    both variants agree to rounding), over the rounded candidates and the others; per attack and variant: the
    successes among the rounded candidates and among the others."""
    plain = models["no_shift"]
    logits = data_mod.predict_logits(plain, cands.x, batch_size=batch_size, device=device).cpu().float()
    p_true = torch.softmax(logits, dim=1).gather(1, cands.y.cpu()[:, None]).squeeze(1)
    rounded = p_true == 1
    reference = _input_gradients(plain, cands, dtype=torch.float64, batch_size=batch_size, device=device)

    def median(values: Tensor):
        return float(values.median()) if len(values) else None

    cosine = {}
    for key, model in models.items():
        cos = _cosine(_input_gradients(model, cands, dtype=torch.float32, batch_size=batch_size, device=device),
                      reference)
        cosine[key] = {"rounded": median(cos[rounded]), "other": median(cos[~rounded])}
    successes: dict = {}
    for (attack, key), ok in success.items():
        successes.setdefault(attack, {})[key] = {"rounded": int(ok[rounded].sum()), "other": int(ok[~rounded].sum())}
    return {"rounded": int(rounded.sum()), "other": int((~rounded).sum()), "cosine_to_float64": cosine,
            "successes": successes}


def pat_arithmetic() -> dict:
    """The follow-up's PAT "ε = 8" column checked against CAV = ACC defended − ACC raw = CRR − CSR (percent)."""
    def printed(metric):
        return published_value("2", printed_column(defence="pat", literal_eps=True, table="2"), "follow-up", metric).printed

    raw, defended, cav, crr, csr = (printed(m) for m in ("ACC_raw", "ACC_defended", "CAV", "CRR", "CSR"))
    return {"ACC_raw": raw, "ACC_defended": defended, "CAV": cav, "CRR": crr, "CSR": csr,
            "defended_minus_raw": round(defended - raw, 2), "crr_minus_csr": round(crr - csr, 2),
            "implied_defended": round(raw + cav, 2), "text_defended": 40.06}


def headline(evidence: dict) -> dict:
    """The few numbers the book quotes in its text, flattened (fractions)."""
    eps8, shift = evidence["eps8"], evidence["logit_shift"]
    return {
        "eps8_MR": eps8["eps8"]["MR"], "eps8_ALD_Linf": eps8["eps8"]["ALD_Linf"],
        "eps8_ASS_code": eps8["eps8"]["ASS_code"], "eps8_ASS_255": eps8["eps8"]["ASS_255"],
        "eps8_saturated": eps8["eps8"]["saturated"],
        "eps8_255_ASS_code": eps8["eps8_255"]["ASS_code"], "eps8_255_ASS_255": eps8["eps8_255"]["ASS_255"],
        "fgsm_MR_shift": shift["fgsm"]["shift"], "fgsm_MR_no_shift": shift["fgsm"]["no_shift"],
        "pgd_MR_shift": shift["pgd"]["shift"], "pgd_MR_no_shift": shift["pgd"]["no_shift"],
    }
