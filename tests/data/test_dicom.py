"""decode_dicom: every transfer syntax, VOI (LUT, windows, SIGMOID), MONOCHROME1, padding, errors, J2K reduce."""

from __future__ import annotations

import io
import math

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from scipy import ndimage

from mmclip_devtools.fixtures.dicoms import (
    DEFLATED,
    EXPLICIT,
    J2K,
    J2K_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_NEAR,
    LOSSLESS_SYNTAXES,
    encode,
    j2k_codestream,
    make_dataset,
    read_back,
    set_encapsulated,
    to_bytes,
)
from mmclip_dist.data.build.dicom import (
    DicomDecodeError,
    _to_display,
    _to_display_direct,
    apply_window,
    choose_reduce_level,
    decode_dicom,
)


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return (a - a.min()) / (a.max() - a.min())


@pytest.mark.parametrize("syntax", LOSSLESS_SYNTAXES)
def test_lossless_syntaxes_decode_to_the_source_values(syntax: str, gradient_image: np.ndarray) -> None:
    data = to_bytes(encode(make_dataset(gradient_image), syntax))
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == syntax  # the fixture really is in that syntax
    np.testing.assert_array_equal(read_back(data), gradient_image)

    img = decode_dicom(data)
    assert img.transfer_syntax == syntax
    assert img.original_shape == (40, 56)
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (40, 56)
    assert img.voi == "minmax"
    assert img.scale == (1.0, 1.0)
    # No VOI tags: min-max of the stored values, never squashed to 8 bits.
    np.testing.assert_allclose(img.pixels, _minmax(gradient_image), atol=1e-6)
    assert len(np.unique(img.pixels)) == len(np.unique(gradient_image))


def test_deflated_file_really_is_compressed(gradient_image: np.ndarray) -> None:
    raw = gradient_image.astype("<u2").tobytes()
    assert raw in to_bytes(make_dataset(gradient_image), EXPLICIT)
    assert raw not in to_bytes(make_dataset(gradient_image), DEFLATED)


def test_sv1_fixture_uses_selection_value_1(gradient_image: np.ndarray) -> None:
    ds = encode(make_dataset(gradient_image), JPEG_LOSSLESS_SV1)
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    sos = frame.index(b"\xff\xda")
    assert frame[sos + 7] == 1  # Ss byte of the scan header: predictor 1


@pytest.mark.parametrize(
    ("syntax", "max_error", "mean_error"), [(J2K, 8 / 4096, 2 / 4096), (JPEG_LS_NEAR, 2 / 4096, 2 / 4096)]
)
def test_lossy_syntaxes_stay_close(syntax: str, max_error: float, mean_error: float) -> None:
    arr = _smooth_image(48, 64)
    data = to_bytes(encode(make_dataset(arr, windows=[(2048, 4096)], voi_function="LINEAR_EXACT"), syntax))
    img = decode_dicom(data)
    assert img.transfer_syntax == syntax
    expected = (arr.astype(np.float64) - 2048) / 4096 + 0.5
    error = np.abs(img.pixels - expected)
    assert error.max() <= max_error + 1e-6 and error.mean() <= mean_error + 1e-6


def _row(values: list[int], **kwargs) -> np.ndarray:
    data = to_bytes(make_dataset(np.array([values], dtype=np.uint16), **kwargs))
    return decode_dicom(data).pixels[0].astype(np.float64)


def test_linear_window_follows_the_standard() -> None:
    # center 1000, width 1001 -> c' = 999.5, w' = 1000: ramp from 499.5 to 1499.5.
    out = _row([499, 500, 1000, 1499, 1500, 4000], windows=[(1000, 1001)])
    np.testing.assert_allclose(out, [0.0, 0.0005, 0.5005, 0.9995, 1.0, 1.0], atol=1e-6)


