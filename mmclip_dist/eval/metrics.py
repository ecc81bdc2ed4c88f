"""Classification metrics for mammography evaluation: numpy arrays in, plain floats out.

Binary tasks (malignancy, mass, calcification) use :func:`binary_metrics`, RSNA's probabilistic F1
(:func:`probabilistic_f1`) and breast-level aggregation (:func:`aggregate_per_breast`); multi-class
tasks (density A-D, BI-RADS groups) use :func:`multiclass_metrics`. :func:`bootstrap_ci` puts a
percentile confidence interval on any of them, resampling whole breasts or patients when asked.
Every definition is spelled out in ``docs/evaluation.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score, roc_curve

DENSITY_CLASSES: tuple[str, ...] = ("A", "B", "C", "D")
"""ACR breast density categories, in the column order :func:`multiclass_metrics` expects."""


# --------------------------------------------------------------------------- input checks


def _binary_labels(y_true: np.ndarray | Sequence[int], name: str = "y_true") -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.size == 0:
        raise ValueError(f"{name} is empty")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        hint = " (-1 marks an unknown label: drop those samples before scoring)" if y[i] == -1 else ""
        raise ValueError(f"{name}[{i}] = {y[i].item()!r}: binary labels must be 0 or 1{hint}")
    return y.astype(np.int64)


def _scores(y_score: np.ndarray | Sequence[float], n: int, name: str = "y_score") -> np.ndarray:
    s = np.asarray(y_score, dtype=np.float64)
    if s.ndim != 1 or s.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with {n} entries (one per label), got shape {s.shape}")
    bad = ~np.isfinite(s)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{i}] = {s[i].item()!r} is not a finite number")
    return s


def _both_classes(y: np.ndarray, what: str) -> None:
    if y.min() == y.max():
        raise ValueError(f"{what} needs both classes in y_true; all {y.size} labels are {int(y[0])}")


# --------------------------------------------------------------------------- ROC operating points


def _roc_at(x: np.ndarray, y: np.ndarray, target: float, best: Literal["max", "min"]) -> float:
    """Value of the piecewise-linear ROC polyline ``(x[i], y[i])`` at ``x = target``.

    ``x`` is non-decreasing (fpr or tpr in threshold order). Where the polyline has a vertical run at
    ``x = target`` (several operating points share it) the best of them is returned (``best``); else
    the two operating points around ``target`` are linearly interpolated, which is the ROC of a
    classifier choosing randomly between those two thresholds, so the value is achievable.
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"ROC operating point {target} is outside [0, 1]")
    # A float target such as 1 - 0.9 is 0.09999999999999998, not 0.1: compare with a tolerance.
    exact = np.isclose(x, target, rtol=0.0, atol=1e-12)
    if exact.any():
        return float(y[exact].max() if best == "max" else y[exact].min())
    j = int(np.searchsorted(x, target, side="right"))  # first point beyond the target
    i = j - 1  # the last point before it: the end of any run at x[i], so the start of the segment
    return float(y[i] + (y[j] - y[i]) * (target - x[i]) / (x[j] - x[i]))


def sensitivity_at_specificity(y_true: np.ndarray, y_score: np.ndarray, specificity: float = 0.9) -> float:
    """Sensitivity (TPR) of the interpolated ROC curve at FPR = 1 - ``specificity``."""
    y = _binary_labels(y_true)
    s = _scores(y_score, y.size)
    _both_classes(y, "sensitivity at specificity")
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return _roc_at(fpr, tpr, 1.0 - specificity, best="max")


def specificity_at_sensitivity(y_true: np.ndarray, y_score: np.ndarray, sensitivity: float = 0.8) -> float:
    """Specificity (1 - FPR) of the interpolated ROC curve at TPR = ``sensitivity``."""
    y = _binary_labels(y_true)
    s = _scores(y_score, y.size)
    _both_classes(y, "specificity at sensitivity")
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    # Along the ROC polyline tpr is non-decreasing too; the lowest fpr on a horizontal run is best.
    return 1.0 - _roc_at(tpr, fpr, sensitivity, best="min")


