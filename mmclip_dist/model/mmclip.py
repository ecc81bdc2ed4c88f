"""The MM-CLIP network (paper Fig. 2): Region Focus -> visual encoder, text encoder, matching heads.

``model(batch)`` embeds both views of every breast in one backbone pass (views are folded into the
batch dimension; CC and MLO share all weights, as the paper's single ``Phi`` implies) and returns an
:class:`MMCLIPOutput`. The loss (``mmclip_dist.losses``) then uses ``model.logit_scales`` and
``model.roi_matcher`` through their forward calls. See docs/model.md for the equation -> code map.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmclip_dist.config import DataConfig, ModelConfig
from mmclip_dist.model.matching import LogitScales, RoIMatcher
from mmclip_dist.model.region_focus import RegionFocus
from mmclip_dist.model.text import TextEncoder
from mmclip_dist.model.visual import VisualEncoder

BATCH_IMAGE_KEYS = ("images", "masks", "boxes", "box_valid")
BATCH_TEXT_KEYS = ("input_ids", "attention_mask")


@dataclass
class MMCLIPOutput:
    """Model outputs; a field is ``None`` when its modality was not encoded (``encode_image``/``encode_text``).

    Leading dims follow the input: ``[B, 2, ...]`` for a training batch (CC then MLO).
    """

    image_embed: torch.Tensor | None = None  # [..., D] L2-normalised (Eq. 1 + global head)
    text_embed: torch.Tensor | None = None  # [..., D] L2-normalised (Eq. 3)
    roi_feats: torch.Tensor | None = None  # [..., R, Dr] (Eq. 2 + RoI head), zero where invalid
    roi_valid: torch.Tensor | None = None  # [..., R] bool
    text_tokens: torch.Tensor | None = None  # [..., L, Dr] token features projected by L (Eq. 5)
    text_mask: torch.Tensor | None = None  # [..., L] bool, True on real tokens

    def detach(self) -> MMCLIPOutput:
        return MMCLIPOutput(**{f.name: _maybe(getattr(self, f.name), torch.Tensor.detach) for f in fields(self)})

    @staticmethod
    def cat(outputs: list[MMCLIPOutput], dim: int = 0) -> MMCLIPOutput:
        """Concatenate micro-batch outputs along the batch dimension (all must have the same fields set)."""
        merged: dict[str, Any] = {}
        for f in fields(MMCLIPOutput):
            values = [getattr(o, f.name) for o in outputs]
            merged[f.name] = None if values[0] is None else torch.cat(values, dim=dim)
        return MMCLIPOutput(**merged)


def _maybe(value: torch.Tensor | None, fn) -> torch.Tensor | None:
    return None if value is None else fn(value)


class MMCLIP(nn.Module):
    """Multi-granularity mammography CLIP: global image/text embeddings plus RoI and token features."""

    def __init__(self, cfg: ModelConfig, text_encoder: TextEncoder, data_cfg: DataConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.data_cfg = data_cfg
        self.visual = VisualEncoder(
            cfg.backbone,
            embed_dim=cfg.embed_dim,
            roi_dim=cfg.roi_match_dim,
            roi_output_size=cfg.roi_output_size,
            dropout=cfg.dropout,
            weights=cfg.backbone_weights,
            roi_levels=cfg.roi_levels,
            roi_pooling=cfg.roi_pooling,
            roi_level_dim=cfg.roi_level_dim,
        )
        self.region_focus = RegionFocus(3, mean=self.visual.mean, std=self.visual.std)
        self.text = text_encoder
        self.logit_scales = LogitScales(cfg.init_temperature)
        self.roi_matcher = RoIMatcher(cfg.roi_match_dim, cfg.roi_match_heads, cfg.dropout)
        # Set by from_config / from_pretrained so save_pretrained can ship the tokenizer with the weights.
        self.tokenizer_source: str | None = None

    @staticmethod
    def _text_kwargs(cfg: ModelConfig) -> dict[str, Any]:
        return dict(embed_dim=cfg.embed_dim, roi_dim=cfg.roi_match_dim, dropout=cfg.dropout, pooling=cfg.text_pooling)

    @classmethod
    def from_config(cls, cfg: ModelConfig, data_cfg: DataConfig | None = None) -> MMCLIP:
        """Build from the config; the text encoder goes through ``AutoModel.from_pretrained(cfg.text_encoder)``."""
        text = TextEncoder.from_name(cfg.text_encoder, **cls._text_kwargs(cfg))
        model = cls(cfg, text, data_cfg)
        model.tokenizer_source = cfg.tokenizer or cfg.text_encoder
        return model

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> MMCLIP:
        """Load a folder written by :meth:`save_pretrained` (no DeepSpeed, no hub access needed)."""
        from mmclip_dist.model.checkpoint import load_pretrained

        return load_pretrained(folder)

    def save_pretrained(self, folder: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write weights (fp32 safetensors), config, tokenizer and text-encoder config to ``folder``.

        ``state_dict``: pass the consolidated weights when this module's own parameters are partitioned
        (ZeRO-3), e.g. from ``deepspeed.utils.zero_to_fp32``; default ``self.state_dict()``.
        """
        from mmclip_dist.model.checkpoint import save_pretrained

        return save_pretrained(self, folder, state_dict)

    # ----------------------------------------------------------------------------------------- encoders

    def encode_image(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        box_valid: torch.Tensor | None = None,
    ) -> MMCLIPOutput:
        """``images [..., 1, H, W]`` (masks alike; zeros if None), ``boxes [..., R, 4]``, ``box_valid [..., R]``
        -> image fields of :class:`MMCLIPOutput` with the same leading dims."""
        if images.dim() < 4 or images.shape[-3] != 1:
            raise ValueError(f"images must be [..., 1, H, W], got {tuple(images.shape)}")
        lead = images.shape[:-3]
        if masks is None:
            masks = torch.zeros_like(images)
        if boxes is None:
            boxes = images.new_zeros(*lead, 0, 4)
        if box_valid is None:
            box_valid = torch.ones(boxes.shape[:-1], dtype=torch.bool, device=boxes.device)
        if masks.shape != images.shape or boxes.shape[:-2] != lead or box_valid.shape != boxes.shape[:-1]:
            raise ValueError(
                f"image inputs disagree: images {tuple(images.shape)}, masks {tuple(masks.shape)}, "
                f"boxes {tuple(boxes.shape)}, box_valid {tuple(box_valid.shape)}"
            )
        h, w = images.shape[-2:]
        r = boxes.shape[-2]
        n = images[..., 0, 0, 0].numel()
        x = self.region_focus(images.reshape(n, 1, h, w), masks.reshape(n, 1, h, w).to(images.dtype))
        valid = box_valid.reshape(n, r).bool()
        global_feat, roi = self.visual(x, boxes.reshape(n, r, 4), valid)
        return MMCLIPOutput(
            image_embed=F.normalize(global_feat, dim=-1).view(*lead, -1),
            roi_feats=roi.view(*lead, r, roi.shape[-1]),
            roi_valid=valid.view(*lead, r),
        )

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> MMCLIPOutput:
        """``input_ids [..., L]`` (e.g. ``[P, L]`` zero-shot prompts) -> text fields of :class:`MMCLIPOutput`."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
            )
        lead, seq = input_ids.shape[:-1], input_ids.shape[-1]
        feat, tokens = self.text(input_ids.reshape(-1, seq), attention_mask.reshape(-1, seq))
        return MMCLIPOutput(
            text_embed=F.normalize(feat, dim=-1).view(*lead, -1),
            text_tokens=tokens.view(*lead, seq, tokens.shape[-1]),
            text_mask=attention_mask.bool(),
        )

    def forward(self, batch: dict[str, Any]) -> MMCLIPOutput:
        """A loader batch (docs/architecture.md) -> :class:`MMCLIPOutput` with every field ``[B, 2, ...]``."""
        missing = [k for k in BATCH_IMAGE_KEYS + BATCH_TEXT_KEYS if k not in batch]
        if missing:
            raise KeyError(f"batch is missing {missing}; it has {sorted(batch)}")
        if batch["images"].dim() != 5 or batch["images"].shape[1] != 2:
            raise ValueError(f"batch['images'] must be [B, 2, 1, H, W], got {tuple(batch['images'].shape)}")
        image = self.encode_image(*(batch[k] for k in BATCH_IMAGE_KEYS))
        text = self.encode_text(batch["input_ids"], batch["attention_mask"])
        return MMCLIPOutput(
            image_embed=image.image_embed,
            text_embed=text.text_embed,
            roi_feats=image.roi_feats,
            roi_valid=image.roi_valid,
            text_tokens=text.text_tokens,
            text_mask=text.text_mask,
        )
