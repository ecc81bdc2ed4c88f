"""Evaluation figures: valid PNGs of the promised size, with the data visibly drawn."""

import io

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from mmclip_dist.eval.plots import (
    confusion_matrix_png,
    loss_curves_png,
    render_png,
    roc_curve_png,
    similarity_matrix_figure,
    similarity_matrix_png,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rgb(png: bytes) -> np.ndarray:
    assert png[:8] == PNG_MAGIC
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _count_color(img: np.ndarray, hex_color: str, tol: int = 10) -> int:
    rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(img - rgb).max(axis=-1) <= tol).sum())


def test_similarity_matrix_diagonal_is_drawn_bright():
    n = 6
    fig = similarity_matrix_figure(np.eye(n), "global image-text similarity")
    ax = fig.axes[0]
    png = render_png(fig)
    img = _rgb(png)
    assert img.shape == (450, 500, 3)  # figsize (5, 4.5) at 100 dpi
    height = img.shape[0]

    def pixel(row: int, col: int) -> np.ndarray:
        x, y = ax.transData.transform((col, row))  # cell centre, display pixels from the bottom
        return img[int(round(height - y)), int(round(x))]

    bright = np.array(colormaps["viridis"](1.0)[:3]) * 255
    dark = np.array(colormaps["viridis"](0.0)[:3]) * 255
    for i in range(n):
        assert np.abs(pixel(i, i) - bright).max() <= 3
        assert np.abs(pixel(i, (i + 1) % n) - dark).max() <= 3


def test_similarity_matrix_png_writes_file(tmp_path):
    matrix = np.random.default_rng(0).random((4, 4))
    out = similarity_matrix_png(matrix, "RoI", tmp_path / "sub" / "sim.png", labels=list("abcd"))
    assert out == tmp_path / "sub" / "sim.png"
    assert Image.open(out).size == (500, 450)
    with pytest.raises(ValueError, match="2-D"):
        similarity_matrix_png(np.zeros(3), "bad")


def test_confusion_matrix_cells_shaded_by_count():
    y_true = np.array([0] * 9 + [1] * 9 + [2] * 9)
    y_pred = y_true.copy()
    y_pred[0] = 1  # one mistake: cell (0, 1) = 1, diagonal 8, 9, 9
    png = confusion_matrix_png(y_true, y_pred, ["A", "B", "C"])
    img = _rgb(png)
    assert img.shape == (450, 500, 3)
    # "Blues" at the maximum is dark navy; at zero nearly white: both must be present
    assert _count_color(img, "#08306b", tol=12) > 500
    assert _count_color(img, "#f7fbff", tol=6) > 500


def test_roc_and_loss_curves(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    curves = {"good": (y, y + rng.random(100)), "chance": (y, rng.random(100))}
    img = _rgb(roc_curve_png(curves, title="malignancy"))
    assert img.shape == (500, 500, 3)
    assert _count_color(img, "#1f77b4") > 100 and _count_color(img, "#ff7f0e") > 100  # both lines
    runs = {
        "run-a": {"loss": [(s, 1.0 / (s + 1)) for s in range(10)], "auc": [(9, 0.7)]},
        "run-b": {"loss": [(s, 2.0 / (s + 1)) for s in range(10)]},
    }
    out = loss_curves_png(runs, tmp_path / "curves.png")
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape == (350, 1000, 3)  # two panels side by side, 5 x 3.5 in each
    assert _count_color(img, "#1f77b4") > 50 and _count_color(img, "#ff7f0e") > 50
    with pytest.raises(ValueError, match="no metric"):
        loss_curves_png({"a": {}})
