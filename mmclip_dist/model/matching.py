"""Feature matching heads (paper Sec. 3.3, Eq. 4-5): learnable logit scales and the RoI matcher.

Both are ``nn.Module``s whose parameters are only ever used through their own ``forward``: DeepSpeed
ZeRO-3 gathers a partitioned parameter in the owning module's forward hooks, so the loss must call
``model.logit_scales(...)`` / ``model.roi_matcher(...)`` and never read ``.weight`` from outside.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmclip_dist.model.visual import mlp
from mmclip_dist.precision import upcast

# Index of each scale in LogitScales' output, named after the paper's alpha_0..alpha_3 (Eq. 4-5).
GLOBAL_CC, GLOBAL_MLO, ROI_CC, ROI_MLO = 0, 1, 2, 3
SCALE_NAMES = ("logit_scale_cc", "logit_scale_mlo", "roi_scale_cc", "roi_scale_mlo")


class LogitScales(nn.Module):
    """alpha_0..alpha_3 as learnable log-scales; ``forward(max_scale)`` returns ``exp`` clamped at ``max_scale``.

    The clamp is applied in the forward (not by editing the parameter after the optimizer step, as the
    CLIP reference does) so it needs no hook in the train loop and works on partitioned parameters.
    """

    def __init__(self, init_temperature: float = 0.07, count: int = 4) -> None:
        super().__init__()
        if init_temperature <= 0:
            raise ValueError(f"model.init_temperature must be > 0, got {init_temperature}")
        self.log_scale = nn.Parameter(torch.full((count,), math.log(1.0 / init_temperature)))

    def forward(self, max_scale: float = 100.0) -> torch.Tensor:
        # fp32 even in a bf16 model: exp of a bf16 log-scale near log(1/0.07) is off by ~0.5% (8-bit mantissa).
        return upcast(self.log_scale).clamp(max=math.log(max_scale)).exp()


class RoIMatcher(nn.Module):
    """Score every (image, text) pair from RoI features and token features (Eq. 5, without alpha).

    For image i and text j, each valid RoI of i is a query attending over the non-padding tokens of j
    (multi-head attention, ``T``); the attended vector plus the query (residual) goes through a
    LayerNorm and the MLP ``P`` to one scalar per RoI; the pair's score is the mean over i's valid
    RoIs (mean rather than max so every lesion of a view contributes gradient). An image with no valid
    RoI gets score 0; the loss masks such rows and columns out.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"model.roi_match_dim={dim} must be divisible by model.roi_match_heads={heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.score_head = mlp(dim, dim, 1, dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # [N, S, D] -> [N, heads, S, head_dim]
        n, s, _ = x.shape
        return x.view(n, s, self.heads, self.head_dim).transpose(1, 2)

    def _score_chunk(
        self,
        roi: torch.Tensor,
        roi_weight: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_pad: torch.Tensor,
    ) -> torch.Tensor:
        """Scores of all images against one chunk of texts: ``[Ni, Nc]``."""
        # [Ni, Nc, heads, R, L]: every query RoI of every image against every token of every text.
        logits = torch.einsum("ihrd,jhld->ijhrl", q, k)
        logits = logits.masked_fill(key_pad[None, :, None, None, :], torch.finfo(logits.dtype).min)
        attn = logits.softmax(dim=-1)
        ni, nc, _, r, _ = attn.shape
        ctx = torch.einsum("ijhrl,jhld->ijrhd", attn, v).reshape(ni, nc, r, -1)
        h = self.norm(roi[:, None] + self.out_proj(ctx))
        per_roi = self.score_head(h).squeeze(-1)  # [Ni, Nc, R]
        return (per_roi * roi_weight[:, None, :]).sum(-1)

    def forward(
        self,
        roi_feats: torch.Tensor,
        roi_valid: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        chunk_size: int = 64,
        use_checkpoint: bool = True,
    ) -> torch.Tensor:
        """``roi_feats [Ni, R, D]``, ``roi_valid [Ni, R]``, ``text_tokens [Nt, L, D]``, ``text_mask [Nt, L]``
        -> scores ``[Ni, Nt]``.

        Texts are processed ``chunk_size`` at a time, all images batched, so the attention tensor is at
        most ``Ni x chunk x heads x R x L``; with ``use_checkpoint`` each chunk is recomputed in backward
        instead of keeping its attention maps, so backward memory is bounded by one chunk too (the RNG
        state is restored for the recompute, so dropout stays exact).
        """
        if chunk_size <= 0:
            raise ValueError(f"loss.roi_chunk_size must be > 0, got {chunk_size}")
        valid = roi_valid.to(roi_feats.dtype)
        roi_weight = valid / valid.sum(-1, keepdim=True).clamp_min(1.0)
        q = self._split(self.q_proj(roi_feats)) * self.head_dim**-0.5
        k = self._split(self.k_proj(text_tokens))
        v = self._split(self.v_proj(text_tokens))
        key_pad = ~text_mask.bool()
        recompute = use_checkpoint and torch.is_grad_enabled() and text_tokens.shape[0] > chunk_size
        out = []
        for start in range(0, text_tokens.shape[0], chunk_size):
            sl = slice(start, start + chunk_size)
            args = (roi_feats, roi_weight, q, k[sl], v[sl], key_pad[sl])
            if recompute:
                out.append(checkpoint(self._score_chunk, *args, use_reentrant=False))
            else:
                out.append(self._score_chunk(*args))
        return torch.cat(out, dim=1)
