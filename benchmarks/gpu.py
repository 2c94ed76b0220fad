"""One-command device check: throughput of each unit of work on each model, and the `paper` profile's wall time.

    python benchmarks/gpu.py                  # on the device present (CUDA if any), sizes for that device
    python benchmarks/gpu.py --tiny --profile smoke   # seconds, on any device (the tests run this form)
    python benchmarks/gpu.py --compile        # also: torch.compile'd model against eager, per unit, with the
                                              # first call's excess and the units after which compiling pays

Units (:mod:`repro.study.workload`): ``pgd_step`` (one PGD-7 step of the training's crafting, on the BatchNorm-folded
model the loop crafts on), ``train_step`` (one update of the training loop, :func:`repro.train.loop.step`, without a
defence), ``cw2_iteration`` (CW2 with one search step), ``metrics`` (DeepSec's attack metric suite per adversarial
example, Guetzli JPEG included). On CUDA, attacks and training run as the `paper` profile runs them there (bfloat16
autocast, channels-last). The estimate multiplies :func:`repro.study.workload.workload` by these throughputs and
prints every column and the total; ``--out`` (default ``benchmarks/results/gpu_<device>.json``) keeps the
measurement, which the book's appendix reads.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from repro.attacks import cw2, pgd, prepare_model
from repro.metrics import attack_utility
from repro.models import build
from repro.study.profiles import get_profile
from repro.study.workload import estimate, model_keys, workload
from repro.train import defences
from repro.train.loop import step
from repro.train.runtime import Clock

SIZES = {  # batch, repeats per unit, by size
    "tiny": {"batch": 4, "repeats": 1, "cw2_iterations": 2, "metric_images": 2},
    "cpu": {"batch": 8, "repeats": 2, "cw2_iterations": 5, "metric_images": 8},
    "cuda": {"batch": 256, "repeats": 5, "cw2_iterations": 50, "metric_images": 64},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="smallest sizes (seconds; what the tests run)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    parser.add_argument("--profile", default="paper", help="the profile whose wall time is estimated")
    parser.add_argument("--batch", type=int, default=None, help="images per call instead of the size's (e.g. a "
                        "profile's batch size)")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/gpu_<device>.json)")
    return parser.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, units: float, *, repeats: int, device: torch.device, first: list | None = None) -> float:
    """Units per second of ``fn`` (median of ``repeats`` timed calls after one warm-up); the warm-up's own seconds
    (for a compiled model: tracing and code generation) are appended to ``first`` when given."""
    start = time.perf_counter()
    fn()
    _sync(device)
    if first is not None:
        first.append(time.perf_counter() - start)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return units / statistics.median(times)


def measure_model(name: str, kwargs: dict, *, device: torch.device, size: dict, fast: bool,
                  compiled: bool = False, first_call: dict | None = None) -> dict[str, float]:
    """pgd_step, train_step and cw2_iteration throughputs of one architecture (random weights: speed does not depend
    on them); each unit's first call in seconds (compilation included) goes into ``first_call`` when given."""
    torch.manual_seed(0)
    shape = (1, 28, 28) if name == "mnist_convnet" else (3, 32, 32)
    fmt = torch.channels_last if fast else torch.contiguous_format
    net = build(name, **kwargs).to(device=device, memory_format=fmt)
    b = size["batch"]
    x = torch.rand(b, *shape, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (b,), device=device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if fast else contextlib.nullcontext
    # its own copy: the training step below puts ``net`` in train() mode, and attacks refuse that
    attacked, _ = prepare_model(copy.deepcopy(net).eval(), channels_last=fast)
    if compiled:
        attacked = torch.compile(attacked)
    optimiser = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    trained = torch.compile(net) if compiled else net
    clocks = (Clock(device), Clock(device))
    mean_ce = defences.mean_cross_entropy(y, b)

    def pgd7():
        with autocast():
            pgd(attacked, x, y, eps=8 / 255, step_size=2 / 255, steps=7, validate=False)

    def update():
        step(net, trained, optimiser, x, y, defence=None, params=None, mean_ce=mean_ce, autocast=autocast,
             generator=None, drawn=None, progress=0.0, clocks=clocks)

    iters = size["cw2_iterations"]

    def cw():
        with autocast():
            cw2(attacked, x, (y + 1) % 10, binary_search_steps=1, max_iterations=iters)

    reps = size["repeats"]
    out = {}
    for unit, fn, units in (("pgd_step", pgd7, 7 * b), ("train_step", update, b), ("cw2_iteration", cw, iters * b)):
        first: list[float] = []
        out[unit] = timed(fn, units, repeats=reps, device=device, first=first)
        if first_call is not None:
            first_call[unit] = first[0] - units / out[unit]  # the first call's excess over a steady one
    return out


def break_even(eager: float, compiled: float, excess_s: float) -> float | None:
    """Units after which compiling has paid for its first-call excess (``None``: compiled is not faster, never)."""
    saving = 1 / eager - 1 / compiled
    return max(excess_s, 0.0) / saving if saving > 0 else None


def measure_metrics(dataset: str, *, device: torch.device, size: dict) -> float:
    """Adversarial examples per second through DeepSec's attack metric suite (on DeepSec's architecture)."""
    name = "mnist_convnet" if dataset == "mnist" else "resnet20"
    shape = (1, 28, 28) if dataset == "mnist" else (3, 32, 32)
    n = size["metric_images"]
    net = build(name).to(device).eval()
    x = torch.rand(n, *shape)
    x_adv = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    y = torch.randint(0, 10, (n,))
    return timed(lambda: attack_utility(net, x, x_adv, y, device=device), n, repeats=1, device=device)


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    prof = get_profile(args.profile)
    size = SIZES["tiny" if args.tiny else device.type if device.type in SIZES else "cpu"]
    if args.batch is not None:
        if args.batch < 1:
            raise SystemExit(f"--batch must be a positive number of images, got {args.batch}")
        size = {**size, "batch": args.batch}
    fast = device.type == "cuda" and prof.cuda_bf16
    throughput: dict[str, dict] = {}
    compile_cost: dict[str, dict] = {}
    for key, (name, kwargs) in model_keys(prof).items():
        throughput[key] = measure_model(name, kwargs, device=device, size=size, fast=fast)
        if args.compile:
            excess: dict[str, float] = {}
            compiled = measure_model(name, kwargs, device=device, size=size, fast=fast, compiled=True,
                                     first_call=excess)
            throughput[key].update({f"{unit}_compiled": value for unit, value in compiled.items()})
            compile_cost[key] = {unit: {"first_call_excess_s": excess[unit],
                                        "break_even_units": break_even(throughput[key][unit], compiled[unit],
                                                                       excess[unit])} for unit in compiled}
        print(f"{key}: " + ", ".join(f"{u} {v:,.0f}/s" for u, v in throughput[key].items()), flush=True)
        for unit, cost in compile_cost.get(key, {}).items():
            pays = "never" if cost["break_even_units"] is None else f"after {cost['break_even_units']:,.0f} units"
            print(f"  compiled {unit}: first call +{cost['first_call_excess_s']:.1f} s, pays {pays}", flush=True)
    for dataset in ("mnist", "cifar10"):
        throughput[dataset] = {"metrics": measure_metrics(dataset, device=device, size=size)}
        print(f"{dataset} metric suite: {throughput[dataset]['metrics']:,.1f} images/s", flush=True)
    rows = estimate(workload(prof), throughput)
    total = sum(r["seconds"] or 0.0 for r in rows)
    by_column: dict[str, float] = {}
    for r in rows:
        by_column[r["column"]] = by_column.get(r["column"], 0.0) + (r["seconds"] or 0.0)
    print(f"\nestimated wall time of the {prof.name} profile on {device_name(device)}:")
    for column, seconds in by_column.items():
        print(f"  {column:20s} {seconds / 3600:10.2f} h")
    print(f"  {'total':20s} {total / 3600:10.2f} h")
    return {"device": device_name(device), "device_type": device.type, "size": "tiny" if args.tiny else size,
            "bf16_channels_last": fast, "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "profile": prof.name, "throughput": throughput,
            "estimate": rows, "total_seconds": total, **({"compile_cost": compile_cost} if compile_cost else {})}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main(argv=None) -> int:
    args = parse_args(argv)
    found = run(args)
    out = Path(args.out) if args.out else Path(__file__).with_name("results") / f"gpu_{found['device_type']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(found, indent=1), encoding="utf-8")
    tmp.replace(out)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
