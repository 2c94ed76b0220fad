"""``torch.compile`` with a clean fallback: a compiled model where compilation works, the model itself where not."""
from __future__ import annotations

import warnings

import torch
from torch import nn


class CompiledOrEager(nn.Module):
    """Runs ``torch.compile(model)``; if compiling or running the compiled graph raises (no compiler, an unsupported
    operation, a backend error), warns once and runs ``model`` eagerly from then on. The wrapped model's parameters
    are shared, so training the wrapper trains ``model``; outputs equal the eager model's up to the backend's
    floating-point reassociation.
    """

    def __init__(self, model: nn.Module, **compile_kwargs):
        super().__init__()
        self.model = model
        self._compiled = torch.compile(model, **compile_kwargs)
        self.failed: str | None = None

    def forward(self, *args, **kwargs):
        if self.failed is None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as err:  # any backend failure: the eager model computes the same function
                self.failed = f"{type(err).__name__}: {err}".splitlines()[0][:300]
                warnings.warn(f"torch.compile failed ({self.failed}); running the model eagerly", RuntimeWarning,
                              stacklevel=2)
        return self.model(*args, **kwargs)


def compile_or_eager(model: nn.Module, *, enabled: bool = True, **compile_kwargs) -> nn.Module:
    """``model`` wrapped in :class:`CompiledOrEager` when ``enabled`` (the pipeline enables it on CUDA under the
    paper profile, where kernel launches dominate small batches), else ``model`` itself."""
    return CompiledOrEager(model, **compile_kwargs) if enabled else model


__all__ = ["CompiledOrEager", "compile_or_eager"]
