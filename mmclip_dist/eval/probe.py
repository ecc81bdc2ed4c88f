"""Downstream protocols of the paper: linear probe on frozen features and full fine-tune of the visual encoder.

Both train on the shards' train split with one example per *image* (CC and MLO each carry their
breast's label), pick hyper-parameters on a validation split carved from train **by patient** (both
breasts of a patient land on the same side, so validation never sees a training patient), and
predict per-view class probabilities ``[N, 2, K]`` on the test split for ``mmclip_dist.eval.scoring``.

* Linear probe: standardised features -> scikit-learn ``LogisticRegression(class_weight="balanced")``;
  the inverse L2 strength ``C`` is chosen on validation (``eval.probe_c``), then the probe is refit on
  train + validation.
* Fine-tune: Region Focus + backbone + a linear head on the pooled features, trained with class-weighted
  cross-entropy (AdamW, ``eval.finetune_epochs``); the epoch with the best validation score is kept.

Model selection score: ROC AUC for binary tasks, balanced accuracy for multi-class ones.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from mmclip_dist.config import EvalConfig
from mmclip_dist.eval.encoders import ImageEncoder, ViewFeatures
from mmclip_dist.eval.tasks import UNKNOWN, Task

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- splits


def patient_ids(metas: Sequence[dict[str, Any]]) -> list[str]:
    """``patient_id`` of every breast; a sample without one is an error naming it."""
    out = []
    for i, meta in enumerate(metas):
        pid = meta.get("patient_id")
        if not pid:
            raise ValueError(f"sample {i} (breast {meta.get('breast_id', '?')}) has no patient_id in its shard json")
        out.append(str(pid))
    return out


def patient_split(patients: Sequence[str], fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of the validation breasts: ``round(fraction * #patients)`` whole patients, drawn with ``seed``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"eval.val_fraction must be in [0, 1), got {fraction}")
    unique = sorted(set(patients))
    n_val = int(round(fraction * len(unique)))
    if fraction > 0 and n_val == 0:
        n_val = 1
    if n_val >= len(unique):
        raise ValueError(f"cannot hold out {n_val} of {len(unique)} patients for validation and still train")
    order = np.random.default_rng(seed).permutation(len(unique))
    val = {unique[i] for i in order[:n_val]}
    return np.array([p in val for p in patients], dtype=bool)


def selection_score(task: Task, labels: np.ndarray, probs: np.ndarray) -> float:
    """Validation score used to pick hyper-parameters (NaN when undefined, e.g. one class in validation)."""
    if np.unique(labels).size < 2:
        return float("nan")
    if task.binary:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(balanced_accuracy_score(labels, probs.argmax(1)))


def _better(score: float, best: float) -> bool:
    return not np.isnan(score) and (np.isnan(best) or score > best)


# ---------------------------------------------------------------------------------------------- linear probe


def _images(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, 2, F]`` breasts -> ``[2N, F]`` images, each view with its breast's label."""
    return features.reshape(-1, features.shape[-1]), np.repeat(labels, features.shape[1])


def full_proba(clf: Pipeline, x: np.ndarray, n_classes: int) -> np.ndarray:
    """``[M, n_classes]`` probabilities; classes absent from the training labels get probability 0."""
    out = np.zeros((x.shape[0], n_classes))
    out[:, clf.classes_] = clf.predict_proba(x)
    return out


def _logreg(c: float, seed: int) -> Pipeline:
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed)
    )


@dataclass
class ProbeFit:
    """A fitted probe: the chosen ``C``, the validation score of every ``C`` tried, the refit classifier."""

    c: float
    val_scores: dict[float, float]
    classifier: Pipeline
    n_train: int
    n_val: int


