"""Per-view class probabilities of a task -> per-image and per-breast metrics with bootstrap CIs.

Every method (zero-shot, linear probe, fine-tune, baselines) predicts ``probs [N, 2, K]``: class
probabilities for the CC and the MLO image of N breasts. Each image is one prediction (both carry
their breast's label); the breast's prediction is the mean of its two images. Binary tasks report
``binary_metrics`` per image and per breast, RSNA's pF1 per breast, and 95% bootstrap CIs that
resample whole patients (breast level) or whole breasts (image level); multi-class tasks report
``multiclass_metrics`` the same way. Definitions: docs/evaluation.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from mmclip_dist.eval.metrics import binary_metrics, bootstrap_ci, multiclass_metrics, probabilistic_f1
from mmclip_dist.eval.tasks import UNKNOWN, Task

# Metrics printed (in this order) and logged; the CI of "<name>" is logged as <name>_ci_low / _ci_high.
BINARY_SUMMARY = (
    "breast_roc_auc", "image_roc_auc", "breast_accuracy", "breast_balanced_accuracy", "image_accuracy",
    "image_balanced_accuracy", "breast_sens_at_90_spec", "breast_spec_at_80_sens", "breast_pf1",
)  # fmt: skip
MULTICLASS_SUMMARY = (
    "breast_macro_auc", "image_macro_auc", "breast_accuracy", "breast_balanced_accuracy", "image_accuracy",
    "image_balanced_accuracy",
)  # fmt: skip


@dataclass
class Predictions:
    """One method's predictions on the test breasts (unknown labels already dropped)."""

    keys: list[str]
    patient_ids: list[str]
    labels: np.ndarray  # [N] class indices
    probs: np.ndarray  # [N, 2, K] per-view class probabilities
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def breast_probs(self) -> np.ndarray:
        """``[N, K]``: the mean of the two views."""
        return self.probs.mean(axis=1)


def known(task: Task, metas: Sequence[dict[str, Any]]) -> np.ndarray:
    """Boolean mask of the breasts whose ``task`` label is known."""
    return task.labels(metas) != UNKNOWN


def make_predictions(
    task: Task, metas: Sequence[dict[str, Any]], keys: Sequence[str], probs: np.ndarray
) -> Predictions:
    """Keep the breasts with a known label; ``probs [N, 2, K]`` must have one row per entry of ``metas``."""
    labels = task.labels(metas)
    if probs.shape[:2] != (len(metas), 2) or probs.shape[2] != len(task.classes):
        raise ValueError(
            f"{task.name}: probabilities of shape {probs.shape}, expected ({len(metas)}, 2, {len(task.classes)})"
        )
    keep = labels != UNKNOWN
    if not keep.any():
        raise ValueError(f"{task.name}: none of the {len(metas)} test breasts has a known {task.name} label")
    patients = [str(m.get("patient_id", k)) for m, k in zip(metas, keys)]
    return Predictions(
        keys=[k for k, ok in zip(keys, keep) if ok],
        patient_ids=[p for p, ok in zip(patients, keep) if ok],
        labels=labels[keep],
        probs=probs[keep],
    )


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in values.items()}


def _with_ci(out: dict[str, float], name: str, ci: tuple[float, float, float]) -> None:
    out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = ci


def binary_task_metrics(pred: Predictions, bootstrap: int, seed: int = 0) -> dict[str, float]:
    """Per-image and per-breast binary metrics at threshold 0.5 on P(class 1), CIs on AUC and balanced accuracy."""
    y = pred.labels
    breast = pred.breast_probs[:, 1]
    image_y = np.repeat(y, 2)
    image_p = pred.probs[..., 1].reshape(-1)
    breast_ids = np.repeat(np.asarray(pred.keys), 2)
    out = _prefixed("breast", binary_metrics(y, breast, threshold=0.5))
    out.update(_prefixed("image", binary_metrics(image_y, image_p, threshold=0.5)))
    out["breast_pf1"] = probabilistic_f1(y, breast)
    patients = np.asarray(pred.patient_ids)

    def balanced(yy: np.ndarray, pp: np.ndarray) -> float:
        return float(balanced_accuracy_score(yy, (pp >= 0.5).astype(np.int64)))

    _with_ci(out, "breast_roc_auc", bootstrap_ci(roc_auc_score, y, breast, n=bootstrap, seed=seed, groups=patients))
    _with_ci(
        out, "breast_balanced_accuracy", bootstrap_ci(balanced, y, breast, n=bootstrap, seed=seed, groups=patients)
    )
    _with_ci(
        out, "image_roc_auc", bootstrap_ci(roc_auc_score, image_y, image_p, n=bootstrap, seed=seed, groups=breast_ids)
    )
    _with_ci(out, "breast_pf1", bootstrap_ci(probabilistic_f1, y, breast, n=bootstrap, seed=seed, groups=patients))
    return out


def multiclass_task_metrics(
    pred: Predictions, class_names: Sequence[str], bootstrap: int, seed: int = 0
) -> dict[str, float]:
    """Per-image and per-breast multi-class metrics (argmax), CIs on macro AUC and balanced accuracy."""
    y = pred.labels
    breast = pred.breast_probs
    image_y = np.repeat(y, 2)
    image_p = pred.probs.reshape(-1, pred.probs.shape[-1])
    out = _prefixed("breast", multiclass_metrics(y, breast, class_names))
    out.update(_prefixed("image", multiclass_metrics(image_y, image_p, class_names)))
    patients = np.asarray(pred.patient_ids)

    def macro_auc(yy: np.ndarray, pp: np.ndarray) -> float:
        return multiclass_metrics(yy, pp, class_names)["macro_auc"]

    def balanced(yy: np.ndarray, pp: np.ndarray) -> float:
        return float(balanced_accuracy_score(yy, pp.argmax(1)))

    if np.unique(y).size > 1:  # one class only: AUCs are NaN and a CI means nothing
        _with_ci(out, "breast_macro_auc", bootstrap_ci(macro_auc, y, breast, n=bootstrap, seed=seed, groups=patients))
        _with_ci(
            out, "breast_balanced_accuracy", bootstrap_ci(balanced, y, breast, n=bootstrap, seed=seed, groups=patients)
        )
    return out


def score(task: Task, pred: Predictions, bootstrap: int, seed: int = 0) -> dict[str, float]:
    """Fill and return ``pred.metrics`` for ``task``; a binary test set needs both classes."""
    if task.binary:
        present = set(np.unique(pred.labels).tolist())
        if present != {0, 1}:
            raise ValueError(
                f"{task.name}: the test breasts hold only class {sorted(present)} "
                f"({[task.classes[c] for c in sorted(present)]}); AUC and sensitivity need both"
            )
        pred.metrics = binary_task_metrics(pred, bootstrap, seed)
    else:
        pred.metrics = multiclass_task_metrics(pred, task.classes, bootstrap, seed)
    return pred.metrics


def summary_names(task: Task) -> tuple[str, ...]:
    """The headline metrics of ``task`` (the printed table's rows)."""
    return BINARY_SUMMARY if task.binary else MULTICLASS_SUMMARY


def breast_predictions(pred: Predictions) -> np.ndarray:
    """Predicted class per breast: argmax of the mean probabilities (= threshold 0.5 for two classes)."""
    return pred.breast_probs.argmax(axis=1)