def youden_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Threshold maximising Youden's J = TPR - FPR; fit it on a validation set, apply it on test.

    Samples with ``score >= threshold`` are positive. Ties go to the highest such threshold.
    """
    y = _binary_labels(y_true)
    s = _scores(y_score, y.size)
    _both_classes(y, "youden_threshold")
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    # thresholds[0] is +inf (nothing predicted positive, J = 0); never a useful operating point.
    best = 1 + int(np.argmax((tpr - fpr)[1:]))
    return float(thresholds[best])


# --------------------------------------------------------------------------- binary metrics


def binary_metrics(
    y_true: np.ndarray | Sequence[int], y_score: np.ndarray | Sequence[float], threshold: float | None = None
) -> dict[str, float]:
    """Threshold-free (AUC, ROC operating points) and thresholded (accuracy etc.) binary metrics.

    ``threshold=None`` means 0.5, right for calibrated probabilities; for similarity scores or an
    imbalanced set pass ``youden_threshold(...)`` computed on the *validation* split. A sample is
    predicted positive when ``score >= threshold``.
    """
    y = _binary_labels(y_true)
    s = _scores(y_score, y.size)
    _both_classes(y, "binary_metrics")
    thr = 0.5 if threshold is None else float(threshold)
    pred = (s >= thr).astype(np.int64)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "sensitivity": tp / n_pos,
        "specificity": tn / n_neg,
        "roc_auc": float(roc_auc_score(y, s)),
        "sens_at_90_spec": sensitivity_at_specificity(y, s, 0.9),
        "spec_at_80_sens": specificity_at_sensitivity(y, s, 0.8),
        "threshold": thr,
        "n": float(y.size),
        "n_pos": float(n_pos),
    }


def probabilistic_f1(
    y_true: np.ndarray | Sequence[int], y_prob: np.ndarray | Sequence[float], beta: float = 1.0
) -> float:
    """RSNA Screening Mammography pF_beta: F_beta of probabilistic TP / FP counts.

    Probabilities are clipped to [0, 1]; pTP = sum of probabilities over positives, pFP = sum over
    negatives, pPrecision = pTP / (pTP + pFP), pRecall = pTP / #positives. Returns 0 when pPrecision or
    pRecall is 0 (as the Kaggle scorer does; it also covers all-zero predictions, where it would divide
    by zero).
    """
    y = _binary_labels(y_true)
    p = np.clip(_scores(y_prob, y.size, "y_prob"), 0.0, 1.0)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("probabilistic_f1 needs at least one positive label; recall is undefined otherwise")
    ctp = float(p[y == 1].sum())
    cfp = float(p[y == 0].sum())
    if ctp == 0.0:
        return 0.0
    precision = ctp / (ctp + cfp)
    recall = ctp / n_pos
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall)


# --------------------------------------------------------------------------- breast-level aggregation


def prediction_id(patient_id: str | int, laterality: str) -> str:
    """RSNA's per-breast id, ``<patient_id>_<L|R>``."""
    lat = str(laterality).upper()
    if lat not in ("L", "R"):
        raise ValueError(f"laterality {laterality!r} of patient {patient_id!r} must be 'L' or 'R'")
    return f"{patient_id}_{lat}"


