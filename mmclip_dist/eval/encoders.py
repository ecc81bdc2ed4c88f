"""The visual side of MM-CLIP as a stand-alone image encoder, and its baselines (random / ImageNet init).

Downstream protocols (linear probe, fine-tune) only need Region Focus + the visual encoder (paper
Sec. 3.1). :class:`ImageEncoder` wraps exactly those modules, taken from a pretrained ``MMCLIP`` or
built fresh with the same architecture for the baselines, so every method runs through the same code.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmclip_dist.config import ModelConfig
from mmclip_dist.model.region_focus import RegionFocus
from mmclip_dist.model.visual import VisualEncoder

FeatureKind = Literal["backbone", "embed", "roi"]


class BaselineUnavailable(RuntimeError):
    """A baseline that cannot be built here (e.g. ImageNet weights without hub access or a file)."""


class ImageEncoder(nn.Module):
    """Region Focus -> backbone -> pooled features (``C``) or the L2-normalised global embedding (``D``)."""

    def __init__(self, region_focus: RegionFocus, visual: VisualEncoder) -> None:
        super().__init__()
        self.region_focus = region_focus
        self.visual = visual

    @property
    def channels(self) -> int:
        return self.visual.channels

    def pooled(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``images, masks [N, 1, H, W]`` -> ``[N, C]`` global-average-pooled last feature map."""
        return self.visual.feature_map(self.region_focus(images, masks)).mean(dim=(2, 3))

    def roi_pooled(
        self, images: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor, box_valid: torch.Tensor
    ) -> torch.Tensor:
        """Mean of the view's valid RoI embeddings (the RoI head's ``Dr`` output): ``[N, Dr]``; zeros for a
        view without any annotated box. The region-level representation the RoI loss trains."""
        maps = self.visual.feature_maps(self.region_focus(images, masks))
        valid = box_valid.bool()
        roi = self.visual.roi_features(maps, boxes.to(maps[0].dtype), valid)
        return roi.sum(1) / valid.sum(1, keepdim=True).clamp_min(1).to(roi.dtype)

    def forward(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        kind: FeatureKind = "backbone",
        boxes: torch.Tensor | None = None,
        box_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if kind == "roi":
            if boxes is None or box_valid is None:
                raise ValueError("eval.features=roi needs the views' boxes and box_valid")
            return self.roi_pooled(images, masks, boxes, box_valid)
        pooled = self.pooled(images, masks)
        if kind == "backbone":
            return pooled
        return F.normalize(self.visual.global_head(pooled), dim=-1)


def encoder_from_mmclip(model: Any) -> ImageEncoder:
    """A copy of a pretrained model's Region Focus + visual encoder (fine-tuning it leaves ``model`` intact)."""
    return ImageEncoder(copy.deepcopy(model.region_focus), copy.deepcopy(model.visual))


def baseline_encoder(
    cfg: ModelConfig, which: Literal["random", "imagenet"], seed: int = 0, weights: str = ""
) -> ImageEncoder:
    """The same architecture as ``cfg`` with random weights, or with ImageNet weights (``weights``:
    ``'timm'`` or a timm checkpoint file); raises :class:`BaselineUnavailable` when those cannot be had."""
    if which == "imagenet":
        if not weights:
            raise BaselineUnavailable(
                "ImageNet baseline skipped: eval.imagenet_weights is empty (no hub access here); set it to "
                "'timm' where the hub or timm's cache is reachable, or to a timm checkpoint file"
            )
        try:
            visual = _visual(cfg, weights)
        except Exception as err:  # noqa: BLE001 - any download / file failure means "not available"
            raise BaselineUnavailable(
                f"ImageNet baseline skipped: cannot load {cfg.backbone} weights {weights!r} ({err})"
            ) from err
    elif which == "random":
        torch.manual_seed(seed)
        visual = _visual(cfg, "")
    else:
        raise ValueError(f"unknown baseline {which!r}; expected 'random' or 'imagenet'")
    # Region Focus starts as the backbone's own input normalisation with a zero mask branch, as in MMCLIP.
    return ImageEncoder(RegionFocus(3, mean=visual.mean, std=visual.std), visual)


def _visual(cfg: ModelConfig, weights: str) -> VisualEncoder:
    return VisualEncoder(
        cfg.backbone, embed_dim=cfg.embed_dim, roi_dim=cfg.roi_match_dim, roi_output_size=cfg.roi_output_size,
        dropout=cfg.dropout, weights=weights, roi_levels=cfg.roi_levels, roi_pooling=cfg.roi_pooling,
        roi_level_dim=cfg.roi_level_dim,
    )  # fmt: skip


def view_inputs(batch: dict[str, Any], use_masks: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader batch -> ``(images, masks)`` with the views folded into the batch: ``[B * 2, 1, H, W]``."""
    images = batch["images"].flatten(0, 1)
    masks = batch["masks"].flatten(0, 1) if use_masks else torch.zeros_like(images)
    return images, masks


@dataclass
class ViewFeatures:
    """Frozen features of every breast's two views, with the breasts' shard metadata."""

    features: np.ndarray  # [N, 2, F]
    keys: list[str]
    metas: list[dict[str, Any]]


@torch.no_grad()
def extract_features(
    encoders: dict[str, ImageEncoder], batches: Iterable[dict[str, Any]], kind: FeatureKind = "backbone",
    use_masks: bool = True,
) -> dict[str, ViewFeatures]:  # fmt: skip
    """Run every frozen encoder (eval mode) over ``batches`` in one pass (images are decoded once)."""
    if not encoders:
        raise ValueError("extract_features needs at least one encoder")
    for encoder in encoders.values():
        encoder.eval()
    feats: dict[str, list[np.ndarray]] = {name: [] for name in encoders}
    keys: list[str] = []
    metas: list[dict[str, Any]] = []
    for batch in batches:
        images, masks = view_inputs(batch, use_masks)
        rois = (batch["boxes"].flatten(0, 1), batch["box_valid"].flatten(0, 1)) if kind == "roi" else (None, None)
        for name, encoder in encoders.items():
            device = next(encoder.parameters()).device
            boxes, valid = (None if t is None else t.to(device) for t in rois)
            out = encoder(images.to(device), masks.to(device), kind, boxes, valid).float()
            feats[name].append(out.view(len(batch["keys"]), 2, -1).cpu().numpy())
        keys.extend(batch["keys"])
        metas.extend(batch["meta"])
    if not keys:
        raise ValueError("feature extraction: the shard stream yielded no batches")
    return {name: ViewFeatures(np.concatenate(chunks), keys, metas) for name, chunks in feats.items()}
