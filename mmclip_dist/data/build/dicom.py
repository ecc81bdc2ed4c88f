"""DICOM file -> float image in [0, 1]: codecs, modality LUT, VOI LUT / windowing, MONOCHROME1, padding.

The display pipeline follows DICOM PS3.3 C.11 in the standard order: stored values -> Modality LUT
(or RescaleSlope/Intercept) -> VOI (VOI LUT Sequence, else the *first* WindowCenter/WindowWidth pair
with its VOILUTFunction, else a min-max stretch of the non-padding pixels) -> MONOCHROME1 inversion.
Pixels flagged by PixelPaddingValue (and PixelPaddingRangeLimit) are excluded from the stretch and
set to 0 in the output, so "0 = background" holds for every vendor.

JPEG 2000 frames can be decoded at a reduced resolution (OpenJPEG's "reduce", through Pillow): a
wavelet level halves each axis and costs a fraction of a full decode, which is what makes building
shards from 3000x4000 mammograms affordable when the stored image is ~760x480 (bench/j2k_reduce.py:
~20x faster on a 4096x3328 12-bit file). Two approximations of a reduced decode, both far below one
output pixel: the wavelet low-pass band is centred on sample 2^r * i rather than on the block centre
(a shift of (2^r - 1)/2 DICOM pixels against ``scale``), and padding is detected on the reduced
values, so mixed tissue/padding pixels at the border count as tissue.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import UID

from mmclip_dist.data.build.deid import BURNED_IN_ATTRIBUTES, HEADER_IDENTIFIERS

# Transfer syntaxes we decode; pydicom dispatches them to its own decoders or to pylibjpeg plug-ins.
SUPPORTED_TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless, Non-Hierarchical (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
JPEG2000_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})

# Reason codes carried by DicomDecodeError.reason; shard builders count rejects per reason.
REASONS = (
    "not_dicom",  # no DICOM preamble/meta and not parseable as a raw data set
    "unreadable",  # I/O error or a data set pydicom cannot parse
    "truncated",  # the file ends before its pixel data does
    "no_pixel_data",  # no (7FE0,0010) element
    "unsupported_transfer_syntax",  # a syntax outside SUPPORTED_TRANSFER_SYNTAXES
    "bad_photometric",  # not MONOCHROME1/2 or more than one sample per pixel
    "multi_frame",  # more than one frame (e.g. tomosynthesis): not a 2D mammogram
    "decode_failed",  # the codec rejected the pixel data
)


class DicomDecodeError(ValueError):
    """A DICOM file that cannot become an image; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, source: str, reason: str, detail: str) -> None:
        super().__init__(f"{source}: {reason}: {detail}")
        self.source = source
        self.reason = reason
        self.detail = detail


@dataclass
class DecodedImage:
    """A mammogram ready for preprocessing.

    ``pixels`` is float32 [h, w] in [0, 1] after VOI, MONOCHROME1 already inverted (bright = dense),
    padding pixels 0. Boxes from the dataset CSVs live in the ``original_shape`` grid; when the
    frame was decoded at a reduced resolution, ``scale`` = pixels.shape / original_shape maps them.
    """

    pixels: np.ndarray
    original_shape: tuple[int, int]
    laterality: str | None
    view: str | None
    transfer_syntax: str
    scale: tuple[float, float] = (1.0, 1.0)
    voi: str = "minmax"  # which VOI step was applied: "voi_lut", "window", "minmax"
    photometric: str = "MONOCHROME2"
    # De-identification inputs (never written out): the header's identifying values, by attribute
    # (keys of deid.HEADER_IDENTIFIERS), and the attributes among deid.BURNED_IN_ATTRIBUTES that say YES.
    identifiers: dict[str, list[str]] = field(default_factory=dict)
    burned_in: tuple[str, ...] = ()