def aggregate_per_breast(
    breast_ids: Sequence[str] | np.ndarray,
    scores: np.ndarray | Sequence[float],
    labels: np.ndarray | Sequence[int],
    how: Literal["mean", "max"] = "mean",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image (CC, MLO, ...) predictions → one per breast; returns ``(ids, scores, labels)``.

    ``breast_ids`` are e.g. :func:`prediction_id` strings. The output is sorted by id. Every image of
    a breast must carry the same label (the label is per breast); a mismatch is an error.
    """
    ids = np.asarray(breast_ids)
    if ids.ndim != 1:
        raise ValueError(f"breast_ids must be 1-D, got shape {ids.shape}")
    s = _scores(scores, ids.size, "scores")
    lab = np.asarray(labels)
    if lab.shape != ids.shape:
        raise ValueError(f"labels must have one entry per image ({ids.size}), got shape {lab.shape}")
    if how not in ("mean", "max"):
        raise ValueError(f"how={how!r}: expected 'mean' or 'max'")
    uniq, inverse = np.unique(ids, return_inverse=True)
    counts = np.bincount(inverse, minlength=uniq.size)
    if how == "mean":
        out = np.bincount(inverse, weights=s, minlength=uniq.size) / counts
    else:
        out = np.full(uniq.size, -np.inf)
        np.maximum.at(out, inverse, s)
    first = np.zeros(uniq.size, dtype=np.int64)
    # Reverse assignment leaves each breast's first occurrence in `first`.
    first[inverse[::-1]] = np.arange(ids.size)[::-1]
    out_labels = lab[first]
    mismatch = lab != out_labels[inverse]
    if mismatch.any():
        i = int(np.flatnonzero(mismatch)[0])
        raise ValueError(
            f"breast {ids[i].item()!r}: image {i} has label {lab[i].item()!r} but image {int(first[inverse[i]])} "
            f"has {out_labels[inverse[i]].item()!r}; labels must be per breast"
        )
    return uniq, out, out_labels


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y_true: np.ndarray | Sequence[int],
    y_score: np.ndarray | Sequence[float],
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: np.ndarray | Sequence[str] | None = None,
) -> tuple[float, float, float]:
    """``(point, lo, hi)``: ``metric_fn`` on all data and its percentile bootstrap interval.

    With ``groups`` (breast or patient ids, one per sample) whole groups are resampled, so the
    correlated images of one breast or patient stay together. A resample that lacks a class present in
    the full data (for binary: a one-class resample, where AUC is undefined) is discarded and redrawn,
    so exactly ``n`` valid resamples are scored; after ``20 * n`` draws it gives up with an error.
    ``y_score`` may be 2-D (samples x classes) for multi-class metrics.
    """
    y = np.asarray(y_true)
    s = np.asarray(y_score)
    if y.ndim != 1 or s.shape[:1] != y.shape:
        raise ValueError(f"y_true must be 1-D and y_score have as many rows; got {y.shape} and {s.shape}")
    if n < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"need n >= 1 and 0 < alpha < 1, got n={n}, alpha={alpha}")
    point = float(metric_fn(y, s))
    rng = np.random.default_rng(seed)
    members: list[np.ndarray] | None = None
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != y.shape:
            raise ValueError(f"groups must have one entry per sample ({y.size}), got shape {g.shape}")
        _, inverse = np.unique(g, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    n_classes = np.unique(y).size
    values: list[float] = []
    draws = 0
    while len(values) < n:
        draws += 1
        if draws > 20 * n:
            raise ValueError(
                f"bootstrap: only {len(values)} of {draws - 1} resamples contained all {n_classes} classes; "
                "too few samples of the rare class to bootstrap"
            )
        if members is None:
            idx = rng.integers(0, y.size, size=y.size)
        else:
            idx = np.concatenate([members[k] for k in rng.integers(0, len(members), size=len(members))])
        if np.unique(y[idx]).size < n_classes:
            continue
        values.append(float(metric_fn(y[idx], s[idx])))
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return point, float(lo), float(hi)


# --------------------------------------------------------------------------- multi-class


def encode_classes(values: Sequence[str] | np.ndarray, classes: Sequence[str] = DENSITY_CLASSES) -> np.ndarray:
    """Class names (e.g. density ``"A".."D"``) → indices into ``classes``; unknown names are an error."""
    index = {str(c): k for k, c in enumerate(classes)}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        key = str(v)
        if key not in index:
            raise ValueError(f"label {i}: {v!r} is not one of the classes {list(classes)}")
        out[i] = index[key]
    return out


def multiclass_metrics(
    y_true: np.ndarray | Sequence[int], y_prob: np.ndarray, class_names: Sequence[str] | None = None
) -> dict[str, float]:
    """Accuracy, balanced accuracy (of the argmax) and one-vs-rest AUCs of a ``[N, K]`` score matrix.

    ``y_true`` holds class indices 0..K-1. ``auc_<class>`` is the AUC of column k for class k vs the
    rest; ``macro_auc`` is their unweighted mean over the classes present in ``y_true`` (a class with
    no sample, or with every sample, has no AUC and is left out and reported as NaN).
    """
    y = np.asarray(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    if p.ndim != 2 or y.ndim != 1 or p.shape[0] != y.shape[0]:
        raise ValueError(f"need y_true [N] and y_prob [N, K]; got {y.shape} and {p.shape}")
    k = p.shape[1]
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} score columns")
    bad = (y < 0) | (y >= k) | (y != np.round(y))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"y_true[{i}] = {y[i].item()!r} is not a class index in 0..{k - 1}")
    if not np.isfinite(p).all():
        raise ValueError(f"y_prob row {int(np.flatnonzero(~np.isfinite(p).all(1))[0])} has a non-finite score")
    y = y.astype(np.int64)
    pred = p.argmax(axis=1)
    out = {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
    }
    aucs = []
    for c, name in enumerate(names):
        is_c = y == c
        auc = float(roc_auc_score(is_c, p[:, c])) if 0 < is_c.sum() < y.size else float("nan")
        out[f"auc_{name}"] = auc
        if not np.isnan(auc):
            aucs.append(auc)
    out["macro_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    return out