def fit_linear_probe(task: Task, train: ViewFeatures, cfg: EvalConfig) -> ProbeFit:
    """Pick ``C`` on the patient-level validation split, refit on all labelled training breasts."""
    labels = task.labels(train.metas)
    keep = labels != UNKNOWN
    if np.unique(labels[keep]).size < 2:
        raise ValueError(
            f"{task.name}: the training split has labels {sorted(set(labels[keep].tolist()))}; need two classes"
        )
    feats, labels = train.features[keep], labels[keep]
    val = patient_split([p for p, k in zip(patient_ids(train.metas), keep) if k], cfg.val_fraction, cfg.seed)
    grid = sorted(cfg.probe_c)
    if not grid:
        raise ValueError("eval.probe_c is empty: give at least one inverse regularisation strength")
    scores: dict[float, float] = {}
    best_c, best = grid[len(grid) // 2], float("nan")
    if val.any():
        x_tr, y_tr = _images(feats[~val], labels[~val])
        x_val, y_val = _images(feats[val], labels[val])
        if np.unique(y_tr).size < 2:
            raise ValueError(f"{task.name}: after holding out validation patients the training part has one class")
        for c in grid:  # ascending: on a tie the stronger regularisation wins
            clf = _logreg(c, cfg.seed).fit(x_tr, y_tr)
            scores[c] = selection_score(task, y_val, full_proba(clf, x_val, len(task.classes)))
            if _better(scores[c], best):
                best_c, best = c, scores[c]
    if np.isnan(best):
        log.warning(
            "%s probe: no usable validation score (val_fraction=%s); using C=%s", task.name, cfg.val_fraction, best_c
        )
    x_all, y_all = _images(feats, labels)
    return ProbeFit(best_c, scores, _logreg(best_c, cfg.seed).fit(x_all, y_all), int((~val).sum()), int(val.sum()))


def predict_linear_probe(fit: ProbeFit, features: np.ndarray, n_classes: int) -> np.ndarray:
    """``features [N, 2, F]`` -> per-view class probabilities ``[N, 2, K]``."""
    n, views, dim = features.shape
    return full_proba(fit.classifier, features.reshape(-1, dim), n_classes).reshape(n, views, n_classes)


# ---------------------------------------------------------------------------------------------- fine-tune


@dataclass
class ViewCache:
    """Decoded training images held in memory for several fine-tune epochs (fp16 images, uint8 masks)."""

    images: torch.Tensor  # [N, 2, 1, H, W] float16
    masks: torch.Tensor  # [N, 2, 1, H, W] uint8
    keys: list[str]
    metas: list[dict[str, Any]]


def cache_views(batches: Iterable[dict[str, Any]], max_gib: float) -> ViewCache:
    """Hold every breast of ``batches`` in memory; stops with an error before exceeding ``max_gib``."""
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    keys: list[str] = []
    metas: list[dict[str, Any]] = []
    used = 0
    for batch in batches:
        used += batch["images"].numel() * 3  # 2 bytes fp16 image + 1 byte mask per pixel
        if used > max_gib * 2**30:
            raise MemoryError(
                f"fine-tune cache would exceed eval.finetune_max_gib={max_gib} GiB after {len(keys)} breasts; "
                "raise the limit or fine-tune on fewer / smaller images"
            )
        images.append(batch["images"].half())
        masks.append((batch["masks"] > 0.5).to(torch.uint8))
        keys.extend(batch["keys"])
        metas.extend(batch["meta"])
    if not keys:
        raise ValueError("fine-tune: the training stream yielded no batches")
    return ViewCache(torch.cat(images), torch.cat(masks), keys, metas)


class Classifier(nn.Module):
    """Image encoder + linear head on the pooled backbone features."""

    def __init__(self, encoder: ImageEncoder, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.channels, n_classes)

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.pooled(images, masks))


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """``n / (K_present * count_k)`` (scikit-learn's "balanced"); classes without samples get weight 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = labels.size / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


@dataclass
class FineTuneFit:
    """A fine-tuned classifier (best validation epoch restored) and its training history."""

    model: Classifier
    best_epoch: int
    val_scores: list[float] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)


@torch.no_grad()
def _predict_images(model: Classifier, images: torch.Tensor, masks: torch.Tensor, batch_size: int) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, images.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        logits = model(images[sl].to(device).float(), masks[sl].to(device).float())
        out.append(logits.float().softmax(-1).cpu().numpy())
    return np.concatenate(out)


def finetune(
    task: Task, encoder: ImageEncoder, train: ViewCache, cfg: EvalConfig, use_masks: bool = True,
    log_fn: Callable[[str], None] = log.info,
) -> FineTuneFit:  # fmt: skip
    """Train ``encoder`` + a linear head on the labelled training images; keep the best validation epoch."""
    labels = task.labels(train.metas)
    keep = np.flatnonzero(labels != UNKNOWN)
    if np.unique(labels[keep]).size < 2:
        raise ValueError(f"{task.name}: the training split needs two classes to fine-tune")
    val = patient_split([patient_ids(train.metas)[i] for i in keep], cfg.val_fraction, cfg.seed)
    tr_idx, val_idx = keep[~val], keep[val]
    k = len(task.classes)
    model = Classifier(encoder, k)
    torch.manual_seed(cfg.seed)
    nn.init.zeros_(model.head.bias)
    weight = class_weights(labels[tr_idx], k)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.finetune_lr, weight_decay=cfg.finetune_weight_decay)

    def views(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        images = train.images[idx].flatten(0, 1)
        masks = train.masks[idx].flatten(0, 1) if use_masks else torch.zeros_like(train.masks[idx].flatten(0, 1))
        return images, masks, np.repeat(labels[idx], 2)

    x_tr, m_tr, y_tr = views(tr_idx)
    x_val, m_val, y_val = views(val_idx)
    y_tr_t = torch.from_numpy(y_tr)
    generator = torch.Generator().manual_seed(cfg.seed)
    fit = FineTuneFit(model, best_epoch=cfg.finetune_epochs - 1)
    best, best_state = float("nan"), None
    bs = cfg.batch_size
    for epoch in range(cfg.finetune_epochs):
        model.train()
        order = torch.randperm(x_tr.shape[0], generator=generator)
        total = 0.0
        for start in range(0, order.numel(), bs):
            idx = order[start : start + bs]
            if idx.numel() < 2:
                continue  # BatchNorm cannot train on a single image
            logits = model(x_tr[idx].float(), m_tr[idx].float())
            loss = F.cross_entropy(logits, y_tr_t[idx], weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * idx.numel()
        fit.train_losses.append(total / max(1, order.numel()))
        score = selection_score(task, y_val, _predict_images(model, x_val, m_val, bs)) if val_idx.size else float("nan")
        fit.val_scores.append(score)
        log_fn(
            f"fine-tune epoch {epoch + 1}/{cfg.finetune_epochs}: train loss {fit.train_losses[-1]:.4f}, val score {score:.4f}"
        )
        if _better(score, best):
            best, fit.best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    return fit


def predict_finetuned(model: Classifier, data: ViewCache, batch_size: int, use_masks: bool = True) -> np.ndarray:
    """Per-view class probabilities ``[N, 2, K]`` of the cached breasts."""
    images = data.images.flatten(0, 1)
    masks = data.masks.flatten(0, 1) if use_masks else torch.zeros_like(data.masks.flatten(0, 1))
    probs = _predict_images(model, images, masks, batch_size)
    return probs.reshape(data.images.shape[0], 2, -1)
