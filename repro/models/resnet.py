"""DeepSec's CIFAR-10 ResNet-20 (272,586 parameters) and the follow-up study's ×10 wide version."""
from __future__ import annotations

import math

from torch import Tensor, nn

from ._common import shift_logits


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus a shortcut (identity, or 1×1 conv with bias → BN), then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_planes != planes:
            # DeepSec's projection shortcut keeps the conv's bias (SPEC §1); key names layerK.0.downsample.{0,1}.
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=True),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """DeepSec's ResNet-20 for CIFAR-10 (``RawModels/ResNet.py``), with an optional width multiplier.

    Stem conv 3→16 (3×3, with bias) → BN → ReLU; three stages of ``blocks`` basic blocks with widths
    16·w, 32·w, 64·w and strides 1, 2, 2; global average pooling; fc 64·w → 10. ``width=10`` is the follow-up
    study's "Wide ResNet" (stage widths and fc input ×10). Convs are initialised N(0, √(2/(k·k·out))).

    Input: (N, 3, 32, 32) float32 in [0, 1]. Output: logits (N, 10), max-shifted when ``logit_shift``.
    """

    def __init__(self, *, blocks: int = 3, width: int = 1, num_classes: int = 10, logit_shift: bool = True):
        super().__init__()
        self.logit_shift = logit_shift
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        widths = [16 * width, 32 * width, 64 * width]
        in_planes = 16
        for k, (planes, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            layer = []
            for i in range(blocks):
                layer.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{k}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = self.fc(self.avgpool(out).flatten(1))
        return shift_logits(out) if self.logit_shift else out


def resnet20(*, logit_shift: bool = True) -> ResNet:
    """DeepSec's CIFAR-10 ResNet-20 (272,586 parameters)."""
    return ResNet(blocks=3, width=1, logit_shift=logit_shift)


def resnet20_wide(*, width: int = 10, logit_shift: bool = True) -> ResNet:
    """The follow-up study's "Wide ResNet": DeepSec's ResNet-20 with stage widths and fc input × ``width`` (the
    follow-up: 10; CPU profiles use a narrower one). Not Madry's WRN-34-10 (:func:`repro.models.madry_wrn`)."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    return ResNet(blocks=3, width=width, logit_shift=logit_shift)
