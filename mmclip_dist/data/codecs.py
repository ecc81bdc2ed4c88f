"""Lossless pixel payloads of the shards: a 16-byte header and one zstd frame (``<view>.u16.zst``, masks ``.u8.zst``).

Chosen by measurement (docs/benchmarks.md, "Shard payload"): for a 760x480 16-bit mammogram a row-delta +
byte-shuffled zstd level-1 frame decodes in ~0.6 ms against ~4 ms for the 16-bit PNG the shards held before,
encodes in ~1.7 ms against ~15 ms, and is ~15% smaller; JPEG-LS / HTJ2K / JPEG-XL are smaller still but
decode slower, and the loader's decode is what a GPU waits on.

Layout (little-endian)::

    offset size field
    0      4    magic     b"MU16"
    4      1    version   1
    5      1    dtype     1 = uint16, 2 = uint8
    6      1    filter    0 = none, 1 = byte-shuffle (all low bytes, then all high bytes),
                          2 = horizontal delta per row (mod 2**16) then byte-shuffle (uint16 only)
    7      1    codec     1 = zstd (the body is one zstd frame)
    8      4    height    uint32
    12     4    width     uint32
    16     ...  body

A decoder rejects an unknown magic / version / dtype / filter / codec, a body that does not decompress to
exactly height x width x itemsize bytes, and trailing garbage. Encoding is deterministic (same image, same
bytes), which the byte-identical shard rebuild relies on. zstd and the delta filter come from ``imagecodecs``.
"""

from __future__ import annotations

import struct
import threading

import imagecodecs
import numpy as np

MAGIC = b"MU16"
VERSION = 1
DTYPE_U16, DTYPE_U8 = 1, 2
FILTER_NONE, FILTER_SHUFFLE, FILTER_HDELTA_SHUFFLE = 0, 1, 2
CODEC_ZSTD = 1
HEADER = struct.Struct("<4sBBBBII")  # 16 bytes
ZSTD_LEVEL = 1  # level 3+ is ~2% smaller and 2-3x slower to encode; decode speed is the same

_DTYPES: dict[int, np.dtype] = {DTYPE_U16: np.dtype("<u2"), DTYPE_U8: np.dtype("u1")}
_EXTENSIONS = {DTYPE_U16: "u16.zst", DTYPE_U8: "u8.zst"}
EXTENSION_U16 = _EXTENSIONS[DTYPE_U16]
EXTENSION_U8 = _EXTENSIONS[DTYPE_U8]


class PayloadError(ValueError):
    """Bytes that are not a valid payload (corrupt, truncated, or from an unknown writer)."""


def _dtype_id(array: np.ndarray) -> int:
    if array.ndim == 2 and array.dtype.kind == "u" and array.dtype.itemsize == 2:
        return DTYPE_U16
    if array.ndim == 2 and array.dtype.kind == "u" and array.dtype.itemsize == 1:
        return DTYPE_U8
    raise ValueError(f"encode_pixels needs a 2-D uint16 or uint8 array, got {array.dtype} {array.shape}")


def _shuffle(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a.view(np.uint8).reshape(-1, 2).T).tobytes()


def _unshuffle(buf: memoryview, out: np.ndarray) -> None:
    """Byte planes (all low bytes, then all high bytes) → ``out`` uint16, by shift-or (3x a strided byte copy)."""
    planes = np.frombuffer(buf, np.uint8).reshape(2, -1)
    flat = out.reshape(-1)
    np.left_shift(planes[1], 8, out=flat, dtype=np.uint16)
    np.bitwise_or(flat, planes[0], out=flat)


_SCRATCH = threading.local()