def decode_dicom(source: str | Path | bytes, min_size: tuple[int, int] | None = None) -> DecodedImage:
    """Decode one single-frame grayscale DICOM to a :class:`DecodedImage`.

    ``min_size`` (h, w): for JPEG 2000, decode at the coarsest resolution level whose size is still
    >= min_size on both axes; other syntaxes are always decoded in full. Every failure raises
    :class:`DicomDecodeError` naming the file and a reason code.
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    ds = _read_dataset(source, name)
    syntax = _transfer_syntax(ds, name)
    _check_image_attributes(ds, name)
    rows, cols = int(ds.Rows), int(ds.Columns)

    stored = None
    if min_size is not None and syntax in JPEG2000_SYNTAXES:
        stored = _decode_j2k_reduced(ds, name, rows, cols, min_size)
    if stored is None:
        stored = _decode_full(ds, name, syntax)
    if stored.ndim != 2:
        raise DicomDecodeError(name, "bad_photometric", f"expected a 2D frame, decoded shape {stored.shape}")

    photometric = str(ds.PhotometricInterpretation).strip()
    pixels, voi = _to_display(ds, stored, photometric)

    h, w = pixels.shape
    return DecodedImage(
        pixels=pixels,
        original_shape=(rows, cols),
        laterality=_first_str(ds, "ImageLaterality") or _first_str(ds, "Laterality"),
        view=_first_str(ds, "ViewPosition"),
        transfer_syntax=syntax,
        scale=(h / rows, w / cols),
        voi=voi,
        photometric=photometric,
        identifiers=header_identifiers(ds),
        burned_in=tuple(k for k in BURNED_IN_ATTRIBUTES if (_first_str(ds, k) or "") == "YES"),
    )


def header_identifiers(ds: pydicom.Dataset) -> dict[str, list[str]]:
    """The values of the identifying attributes (``deid.HEADER_IDENTIFIERS``) a data set holds, including the
    ids in OtherPatientIDsSequence; multi-valued attributes give one entry per value."""
    out: dict[str, list[str]] = {}
    for keyword in HEADER_IDENTIFIERS:
        value = ds.get(keyword)
        if value is None:
            continue
        values = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
        texts = [str(v).strip() for v in values if str(v).strip()]
        if texts:
            out[keyword] = texts
    for item in ds.get("OtherPatientIDsSequence", None) or []:
        if str(item.get("PatientID", "")).strip():
            out.setdefault("OtherPatientIDs", []).append(str(item.PatientID).strip())
    return out


def _to_display(ds: pydicom.Dataset, stored: np.ndarray, photometric: str) -> tuple[np.ndarray, str]:
    """Stored values → float32 in [0, 1]: modality LUT, VOI, MONOCHROME1 inversion, padding to 0.

    Every step is a function of the stored value alone (except the min/max fallback, which looks at the
    whole image), so for 8/16-bit data it is evaluated once per possible value and applied as a lookup
    table: one pass over the image instead of six, bit-identical to the direct evaluation.
    """
    windowed = "VOILUTSequence" in ds or _first_window(ds) is not None
    if windowed and stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2:
        # Index by the raw bit pattern: signed data needs no offset and no widened copy of the image.
        unsigned = np.dtype(f"{stored.dtype.byteorder}u{stored.dtype.itemsize}")
        domain = np.arange(2 ** (8 * stored.dtype.itemsize), dtype=unsigned).view(stored.dtype)
        lut, voi = _to_display_direct(ds, domain, photometric)
        return lut[stored.view(unsigned)], voi
    return _to_display_direct(ds, stored, photometric)


def _to_display_direct(ds: pydicom.Dataset, stored: np.ndarray, photometric: str) -> tuple[np.ndarray, str]:
    padding = _padding_mask(ds, stored)
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    out, voi = _apply_voi(ds, values, padding)
    # PS3.3 C.7.6.3.1.2: MONOCHROME1 means "min value = white"; inverting after VOI keeps the window
    # semantics of the file (windows are defined on the values, not on the display polarity).
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    out[padding] = 0.0
    if out.dtype == np.float32:
        return np.clip(out, 0.0, 1.0, out=out), voi
    return np.clip(out, 0.0, 1.0).astype(np.float32), voi


# --------------------------------------------------------------------------------------------------
# reading


def _read_dataset(source: str | Path | bytes, name: str) -> pydicom.Dataset:
    try:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        else:
            data = Path(source).read_bytes()
    except OSError as err:
        raise DicomDecodeError(name, "unreadable", str(err)) from err
    try:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds: pydicom.Dataset = pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError as err:
            # Old files may be a bare data set without the 128-byte preamble and "DICM"; accept one only
            # if it parses into something with image attributes, otherwise it is simply not DICOM.
            bare = _read_bare_dataset(data)
            if bare is None:
                raise DicomDecodeError(name, "not_dicom", str(err)) from err
            ds = bare
    except (EOFError, struct.error) as err:
        raise DicomDecodeError(name, "truncated", f"file ends inside an element ({err})") from err
    except zlib.error as err:
        raise DicomDecodeError(name, "truncated", f"deflated data set is corrupt or cut short ({err})") from err
    except DicomDecodeError:
        raise
    except Exception as err:  # pydicom raises assorted types on garbage; all mean "cannot parse"
        raise DicomDecodeError(name, "unreadable", f"{type(err).__name__}: {err}") from err
    ended_early = any("end of file" in str(w.message).lower() for w in caught)
    if "PixelData" not in ds:
        # pydicom drops an element it could not finish reading: if the Pixel Data tag is in the
        # bytes, the file was cut inside it rather than written without one.
        if ended_early or _PIXEL_DATA_TAG in data:
            raise DicomDecodeError(name, "truncated", "file ends inside the Pixel Data element")
        raise DicomDecodeError(name, "no_pixel_data", "no (7FE0,0010) Pixel Data element")
    return ds


_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) as little-endian group/element


def _read_bare_dataset(data: bytes) -> pydicom.Dataset | None:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "Rows" in ds and "Columns" in ds:
            return ds
    except Exception:  # anything that fails to parse even when forced is not DICOM
        pass
    return None


def _transfer_syntax(ds: pydicom.Dataset, name: str) -> str:
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if not syntax:
        # A raw data set without meta header: pydicom guessed the encoding while reading.
        syntax = "1.2.840.10008.1.2" if ds.is_implicit_VR else "1.2.840.10008.1.2.1"
    if syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        label = UID(syntax).name if syntax else "missing"
        raise DicomDecodeError(name, "unsupported_transfer_syntax", f"{syntax} ({label})")
    return syntax


def _check_image_attributes(ds: pydicom.Dataset, name: str) -> None:
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomDecodeError(name, "bad_photometric", f"PhotometricInterpretation {photometric!r}")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomDecodeError(name, "bad_photometric", f"SamplesPerPixel {ds.SamplesPerPixel}")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise DicomDecodeError(name, "multi_frame", f"NumberOfFrames {ds.NumberOfFrames}")
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if keyword not in ds:
            raise DicomDecodeError(name, "unreadable", f"missing {keyword}")


def _decode_full(ds: pydicom.Dataset, name: str, syntax: str) -> np.ndarray:
    ds.file_meta.TransferSyntaxUID = UID(syntax)  # raw data sets lack it; pydicom's decoders need it
    if not UID(syntax).is_compressed:
        expected = _expected_native_bytes(ds)
        if len(ds.PixelData) < expected:
            raise DicomDecodeError(name, "truncated", f"pixel data has {len(ds.PixelData)} bytes, {expected} expected")
    try:
        return ds.pixel_array
    except Exception as err:
        text = str(err)
        # Codecs report a cut-short stream in various words; keep "truncated" as its own reason
        # because it usually means an interrupted copy, which a re-download fixes.
        if any(word in text.lower() for word in ("truncat", "less than expected", "end of", "insufficient")):
            raise DicomDecodeError(name, "truncated", text) from err
        raise DicomDecodeError(name, "decode_failed", f"{type(err).__name__}: {text}") from err


def _expected_native_bytes(ds: pydicom.Dataset) -> int:
    return int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8


# --------------------------------------------------------------------------------------------------
# JPEG 2000 at reduced resolution


def _decode_j2k_reduced(
    ds: pydicom.Dataset, name: str, rows: int, cols: int, min_size: tuple[int, int]
) -> np.ndarray | None:
    """Decode the first frame at the coarsest level >= min_size; None when no reduction is possible."""
    from PIL import Image

    try:
        frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    except Exception as err:
        raise DicomDecodeError(name, "truncated", f"encapsulated pixel data is malformed: {err}") from err
    try:
        levels, precision, signed = _j2k_header(frame)
    except ValueError as err:
        raise DicomDecodeError(name, "decode_failed", f"JPEG 2000 header: {err}") from err
    reduce = choose_reduce_level(rows, cols, min_size, levels)
    if reduce == 0:
        return None
    try:
        image = Image.open(io.BytesIO(frame))
        # Pillow's JPEG 2000 plugin reads a `reduce` attribute before load() (its documented API); the
        # stubs only know Image.reduce() the method.
        image.reduce = reduce  # type: ignore[method-assign,assignment]
        image.load()
        arr = np.array(image)
    except Exception as err:
        raise DicomDecodeError(name, "decode_failed", f"reduced JPEG 2000 decode: {err}") from err
    # Pillow rescales every precision to its container (8 bits for mode L, 16 for I;16) and adds
    # 2**(p-1) to signed data; undo both so the values are the stored values the tags describe.
    container = 8 if arr.dtype == np.uint8 else 16
    values = arr.astype(np.int32) >> (container - precision)
    if signed:
        values -= 1 << (precision - 1)
    expected = (math.ceil(rows / 2**reduce), math.ceil(cols / 2**reduce))
    if values.shape != expected:
        raise DicomDecodeError(name, "decode_failed", f"reduced decode gave {values.shape}, expected {expected}")
    return values


def choose_reduce_level(rows: int, cols: int, min_size: tuple[int, int], max_level: int) -> int:
    """Largest r <= max_level with ceil(rows/2^r) >= min_h and ceil(cols/2^r) >= min_w (0 if none)."""
    min_h, min_w = min_size
    level = 0
    while level < max_level:
        nxt = level + 1
        if math.ceil(rows / 2**nxt) < min_h or math.ceil(cols / 2**nxt) < min_w:
            break
        level = nxt
    return level


def _j2k_header(frame: bytes) -> tuple[int, int, bool]:
    """(decomposition levels, precision of component 0, signed) from a J2K codestream or JP2 file."""
    start = 0
    if frame[:4] != b"\xff\x4f\xff\x51":
        # JP2 wrapper: the codestream sits in the 'jp2c' box.
        pos = frame.find(b"jp2c")
        if pos < 0:
            raise ValueError("no SOC marker and no jp2c box")
        start = pos + 4
    if frame[start : start + 2] != b"\xff\x4f":
        raise ValueError("missing SOC marker")
    pos = start + 2
    levels = precision = None
    signed = False
    while pos + 4 <= len(frame):
        marker, length = struct.unpack(">HH", frame[pos : pos + 4])
        if marker == 0xFF51:  # SIZ: Ssiz of component 0 sits after 36 bytes of fixed fields
            ssiz = frame[pos + 40]
            precision, signed = (ssiz & 0x7F) + 1, bool(ssiz & 0x80)
        elif marker == 0xFF52:  # COD: number of decomposition levels is SPcod's first byte
            levels = frame[pos + 9]
        elif marker == 0xFF90:  # first tile-part: the main header is over
            break
        pos += 2 + length
    if levels is None or precision is None:
        raise ValueError("SIZ or COD marker not found in the main header")
    return levels, precision, signed


# --------------------------------------------------------------------------------------------------
# padding and VOI


def _padding_mask(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
    """True where PixelPaddingValue (or the range up to PixelPaddingRangeLimit) flags a stored value."""
    if "PixelPaddingValue" not in ds:
        return np.zeros(stored.shape, dtype=bool)
    value = _signed_tag(ds, "PixelPaddingValue")
    if "PixelPaddingRangeLimit" in ds:
        limit = _signed_tag(ds, "PixelPaddingRangeLimit")
        lo, hi = min(value, limit), max(value, limit)
        return (stored >= lo) & (stored <= hi)
    return stored == value


def _signed_tag(ds: pydicom.Dataset, keyword: str) -> int:
    raw = ds[keyword].value
    if isinstance(raw, bytes):  # US/SS ambiguous VR read as raw bytes in implicit VR files
        fmt = "<h" if int(ds.get("PixelRepresentation", 0)) == 1 else "<H"
        return int(struct.unpack(fmt, raw[:2])[0])
    return int(raw[0] if isinstance(raw, (list, tuple, pydicom.multival.MultiValue)) else raw)


def _apply_voi(ds: pydicom.Dataset, values: np.ndarray, padding: np.ndarray) -> tuple[np.ndarray, str]:
    seq = ds.get("VOILUTSequence")
    if seq:
        return _apply_voi_lut(ds, seq[0], values), "voi_lut"
    window = _first_window(ds)
    if window is not None:
        center, width = window
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        return apply_window(values, center, width, function), "window"
    return _minmax(values, padding), "minmax"


def _first_window(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """The first WindowCenter/WindowWidth pair (vendors such as IMS Giotto list several; the first is
    the one the modality proposes as default, PS3.3 C.11.2.1.2); None if absent or unusable."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center, width = ds.WindowCenter, ds.WindowWidth
    if isinstance(center, pydicom.multival.MultiValue):
        center = center[0] if len(center) else None
    if isinstance(width, pydicom.multival.MultiValue):
        width = width[0] if len(width) else None
    if center is None or width is None or float(width) <= 0:
        return None
    return float(center), float(width)


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window to [0, 1] per DICOM PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID)."""
    x = np.asarray(values, dtype=np.float32)  # float32 is exact for 16-bit values and halves the memory
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        c, w = center, width
    elif function == "LINEAR":
        # The "-0.5 / -1" terms are the standard's: they centre the ramp on integer stored values.
        c, w = center - 0.5, max(width - 1.0, 1e-6)
    else:
        raise ValueError(f"unknown VOILUTFunction {function!r}")
    # The standard's piecewise "x <= c - w/2 -> min, x > c + w/2 -> max, else ramp" is exactly this
    # ramp clipped to [0, 1].
    out = (x - np.float32(c)) * np.float32(1.0 / w) + np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


def _apply_voi_lut(ds: pydicom.Dataset, item: pydicom.Dataset, values: np.ndarray) -> np.ndarray:
    """Map values through a VOI LUT item (PS3.3 C.11.2.1.1), output scaled by 2**bits - 1."""
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536  # the standard encodes 2**16 entries as 0
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        order = "<" if ds.is_little_endian in (True, None) else ">"
        lut = np.frombuffer(bytes(data), dtype=f"{order}u2")[:entries].astype(np.float64)
    else:
        lut = np.asarray(list(data) if not np.isscalar(data) else [data], dtype=np.float64)
    # x < first -> LUT[0]; x >= first + entries - 1 -> LUT[-1] (truncation matches integer inputs).
    index = np.clip(np.floor(values - first), 0, len(lut) - 1).astype(np.int64)
    return lut[index] / float(2**bits - 1)


def _minmax(values: np.ndarray, padding: np.ndarray) -> np.ndarray:
    tissue = values[~padding]
    if tissue.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    lo, hi = float(tissue.min()), float(tissue.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    return (values - lo) / (hi - lo)


def _first_str(ds: pydicom.Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else ""
    text = str(value).strip().upper()
    return text or None
