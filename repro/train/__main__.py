"""Command line: train a raw model or a defence with a profile's configuration; flags override it.

    python -m repro.train --dataset cifar10 --defence pat --profile quick
    torchrun --nproc_per_node=2 -m repro.train --dataset mnist --defence nat --profile paper

The configuration comes from :func:`repro.study.models.train_config`, the same function the notebooks use, so the
command line trains (and caches) exactly the model the book reports. An entry point, not library code: it may import
the study.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from ..checks import check_device
from ..data import DATASETS
from ..models import DEEPSEC_CHECKPOINTS, MODELS
from .cache import initial_weights, trained_dir
from .config import RECIPES, TrainConfig
from .defences import DEFENCES
from .loop import train
from .runtime import distributed


def _count(minimum: int):
    """An argparse type: an integer of at least ``minimum``, refused naming the value otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {minimum}")
        return value
    return parse


def _nonnegative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number >= 0")
    return value


# Flags that only mean something for a defence: without --defence they would be ignored, so they are refused.
DEFENCE_ONLY = ("variant", "init", "recipe", "eps_ramp")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m repro.train",
        description="Train a raw model or a defence with DeepSec's recipes and a profile's budget. Under torchrun "
                    "(--nproc_per_node=N) it trains with DistributedDataParallel (NCCL on GPUs, gloo on CPUs).")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--model", default=None, help=f"one of {', '.join(MODELS)} (default: DeepSec's)")
    parser.add_argument("--width", type=_count(1), default=None, help="resnet20_wide's width (default: the profile's)")
    parser.add_argument("--defence", default="none", choices=["none", *DEFENCES])
    parser.add_argument("--variant", default=None, help="a named setting of the defence (default: DeepSec's), with "
                        "the defence parameters the profile sets (quick: PAT's eps_ramp 0.4) on top")
    parser.add_argument("--eps-ramp", type=_nonnegative, default=None,
                        help="PAT: epochs over which ε and the step grow linearly from 0 (default: the profile's; "
                             "DeepSec: 0)")
    parser.add_argument("--profile", default="paper",
                        help="smoke, quick or paper (budgets; flags below override; default: paper, the papers' "
                             "settings: pass --profile quick for the model the quick book reports)")
    parser.add_argument("--epochs", type=_count(1), default=None)
    parser.add_argument("--batch-size", type=_count(1), default=None, help="global batch size")
    parser.add_argument("--subset", type=_count(1), default=None, help="training images used (before the 90/10 split)")
    parser.add_argument("--history-subset", type=_count(0), default=None, help="validation images for the PGD history")
    parser.add_argument("--init", default=None, choices=["scratch", "raw"], help="default: the profile's")
    parser.add_argument("--recipe", default=None, help="a defence's training recipe, one of "
                        f"{', '.join(RECIPES)} (default: the profile's)")
    parser.add_argument("--seed", type=_count(0), default=100)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--disable-dropout", action="store_true")
    parser.add_argument("--jpeg-fill", action=argparse.BooleanOptionalAction, default=None,
                        help="CIFAR-10: also train on the lossy JPEG copies of the training images the exact copy "
                             "lacks (never validated on; a departure; default: a defence's follows the profile, quick: yes)")
    parser.add_argument("--out-dir", default=None, help="default: the cache folder of the configuration")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.defence == "none":
        given = [f"--{name.replace('_', '-')}" for name in DEFENCE_ONLY if getattr(args, name) is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            parser.error(f"{', '.join(given)} only {verb} to a defence; add --defence ({', '.join(DEFENCES)})")
    if args.seed >= 2 ** 63:
        parser.error(f"--seed {args.seed} does not fit a 64-bit generator seed (allowed: 0 .. 2**63 - 1)")
    if args.out_dir is not None:
        _check_out_dir(parser, args.out_dir)
    if args.device != "auto":
        try:
            check_device(args.device)
        except ValueError as err:
            parser.error(f"--device: {err}")
    return args


def _check_out_dir(parser: argparse.ArgumentParser, folder: str) -> None:
    """Refuse an ``--out-dir`` that is a file or cannot be created or written, before any data is loaded."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        parser.error(f"--out-dir {folder}: not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        parser.error(f"--out-dir {folder}: cannot write there ({err.strerror or err})")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` for parsed arguments: the profile's (:func:`repro.study.models.train_config`), then
    each given flag overrides."""
    from ..study.models import train_config
    from ..study.profiles import get_profile

    defence = None if args.defence == "none" else args.defence
    model = args.model or DEEPSEC_CHECKPOINTS[args.dataset]["model"]  # DeepSec's architecture for the dataset
    subset = {"train_subset": args.subset} if defence is None else {"defence_subset": args.subset}
    epochs = {"epochs": args.epochs} if defence is None else {"defence_epochs": args.epochs}
    fill = {} if defence is None or args.jpeg_fill is None else {"defence_jpeg_fill": args.jpeg_fill}
    if defence is not None and args.jpeg_fill is None and args.subset is not None \
            and get_profile(args.profile).defence.for_dataset(args.dataset).jpeg_fill:
        raise ValueError(f"--subset {args.subset} counts exact training images, and the profile {args.profile} also "
                         "trains on the JPEG copies: add --no-jpeg-fill")
    base = train_config(dataset=args.dataset, model=model, profile=args.profile, width=args.width, defence=defence,
                        defence_params=args.variant, seed=args.seed, device=args.device, defence_init=args.init,
                        defence_recipe=args.recipe, **fill,
                        **{k: v for k, v in {**subset, **epochs}.items() if v is not None})
    overrides = {"bf16": args.bf16, "channels_last": args.channels_last, "disable_dropout": args.disable_dropout}
    if args.jpeg_fill is not None:
        overrides["jpeg_fill"] = args.jpeg_fill
    if args.eps_ramp is not None:
        if not hasattr(base.defence_params, "eps_ramp"):
            raise ValueError(f"--eps-ramp applies to PAT only, not to {args.defence}")
        overrides["defence_params"] = dataclasses.replace(base.defence_params, eps_ramp=args.eps_ramp)
    for name in ("batch_size", "history_subset"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    return dataclasses.replace(base, **overrides)


def main(argv: list[str] | None = None) -> int:
    """Train; rank 0 prints one JSON line (key, model path, best epoch and accuracy). Returns the exit status."""
    args = parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and args.device != "cpu"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        result = train(config, out_dir=args.out_dir or trained_dir(config), initial_weights=initial_weights(config),
                       resume=not args.no_resume, progress=not args.no_progress)
        if distributed()[0] == 0:
            print(json.dumps({"key": result.key, "model": str(result.checkpoint), "best_epoch": result.best_epoch,
                              "best_val_acc": result.best_val_acc, "last": result.history[-1]}))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
