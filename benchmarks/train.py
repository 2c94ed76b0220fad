"""Throughput of PAT training (DeepSec's CIFAR-10 setting: PGD ε 8/255, step 2/255, 7 steps, mixed loss).

Runs :func:`repro.train.train` for one short epoch on ResNet-20 and on the follow-up's wide ResNet-20 and reports
images per second of the training loop (crafting + update; validation excluded) and the fraction of that time spent
crafting adversarial examples (measured inside the loop, with CUDA events on GPUs so the loop never waits). In the
same run, a minimal plain PyTorch loop does the same work on the same images (PGD written out on the unprepared model,
then the mixed loss and an SGD step, no augmentation, no checks): the ratio says what our loop's machinery (crafting on
the BatchNorm-folded copy, per-batch schedule, clocks) costs or saves.

    python benchmarks/train.py                      # CPU default: 3 batches of 32, widths 1 and 2 (< 3 min)
    python benchmarks/train.py --widths 1 2 4 --batch-size 128 --batches 2   # the quick profile's batch, up to ×4
    python benchmarks/train.py --widths 1 10 --batches 20 --batch-size 512 --bf16 --channels-last   # a GPU
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from repro.train import TrainConfig, train


def subset_for(train_images: int) -> int:
    """A number of images whose training share (DeepSec's hold-out removes about 10 %) holds ``train_images``."""
    return int(train_images / 0.85) + 1


def plain_pat_epoch(config: TrainConfig, images: int) -> float:
    """Seconds a minimal PyTorch PAT loop takes for ``images`` training images of ``config``'s split, same model,
    batch, PGD and mixed loss; the first batch is a warm-up and not timed."""
    import torch.nn.functional as F

    from repro.train.runtime import build_model, device_for, split_data

    device, params = device_for(config), config.defence_params
    data = split_data(config, device)
    net = build_model(config).to(device)
    optimiser = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    b, timed = config.effective_batch_size, 0.0
    for i, start in enumerate(range(0, images + b, b)):
        x, y = data.x_train[start % images:start % images + b], data.y_train[start % images:start % images + b]
        t0 = time.perf_counter()
        net.eval()
        x_adv = (x + torch.empty_like(x).uniform_(-params.eps, params.eps)).detach()
        for _ in range(params.steps):
            x_adv.requires_grad_(True)
            grad, = torch.autograd.grad(F.cross_entropy(net(x_adv), y, reduction="sum"), x_adv)
            x_adv = torch.min(torch.max(x_adv.detach() + params.step_size * grad.sign(), x - params.eps),
                              x + params.eps).clamp(0, 1)
        net.train()
        loss = 0.5 * (F.cross_entropy(net(x), y) + F.cross_entropy(net(x_adv), y))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timed += (time.perf_counter() - t0) if i > 0 else 0.0
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 2], help="ResNet-20 width multipliers")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="DeepSec's CIFAR-10 batch is 32")
    parser.add_argument("--variant", default="deepsec_cifar10", help="a repro.train.PAT_CONFIGS name")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width in args.widths:
            config = TrainConfig(
                dataset="cifar10", model="resnet20" if width == 1 else "resnet20_wide",
                model_kwargs={} if width == 1 else {"width": width}, defence="pat",
                defence_params=args.variant, epochs=1, batch_size=args.batch_size,
                subset=subset_for(args.batches * args.batch_size), history_subset=0, device=args.device,
                bf16=args.bf16, channels_last=args.channels_last,
            )
            t0 = time.perf_counter()
            result = train(config, out_dir=Path(tmp) / f"w{width}", resume=False, progress=False)
            epoch = result.history[0]
            plain_s = plain_pat_epoch(config, epoch["images"])
            rows.append({
                "model": f"resnet20 width {width}",
                "parameters": sum(p.numel() for p in result.model.parameters()),
                "images": epoch["images"],
                "images_per_s": epoch["images"] / epoch["train_time_s"],
                "craft_fraction": epoch["craft_time_s"] / epoch["train_time_s"],
                "loop_s": epoch["train_time_s"],
                "plain_images_per_s": epoch["images"] / plain_s,
                "ratio_vs_plain": plain_s / epoch["train_time_s"],
                "wall_s": time.perf_counter() - t0,
            })
    device = str(next(result.model.parameters()).device)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    print(json.dumps({"benchmark": "PAT training throughput", "variant": args.variant, "device": device,
                      "device_name": name, "threads": torch.get_num_threads(), "bf16": args.bf16,
                      "channels_last": args.channels_last, "batch_size": args.batch_size, "rows": rows}, indent=1))
    for row in rows:
        print(f"{row['model']:>20}: {row['images_per_s']:8.1f} images/s, {100 * row['craft_fraction']:5.1f} % "
              f"crafting ({row['images']} images in {row['loop_s']:.1f} s); plain loop {row['plain_images_per_s']:.1f} "
              f"images/s: ours {row['ratio_vs_plain']:.2f}×")


if __name__ == "__main__":
    main()
