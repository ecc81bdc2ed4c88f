"""Zero-shot classification with text prompts (CLIP-style), per view and per breast.

Prompts are rendered with the same report templates the shards were built with, so class prompts
sit in the distribution the text encoder was trained on; each class is an ensemble (every density,
finding type and BI-RADS value of that class), averaged in embedding space as in CLIP.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmclip_dist.data.reports import Finding, view_report
from mmclip_dist.eval.metrics import binary_metrics, bootstrap_ci

VIEWS = ("cc", "mlo")


def malignancy_prompts(view: str, label_source: str = "birads_proxy") -> dict[str, list[str]]:
    """Class name -> prompt ensemble for one view: benign (BI-RADS 2-3) vs malignant (BI-RADS 4-5)."""
    classes = {"benign": (0, (2, 3)), "malignant": (1, (4, 5))}
    # Lesion positions in a unit breast (x0, y0, x1, y1): three bands x two depths, so the location
    # phrase of the reports is averaged out rather than left blank (blank is out of distribution).
    boxes = [(x, y, x + 0.1, y + 0.1) for x in (0.2, 0.5) for y in (0.1, 0.45, 0.8)]
    prompts: dict[str, list[str]] = {}
    for name, (malignant, birads_values) in classes.items():
        prompts[name] = [
            view_report(
                laterality=laterality, view=view, density=density, birads=birads,
                findings=[Finding(label=finding, box=box, birads=max(birads, 3))],
                content=(0.0, 0.0, 1.0, 1.0), chest_wall="left", label_malignant=malignant,
                label_source=label_source,
            )
            for laterality, density, finding, birads, box in itertools.product(
                "LR", "ABCD", ("Mass", "Suspicious Calcification"), birads_values, boxes
            )
        ]
    return prompts


@torch.no_grad()
def class_embeddings(model: Any, tokenizer: Any, prompts: dict[str, list[str]], max_len: int) -> torch.Tensor:
    """``[C, D]``: the normalised mean embedding of each class's prompts."""
    device = next(model.parameters()).device
    rows = []
    for texts in prompts.values():
        tokens = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        out = model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
        rows.append(F.normalize(out.text_embed.float().mean(0), dim=-1))
    return torch.stack(rows)


@dataclass
class ZeroShotResult:
    """Per-breast malignancy probabilities and their metrics."""

    keys: list[str]
    labels: np.ndarray  # [N] 1/0 (-1 unknown are dropped before metrics)
    view_probs: np.ndarray  # [N, 2] P(malignant) from CC and from MLO
    breast_probs: np.ndarray  # [N] mean of the two views
    metrics: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def zero_shot_malignancy(
    model: Any, tokenizer: Any, batches: Iterable[dict[str, Any]], max_len: int, bootstrap: int = 1000
) -> ZeroShotResult:
    """Score every breast of ``batches``; metrics per view and per breast with 95% bootstrap CIs."""
    model.eval()
    device = next(model.parameters()).device
    # Per-view class embeddings: the prompts say "Projection Position: LCC" vs "LMLO".
    classes = torch.stack([class_embeddings(model, tokenizer, malignancy_prompts(v), max_len) for v in VIEWS])
    scales = model.logit_scales()[:2].float()  # alpha_0 (CC), alpha_1 (MLO) of Eq. 4
    keys: list[str] = []
    labels: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    for batch in batches:
        out = model.encode_image(*(batch[k].to(device) for k in ("images", "masks", "boxes", "box_valid")))
        logits = torch.einsum("bvd,vcd->bvc", out.image_embed.float(), classes) * scales[None, :, None]
        probs.append(logits.softmax(-1)[..., 1].cpu().numpy())
        labels.append(batch["label"].cpu().numpy())
        keys.extend(batch["keys"])
    view_probs = np.concatenate(probs)
    y = np.concatenate(labels)
    result = ZeroShotResult(keys, y, view_probs, view_probs.mean(1))
    known = y >= 0
    result.metrics = _metrics(y[known], result.breast_probs[known], view_probs[known], bootstrap)
    return result


def _metrics(y: np.ndarray, breast: np.ndarray, views: np.ndarray, bootstrap: int) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    per_breast = binary_metrics(y, breast, threshold=0.5)
    auc, lo, hi = bootstrap_ci(roc_auc_score, y, breast, n=bootstrap, seed=0)
    # One prediction per image: both views carry their breast's label.
    image_auc = roc_auc_score(np.repeat(y, 2), views.reshape(-1))
    return {
        "auc": float(auc),
        "auc_ci_low": float(lo),
        "auc_ci_high": float(hi),
        "accuracy": float(per_breast["accuracy"]),
        "balanced_accuracy": float(per_breast["balanced_accuracy"]),
        "image_auc": float(image_auc),
        "n_breasts": float(len(y)),
    }
