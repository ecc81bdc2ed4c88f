"""Cross-rank gathering for the contrastive losses (open_clip's "local loss + gather with grad").

Each rank keeps its own rows and sees every rank's columns. Gathering with autograd means the
gradient that rank r's loss sends to rank s's features is returned to rank s (the backward of
``all_gather`` is a sum-reduce-scatter), so rank s's parameter gradient is
``sum_r dL_r/dtheta_via_s``. DeepSpeed/DDP then *average* gradients over ranks, hence the losses
normalise each rank's row sum by ``world / N_global``: ``mean_r grad(L_r) = grad(L_single)``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def world_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when ``torch.distributed`` is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, rank order; autograd flows back to each rank.

    Every rank must pass the same shape (the loader yields equal micro-batches). Tensors that do not
    need a gradient (masks, eval) use the plain collective; bool tensors travel as uint8 because not
    every backend reduces bools.
    """
    _, world = world_info()
    if world == 1:
        return tensor
    if tensor.dtype == torch.bool:
        return gather(tensor.to(torch.uint8)).bool()
    if tensor.requires_grad and torch.is_grad_enabled():
        return torch.cat(dist_fn.all_gather(tensor.contiguous()), dim=0)
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def mean_across_ranks(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """Detached loss terms averaged over ranks: with the normalisation above this is exactly the
    single-process value on the global batch (what to log)."""
    names = sorted(terms)
    values = torch.stack([terms[k].detach().double().reshape(()) for k in names])
    _, world = world_info()
    if world > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= world
    return {k: float(v) for k, v in zip(names, values.cpu())}
