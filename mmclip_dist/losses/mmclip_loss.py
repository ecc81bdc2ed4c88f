"""The MM-CLIP training objective (paper Eq. 10) over the global contrastive batch.

``MMCLIPLoss(cfg.loss)(out, model)`` returns ``loss = alpha * L_global + beta * L_roi + gamma * L_cross``
plus each term and the four learnable scales. With ``torch.distributed`` initialised (world > 1) the
embeddings, RoI features and token features are all-gathered with autograd and this rank computes
the rows it owns (see ``distributed.py`` for why the result averages to the exact single-process
gradient). The logit scales and the RoI matcher are used through ``model.logit_scales(...)`` and
``model.roi_matcher(...)`` so ZeRO-3 gathers their parameters.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mmclip_dist.config import LossConfig
from mmclip_dist.data.shard_format import VIEWS
from mmclip_dist.losses.clip import clip_rows
from mmclip_dist.losses.cross_view import cross_view_terms
from mmclip_dist.losses.distributed import gather, world_info
from mmclip_dist.losses.roi import roi_clip_rows
from mmclip_dist.model.matching import GLOBAL_CC, ROI_CC, SCALE_NAMES
from mmclip_dist.model.mmclip import MMCLIP, MMCLIPOutput
from mmclip_dist.precision import upcast

# RoI features, their validity, token features, token mask.
_RoIQuad = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def unwrap(model: Any) -> MMCLIP:
    """The MMCLIP module inside DeepSpeed / DDP wrappers (they expose it as ``.module``)."""
    while not hasattr(model, "roi_matcher") and hasattr(model, "module"):
        model = model.module
    if not hasattr(model, "roi_matcher") or not hasattr(model, "logit_scales"):
        raise TypeError(f"{type(model).__name__} has no roi_matcher/logit_scales; pass the MMCLIP model")
    return model


_REQUIRED = ("image_embed", "text_embed", "roi_feats", "roi_valid", "text_tokens", "text_mask")


def _each(fn: Callable[[torch.Tensor], torch.Tensor], quad: _RoIQuad) -> _RoIQuad:
    a, b, c, d = quad
    return fn(a), fn(b), fn(c), fn(d)


class MMCLIPLoss(nn.Module):
    """Eq. 7 (global CLIP), Eq. 8 (RoI CLIP), Eq. 9 (cross-view) and their Eq. 10 weighted sum."""

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, out: MMCLIPOutput, model: Any) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        net = unwrap(model)
        if (
            out.image_embed is None or out.text_embed is None or out.roi_feats is None or out.roi_valid is None
            or out.text_tokens is None or out.text_mask is None
        ):  # fmt: skip
            missing = [name for name in _REQUIRED if getattr(out, name) is None]
            raise ValueError(f"MMCLIPLoss needs out.{missing[0]}; use model(batch), not encode_image/encode_text")
        rank, world = world_info()
        scales = upcast(net.logit_scales(cfg.max_logit_scale))  # one forward call: alpha_0..alpha_3
        n = out.image_embed.shape[0]
        img, txt = upcast(out.image_embed), upcast(out.text_embed)
        img_all, txt_all = gather(img), gather(txt)
        n_global = img_all.shape[0]
        targets = torch.arange(n, device=img.device) + rank * n
        # Row sums are scaled by world / N_global: averaging rank gradients (DeepSpeed/DDP) then
        # reproduces the gradient of the mean over the global batch exactly.
        norm = world / n_global

        loss_global = img.new_zeros(())
        for v in range(len(VIEWS)):
            rows = clip_rows(
                img[:, v], txt[:, v], img_all[:, v], txt_all[:, v], scales[GLOBAL_CC + v], targets, cfg.clip_chunk_size
            )
            loss_global = loss_global + rows.sum() * norm / len(VIEWS)  # Eq. 7

        roi_l = (out.roi_feats, out.roi_valid, out.text_tokens, out.text_mask)
        roi_a = _each(gather, roi_l)

        def score(roi: torch.Tensor, valid: torch.Tensor, tok: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return net.roi_matcher(
                roi, valid, tok, mask, chunk_size=cfg.roi_chunk_size, use_checkpoint=cfg.roi_checkpoint
            )

        loss_roi = img.new_zeros(())
        for v in range(len(VIEWS)):
            row_sum, n_valid = roi_clip_rows(
                score,
                _each(operator.itemgetter((slice(None), v)), roi_l),
                _each(operator.itemgetter((slice(None), v)), roi_a),
                scales[ROI_CC + v],
                targets,
                single_process=world == 1,
            )
            # Global valid count: exact even when ranks hold different numbers of views with RoIs.
            loss_roi = loss_roi + row_sum * world / n_valid.clamp_min(1).to(row_sum.dtype) / len(VIEWS)  # Eq. 8

        loss_cross = cross_view_terms(img[:, 0], img[:, 1], cfg.cross_view_lambda).sum() * norm  # Eq. 9
        total = cfg.global_weight * loss_global + cfg.roi_weight * loss_roi + cfg.cross_view_weight * loss_cross
        terms = {"loss": total, "loss_global": loss_global, "loss_roi": loss_roi, "loss_cross_view": loss_cross}
        terms.update({name: scales[i].detach() for i, name in enumerate(SCALE_NAMES)})
        return terms
