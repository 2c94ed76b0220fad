"""The findings' evidence (:mod:`repro.study.findings`) as the tables the findings notebook and the book print:
strings only, computed from the stored evidence (the study computes, the report formats)."""
from __future__ import annotations

import math

from .. import data as data_mod
from ..study import findings
from ..study.plan import published_value
from .markdown import NOT_COMPUTED, fixed, pct
from .templates import phrase


def interval_text(low_high) -> str:
    """``" [low, high]"`` in percent, one decimal (``""`` without an interval): the findings' one interval format."""
    return "" if not low_high else f" [{100 * low_high[0]:.1f}, {100 * low_high[1]:.1f}]"


def rate_interval(value, n):
    """The exact 95 % interval of a success rate ``value`` over ``n`` images (k = rate · n, rounded); ``None``
    without a rate or images."""
    from ..metrics.uncertainty import clopper_pearson

    return None if value is None or not n else clopper_pearson(round(value * n), n)


def _share(value, interval) -> str:
    """A mean share over images with its 95 % interval (``interval`` ``None``: the share alone)."""
    if value is None or interval is None or (isinstance(value, float) and not math.isfinite(value)):
        return pct(value)
    return pct(value) + interval_text(interval)


def _rate(value, n) -> str:
    """A success rate over ``n`` images with its exact 95 % interval."""
    return pct(value) + interval_text(rate_interval(value, n))


def evidence_tables(evidence: dict) -> dict[str, list[list[str]]]:
    """The findings as small tables (header row first, strings), for the notebook and the book alike."""
    eps8 = evidence["eps8"]
    tables = {"eps8": [["", "ε = 8, step 0.875 (follow-up)", "ε = 8/255, step 0.875/255 (the same, ε in /255)",
                        "follow-up's \"ε = 8\" column"]]}
    eps8_column = findings.printed_column(attack="pgd", literal_eps=True, table="1")
    published = {m: published_value("1", eps8_column, "follow-up", m) for m in
                 ("MR", "ALD_Linf", "ALD_L2", "PSD", "ASS")}
    rows = (("MR", "MR", pct), ("L∞ (ALD)", "ALD_Linf", fixed), ("L2 (ALD)", "ALD_L2", fixed), ("PSD", "PSD", fixed),
            ("ASS, data range 2 (DeepSec's code)", "ASS_code", fixed), ("ASS, data range 255 (correct)", "ASS_255", fixed),
            ("pixel values at exactly 0 or 1", "saturated", pct),
            ("centred cosine between clean and adversarial image", "centred_cosine", fixed))
    for label, key, fmt in rows:
        pub_key = "ASS" if key == "ASS_code" else key
        pub = published.get(pub_key)
        pub_text = NOT_COMPUTED if pub is None or key in ("ASS_255", "centred_cosine") else (f"{pub.printed:g} %" if pub.unit == "%" else
                                                                f"{pub.printed:.3f}")
        if key == "MR":  # a rate over the candidates: with its interval
            cells = [_rate(eps8[arm]["MR"], sum(eps8[arm].get("n_per_true_class", []))) for arm in ("eps8", "eps8_255")]
        elif key == "saturated":  # a share of pixels, its interval over images
            cells = [_share(eps8[arm]["saturated"], eps8[arm].get("saturated_interval")) for arm in ("eps8", "eps8_255")]
        else:
            cells = [fmt(eps8["eps8"][key]), fmt(eps8["eps8_255"][key])]
        tables["eps8"].append([label, *cells, pub_text])
    clean = eps8["eps8"]["saturated_clean"]
    tables["eps8"].append(["(clean images: values at 0 or 1)", _share(clean, eps8["eps8"].get("saturated_clean_interval")),
                           _share(eps8["eps8_255"]["saturated_clean"], eps8["eps8_255"].get("saturated_clean_interval")),
                           NOT_COMPUTED])

    tables["eps8_classes"] = class_table(
        {"ε = 8: adversarial class": eps8["eps8"]["adversarial_class_counts"],
         "ε = 8/255: adversarial class": eps8["eps8_255"]["adversarial_class_counts"],
         "random binary noise: class": eps8.get("binary_noise_class_counts", [])},
        per_true={"ε = 8: MR of true class": (eps8["eps8"]["successes_per_true_class"],
                                              eps8["eps8"]["n_per_true_class"])})

    cifar = evidence["definitions"]["cifar10"]
    deepsec_pgd = findings.printed_column(attack="pgd", literal_eps=False, model="resnet20", table="1")
    pub_l1 = published_value("1", deepsec_pgd, "follow-up", "ALD_L2")
    pub_l2 = published_value("1", deepsec_pgd, "follow-up", "ALD_Linf")
    tables["norms"] = [["norm of the perturbation", "ours (mean over successful AEs)", "follow-up's row"],
                       ["L1", fixed(cifar["norms"]["L1"], 1), NOT_COMPUTED],
                       ["L2", fixed(cifar["norms"]["L2"]), f"\"L1\": {pub_l1.printed:.3f}"],
                       ["L∞", fixed(cifar["norms"]["Linf"]), f"\"L2\": {pub_l2.printed:.3f}"]]

    defs = [["metric", "MNIST: code", "MNIST: paper", "CIFAR-10: code", "CIFAR-10: paper"]]
    mnist = evidence["definitions"]["mnist"]
    labels = {"ALD_L0": "ALD L0 (code: per element / C·H·W; paper: / ‖x‖₀)",
              "ALD_L2": "ALD L2 (code: raw; paper: / ‖x‖₂)",
              "ALD_Linf": "ALD L∞ (code: raw; paper: / ‖x‖∞)",
              "PSD": "PSD (code: 1 − std; paper: 1/std)", "ASS": "ASS (code: data range 2; correct: 255)"}
    def paper(ev, key):  # the JSON stores an infinite mean as null: say ∞ where the evidence says it is
        return "∞" if key == "PSD" and ev.get("paper_PSD_infinite") else fixed(ev["paper"][key])

    for key, label in labels.items():
        defs.append([label, fixed(mnist["code"][key]), paper(mnist, key), fixed(cifar["code"][key]), paper(cifar, key)])
    tables["definitions"] = defs

    tables["shift"] = shift_table(evidence["logit_shift"])

    pat = evidence["pat_arithmetic"]
    tables["pat"] = [["quantity", "value (%)"],
                     ["ACC raw (printed)", f"{pat['ACC_raw']:.2f}"],
                     ["ACC defended (printed)", f"{pat['ACC_defended']:.2f}"],
                     ["CAV (printed)", f"{pat['CAV']:.2f}"],
                     ["ACC defended − ACC raw", f"{pat['defended_minus_raw']:.2f}"],
                     ["CRR − CSR", f"{pat['crr_minus_csr']:.2f}"],
                     ["ACC raw + CAV (implied ACC defended)", f"{pat['implied_defended']:.2f}"],
                     ["ACC defended in the follow-up's text", f"{pat['text_defended']:.2f}"]]
    return tables