def test_linear_exact_and_sigmoid() -> None:
    out = _row([500, 750, 1000, 1500, 1501], windows=[(1000, 1000)], voi_function="LINEAR_EXACT")
    np.testing.assert_allclose(out, [0.0, 0.25, 0.5, 1.0, 1.0], atol=1e-6)
    out = _row([1000, 1250, 750], windows=[(1000, 500)], voi_function="SIGMOID")
    np.testing.assert_allclose(out, [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))], atol=1e-6)


def test_first_of_several_windows_is_used() -> None:
    out = _row([500, 1000, 1500], windows=[(1000, 1000), (3000, 100)], voi_function="LINEAR_EXACT")
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0], atol=1e-6)


def test_monochrome1_is_inverted_after_windowing() -> None:
    # Windowed: 500 -> 0, 1000 -> 0.5; inverted after: 1, 0.5. Inverting the stored values first
    # (4095 - x = 3595, 3095) would put both above the window: 1 and 1, then 0 and 0.
    out = _row([500, 1000], windows=[(1000, 1000)], voi_function="LINEAR_EXACT", photometric="MONOCHROME1")
    np.testing.assert_allclose(out, [1.0, 0.5], atol=1e-6)


@pytest.mark.parametrize("lut_vr", ["US", "OW"])
def test_voi_lut_sequence_takes_precedence_over_windows(lut_vr: str) -> None:
    lut = (100, 8, [0, 51, 102, 153, 204, 255])  # first mapped value 100, 8-bit output
    out = _row([50, 100, 102, 105, 300], voi_lut=lut, lut_vr=lut_vr, windows=[(1000, 10)])
    np.testing.assert_allclose(out, [0.0, 0.0, 0.4, 1.0, 1.0], atol=1e-6)
    img = decode_dicom(to_bytes(make_dataset(np.array([[100]], dtype=np.uint16), voi_lut=lut)))
    assert img.voi == "voi_lut"


def test_rescale_is_applied_before_the_window() -> None:
    # stored 550 -> 2*550 - 100 = 1000 = window centre
    out = _row([550, 300, 800], rescale=(2.0, -100.0), windows=[(1000, 1000)], voi_function="LINEAR_EXACT")
    np.testing.assert_allclose(out, [0.5, 0.0, 1.0], atol=1e-6)


def test_padding_value_is_zero_and_excluded_from_minmax() -> None:
    # MONOCHROME1 scanners pad with the brightest stored value; tissue 1000..3000.
    out = _row([4095, 1000, 2000, 3000, 4095], photometric="MONOCHROME1", padding=(4095, None))
    np.testing.assert_allclose(out, [0.0, 1.0, 0.5, 0.0, 0.0], atol=1e-6)


def test_padding_range_limit() -> None:
    out = _row([0, 5, 10, 11, 111, 211], padding=(10, 0))  # range limit below the value: still 0..10
    np.testing.assert_allclose(out, [0.0, 0.0, 0.0, 0.0, 0.5, 1.0], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"windows": [(1800, 2500)]},
        {"windows": [(1800, 2500)], "voi_function": "SIGMOID", "photometric": "MONOCHROME1", "padding": (4095, None)},
        {"voi_lut": (100, 12, list(range(0, 4096, 16))), "padding": (0, 40)},
        {"windows": [(-200, 900)], "signed": True, "rescale": (1.5, -30.0), "padding": (-2048, None)},
    ],
    ids=["linear", "sigmoid-mono1-padding", "voi-lut-range-padding", "signed-rescale"],
)
def test_lookup_table_path_is_bit_identical_to_direct_evaluation(kwargs: dict) -> None:
    # decode_dicom evaluates VOI etc. once per possible stored value and indexes: it must not change a bit.
    rng = np.random.default_rng(0)
    signed = kwargs.get("signed", False)
    low, high = (-2048, 2048) if signed else (0, 4096)
    pixels = rng.integers(low, high, size=(64, 48)).astype(np.int16 if signed else np.uint16)
    ds = pydicom.dcmread(io.BytesIO(to_bytes(make_dataset(pixels, **kwargs))))
    stored = ds.pixel_array
    photometric = str(ds.PhotometricInterpretation)
    via_lut, voi = _to_display(ds, stored, photometric)
    direct, voi_direct = _to_display_direct(ds, stored.copy(), photometric)
    assert voi == voi_direct and via_lut.dtype == np.float32
    np.testing.assert_array_equal(via_lut, direct)
    assert float(via_lut.std()) > 0.0  # the fixture really exercises the mapping


