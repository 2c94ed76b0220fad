"""Throughput of our PGD and CW2 against torchattacks on the same models, batch and device, in one run.

Run by hand (not part of the tests):  python benchmarks/attacks.py [--batch 16] [--repeats 3] [--cw-iterations 10]
[--compile]

Models: DeepSec's released CIFAR-10 ResNet-20 (``load_deepsec("cifar10")``; random weights if the checkpoint is not
available — speed does not depend on the weights, and the output says which) and the follow-up's wide ResNet-20
(stage widths × ``--wide-width``, random weights). Cases: PGD with DeepSec's CIFAR-10 parameters (0.1 / 0.01 / 15)
and Madry's training PGD (8/255, 2/255, 7 steps), both with a random start, against ``torchattacks.PGD``; CW2 with
one search step of ``--cw-iterations`` Adam iterations against ``torchattacks.CW`` (targeted) with the same budget.
"Ours" is our attack on the model as :func:`repro.attacks.run_attack` prepares it for the pipeline
(:func:`repro.attacks.prepare_model`: BatchNorm folded into the convolutions, channels-last; a one-time copy whose
cost is printed); "theirs" is torchattacks on the model as given, as a torchattacks user runs it. Two sub-rows
attribute the difference: our attack on the unprepared model, and torchattacks on our prepared model.
Every forward pass is counted. torchattacks' CW stops early when its loss rises at a check (every steps/10
iterations), so CW2 is compared in image-iterations per second (images × forward passes / s); PGD in images per
second (both always take all steps). Timings alternate implementations and report the median. Default: one CPU
thread (on a shared two-core machine more threads only add noise); on CUDA, also ours under bf16 autocast.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from repro.attacks import cw2, get_config, pgd, prepare_model, run_attack
from repro.models import load_deepsec, resnet20, resnet20_wide


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="images per attack call (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case, after one warm-up (default 3)")
    parser.add_argument("--cw-iterations", type=int, default=10, help="Adam iterations for CW2 (default 10)")
    parser.add_argument("--wide-width", type=int, default=2, help="stage-width multiplier of the wide ResNet-20; "
                        "0 skips it (default 2; the follow-up used 10)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (default 1)")
    parser.add_argument("--compile", action="store_true", help="also our PGD on the prepared model under "
                        "torch.compile (compiled once per model, outside the timing)")
    return parser.parse_args()


def images(n: int) -> tuple[torch.Tensor, str]:
    try:
        from repro.data import load
        x, y = load("cifar10", split="test", n=n, download=False)
        return x, "CIFAR-10 test images"
    except (FileNotFoundError, ValueError) as err:  # a benchmark, not a result: any [0, 1] images will do
        print(f"(no CIFAR-10: {err.__class__.__name__}; using uniform random images)")
        return torch.rand(n, 3, 32, 32), "uniform random images"


def models(wide_width: int) -> dict[str, torch.nn.Module]:
    out = {}
    try:
        out["DeepSec ResNet-20 (released weights)"] = load_deepsec("cifar10")
    except FileNotFoundError as err:
        print(f"(DeepSec's checkpoint unavailable: {err}; timing ResNet-20 with random weights)")
        out["ResNet-20 (random weights)"] = resnet20().eval()
    if wide_width > 0:
        out[f"wide ResNet-20 ×{wide_width} (random weights)"] = resnet20_wide(width=wide_width).eval()
    return out


class ForwardCounter:
    """Counts forward passes of some modules through hooks."""

    def __init__(self, *modules: torch.nn.Module):
        self.calls = 0
        self.handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, module, inputs, output):
        self.calls += 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def timed(fn, device: torch.device, counter: ForwardCounter) -> tuple[float, int]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    counter.calls = 0
    began = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began, counter.calls


def compare(cases: dict, n: int, repeats: int, device: torch.device, counter: ForwardCounter,
            per_forward: bool = False) -> dict:
    """(throughput, forwards) per implementation from the median time; implementations alternate in each repeat.

    Throughput is images/s, or image-iterations/s (images × forwards / s) with ``per_forward``.
    """
    for fn in cases.values():
        fn()  # warm-up (allocator, oneDNN/cuDNN kernel selection)
    seconds = {k: [] for k in cases}
    forwards = {}
    for _ in range(repeats):
        for key, fn in cases.items():
            s, calls = timed(fn, device, counter)
            seconds[key].append(s)
            forwards[key] = calls
    return {k: (n * (forwards[k] if per_forward else 1) / statistics.median(v), forwards[k])
            for k, v in seconds.items()}


def bf16_effect(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict, batch: int) -> str:
    """MR and mean L2 distortion of PGD in float32 and under CUDA bf16 autocast, same start (seed 0)."""
    out = []
    for bf16 in (False, True):
        x_adv = run_attack("pgd", model, x, y, params=params, batch_size=batch, progress=False, seed=0,
                           autocast_bf16=bf16).x_adv.to(x.device)
        with torch.no_grad():
            mr = float((model(x_adv).argmax(1) != y).float().mean())
        out.append((mr, float((x_adv - x).flatten(1).norm(dim=1).mean()), x_adv))
    (mr32, l2_32, adv32), (mr16, l2_16, adv16) = out
    return (f"bf16 effect on PGD results ({len(y)} images): MR {mr32:.3f} (float32) vs {mr16:.3f} (bf16), mean L2 "
            f"{l2_32:.3f} vs {l2_16:.3f}, elements differing {float((adv32 != adv16).float().mean()):.3f}")


def main() -> None:
    args = parse_args()
    import torchattacks

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x, source = images(args.batch)
    x = x.to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device {device} ({where}), "
          f"batch {args.batch} {source}, {args.repeats} repeats, torch {torch.__version__}, torchattacks "
          f"{torchattacks.__version__}\n")
    print("ours = our attack on the model run_attack prepares (BN folded into the convs, channels-last), as the "
          "pipeline runs it;\ntheirs = torchattacks on the model as given. Sub-rows split the gain: our attack on "
          "the model as given, and\ntorchattacks on our prepared model.\n")
    print(f"{'model':<40} {'attack':<34} {'ours':>11} {'theirs':>13} {'ratio':>6}  forwards ours/theirs")
    for model_name, model in models(args.wide_width).items():
        model = model.to(device).eval()
        for p in model.parameters():
            p.requires_grad_(True)  # as a trained model comes: gradients on (torchattacks' CW then fills .grad)
        began = time.perf_counter()
        prepared, folded = prepare_model(model, channels_last=True)
        prepare_ms = 1e3 * (time.perf_counter() - began)
        compiled = torch.compile(prepared) if args.compile else None
        counter = ForwardCounter(model, prepared)
        with torch.no_grad():
            y = model(x).argmax(1)
        target = (y + 1) % 10
        rows = []
        for config in ("deepsec_cifar10", "madry_cifar10_train"):
            params = get_config("pgd", config)
            torchattacks_pgd = dict(eps=params["eps"], alpha=params["step_size"], steps=params["steps"],
                                    random_start=True)
            theirs, theirs_prepared = (torchattacks.PGD(m, **torchattacks_pgd) for m in (model, prepared))
            cases = {"ours": lambda params=params: pgd(prepared, x_cl, y, **params, generator=generator),
                     "theirs": lambda theirs=theirs: theirs(x, y),
                     "ours, model as given": lambda params=params: pgd(model, x, y, **params, generator=generator),
                     "theirs, prepared model": lambda theirs=theirs_prepared: theirs(x_cl, y)}
            if compiled is not None:
                cases["ours, compiled prepared model"] = lambda params=params: pgd(compiled, x_cl, y, **params,
                                                                                   generator=generator)
            if device.type == "cuda":
                cases["ours, bf16 autocast"] = lambda params=params: run_attack(
                    "pgd", model, x, y, params=params, batch_size=args.batch, progress=False, autocast_bf16=True)
            rows.append((f"PGD {config} ({params['steps']} steps)", compare(cases, args.batch, args.repeats, device,
                                                                        counter)))
        cw_params = dict(binary_search_steps=1, max_iterations=args.cw_iterations, initial_const=1.0, lr=0.02)
        theirs_cw = torchattacks.CW(model, c=1.0, kappa=0, steps=args.cw_iterations, lr=0.02)
        theirs_cw.set_mode_targeted_by_label(quiet=True)
        cases = {"ours": lambda: cw2(prepared, x_cl, target, **cw_params), "theirs": lambda: theirs_cw(x, target),
                 "ours, model as given": lambda: cw2(model, x, target, **cw_params)}
        rows.append((f"CW2 ≤{args.cw_iterations} it. (img·it/s)", compare(cases, args.batch, args.repeats, device,
                                                                          counter, per_forward=True)))
        effect = bf16_effect(model, x, y, get_config("pgd", "deepsec_cifar10"), args.batch) \
            if device.type == "cuda" else None
        model.zero_grad(set_to_none=True)
        counter.remove()
        print(f"{model_name:<40} (prepared once in {prepare_ms:.0f} ms; BN folded: {folded})")
        for attack, result in rows:
            (ours, f_ours), (theirs, f_theirs) = result.pop("ours"), result.pop("theirs")
            print(f"{'':<40} {attack:<34} {ours:>11.1f} {theirs:>13.1f} {ours / theirs:>5.2f}×  {f_ours}/{f_theirs}")
            for label, (value, _) in result.items():
                # Sub-rows: our variants against torchattacks as given; torchattacks' variant against ours.
                own = label.startswith("ours")
                ratio = value / theirs if own else ours / value
                print(f"{'':<40} {'  ' + label:<34} {(f'{value:.1f}' if own else ''):>11} "
                      f"{('' if own else f'{value:.1f}'):>13} {ratio:>5.2f}×")
        if effect:
            print(f"{'':<40} {effect}")


if __name__ == "__main__":
    main()
