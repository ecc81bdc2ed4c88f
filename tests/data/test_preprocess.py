"""preprocess_view / breast_bbox: boxes land where hand-computed after flip, crop, resize and pad."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmclip_dist.data.build.dicom import DecodedImage
from mmclip_dist.data.build.preprocess import breast_bbox, chest_wall_side, preprocess_view

U16 = 65535


def _right_breast(scale: int = 1) -> DecodedImage:
    """100x200 grid, a 'breast' rectangle at rows 20..80, columns 150..200 (chest wall on the right).

    ``scale`` < 1 is not used; scale=2 returns the same scene decoded at half resolution (as a
    JPEG 2000 reduced decode would), with original_shape still 100x200.
    """
    h, w = 100 // scale, 200 // scale
    pixels = np.zeros((h, w), dtype=np.float32)
    pixels[20 // scale : 80 // scale, 150 // scale :] = 0.8
    return DecodedImage(pixels, (100, 200), "R", "CC", "1.2.840.10008.1.2.1", scale=(h / 100, w / 200))


@pytest.mark.parametrize("scale", [1, 2])
def test_box_after_flip_crop_resize_pad(scale: int) -> None:
    img = _right_breast(scale)
    box = np.array([[160.0, 30.0, 180.0, 50.0]])  # DICOM grid
    out = preprocess_view(img, box, "R", (120, 120), flip_to="left")
    # flip (W=200): x 160..180 -> 20..40; breast -> columns 0..50. Crop rows 20..80, cols 0..50:
    # box -> x 20..40, y 10..30. Fit 60x50 into 120x120: factor min(2, 2.4) = 2 -> 120x100;
    # box -> x 40..80, y 20..60; pad 20 columns on the right (chest wall stays at x = 0).
    np.testing.assert_allclose(out.boxes, [[40.0, 20.0, 80.0, 60.0]], atol=1e-4)
    assert out.box_flags == ["ok"]
    assert out.image.dtype == np.uint16 and out.image.shape == (120, 120)
    assert np.all(out.image[:, 100:] == 0)
    assert abs(int(out.image[60, 50]) - round(0.8 * U16)) <= 1
    t = out.transform
    assert t["flipped"] is True
    assert t["crop"] == pytest.approx([20.0, 150.0, 80.0, 200.0])  # unflipped DICOM grid
    assert t["scale"] == pytest.approx([2.0, 2.0])  # output pixels per DICOM pixel
    assert t["pad"] == [0, 0] and t["out_size"] == [120, 120]
    json.dumps(t)  # the record goes into the shard's JSON


def test_flags_clipped_and_outside() -> None:
    img = _right_breast()
    boxes = np.array(
        [
            [190.0, 30.0, 210.0, 50.0],  # flipped x -10..10: half left of the crop -> clipped 0..20
            [160.0, 85.0, 180.0, 95.0],  # rows 85..95 lie below the breast (crop rows 20..80)
            [160.0, 30.0, 180.0, 50.0],
        ]
    )
    out = preprocess_view(img, boxes, "R", (120, 120), flip_to="left")
    assert out.box_flags == ["clipped", "outside", "ok"]
    np.testing.assert_allclose(out.boxes[0], [0.0, 20.0, 20.0, 60.0], atol=1e-4)
    assert out.boxes.shape == (3, 4)  # aligned with the input; callers drop "outside"


def test_mask_follows_the_box() -> None:
    img = _right_breast()
    mask = np.zeros((100, 200), dtype=np.uint8)
    mask[30:50, 160:180] = 1
    out = preprocess_view(img, np.array([[160.0, 30.0, 180.0, 50.0]]), "R", (120, 120), mask=mask)
    ys, xs = np.nonzero(out.mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (40, 20, 80, 60)
    assert out.mask.dtype == np.uint8 and set(np.unique(out.mask)) == {0, 1}


def test_mask_of_wrong_size_is_an_error() -> None:
    with pytest.raises(ValueError, match="mask shape"):
        preprocess_view(_right_breast(), np.zeros((0, 4)), "R", (120, 120), mask=np.zeros((10, 10)))


def test_flip_to_right_keeps_a_right_breast_and_pads_left() -> None:
    img = _right_breast()
    out = preprocess_view(img, np.array([[160.0, 30.0, 180.0, 50.0]]), "R", (120, 120), flip_to="right")
    # No flip: crop rows 20..80, cols 150..200 -> box x 10..30, y 10..30 -> x2: 20..60, pad left 20.
    assert out.transform["flipped"] is False
    np.testing.assert_allclose(out.boxes, [[40.0, 20.0, 80.0, 60.0]], atol=1e-4)
    assert out.transform["pad"] == [0, 20]
    assert np.all(out.image[:, :20] == 0) and out.image[60, 119] > 0


def test_flip_to_none_and_left_breast() -> None:
    img = _right_breast()
    flipped = DecodedImage(img.pixels[:, ::-1].copy(), (100, 200), "L", "CC", img.transfer_syntax)
    out = preprocess_view(flipped, np.array([[20.0, 30.0, 40.0, 50.0]]), "L", (120, 120), flip_to="none")
    assert out.transform["flipped"] is False and out.transform["pad"] == [0, 0]
    np.testing.assert_allclose(out.boxes, [[40.0, 20.0, 80.0, 60.0]], atol=1e-4)


def test_empty_boxes_and_bad_boxes() -> None:
    out = preprocess_view(_right_breast(), np.zeros((0, 4)), "R", (64, 64))
    assert out.boxes.shape == (0, 4) and out.box_flags == []
    with pytest.raises(ValueError, match="x2 < x1"):
        preprocess_view(_right_breast(), np.array([[10.0, 0.0, 5.0, 4.0]]), "R", (64, 64))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        preprocess_view(_right_breast(), np.array([1.0, 2.0, 3.0]), "R", (64, 64))


def test_resize_is_antialiased() -> None:
    # A 1-pixel checkerboard shrunk 4x must average to grey, not alias to black or white.
    pixels = np.zeros((80, 80), dtype=np.float32)
    yy, xx = np.mgrid[0:80, 0:80]
    pixels[:, :] = np.where((yy + xx) % 2 == 0, 0.3, 0.7)
    img = DecodedImage(pixels, (80, 80), "L", "CC", "x")
    out = preprocess_view(img, np.zeros((0, 4)), "L", (20, 20)).image.astype(np.float64) / U16
    assert np.abs(out[3:-3, 3:-3] - 0.5).max() < 0.03


def test_full_range_uint16() -> None:
    pixels = np.zeros((10, 10), dtype=np.float32)
    pixels[2:8, :5] = 1.0  # crop 6x5 -> 10x8 in a 10x10 output, 2 padding columns
    out = preprocess_view(DecodedImage(pixels, (10, 10), "L", "CC", "x"), np.zeros((0, 4)), "L", (10, 10))
    assert out.image[:, :8].min() == U16 and out.image[:, 8:].max() == 0  # full 16-bit range, padding 0


def test_breast_bbox_ignores_markers_and_handles_blank() -> None:
    pixels = np.zeros((300, 200), dtype=np.float32)
    pixels[40:260, 0:120] = 0.5  # breast
    pixels[10:20, 170:190] = 1.0  # a bright lead marker / label
    assert breast_bbox(pixels) == (40, 0, 260, 120)
    assert breast_bbox(np.zeros((30, 20), dtype=np.float32)) == (0, 0, 30, 20)


def test_breast_bbox_on_a_large_image_never_cuts_tissue() -> None:
    pixels = np.zeros((2100, 1700), dtype=np.float32)
    pixels[301:1899, 0:1003] = 0.6
    y0, x0, y1, x1 = breast_bbox(pixels)  # computed on a subsampled copy (stride 1700 // 256 = 6)
    assert y0 <= 301 and x0 == 0 and y1 >= 1899 and x1 >= 1003
    assert 301 - y0 <= 12 and y1 - 1899 <= 12 and x1 - 1003 <= 12


def test_chest_wall_side() -> None:
    assert chest_wall_side("L") == "left" and chest_wall_side("r") == "right"
    pixels = np.zeros((10, 10))
    pixels[:, 7:] = 1.0
    assert chest_wall_side(None, pixels) == "right"
    with pytest.raises(ValueError, match="laterality"):
        chest_wall_side("B")


@pytest.mark.parametrize(("shape", "size"), [((2051, 1260), (760, 467)), ((301, 97), (40, 13)), ((50, 60), (120, 144))])
def test_resize_lanczos_is_pillows_lanczos(shape: tuple[int, int], size: tuple[int, int]) -> None:
    # The banded matrix products compute Pillow's antialiased LANCZOS (what the builder used before): the
    # same weights, so the same pixels up to float32 rounding, when shrinking 2.7x or 7.5x and when enlarging.
    from PIL import Image

    from mmclip_dist.data.build.preprocess import resize_lanczos

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    image = (0.5 + 0.3 * np.sin(x / 17.0) * np.cos(y / 23.0) + rng.normal(0, 0.05, shape)).astype(np.float32)
    whole = np.zeros((shape[0] + 20, shape[1] + 30), np.float32)
    whole[10:-10, 5:-25] = image
    crop = whole[10:-10, 5:-25]  # a strided view, read in place
    pillow = np.asarray(Image.fromarray(image).resize(size[::-1], Image.Resampling.LANCZOS), dtype=np.float32)
    ours = resize_lanczos(crop, size)
    assert ours.shape == size and ours.dtype == np.float32
    np.testing.assert_allclose(ours, pillow, atol=2e-6)
    # flipping the result equals resizing the flipped input (mirrored sampling positions)
    np.testing.assert_allclose(resize_lanczos(image[:, ::-1], size), ours[:, ::-1], atol=2e-6)
