"""DeepSec's MNIST ConvNet: the Carlini–Wagner architecture (312,202 parameters)."""
from __future__ import annotations

from torch import Tensor, nn

from ._common import shift_logits


class MNISTConvNet(nn.Module):
    """Four 3×3 conv layers and three fully connected ones, as in DeepSec's ``RawModels/MNISTConv.py``.

    conv 1→32, ReLU, conv 32→32, ReLU, maxpool 2, conv 32→64, ReLU, conv 64→64, ReLU, maxpool 2, flatten (1024),
    fc 1024→200, ReLU, dropout 0.5, fc 200→200, ReLU, fc 200→10. Attribute names follow DeepSec's state-dict keys
    (``conv32.0``, ``conv32.2``, ``conv64.0``, ``conv64.2``, ``fc1``, ``fc2``, ``fc3``).

    Input: (N, 1, 28, 28) float32 in [0, 1]. Output: logits (N, 10), max-shifted when ``logit_shift``.
    """

    def __init__(self, *, logit_shift: bool = True):
        super().__init__()
        self.logit_shift = logit_shift
        self.conv32 = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.conv64 = nn.Sequential(
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.fc1 = nn.Linear(4 * 4 * 64, 200)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(200, 200)
        self.fc3 = nn.Linear(200, 10)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv64(self.conv32(x)).flatten(1)
        out = self.dropout(self.relu(self.fc1(out)))
        out = self.fc3(self.relu(self.fc2(out)))
        return shift_logits(out) if self.logit_shift else out


def mnist_convnet(*, logit_shift: bool = True) -> MNISTConvNet:
    """DeepSec's MNIST ConvNet (312,202 parameters); see :class:`MNISTConvNet`."""
    return MNISTConvNet(logit_shift=logit_shift)
