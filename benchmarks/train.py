"""Throughput of PAT training (DeepSec's CIFAR-10 setting: PGD ε 8/255, step 2/255, 7 steps, mixed loss).

Runs :func:`repro.train.train` for one short epoch on ResNet-20 and on the follow-up's wide ResNet-20 and reports
images per second of the training loop (crafting + update; validation excluded) and the fraction of that time spent
crafting adversarial examples (measured inside the loop, with CUDA events on GPUs so the loop never waits).

    python benchmarks/train.py                      # CPU default: 3 batches of 32, widths 1 and 2 (< 3 min)
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


def subset_for(train_images: int, val_fraction: float = 0.1) -> int:
    """Smallest number of images whose 90 % training share holds at least ``train_images``."""
    n = train_images
    while n - int(val_fraction * n) < train_images:
        n += 1
    return n


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
            rows.append({
                "model": f"resnet20 width {width}",
                "parameters": sum(p.numel() for p in result.model.parameters()),
                "images": epoch["images"],
                "images_per_s": epoch["images"] / epoch["train_time_s"],
                "craft_fraction": epoch["craft_time_s"] / epoch["train_time_s"],
                "loop_s": epoch["train_time_s"],
                "wall_s": time.perf_counter() - t0,
            })
    device = str(next(result.model.parameters()).device)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    print(json.dumps({"benchmark": "PAT training throughput", "variant": args.variant, "device": device,
                      "device_name": name, "threads": torch.get_num_threads(), "bf16": args.bf16,
                      "channels_last": args.channels_last, "batch_size": args.batch_size, "rows": rows}, indent=1))
    for row in rows:
        print(f"{row['model']:>20}: {row['images_per_s']:8.1f} images/s, {100 * row['craft_fraction']:5.1f} % "
              f"crafting ({row['images']} images in {row['loop_s']:.1f} s)")


if __name__ == "__main__":
    main()
