"""Pieces shared by every architecture: DeepSec's logit max-shift."""
from __future__ import annotations

from torch import Tensor


def shift_logits(logits: Tensor) -> Tensor:
    """Return ``logits - max(logits, dim=1)``, as DeepSec's released models do (added to DeepSec in May 2019).

    Softmax and argmax are unchanged, but float32 gradients of cross-entropy differ when the margin is large
    (> ~16), which changes attack strength (SPEC §1): an explicit model option, recorded with every result.
    """
    return logits - logits.amax(dim=1, keepdim=True)