def _scratch(size: int) -> bytearray:
    """A per-thread buffer for the decompressed body: reused, so decoding a stream of images does not pay
    the page faults of a fresh ~1 MB allocation per image (several times the decode itself)."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or len(buf) < size:
        buf = _SCRATCH.buf = bytearray(size)
    return buf


def extension_of(array: np.ndarray) -> str:
    """The file extension a payload of this array carries (``u16.zst`` / ``u8.zst``)."""
    return _EXTENSIONS[_dtype_id(array)]


def encode_pixels(image: np.ndarray, level: int = ZSTD_LEVEL, filter_id: int | None = None) -> bytes:
    """uint16 or uint8 [H, W] → header + zstd frame (lossless, deterministic). uint16 defaults to
    row-delta + shuffle (best for smooth images), uint8 (masks: long runs) to no filter."""
    image = np.asarray(image)
    dtype_id = _dtype_id(image)
    h, w = image.shape
    if h == 0 or w == 0:
        raise ValueError(f"encode_pixels: empty image {image.shape}")
    a = np.ascontiguousarray(image, dtype=_DTYPES[dtype_id])
    if filter_id is None:
        filter_id = FILTER_HDELTA_SHUFFLE if dtype_id == DTYPE_U16 else FILTER_NONE
    if filter_id == FILTER_NONE:
        body = a.tobytes()
    elif dtype_id != DTYPE_U16:
        raise ValueError(f"encode_pixels: filter {filter_id} needs uint16 pixels")
    elif filter_id == FILTER_SHUFFLE:
        body = _shuffle(a)
    elif filter_id == FILTER_HDELTA_SHUFFLE:
        body = _shuffle(imagecodecs.delta_encode(a, axis=-1))  # per row, wraps mod 2**16
    else:
        raise ValueError(f"encode_pixels: unknown filter {filter_id}")
    header = HEADER.pack(MAGIC, VERSION, dtype_id, filter_id, CODEC_ZSTD, h, w)
    return header + bytes(imagecodecs.zstd_encode(body, level=level))


def payload_shape(data: bytes | memoryview) -> tuple[int, int, np.dtype]:
    """``(height, width, dtype)`` from a payload's header; :class:`PayloadError` if the header is invalid."""
    if len(data) < HEADER.size:
        raise PayloadError(f"payload of {len(data)} bytes is shorter than its {HEADER.size}-byte header")
    magic, version, dtype_id, filter_id, codec_id, h, w = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PayloadError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r})")
    if version != VERSION or dtype_id not in _DTYPES or codec_id != CODEC_ZSTD:
        raise PayloadError(f"unsupported version/dtype/codec {version}/{dtype_id}/{codec_id}")
    if filter_id not in (FILTER_NONE, FILTER_SHUFFLE, FILTER_HDELTA_SHUFFLE) or (
        filter_id != FILTER_NONE and dtype_id != DTYPE_U16
    ):
        raise PayloadError(f"unknown filter {filter_id} for dtype {dtype_id}")
    if h == 0 or w == 0 or h * w > 1 << 30:
        raise PayloadError(f"implausible size {h}x{w}")
    return h, w, _DTYPES[dtype_id].newbyteorder("=")


def decode_pixels(data: bytes | memoryview, out: np.ndarray | None = None) -> np.ndarray:
    """header + body → uint16 or uint8 [H, W] (``out`` when given: C-contiguous, of the payload's shape and
    dtype; else a new array); :class:`PayloadError` if the payload is invalid."""
    h, w, dtype = payload_shape(data)
    if out is None:
        out = np.empty((h, w), dtype)
    elif out.shape != (h, w) or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"decode_pixels: out is {out.dtype} {out.shape}, the payload is {dtype} {(h, w)}")
    filter_id = data[6]
    size = h * w * dtype.itemsize
    # An unfiltered body decompresses straight into ``out``; a filtered one into scratch, then unshuffled.
    target = (
        memoryview(out.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # ndarray is a buffer; stubs lag
        if filter_id == FILTER_NONE
        else memoryview(_scratch(size))[:size]
    )
    try:
        got = imagecodecs.zstd_decode(memoryview(data)[HEADER.size :], out=target)  # type: ignore[arg-type]  # any buffer works
    except Exception as err:  # noqa: BLE001 - any codec failure is a corrupt payload
        raise PayloadError(f"body is not a valid zstd frame of {size} bytes ({err})") from err
    if len(got) != size:
        raise PayloadError(f"body decompresses to {len(got)} bytes, expected {size} for {h}x{w}")
    if filter_id != FILTER_NONE:
        _unshuffle(target, out)
        if filter_id == FILTER_HDELTA_SHUFFLE:
            imagecodecs.delta_decode(out, axis=-1, out=out)  # inverse of the wrapped per-row delta, in place
    return out


def decode_file(name: str, data: bytes) -> np.ndarray:
    """A shard member's pixels by its extension: ``*.u16.zst`` / ``*.u8.zst`` payloads or (schema 1) ``*.png``."""
    if name.endswith((".u16.zst", ".u8.zst")):
        return decode_pixels(data)
    if name.endswith(".png"):
        try:
            return imagecodecs.png_decode(data)
        except Exception as err:  # noqa: BLE001 - any codec failure is a corrupt payload
            raise PayloadError(f"not a decodable PNG ({err})") from err
    raise PayloadError(f"no pixel codec for the extension of {name!r}")