def test_laterality_and_view_are_reported() -> None:
    img = decode_dicom(to_bytes(make_dataset(np.ones((4, 4)), laterality="R", view="MLO")))
    assert (img.laterality, img.view, img.photometric) == ("R", "MLO", "MONOCHROME2")
    img = decode_dicom(to_bytes(make_dataset(np.ones((4, 4)), laterality=None, view=None, extra={"Laterality": "L"})))
    assert (img.laterality, img.view) == ("L", None)


def test_bare_data_set_without_preamble_is_read(gradient_image: np.ndarray) -> None:
    ds = make_dataset(gradient_image)
    ds.file_meta = FileMetaDataset()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False, implicit_vr=True, little_endian=True)
    data = buf.getvalue()
    assert data[:2] == b"\x08\x00" and b"DICM" not in data[:200]  # starts with group 0008
    img = decode_dicom(data)
    np.testing.assert_allclose(img.pixels, _minmax(gradient_image), atol=1e-6)


# ------------------------------------------------------------------------------------------ errors


def _reason(source, **kwargs) -> str:
    with pytest.raises(DicomDecodeError) as info:
        decode_dicom(source, **kwargs)
    return info.value.reason


def test_truncated_file(tmp_path, gradient_image: np.ndarray) -> None:
    data = to_bytes(make_dataset(gradient_image))
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:-500])  # ends inside the pixel data
    with pytest.raises(DicomDecodeError) as info:
        decode_dicom(path)
    assert info.value.reason == "truncated"
    assert str(path) in str(info.value)
    assert _reason(data[:200]) in ("truncated", "unreadable", "no_pixel_data")  # cut inside the header


