"""Visual encoder (paper Sec. 3.1, Eq. 1-2): timm backbone, global head and RoIAlign head.

``Phi`` of Eq. 1 is any timm backbone by name, run with ``features_only=True`` so the same code
serves ResNet-50, EfficientNet-B2/B4 (the paper's backbones) and tiny test models; only the last
feature map is used. Its stride comes from timm's ``feature_info`` rather than a table, so RoIAlign
maps input-pixel boxes onto the feature map correctly for every backbone.

``psi`` of Eq. 2 is ``torchvision.ops.roi_align`` on that map (``aligned=True``: a box edge at pixel
coordinate x lands at feature coordinate ``x / stride - 0.5``, the pixel-centre convention), average
pooled, then the RoI MLP head.

RoIAlign always runs in fp32, whatever the model's dtype: torchvision has no bf16 kernel (CPU raises,
CUDA dispatches float/double/half only), and box coordinates must not be rounded to the model dtype
(bf16 keeps 8 significant bits, so an edge at x = 700 px moves by up to 2 px). The feature map is
cast up for the op and the pooled features back to the model dtype.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn
from torchvision.ops import roi_align


def mlp(in_dim: int, hidden_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    """Two-layer projection head (Linear-GELU-Dropout-Linear) used for every head of the model."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim))


def create_backbone(name: str, weights: str = "") -> nn.Module:
    """A timm backbone returning only its last feature map.

    ``weights``: ``''`` random init, ``'timm'`` timm's pretrained weights (its cache or the hub), or a
    path to a checkpoint of the *full* timm model (``.pth``/``.safetensors`` state dict).
    """
    kwargs: dict = dict(features_only=True, out_indices=(-1,))
    if weights == "":
        return timm.create_model(name, pretrained=False, **kwargs)
    if weights == "timm":
        return timm.create_model(name, pretrained=True, **kwargs)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"model.backbone_weights={weights!r}: not '', 'timm', nor an existing checkpoint file")
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


class VisualEncoder(nn.Module):
    """Backbone + global head (-> ``embed_dim``) + RoIAlign and RoI head (-> ``roi_dim``)."""

    def __init__(
        self,
        backbone: str,
        embed_dim: int,
        roi_dim: int,
        roi_output_size: int = 7,
        dropout: float = 0.0,
        weights: str = "",
    ) -> None:
        super().__init__()
        self.backbone = create_backbone(backbone, weights)
        info = self.backbone.feature_info
        if not isinstance(info, timm.models.FeatureInfo):  # features_only=True models carry one
            raise TypeError(f"backbone {backbone!r} has no timm FeatureInfo (got {type(info).__name__})")
        self.channels: int = int(info.channels()[-1])
        self.stride: int = int(info.reduction()[-1])
        self.roi_output_size = roi_output_size
        cfg = getattr(self.backbone, "pretrained_cfg", {}) or {}
        # The input normalisation the backbone was (pre)trained with; RegionFocus starts from it.
        self.mean: tuple[float, ...] = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std: tuple[float, ...] = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        self.global_head = mlp(self.channels, self.channels, embed_dim, dropout)
        self.roi_head = mlp(self.channels, self.channels, roi_dim, dropout)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W] -> [N, C, H / stride, W / stride]`` (F_h of the paper)."""
        return self.backbone(x)[-1]

    def roi_pool(self, fmap: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """RoIAlign + average pooling: ``fmap [N, C, h, w]``, ``boxes [N, R, 4]`` input pixels -> ``[N, R, C]``."""
        n, r = boxes.shape[:2]
        if r == 0:
            return fmap.new_zeros(n, 0, fmap.shape[1])
        # roi_align takes one box list per image; passing a list keeps the batch index implicit.
        # fp32 for the op and for the boxes (module docstring); the pooled features return to fmap's dtype.
        pooled = roi_align(
            fmap.float(),
            list(boxes.float().unbind(0)),
            output_size=self.roi_output_size,
            spatial_scale=1.0 / self.stride,
            sampling_ratio=-1,
            aligned=True,
        )
        return pooled.mean(dim=(2, 3)).view(n, r, -1).to(fmap.dtype)

    def forward(
        self, x: torch.Tensor, boxes: torch.Tensor, box_valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [N, 3, H, W]``, ``boxes [N, R, 4]``, ``box_valid [N, R]`` -> (global ``[N, D]`` unnormalised,
        RoI features ``[N, R, Dr]`` with invalid RoIs zeroed)."""
        fmap = self.feature_map(x)
        global_feat = self.global_head(fmap.mean(dim=(2, 3)))
        # Every RoI slot is pooled (fixed shapes, R is small); padded slots are zeroed afterwards
        # so nothing downstream can mistake them for lesions.
        roi = self.roi_head(self.roi_pool(fmap, boxes))
        roi = roi * box_valid.unsqueeze(-1).to(roi.dtype)
        return global_feat, roi
