"""Random-generator state of this process: CPU and every initialised CUDA device.

The feature cache replays each micro-batch under the RNG state of its first pass, and checkpoints
save it per rank, so dropout masks are identical across replay and resume. One capture rule for both:
*all* CUDA devices (a rank may have touched more than its own).
"""

from __future__ import annotations

import torch

RNGState = tuple[torch.Tensor, list[torch.Tensor] | None]


def get_rng_state() -> RNGState:
    """CPU and (if initialised) every CUDA device's generator state."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: RNGState) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
