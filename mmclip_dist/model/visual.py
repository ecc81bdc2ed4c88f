"""Visual encoder (paper Sec. 3.1, Eq. 1-2): timm backbone, global head and multi-scale RoIAlign head.

``Phi`` of Eq. 1 is any timm backbone by name, run with ``features_only=True`` so the same code
serves ResNet-50, EfficientNet-B2/B4 (the paper's backbones) and tiny test models. Every level's
stride comes from timm's ``feature_info`` rather than a table, so RoIAlign maps input-pixel boxes onto
each feature map correctly for every backbone. The global head reads the last (stride-32) map.

``psi`` of Eq. 2 is the paper's multi-scale image feature generation (Fig. 3): ``torchvision.ops.roi_align``
on each map of ``model.roi_levels`` (strides, e.g. 8/16/32; ``aligned=True``: a box edge at pixel x lands at
feature coordinate ``x / stride - 0.5``), the levels' grids concatenated along channels, then either kept
spatial (``roi_pooling="flatten"``: the ``g x g`` grid flattened into the RoI MLP, so the head sees the
lesion's margin and shape) or averaged (``"mean"``; with ``roi_levels=[32]`` the original single-level
head). A lesion of 2-4% of the breast covers one to three stride-32 cells; the stride-8 map keeps its
outline, which is what separates a spiculated from a circumscribed mass.

RoIAlign always runs in fp32, whatever the model's dtype: torchvision has no bf16 kernel (CPU raises,
CUDA dispatches float/double/half only), and box coordinates must not be rounded to the model dtype
(bf16 keeps 8 significant bits, so an edge at x = 700 px moves by up to 2 px). Each feature map is
cast up for the op and the pooled grid back to the model dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import nn
from torchvision.ops import roi_align


def mlp(in_dim: int, hidden_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    """Two-layer projection head (Linear-GELU-Dropout-Linear) used for every head of the model."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim))


def create_backbone(name: str, weights: str = "") -> nn.Module:
    """A timm backbone returning every feature level (``feature_info`` gives their strides and channels).

    ``weights``: ``''`` random init, ``'timm'`` timm's pretrained weights (its cache or the hub), or a
    path to a checkpoint of the *full* timm model (``.pth``/``.safetensors`` state dict).
    """
    kwargs: dict = dict(features_only=True)
    if weights == "":
        return timm.create_model(name, pretrained=False, **kwargs)
    if weights == "timm":
        return timm.create_model(name, pretrained=True, **kwargs)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"model.backbone_weights={weights!r}: not '', 'timm', nor an existing checkpoint file")
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


def _roi_align_fp32(
    features: torch.Tensor, boxes: list[torch.Tensor], output_size: int, spatial_scale: float
) -> torch.Tensor:
    """``roi_align`` computed in fp32 (bilinear weights and box coordinates lose pixels in bf16); the grid
    stays fp32 so the pooling after it does not round either. ``boxes``: one ``[R, 4]`` tensor per image."""
    return roi_align(
        features.float(),
        [b.float() for b in boxes],
        output_size=output_size,
        spatial_scale=spatial_scale,
        sampling_ratio=-1,
        aligned=True,
    )