def test_truncated_compressed_frame(gradient_image: np.ndarray) -> None:
    data = to_bytes(encode(make_dataset(gradient_image), J2K_LOSSLESS))
    assert _reason(data[: len(data) // 2]) in ("truncated", "decode_failed")


def test_no_pixel_data(tmp_path) -> None:
    ds = make_dataset(np.ones((4, 4)))
    del ds.PixelData
    path = tmp_path / "nopix.dcm"
    path.write_bytes(to_bytes(ds))
    with pytest.raises(DicomDecodeError, match="nopix.dcm") as info:
        decode_dicom(path)
    assert info.value.reason == "no_pixel_data"


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.50", "1.2.3.4.5.6"])  # baseline JPEG (8-bit); made up
def test_unknown_transfer_syntax(syntax: str) -> None:
    ds = make_dataset(np.ones((4, 4)))
    set_encapsulated(ds, b"\xff\xd8\xff\xd9")
    with pytest.raises(DicomDecodeError, match=syntax.replace(".", r"\.")) as info:
        decode_dicom(to_bytes(ds, syntax))
    assert info.value.reason == "unsupported_transfer_syntax"


def test_not_a_dicom(tmp_path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("patient list\n" * 40)
    with pytest.raises(DicomDecodeError, match="notes.txt") as info:
        decode_dicom(path)
    assert info.value.reason == "not_dicom"
    assert _reason(tmp_path / "missing.dcm") == "unreadable"


def test_color_image_is_rejected() -> None:
    ds = make_dataset(np.ones((4, 4)))
    ds.PhotometricInterpretation = "RGB"
    assert _reason(to_bytes(ds)) == "bad_photometric"


# ---------------------------------------------------------------------------------- J2K reduce


def test_choose_reduce_level() -> None:
    assert choose_reduce_level(4096, 3328, (760, 480), max_level=5) == 2  # 1024x832; level 3 is 512 tall
    assert choose_reduce_level(1001, 1001, (501, 501), max_level=5) == 1  # ceil(1001/2) = 501
    assert choose_reduce_level(4096, 3328, (100, 100), max_level=3) == 3  # capped by the codestream
    assert choose_reduce_level(500, 500, (760, 480), max_level=5) == 0


def _smooth_image(h: int, w: int, bits: int = 12, seed: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    base = 1500 + 1000 * np.sin(x / 23.0) * np.cos(y / 31.0) + rng.integers(0, 8, (h, w))
    return np.clip(base * 2 ** (bits - 12), 0, 2**bits - 1).astype(np.uint16)


@pytest.mark.parametrize("bits", [12, 16])
def test_j2k_reduced_decode_matches_downsampled_full_decode(bits: int) -> None:
    arr = _smooth_image(256, 320, bits)
    unit = 2 ** (bits - 12)
    ds = make_dataset(arr, bits_stored=bits, windows=[(1500 * unit, 2500 * unit)])
    data = to_bytes(encode(ds, J2K_LOSSLESS))
    full = decode_dicom(data)
    small = decode_dicom(data, min_size=(60, 70))
    assert small.pixels.shape == (64, 80)  # level 2; level 3 would be 32 rows < 60
    assert small.original_shape == (256, 320) and small.scale == (0.25, 0.25)
    assert small.pixels.shape[0] >= 60 and small.pixels.shape[1] >= 70
    # The 5/3 wavelet's low-pass band is centred on the even samples: reduced pixel i summarises
    # full pixels around 4i, so the reference is a 5x5 local mean sampled at [::4, ::4].
    reference = ndimage.uniform_filter(full.pixels.astype(np.float64), size=5, mode="nearest")[::4, ::4]
    assert np.abs(small.pixels - reference).mean() < 0.005
    assert np.abs(small.pixels - reference).max() < 0.03


def test_j2k_reduced_decode_of_signed_data() -> None:
    arr = (_smooth_image(128, 128).astype(np.int32) - 2048).astype(np.int16)
    ds = make_dataset(arr, signed=True, windows=[(0, 4096)], voi_function="LINEAR_EXACT")
    data = to_bytes(encode(ds, J2K_LOSSLESS))
    small = decode_dicom(data, min_size=(32, 32))
    assert small.pixels.shape == (32, 32)
    local_mean = ndimage.uniform_filter(arr.astype(np.float64), size=5, mode="nearest")[::4, ::4]
    expected = local_mean / 4096 + 0.5
    assert np.abs(small.pixels - expected).mean() < 0.01


def test_min_size_larger_than_image_decodes_in_full() -> None:
    arr = _smooth_image(64, 64)
    data = to_bytes(encode(make_dataset(arr), J2K_LOSSLESS))
    img = decode_dicom(data, min_size=(100, 100))
    assert img.pixels.shape == (64, 64) and img.scale == (1.0, 1.0)


def test_min_size_is_ignored_for_other_syntaxes(gradient_image: np.ndarray) -> None:
    img = decode_dicom(to_bytes(make_dataset(gradient_image)), min_size=(10, 10))
    assert img.pixels.shape == (40, 56)


def test_apply_window_rejects_unknown_function() -> None:
    with pytest.raises(ValueError, match="VOILUTFunction"):
        apply_window(np.zeros(3), 0.0, 1.0, "GAMMA")


def test_j2k_codestream_levels_follow_resolutions() -> None:
    from mmclip_dist.data.build.dicom import _j2k_header

    levels, precision, signed = _j2k_header(j2k_codestream(_smooth_image(64, 64), 12, resolutions=3))
    assert (levels, precision, signed) == (2, 12, False)
