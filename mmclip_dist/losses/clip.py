"""CLIP loss (paper Eq. 6) for one view, rows local to this rank, columns from every rank.

Eq. 6 as printed sums the image->text and text->image cross-entropies (``-1/B sum_i [log p_i2t + log
p_t2i]``), so :func:`clip_rows` returns that sum per row; the caller divides by the global batch.
(CLIP's reference code averages the two directions; the factor 2 is absorbed by the loss weights.)

Two exact formulations of the row cross-entropy:

* naive: materialise the ``[n, N]`` logits and call ``F.cross_entropy`` (default training path);
* streamed: :class:`ChunkedRowCrossEntropy` visits the keys ``chunk`` rows at a time -- forward keeps
  only the per-row logsumexp, backward recomputes each ``[chunk, N]`` block of logits -- so memory is
  ``O(chunk x N)`` instead of ``O(n x N)``; used for very large global batches (bench/loss_memory.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function


class ChunkedRowCrossEntropy(Function):
    """Per-row ``CE(scale * q_i . K^T, target_i)`` without materialising the ``[n, N]`` logits."""

    @staticmethod
    def forward(ctx, queries: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor, targets: torch.Tensor, chunk: int):
        lse = torch.empty(queries.shape[0], dtype=queries.dtype, device=queries.device)
        for start in range(0, queries.shape[0], chunk):
            block = (queries[start : start + chunk] @ keys.T) * scale
            lse[start : start + chunk] = torch.logsumexp(block, dim=1)
        positive = (queries * keys[targets]).sum(-1) * scale
        ctx.save_for_backward(queries, keys, scale, targets, lse)
        ctx.chunk = chunk
        return lse - positive

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        queries, keys, scale, targets, lse = ctx.saved_tensors
        chunk = ctx.chunk
        grad_q = torch.zeros_like(queries)
        grad_k = torch.zeros_like(keys)
        grad_scale = torch.zeros((), dtype=queries.dtype, device=queries.device)
        rows = torch.arange(queries.shape[0], device=queries.device)
        for start in range(0, queries.shape[0], chunk):
            sl = slice(start, start + chunk)
            sim = queries[sl] @ keys.T  # [c, N], unscaled
            # d CE / d logits = softmax - onehot, weighted by the incoming per-row gradient.
            g = torch.exp(sim * scale - lse[sl, None])
            g[rows[sl] - start, targets[sl]] -= 1.0
            g *= grad_out[sl, None]
            grad_scale += (g * sim).sum()
            g *= scale
            grad_q[sl] = g @ keys
            grad_k += g.T @ queries[sl]
        return grad_q, grad_k, grad_scale.reshape(scale.shape), None, None


def row_cross_entropy(
    queries: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor, targets: torch.Tensor, chunk_size: int = 0
) -> torch.Tensor:
    """``[n]`` cross-entropies of ``scale * queries @ keys.T`` against column ``targets``.

    ``chunk_size`` 0: materialised logits; > 0: :class:`ChunkedRowCrossEntropy` with that many rows per block.
    """
    if chunk_size <= 0:
        return F.cross_entropy(scale * queries @ keys.T, targets, reduction="none")
    return ChunkedRowCrossEntropy.apply(queries, keys, scale, targets, chunk_size)


def clip_rows(
    image_local: torch.Tensor,
    text_local: torch.Tensor,
    image_all: torch.Tensor,
    text_all: torch.Tensor,
    scale: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 0,
) -> torch.Tensor:
    """Eq. 6 summand per local row: ``CE_i2t + CE_t2i`` ``[n]``; ``targets`` are the rows' global indices."""
    i2t = row_cross_entropy(image_local, text_all, scale, targets, chunk_size)
    t2i = row_cross_entropy(text_local, image_all, scale, targets, chunk_size)
    return i2t + t2i


def clip_loss_naive(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Single-process Eq. 6 on the full ``[N, N]`` matrix (reference for tests and the benchmark)."""
    logits = scale * image @ text.T
    targets = torch.arange(image.shape[0], device=image.device)
    return F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)
