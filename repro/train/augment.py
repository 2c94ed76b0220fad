"""DeepSec's CIFAR-10 augmentation, drawn for a whole epoch at once and applied on the device without host syncs.

Reference: DeepSec ``RawModels/Utils/dataset.py`` (torchvision ``RandomAffine(translate=(0.1, 0.1))`` and
``RandomHorizontalFlip``): integer shifts of up to 10 % of the image size with zero fill, then a mirror with
probability 0.5.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def draw_augmentation(n: int, height: int, width: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image integer shifts and flips as torchvision draws them: shift = round(U(−0.1·size, 0.1·size)), flip with
    probability 0.5. Returns ``(dx, dy, flip)``, each of length ``n``."""
    dx = torch.round((torch.rand(n, generator=generator) * 2 - 1) * 0.1 * width).long()
    dy = torch.round((torch.rand(n, generator=generator) * 2 - 1) * 0.1 * height).long()
    flip = torch.rand(n, generator=generator) < 0.5
    return dx, dy, flip


def translate_flip(x: Tensor, dx: Tensor, dy: Tensor, flip: Tensor) -> Tensor:
    """Shift each image by (dx, dy) pixels with zero fill, then mirror it horizontally where ``flip``.

    Shifts must be at most ⌈0.1·size⌉ pixels (what :func:`draw_augmentation` draws); no host synchronisation.
    """
    n, _, h, w = x.shape
    pad = math.ceil(0.1 * max(h, w))
    padded = F.pad(x, (pad, pad, pad, pad))
    dx, dy, flip = dx.to(x.device), dy.to(x.device), flip.to(x.device)
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) - dx[:, None] + pad
    rows = torch.arange(h, device=x.device).expand(n, h) - dy[:, None] + pad
    out = padded[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()
