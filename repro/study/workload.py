"""The work a profile's columns do, counted in units whose throughput ``benchmarks/gpu.py`` measures on a device.

Units (per image): ``pgd_step`` one forward and backward pass to the input in eval mode (a PGD, LLC or APGD step);
``train_step`` one forward and backward pass with a parameter update in train mode; ``cw2_iteration`` one CW2 Adam
iteration; ``metrics`` DeepSec's attack-utility metric suite on one adversarial example (Guetzli JPEG included). A
PAT epoch on N images is N × (steps ``pgd_step`` + 2 ``train_step``), the clean and the adversarial batch; NAT's is
N × (1 + 2). The counts come from the profile, the plan and the training recipes, never typed here.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..attacks import ATTACKS
from ..data import FULL_SIZES
from ..metrics import robustness
from ..train import DEFENCES, RECIPES
from ..train.config import DEEPSEC_RECIPE, Recipe
from . import roster
from .plan import COLUMNS, columns_for
from .profiles import Profile, get_profile

UNITS = ("pgd_step", "train_step", "cw2_iteration", "metrics")


@dataclass(frozen=True)
class Work:
    """``count`` units of ``unit`` on ``model`` (a key of :func:`model_keys`) for the plan column ``column``."""

    column: str
    what: str
    unit: str
    model: str
    count: float


def model_keys(profile: Profile) -> dict[str, tuple[str, dict]]:
    """The architectures a profile uses, as benchmark keys → (model name, factory keywords)."""
    widths = sorted({profile.wide_width, *profile.width_ladder})
    return {"mnist_convnet": ("mnist_convnet", {}), "resnet20": ("resnet20", {}),
            **{f"resnet20_wide_x{w}": ("resnet20_wide", {"width": w}) for w in widths}}


def _train_images(dataset: str, subset: int | None, recipe: Recipe) -> int:
    """Training images per epoch: the recipe's training share of the first ``subset`` of the complete dataset."""
    return recipe.training_images(min(subset or FULL_SIZES[dataset]["train"], FULL_SIZES[dataset]["train"]))


def workload(profile: str | Profile = "paper") -> list[Work]:
    """The work of every column of ``profile`` that trains or attacks with a full budget (the findings notebook and
    the seed replicates are left out; the security evaluation is counted as its PGD restarts and AutoAttack's APGD
    iterations on every image, an upper bound since AutoAttack attacks only the images still classified correctly)."""
    prof = get_profile(profile) if isinstance(profile, str) else profile
    wide = f"resnet20_wide_x{prof.wide_width}"
    out: list[Work] = []
    trained_raw: set[str] = set()
    for col in columns_for(prof.name):
        if col.replicate_of or col.table in ("findings", "training"):
            continue
        p = col.parameters_for(prof.name)
        dataset = p.get("dataset")
        model = (f"resnet20_wide_x{p['width']}" if p.get("width") else wide) if p.get("model") == "resnet20_wide" \
            else p.get("model")
        if col.attack:
            budget, entry = prof.attack_budget(col.attack), ATTACKS[col.attack]
            n = p.get("n_samples") or budget.n_candidates  # a column's own budget (overrides) wins
            setting = {**{k: p[k] for k in entry.parameters if p.get(k) is not None},
                       **{k: v for k, v in budget.iterations.items() if p.get(k) is None}}
            per_image = entry.cost(setting)
            out.append(Work(col.id, f"{n:,} images × {per_image:,} {entry.unit.replace('_', ' ')}s", entry.unit,
                            model, n * per_image))
            if col.attack == "cw2" and col.table == "1":  # the budget ladder's smaller budgets on the same images
                for steps, iterations in prof.cw2_ladder:
                    ladder = entry.cost({**setting, "binary_search_steps": steps, "max_iterations": iterations})
                    out.append(Work(col.id, f"budget ladder: {n:,} images × {steps} × {iterations:,} iterations",
                                    entry.unit, model, n * ladder))
            out.append(Work(col.id, "metric suite", "metrics", dataset, n))
        if ("raw" in col.uses and prof.raw.source == "train" or p.get("model") == "resnet20_wide") \
                and model not in trained_raw and col.table in ("1", "2", "corrected", "measure"):
            trained_raw.add(model)
            recipe = RECIPES[DEEPSEC_RECIPE[dataset]]
            epochs, n = prof.raw.epochs or recipe.epochs, _train_images(dataset, prof.raw.subset, recipe)
            out.append(Work(col.id, f"raw {model}: {epochs} epochs × {n:,} images", "train_step", model, epochs * n))
        if col.defence:
            training = prof.defence.for_dataset(dataset)
            recipe = RECIPES[training.recipe or DEEPSEC_RECIPE[dataset]]
            epochs, n = training.epochs or recipe.epochs, _train_images(dataset, training.subset, recipe)
            entry = DEFENCES[col.defence]
            setting = entry.default_setting(dataset)
            setting = replace(setting, **{k: p[k] for k in entry.parameters if p.get(k) is not None})
            passes = entry.passes(setting)  # crafting steps, then the clean and the adversarial update
            out.append(Work(col.id, f"{col.defence.upper()}: {epochs} epochs × {n:,} images × {passes - 2} crafting "
                                    "steps", "pgd_step", model, epochs * n * (passes - 2)))
            out.append(Work(col.id, f"{col.defence.upper()}: {epochs} epochs × {n:,} images × 2 updates",
                            "train_step", model, epochs * n * 2))
        if col.table == "security":
            sec = prof.security
            n = sec.n_images or FULL_SIZES[dataset]["test"]
            steps = sec.pgd_steps or roster.threat_model(dataset)["steps"]
            targets = sec.autoattack_target_classes or robustness.AUTOATTACK_TARGET_CLASSES
            aa_iterations = sec.autoattack_iterations or robustness.AUTOATTACK_ITERATIONS
            per_image = sec.pgd_restarts * steps + (1 + targets) * aa_iterations
            models: dict[str, int] = {}
            for spec in (m.spec for m in roster.attacked_models(dataset, prof)):
                arch = COLUMNS[spec.column].parameters_for(prof.name).get("model")
                name = (f"resnet20_wide_x{spec.width}" if spec.width else wide) if arch == "resnet20_wide" else arch
                models[name] = models.get(name, 0) + 1
            for name, count in models.items():
                out.append(Work(col.id, f"{count} models × {n:,} images × {per_image} steps (PGD restarts, APGD)",
                                "pgd_step", name, count * n * per_image))
    return out


def estimate(work: list[Work], throughput: dict[str, dict[str, float]]) -> list[dict]:
    """Seconds for each item of ``work`` given ``throughput[model][unit]`` in units per second (``metrics`` keyed by
    dataset); an item whose throughput was not measured gets ``None``."""
    rows = []
    for w in work:
        rate = throughput.get(w.model, {}).get(w.unit)
        rows.append({"column": w.column, "what": w.what, "unit": w.unit, "model": w.model, "count": w.count,
                     "seconds": None if not rate else w.count / rate})
    return rows


__all__ = ["UNITS", "Work", "estimate", "model_keys", "workload"]
