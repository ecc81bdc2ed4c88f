"""Builders of tiny DICOM files for the data tests, one per transfer syntax and VOI variant.

Import from tests of the data package (``from dicom_fixtures import make_dataset, ...`` works
because tests/data/conftest.py puts this folder on sys.path). Every file is made in memory by the
test itself, so fixtures never go stale and show exactly which tag a test depends on.

Encoders: uncompressed, deflated and RLE through pydicom; JPEG 2000 and JPEG-LS through imagecodecs;
JPEG Lossless SV1 (first-order prediction, 1.2.840.10008.1.2.4.70) with the small encoder below,
because no installed library writes selection value 1.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import UID

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
RLE = "1.2.840.10008.1.2.5"
LOSSLESS_SYNTAXES = (IMPLICIT, EXPLICIT, DEFLATED, JPEG_LOSSLESS_SV1, JPEG_LS_LOSSLESS, J2K_LOSSLESS, RLE)
MAMMO_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"


def make_dataset(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    signed: bool = False,
    laterality: str | None = "L",
    view: str | None = "CC",
    windows: list[tuple[float, float]] | None = None,
    voi_function: str | None = None,
    voi_lut: tuple[int, int, list[int]] | None = None,
    lut_vr: str = "US",
    padding: tuple[int, int | None] | None = None,
    rescale: tuple[float, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """An uncompressed explicit-VR-LE single-frame 16-bit grayscale data set around ``pixels``.

    ``windows``: (center, width) pairs; ``voi_lut``: (first mapped value, bits, LUT entries), LUT Data
    written as ``lut_vr`` (US values or OW words, both occur in the wild);
    ``padding``: (PixelPaddingValue, PixelPaddingRangeLimit or None); ``rescale``: (slope, intercept).
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2:
        raise ValueError("pixels must be 2D")
    arr = arr.astype(np.int16 if signed else np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(MAMMO_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.4.5.6.7.8")
    meta.TransferSyntaxUID = UID(EXPLICIT)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4.5.6.7.1"
    ds.SeriesInstanceUID = "1.2.3.4.5.6.7.2"
    ds.Modality = "MG"
    ds.PatientID = "FIXTURE"
    if laterality is not None:
        ds.ImageLaterality = laterality
    if view is not None:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if windows:
        ds.WindowCenter = [float(c) for c, _ in windows] if len(windows) > 1 else float(windows[0][0])
        ds.WindowWidth = [float(w) for _, w in windows] if len(windows) > 1 else float(windows[0][1])
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        first, bits, entries = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(entries), first, bits]
        if lut_vr == "OW":
            item.add_new("LUTData", "OW", np.asarray(entries, dtype="<u2").tobytes())
        else:
            item.add_new("LUTData", "US", [int(v) for v in entries])
        ds.VOILUTSequence = Sequence([item])
    if padding is not None:
        value, limit = padding
        ds.PixelPaddingValue = value
        if limit is not None:
            ds.PixelPaddingRangeLimit = limit
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return ds


def encode(ds: Dataset, transfer_syntax: str, *, j2k_resolutions: int = 4) -> Dataset:
    """Re-encode the pixel data of ``ds`` (in place) in ``transfer_syntax``; returns ``ds``."""
    arr = ds.pixel_array
    bits = int(ds.BitsStored)
    if transfer_syntax in (IMPLICIT, EXPLICIT, DEFLATED):
        pass  # the syntax only changes how the file is written
    elif transfer_syntax == RLE:
        ds.compress(RLE, arr, encoding_plugin="pydicom")
        return ds
    elif transfer_syntax in (J2K_LOSSLESS, J2K):
        frame = j2k_codestream(arr, bits, reversible=transfer_syntax == J2K_LOSSLESS, resolutions=j2k_resolutions)
        set_encapsulated(ds, frame)
    elif transfer_syntax in (JPEG_LS_LOSSLESS, JPEG_LS_NEAR):
        level = 0 if transfer_syntax == JPEG_LS_LOSSLESS else 2
        set_encapsulated(ds, imagecodecs.jpegls_encode(arr, level=level))
    elif transfer_syntax == JPEG_LOSSLESS_SV1:
        if ds.PixelRepresentation:
            raise ValueError("the SV1 fixture encoder handles unsigned data only")
        set_encapsulated(ds, jpeg_lossless_sv1(arr.astype(np.uint16), bits))
    else:
        raise ValueError(f"no fixture encoder for {transfer_syntax}")
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    return ds


def j2k_codestream(arr: np.ndarray, bits: int, *, reversible: bool = True, resolutions: int = 4) -> bytes:
    """A raw JPEG 2000 codestream (as DICOM stores it) with ``resolutions - 1`` wavelet levels."""
    return imagecodecs.jpeg2k_encode(
        arr,
        level=0 if reversible else 80,  # 80 dB PSNR: lossy but close
        codecformat="J2K",
        reversible=reversible,
        bitspersample=bits,
        resolutions=resolutions,
        numthreads=1,
    )


def set_encapsulated(ds: Dataset, frame: bytes) -> None:
    """Store one compressed frame as encapsulated Pixel Data."""
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def to_bytes(ds: Dataset, transfer_syntax: str | None = None) -> bytes:
    """Serialise with preamble and meta header; ``transfer_syntax`` overrides the one in file_meta."""
    if transfer_syntax is not None:
        ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    buf = io.BytesIO()
    implicit = ds.file_meta.TransferSyntaxUID == IMPLICIT
    ds.save_as(buf, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return buf.getvalue()


def write_dicom(path: Path, pixels: np.ndarray, transfer_syntax: str = EXPLICIT, **kwargs: Any) -> Path:
    """make_dataset + encode + write to ``path``."""
    ds = encode(make_dataset(pixels, **kwargs), transfer_syntax)
    path.write_bytes(to_bytes(ds))
    return path


def read_back(data: bytes) -> np.ndarray:
    """The stored values pydicom decodes from ``data`` (independent check of the fixtures)."""
    return pydicom.dcmread(io.BytesIO(data)).pixel_array


# --------------------------------------------------------------------------------------------------
# A minimal JPEG Lossless (ITU T.81 process 14) encoder with selection value 1 (predictor Ra).


def jpeg_lossless_sv1(arr: np.ndarray, precision: int) -> bytes:
    """Encode a uint16 image losslessly with first-order (left-neighbour) prediction."""
    h, w = arr.shape
    x = arr.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)  # H.1.2.1: first sample of the scan
    pred[0, 1:] = x[0, :-1]  # first line: Ra
    pred[1:, 0] = x[:-1, 0]  # first sample of later lines: Rb
    pred[1:, 1:] = x[1:, :-1]  # predictor 1: Ra
    diff = (x - pred) % 65536
    diff = np.where(diff > 32768, diff - 65536, diff)

    # One Huffman table in which every category 0..16 has a 5-bit code: simple and valid.
    bits_counts = [0, 0, 0, 0, 17] + [0] * 11
    writer = _BitWriter()
    for d in diff.ravel().tolist():
        ssss = 0 if d == 0 else int(abs(d)).bit_length()
        writer.put(ssss, 5)
        if 0 < ssss < 16:
            writer.put(d if d > 0 else (d - 1) & ((1 << ssss) - 1), ssss)
    scan = writer.flush()

    def segment(marker: int, payload: bytes) -> bytes:
        return marker.to_bytes(2, "big") + (len(payload) + 2).to_bytes(2, "big") + payload

    dht = segment(0xFFC4, bytes([0x00]) + bytes(bits_counts) + bytes(range(17)))
    sof3 = segment(0xFFC3, bytes([precision]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([1, 1, 0x11, 0]))
    sos = segment(0xFFDA, bytes([1, 1, 0x00, 1, 0, 0]))  # Ss = 1: selection value 1
    return b"\xff\xd8" + dht + sof3 + sos + scan + b"\xff\xd9"


class _BitWriter:
    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, value: int, nbits: int) -> None:
        self.acc = (self.acc << nbits) | (value & ((1 << nbits) - 1))
        self.n += nbits
        while self.n >= 8:
            self.n -= 8
            byte = (self.acc >> self.n) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0x00)  # byte stuffing keeps 0xFF from reading as a marker
        self.acc &= (1 << self.n) - 1

    def flush(self) -> bytes:
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)  # pad with 1-bits (T.81 F.1.2.3)
        return bytes(self.out)
