"""Mixed precision: the one rule for ops that must not run in bf16 (list and reasons in docs/model.md)."""

from __future__ import annotations

import torch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """At least fp32: a logsumexp over a large batch in bf16 is lossy; fp64 (exactness tests) stays fp64."""
    return x.float() if x.is_floating_point() and torch.finfo(x.dtype).bits < 32 else x
