"""Text encoder (paper Sec. 3.2, Eq. 3): a Hugging Face encoder, pooled, then the shared MLP head.

``F`` of Eq. 3 is ``AutoModel.from_pretrained(cfg.text_encoder)`` -- a hub id (Bio_ClinicalBERT by
default, for clusters with hub access or a populated HF cache) or a local folder (the debug mode and the
tests build a tiny BERT folder with :func:`mmclip_dist.model.tokenizer.build_text_encoder_folder`).
``Phi`` is one MLP shared by the CC and MLO reports. The token features are also projected to the
RoI-matching width (``L`` of Eq. 5) for the cross-modal attention.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from mmclip_dist.model.visual import mlp


def _drop_pooler(model: PreTrainedModel) -> PreTrainedModel:
    # BERT's pooler is unused (we pool ourselves); a parameter that never receives a gradient
    # makes DDP / ZeRO bucket reduction complain, so remove it rather than leave it dangling.
    if getattr(model, "pooler", None) is not None:
        model.register_module("pooler", None)  # BERT skips a None pooler
    return model


def load_text_backbone(name_or_path: str) -> PreTrainedModel:
    """Pretrained weights through the real ``from_pretrained`` path (hub id or local folder)."""
    return _drop_pooler(AutoModel.from_pretrained(name_or_path))


def text_backbone_from_config(config: PretrainedConfig) -> PreTrainedModel:
    """An uninitialised encoder of the given architecture; weights come from an MM-CLIP checkpoint."""
    return _drop_pooler(AutoModel.from_config(config))


class TextEncoder(nn.Module):
    """Encoder + pooling + shared projection MLP (-> ``embed_dim``) + token projection (-> ``roi_dim``)."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        embed_dim: int,
        roi_dim: int,
        dropout: float = 0.0,
        pooling: Literal["cls", "mean"] = "cls",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = int(backbone.config.hidden_size)
        self.pooling = pooling
        self.proj = mlp(hidden, hidden, embed_dim, dropout)
        self.token_proj = nn.Linear(hidden, roi_dim)

    @classmethod
    def from_name(cls, name_or_path: str, **kwargs) -> TextEncoder:
        return cls(load_text_backbone(name_or_path), **kwargs)

    @classmethod
    def from_hf_config(cls, config: PretrainedConfig | str, **kwargs) -> TextEncoder:
        hf_config: PretrainedConfig = AutoConfig.from_pretrained(config) if isinstance(config, str) else config
        return cls(text_backbone_from_config(hf_config), **kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, L]`` ids and mask -> (text feature ``[N, D]`` unnormalised, token features ``[N, L, Dr]``)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.proj(pooled), self.token_proj(hidden)
