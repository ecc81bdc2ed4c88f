"""Evaluation figures (matplotlib, headless Agg backend), and the figure set of an eval result.

Each ``*_figure`` function builds a figure; the matching ``*_png`` function renders it to PNG and
returns the bytes, or writes ``path`` and returns it. Figures have a fixed size and dpi (no tight
bounding box) so a PNG is always ``figsize * dpi`` pixels and a data point maps to a known pixel.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # no display on training nodes; must precede the pyplot import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve  # noqa: E402

if TYPE_CHECKING:
    from mmclip_dist.eval.result import EvalResult

DPI = 100

# {run label: {metric name: [(step, value), ...]}}, as compare.metric_histories returns it.
History = Mapping[str, Mapping[str, Sequence[tuple[int, float]]]]


def png_bytes(fig: Figure) -> bytes:
    """Render and close ``fig``; the PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    plt.close(fig)
    return buf.getvalue()


def render_png(fig: Figure, path: Path | str | None = None) -> bytes | Path:
    """Render and close ``fig``; PNG bytes, or the written ``path``."""
    data = png_bytes(fig)
    if path is None:
        return data
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out


def roc_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str = "ROC", figsize: tuple[float, float] = (5, 5)
) -> Figure:
    """One ROC curve per ``{label: (y_true, y_score)}``, AUC in the legend, chance diagonal dashed."""
    if not curves:
        raise ValueError("roc_figure needs at least one (y_true, y_score) curve")
    fig, ax = plt.subplots(figsize=figsize, dpi=DPI, layout="constrained")
    for label, (y_true, y_score) in curves.items():
        fpr, tpr, _ = roc_curve(y_true, y_score)
        ax.plot(fpr, tpr, lw=2, label=f"{label} (AUC {roc_auc_score(y_true, y_score):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title=title)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def roc_curve_png(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path | str | None = None, title: str = "ROC"
) -> bytes | Path:
    return render_png(roc_figure(curves, title), path)


def similarity_matrix_figure(
    matrix: np.ndarray, title: str, labels: Sequence[str] | None = None, figsize: tuple[float, float] = (5, 4.5)
) -> Figure:
    """Image-text similarity heat map (paper Fig. 7): rows images, columns texts; matches on the diagonal."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"similarity matrix must be 2-D, got shape {m.shape}")
    fig, ax = plt.subplots(figsize=figsize, dpi=DPI, layout="constrained")
    im = ax.imshow(m, cmap="viridis", interpolation="nearest", aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set(title=title, xlabel="text", ylabel="image")
    if labels is not None and len(labels) <= 32:  # beyond that tick labels are unreadable
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize="x-small")
        ax.set_yticks(range(len(labels)), labels, fontsize="x-small")
    return fig


def similarity_matrix_png(
    matrix: np.ndarray, title: str, path: Path | str | None = None, labels: Sequence[str] | None = None
) -> bytes | Path:
    return render_png(similarity_matrix_figure(matrix, title, labels), path)


def confusion_matrix_figure(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], normalize: bool = False,
    title: str = "Confusion matrix", figsize: tuple[float, float] = (5, 4.5),
) -> Figure:  # fmt: skip
    """Rows true class, columns predicted; ``normalize`` divides each row by its count."""
    k = len(class_names)
    cm = confusion_matrix(y_true, y_pred, labels=list(range(k))).astype(np.float64)
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=figsize, dpi=DPI, layout="constrained")
    im = ax.imshow(cm, cmap="Blues", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046)
    for i in range(k):
        for j in range(k):
            text = f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            # dark text on light cells, light on dark, so counts stay readable
            color = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize="small")
    ax.set_xticks(range(k), class_names)
    ax.set_yticks(range(k), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return fig


def confusion_matrix_png(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], path: Path | str | None = None,
    normalize: bool = False, title: str = "Confusion matrix",
) -> bytes | Path:  # fmt: skip
    return render_png(confusion_matrix_figure(y_true, y_pred, class_names, normalize, title), path)


def loss_curves_figure(runs: History, metrics: Sequence[str] | None = None, ncols: int = 2) -> Figure:
    """One panel per metric, one line per run: ``runs = {run: {metric: [(step, value), ...]}}``."""
    names = list(metrics) if metrics is not None else sorted({m for hist in runs.values() for m in hist})
    if not names:
        raise ValueError("no metric history to plot")
    ncols = max(1, min(ncols, len(names)))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(5 * ncols, 3.5 * nrows), dpi=DPI, layout="constrained", squeeze=False
    )
    for ax, name in zip(axes.flat, names):
        for run, hist in runs.items():
            points = sorted(hist.get(name, ()))
            if points:
                steps, values = zip(*points)
                # a one-point history (a final eval metric) would be an invisible line: mark it
                ax.plot(steps, values, marker="o" if len(points) == 1 else None, label=run)
        ax.set(title=name, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    return fig


def loss_curves_png(
    runs: History, path: Path | str | None = None, metrics: Sequence[str] | None = None
) -> bytes | Path:
    return render_png(loss_curves_figure(runs, metrics), path)


def make_figures(result: EvalResult, model: Any, batch: dict[str, Any]) -> dict[str, bytes]:
    """ROC curves (binary tasks), a confusion matrix per method, and the similarity matrices of ``batch``."""
    from mmclip_dist.eval.scoring import breast_predictions
    from mmclip_dist.eval.similarity import similarity_matrices

    task = result.task
    figs: dict[str, bytes] = {}
    if task.binary:
        figs["roc_breast.png"] = png_bytes(
            roc_figure(
                {m: (p.labels, p.breast_probs[:, 1]) for m, p in result.methods.items()},
                title=f"{task.name}: per breast ({result.mode})",
            )
        )
        figs["roc_image.png"] = png_bytes(
            roc_figure(
                {m: (np.repeat(p.labels, 2), p.probs[..., 1].reshape(-1)) for m, p in result.methods.items()},
                title=f"{task.name}: per image ({result.mode})",
            )
        )
    for method, pred in result.methods.items():
        figs[f"confusion_{method}.png"] = png_bytes(
            confusion_matrix_figure(
                pred.labels, breast_predictions(pred), task.classes, title=f"{task.name} per breast: {method}"
            )
        )
    for name, matrix in similarity_matrices(model, batch).items():
        kind, view = name.split("_")
        title = f"{'global' if kind == 'global' else 'RoI'} image-text similarity ({view.upper()})"
        figs[f"similarity_{name}.png"] = png_bytes(similarity_matrix_figure(matrix, title))
    return figs
