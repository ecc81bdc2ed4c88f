"""Zero-shot classification with text prompts (CLIP-style), per view and per breast.

Prompts are rendered with the same report templates the shards were built with, so class prompts
sit in the distribution the text encoder was trained on; each class is an ensemble (every density,
finding type and BI-RADS value of that class), averaged in embedding space as in CLIP.
``zero_shot_malignancy`` is the debug pipeline's entry point; ``zero_shot_view_probs`` scores any
task of ``mmclip_dist.eval.tasks`` (``task_prompts``) and returns per-view class probabilities, which
``mmclip_dist.eval.scoring`` turns into per-image and per-breast metrics.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmclip_dist.data.build.reports import Finding, view_report
from mmclip_dist.data.shard_format import VIEWS
from mmclip_dist.eval.metrics import binary_metrics, bootstrap_ci


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
                laterality=laterality,
                view=view,
                density=density,
                birads=birads,
                findings=[Finding(label=finding, box=box, birads=max(birads, 3))],
                content=(0.0, 0.0, 1.0, 1.0),
                chest_wall="left",
                label_malignant=malignant,
                label_source=label_source,
            )
            for laterality, density, finding, birads, box in itertools.product(
                "LR", "ABCD", ("Mass", "Suspicious Calcification"), birads_values, boxes
            )
        ]
    return prompts


# Lesion positions in a unit breast, as in malignancy_prompts: the location phrase is averaged out.
_BOXES = [(x, y, x + 0.1, y + 0.1) for x in (0.2, 0.5) for y in (0.1, 0.45, 0.8)]
# (finding label or None, breast BI-RADS values, malignant) combinations a report can describe.
_BENIGN = ((2, 3), 0)
_MALIGNANT = ((4, 5), 1)
_OTHER_FINDINGS = ("Architectural Distortion", "Focal Asymmetry")


def _ensemble(
    view: str, combos: Iterable[tuple[str | None, tuple[int, ...], int]], densities: Iterable[str], label_source: str
) -> list[str]:
    """Template reports of every (laterality, density, finding, BI-RADS, location) of ``combos``, deduplicated."""
    texts: dict[str, None] = {}
    for laterality, density, (finding, birads_values, malignant) in itertools.product("LR", densities, combos):
        for birads, box in itertools.product(birads_values, _BOXES if finding else _BOXES[:1]):
            findings = [Finding(label=finding, box=box, birads=max(birads, 3))] if finding else []
            text = view_report(
                laterality=laterality,
                view=view,
                density=density,
                birads=birads,
                findings=findings,
                content=(0.0, 0.0, 1.0, 1.0),
                chest_wall="left",
                label_malignant=malignant,
                label_source=label_source,
            )
            texts[text] = None
    return list(texts)


def _with_outcomes(findings: Iterable[str]) -> list[tuple[str | None, tuple[int, ...], int]]:
    """Each finding both benign (BI-RADS 2-3) and malignant (BI-RADS 4-5)."""
    return [(f, *outcome) for f in findings for outcome in (_BENIGN, _MALIGNANT)]


def task_prompts(task: str, view: str, label_source: str = "birads_proxy") -> dict[str, list[str]]:
    """Class name -> prompt ensemble of one view for any task of ``mmclip_dist.eval.tasks`` (class order kept)."""
    from mmclip_dist.eval.tasks import BIRADS_GROUPS, get_task

    spec = get_task(task)
    densities = "ABCD"
    normal = (None, (1,), 0)
    if task == "malignancy":
        return malignancy_prompts(view, label_source)
    if task in ("mass", "calcification"):
        target = "Mass" if task == "mass" else "Suspicious Calcification"
        other = "Suspicious Calcification" if task == "mass" else "Mass"
        absent = _with_outcomes((other, *_OTHER_FINDINGS)) + [normal]
        present = _with_outcomes((target,))
        return {
            spec.classes[0]: _ensemble(view, absent, densities, label_source),
            spec.classes[1]: _ensemble(view, present, densities, label_source),
        }
    if task == "density":
        combos = _with_outcomes(("Mass", "Suspicious Calcification")) + [normal]
        return {d: _ensemble(view, combos, d, label_source) for d in spec.classes}
    if task == "birads":
        prompts = {}
        for name, values in BIRADS_GROUPS:
            if values == (1,):
                combos = [normal]
            else:
                malignant = int(min(values) >= 4)
                combos = [(f, values, malignant) for f in ("Mass", "Suspicious Calcification")]
            prompts[name] = _ensemble(view, combos, densities, label_source)
        return prompts
    raise ValueError(f"no zero-shot prompts defined for task {task!r}")


@dataclass
class ClassPrompts:
    """Encoded prompt ensembles of one view: the mean global embedding and every prompt's tokens."""

    embeddings: torch.Tensor  # [C, D] normalised mean prompt embedding per class
    tokens: list[torch.Tensor]  # per class [P, L, Dr] token features for the RoI matcher
    masks: list[torch.Tensor]  # per class [P, L]