def shift_table(shift: dict) -> list[list[str]]:
    """The logit-shift experiment as a table: each attack's MR with and without the shift on all candidates, then
    split by whether the true-class probability rounds to 1 in float32, and the gradients' cosine to float64."""
    f32 = shift["float32"]
    groups = tuple((group, phrase("shift_group", group=group, n=f32[group])) for group in ("rounded", "other"))
    rows = [["(DeepSec's MNIST parameters)", "with the shift (DeepSec's code)", "without the shift"]]
    for attack, label in (("fgsm", "FGSM ε = 0.3"), ("pgd", "PGD ε = 0.3, step 0.05, 15 steps")):
        rows.append([f"{label}: MR", _rate(shift[attack]["shift"], shift.get("n")),
                     _rate(shift[attack]["no_shift"], shift.get("n"))])
        for group, words in groups:
            n = f32[group]
            rows.append([f"{label}: MR on {words}",
                         *(_rate(f32["successes"][attack][key][group] / n if n else None, n)
                           for key in ("shift", "no_shift"))])
    for group, words in groups:
        rows.append([phrase("shift_cosine_row", words=words),
                     *(fixed(f32["cosine_to_float64"][key][group], 2) for key in ("shift", "no_shift"))])
    return rows


def class_table(counts: dict[str, list[int]], *, per_true: dict | None = None,
                dataset: str = "cifar10") -> list[list[str]]:
    """A table with one row per class (by name): counts of where examples land, and per true class the success
    rate as ``k/n``."""
    names = data_mod.CLASS_NAMES[dataset]
    header = ["class", *counts, *(per_true or {})]
    rows = [header]
    for c, name in enumerate(names):
        row = [f"{c} {name}"] + [str(v[c]) if c < len(v) else NOT_COMPUTED for v in counts.values()]
        for successes, totals in (per_true or {}).values():
            row.append(f"{successes[c]}/{totals[c]}" if totals[c] else NOT_COMPUTED)
        rows.append(row)
    return rows


def as_dataframe(table: list[list[str]]):
    """A table from :func:`evidence_tables` as a pandas DataFrame (for notebooks)."""
    import pandas as pd

    return pd.DataFrame(table[1:], columns=table[0]).set_index(table[0][0])
