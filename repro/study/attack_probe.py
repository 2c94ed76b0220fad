"""Run every attack configuration of a probe spec on small random models, with the ``repro`` package on
``PYTHONPATH``.

Run as a script by :func:`repro.study.attack_cache.carry`, once with the old tree's code and once with the new one,
so it uses only names both trees have (:func:`repro.attacks.run_attack` and :func:`repro.models.build`):

    python repro/study/attack_probe.py SPEC.json OUT.pt

``SPEC.json`` holds ``{"cases": [{"attack", "params", "labels"}...], "images": n}``. Each case runs through
:func:`run_attack` (the cached path: batching, BatchNorm folding, channels-last) on the MNIST ConvNet and on
ResNet-20, both with weights drawn from a fixed seed and in ``eval()`` mode, on ``n`` fixed random images;
``OUT.pt`` holds the adversarial images per case and model.
"""
from __future__ import annotations

import json
import sys

SHAPES = {"mnist_convnet": (1, 28, 28), "resnet20": (3, 32, 32)}


def main(argv: list[str]) -> int:
    import torch

    from repro.attacks import run_attack
    from repro.models import build

    spec_path, out_path = argv
    spec = json.loads(open(spec_path, encoding="utf-8").read())
    torch.set_num_threads(1)
    outputs = {}
    for arch, shape in SHAPES.items():
        torch.manual_seed(0)
        model = build(arch).eval()
        x = torch.rand(spec["images"], *shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            logits = model(x)
        labels = {"y": logits.argmax(1), "target": (logits.argmax(1) + 1) % logits.shape[1],
                  "least_likely": logits.argmin(1)}
        for case in spec["cases"]:
            run = run_attack(case["attack"], model, x, labels[case["labels"]], params=case["params"],
                             batch_size=max(1, spec["images"] // 2), seed=0, progress=False)
            outputs[f"{case['name']}/{arch}"] = run.x_adv
    torch.save(outputs, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