@torch.no_grad()
def encode_prompts(model: Any, tokenizer: Any, prompts: dict[str, list[str]], max_len: int) -> ClassPrompts:
    """Encode each class's prompt ensemble once; reused for every image."""
    device = next(model.parameters()).device
    rows, tokens, masks = [], [], []
    for texts in prompts.values():
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        out = model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device))
        rows.append(F.normalize(out.text_embed.float().mean(0), dim=-1))
        tokens.append(out.text_tokens)
        masks.append(out.text_mask)
    return ClassPrompts(torch.stack(rows), tokens, masks)


@torch.no_grad()
def view_logits(model: Any, image: Any, prompts: ClassPrompts, view: int, chunk_size: int = 64) -> torch.Tensor:
    """``[N, C]`` class logits of one view: global matching plus RoI matching where the view has RoIs."""
    scales = model.logit_scales().float()  # alpha_0..alpha_3: global CC, global MLO, RoI CC, RoI MLO
    logits = scales[view] * image.image_embed[:, view].float() @ prompts.embeddings.T
    roi_feats, roi_valid = image.roi_feats[:, view], image.roi_valid[:, view]
    has_roi = roi_valid.any(-1)
    if has_roi.any():
        roi = torch.stack(
            [
                model.roi_matcher(roi_feats[has_roi], roi_valid[has_roi], tok, mask, chunk_size, False).float().mean(1)
                for tok, mask in zip(prompts.tokens, prompts.masks)
            ],
            dim=1,
        )
        logits[has_roi] += scales[2 + view] * roi
    return logits


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
    labels: list[np.ndarray] = []

    def keep_label(batch: dict[str, Any]) -> None:
        labels.append(batch["label"].cpu().numpy())

    keys, probs = zero_shot_view_probs(
        model, tokenizer, batches, [malignancy_prompts(v) for v in VIEWS], max_len, on_batch=keep_label
    )
    view_probs = probs[..., 1]
    y = np.concatenate(labels)
    result = ZeroShotResult(keys, y, view_probs, view_probs.mean(1))
    known = y >= 0
    result.metrics = _metrics(y[known], result.breast_probs[known], view_probs[known], bootstrap)
    return result


@torch.no_grad()
def zero_shot_view_probs(
    model: Any,
    tokenizer: Any,
    batches: Iterable[dict[str, Any]],
    view_prompts: list[dict[str, list[str]]],
    max_len: int,
    use_masks: bool = True,
    on_batch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[str], np.ndarray]:
    """``(keys, probs [N, 2, C])``: softmax over the class prompts of each view (``view_prompts[v]``).

    ``use_masks=False`` feeds zero lesion masks to Region Focus (images without annotations);
    ``on_batch`` sees every batch (e.g. to collect its labels or metadata) as it is scored.
    """
    model.eval()
    device = next(model.parameters()).device
    # Per-view prompts: they say "Projection Position: LCC" vs "LMLO".
    prompts = [encode_prompts(model, tokenizer, p, max_len) for p in view_prompts]
    keys: list[str] = []
    probs: list[np.ndarray] = []
    for batch in batches:
        masks = batch["masks"] if use_masks else torch.zeros_like(batch["masks"])
        image = model.encode_image(
            batch["images"].to(device), masks.to(device), batch["boxes"].to(device), batch["box_valid"].to(device)
        )
        logits = torch.stack([view_logits(model, image, prompts[v], v) for v in range(len(view_prompts))], dim=1)
        probs.append(logits.softmax(-1).cpu().numpy())
        keys.extend(batch["keys"])
        if on_batch is not None:
            on_batch(batch)
    if not probs:
        raise ValueError("zero-shot: the evaluation stream yielded no batches")
    return keys, np.concatenate(probs)


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