class VisualEncoder(nn.Module):
    """Backbone + global head (-> ``embed_dim``) + multi-scale RoIAlign and RoI head (-> ``roi_dim``)."""

    def __init__(
        self,
        backbone: str,
        embed_dim: int,
        roi_dim: int,
        roi_output_size: int = 7,
        dropout: float = 0.0,
        weights: str = "",
        roi_levels: Sequence[int] = (32,),
        roi_pooling: str = "mean",
        roi_level_dim: int = 0,
    ) -> None:
        super().__init__()
        self.backbone = create_backbone(backbone, weights)
        info = self.backbone.feature_info
        if not isinstance(info, timm.models.FeatureInfo):  # features_only=True models carry one
            raise TypeError(f"backbone {backbone!r} has no timm FeatureInfo (got {type(info).__name__})")
        strides = [int(s) for s in info.reduction()]
        channels = [int(c) for c in info.channels()]
        self.channels: int = channels[-1]
        self.stride: int = strides[-1]
        missing = [s for s in roi_levels if s not in strides]
        if not roi_levels or missing:
            raise ValueError(f"model.roi_levels={list(roi_levels)}: {backbone} has feature strides {strides}")
        if roi_pooling not in ("mean", "flatten"):
            raise ValueError(f"model.roi_pooling={roi_pooling!r}: expected 'mean' or 'flatten'")
        # The deepest level of a stride when a backbone repeats one (e.g. two stride-2 stages).
        self.roi_levels = [max(i for i, s in enumerate(strides) if s == stride) for stride in roi_levels]
        self.roi_strides = [strides[i] for i in self.roi_levels]
        self.roi_output_size = roi_output_size
        self.roi_pooling = roi_pooling
        # Optional per-level 1x1 projection to a common width, applied to the RoI grids (a 1x1 conv commutes
        # with RoIAlign's bilinear sampling, so this equals projecting the maps, at a fraction of the cost).
        # It keeps a flattened multi-level grid small for wide backbones (ResNet-50's 3,584 channels).
        self.roi_lateral = nn.ModuleList(
            nn.Conv2d(channels[i], roi_level_dim, kernel_size=1) for i in self.roi_levels if roi_level_dim > 0
        )
        roi_channels = (
            roi_level_dim * len(self.roi_levels) if roi_level_dim > 0 else sum(channels[i] for i in self.roi_levels)
        )
        self.roi_in_dim = roi_channels * (roi_output_size**2 if roi_pooling == "flatten" else 1)
        cfg = getattr(self.backbone, "pretrained_cfg", {}) or {}
        # The input normalisation the backbone was (pre)trained with; RegionFocus starts from it.
        self.mean: tuple[float, ...] = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std: tuple[float, ...] = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        self.global_head = mlp(self.channels, self.channels, embed_dim, dropout)
        self.roi_head = mlp(self.roi_in_dim, max(self.channels, roi_channels), roi_dim, dropout)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[N, 3, H, W]`` -> every backbone level ``[N, C_l, H / s_l, W / s_l]`` (the last is F_h of the paper)."""
        return list(self.backbone(x))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W] -> [N, C, H / stride, W / stride]``: the last level."""
        return self.feature_maps(x)[-1]

    def roi_pool(self, maps: Sequence[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """RoIAlign on the RoI levels' maps (one per ``roi_strides`` entry, in that order), levels concatenated
        along channels, then averaged or flattened: ``boxes [N, R, 4]`` input pixels -> ``[N, R, roi_in_dim]``."""
        if len(maps) != len(self.roi_strides):
            raise ValueError(
                f"roi_pool needs {len(self.roi_strides)} maps (strides {self.roi_strides}), got {len(maps)}"
            )
        n, r = boxes.shape[:2]
        if r == 0:
            return maps[0].new_zeros(n, 0, self.roi_in_dim)
        # roi_align takes one box list per image; passing a list keeps the batch index implicit.
        box_list = list(boxes.unbind(0))
        grids = [
            _roi_align_fp32(fmap, box_list, self.roi_output_size, 1.0 / stride)
            for fmap, stride in zip(maps, self.roi_strides, strict=True)
        ]
        dtype = maps[0].dtype
        if len(self.roi_lateral):
            grids = [proj(g.to(dtype)) for proj, g in zip(self.roi_lateral, grids, strict=True)]
        pooled = torch.cat(grids, dim=1)
        pooled = pooled.flatten(1) if self.roi_pooling == "flatten" else pooled.mean(dim=(2, 3))
        return pooled.view(n, r, -1).to(dtype)

    def roi_features(self, maps: Sequence[torch.Tensor], boxes: torch.Tensor, box_valid: torch.Tensor) -> torch.Tensor:
        """RoI head output ``[N, R, Dr]`` from all backbone levels; invalid RoIs zeroed."""
        # Every RoI slot is pooled (fixed shapes, R is small); padded slots are zeroed afterwards
        # so nothing downstream can mistake them for lesions.
        roi = self.roi_head(self.roi_pool([maps[i] for i in self.roi_levels], boxes))
        return roi * box_valid.unsqueeze(-1).to(roi.dtype)

    def forward(
        self, x: torch.Tensor, boxes: torch.Tensor, box_valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [N, 3, H, W]``, ``boxes [N, R, 4]``, ``box_valid [N, R]`` -> (global ``[N, D]`` unnormalised,
        RoI features ``[N, R, Dr]`` with invalid RoIs zeroed)."""
        maps = self.feature_maps(x)
        global_feat = self.global_head(maps[-1].mean(dim=(2, 3)))
        return global_feat, self.roi_features(maps, boxes, box_valid)
