"""Madry et al.'s Wide ResNet (Zagoruyko & Komodakis pre-activation WRN), with RobustBench/TRADES key names."""
from __future__ import annotations

import math

from torch import Tensor, nn

from ._common import shift_logits


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN → ReLU → conv3×3 → BN → ReLU → conv3×3, plus identity or a 1×1 ``convShortcut``.

    When the shape changes, the shortcut takes the pre-activated input, as in the reference implementation.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A stage of ``n`` blocks held in ``.layer`` (so keys read ``block1.layer.0.conv1.weight``)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1) for i in range(n)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis, 2016) as used by Madry et al. (2018): WRN-34-10 by default.

    conv1 3→16; stages of (depth − 4)/6 blocks with widths 16k, 32k, 64k and strides 1, 2, 2; BN → ReLU →
    global average pool → fc. Input: (N, 3, 32, 32) float32 in [0, 1]. Output: logits (N, 10), max-shifted when
    ``logit_shift``.
    """

    def __init__(self, *, depth: int = 34, widen_factor: int = 10, num_classes: int = 10, logit_shift: bool = True):
        super().__init__()
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be an integer 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth!r}")
        if not isinstance(widen_factor, int) or widen_factor < 1:
            raise ValueError(f"widen_factor must be a positive integer, got {widen_factor!r}")
        self.logit_shift = logit_shift
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = self.fc(out.mean(dim=(2, 3)))
        return shift_logits(out) if self.logit_shift else out


def madry_wrn(*, depth: int = 34, widen_factor: int = 10, logit_shift: bool = True) -> WideResNet:
    """Madry et al.'s pre-activation WRN-34-10 by default (46.16 M parameters); smaller ``depth``/``widen_factor``
    for tests. No column of the study uses it; it is here so public robust checkpoints (RobustBench) load."""
    return WideResNet(depth=depth, widen_factor=widen_factor, logit_shift=logit_shift)
