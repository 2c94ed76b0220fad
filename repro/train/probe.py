"""Train one small probe of a published model's configuration, or give today's key of that configuration.

Run as a script by :mod:`repro.train.carry` with the ``repro`` tree on ``PYTHONPATH``: ``train`` once with the
training code that trained the model and once with the new code, so it uses only names both trees have
(:class:`TrainConfig`, :func:`train`, :func:`config_key`, :func:`effective_config`, :data:`DEFENCES` and
:class:`~repro.train.defences.PGDParams`); ``key`` with the new code only.

    python repro/train/probe.py train SPEC.json OUT.pt
    python repro/train/probe.py key SPEC.json

``SPEC.json`` holds a published model's effective configuration (``config``; for a model trained from another,
``init_config`` holds that model's spec in turn). ``train`` trains it on the first ``subset`` training images with
``history_subset`` validation PGD images, starting from the weights in ``init_file`` (``null``: from scratch), and
saves ``{"state_dict", "history"}`` (the history without its wall-clock fields) to ``OUT.pt``. ``key`` prints
``{"key", "config"}``: the key and effective configuration the tree gives the published configuration itself.
"""
from __future__ import annotations

import json
import sys

# Fields of a training history that measure time, not what was computed.
TIMING = ("epoch_time_s", "train_time_s", "craft_time_s")


def probe_config(spec: dict, *, probe: bool = True):
    """The :class:`repro.train.TrainConfig` ``spec`` describes, on the CPU: the probe (its subset, validation images
    and initial-weights file) or, with ``probe=False``, the published configuration itself (its initial weights named
    as the configuration names them)."""
    from repro.train import DEFENCES, TrainConfig
    from repro.train.defences import PGDParams

    c = spec["config"]
    if probe:
        init, subset, history = spec["init_file"] or "scratch", spec["subset"], spec["history_subset"]
    else:
        init = ("scratch" if c["init"] == "scratch" else "deepsec" if "deepsec_sha256" in c["init"]
                else probe_config(spec["init_config"], probe=False))
        subset, history = c["train_images"], c["history_subset"]  # the same effective configuration as "all"
    # A JPEG-filled run is the whole training set (TrainConfig refuses a subset with it); a probe trains on the first
    # official images, which the exact copy holds, so it runs without the fill. Passed only when used, so that a probe
    # under an older tree, whose TrainConfig lacks the field, still runs.
    fill = "jpeg_fill" in c and not probe
    if fill:
        subset = None
    defence_params = DEFENCES[c["defence"]].params_type(**c["defence_params"]) if c["defence"] else None
    return TrainConfig(dataset=c["dataset"], model=c["model"], model_kwargs=dict(c["model_kwargs"]),
                       defence=c["defence"], defence_params=defence_params, recipe=c["recipe"]["name"],
                       epochs=c["epochs"], batch_size=c["batch_size"], subset=subset, seed=c["seed"], init=init,
                       history_subset=history, history_pgd=PGDParams(**c["history_pgd"]),
                       disable_dropout=c["disable_dropout"], device="cpu", bf16=c["bf16"],
                       channels_last=c["channels_last"], **({"jpeg_fill": True} if fill else {}))


def main(argv: list[str]) -> int:
    import tempfile

    import torch

    from repro.train import train

    command, spec_path, *out = argv
    spec = json.loads(open(spec_path, encoding="utf-8").read())
    if command == "key":
        from repro.train import config_key, effective_config

        config = probe_config(spec, probe=False)
        print(json.dumps({"key": config_key(config), "config": effective_config(config)}))
        return 0
    config = probe_config(spec)
    weights = torch.load(spec["init_file"], map_location="cpu") if spec["init_file"] else None
    with tempfile.TemporaryDirectory() as tmp:
        result = train(config, out_dir=tmp, initial_weights=weights, resume=False, progress=False)
    history = [{k: v for k, v in h.items() if k not in TIMING} for h in result.history]
    torch.save({"state_dict": result.model.state_dict(), "history": history}, out[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
