"""The shard pixel payload: bit-exact, deterministic, and every corruption is an error, never wrong pixels."""

from __future__ import annotations

import struct

import imagecodecs
import numpy as np
import pytest

from mmclip_dist.data.codecs import (
    FILTER_HDELTA_SHUFFLE,
    FILTER_NONE,
    FILTER_SHUFFLE,
    HEADER,
    PayloadError,
    decode_file,
    decode_pixels,
    encode_pixels,
    extension_of,
)

RNG = np.random.default_rng(0)
U16_CASES = {
    "zeros": np.zeros((76, 48), np.uint16),
    "all 65535": np.full((76, 48), 65535, np.uint16),
    "random 760x480": RNG.integers(0, 65536, (760, 480), dtype=np.uint16),
    "odd 37x101": RNG.integers(0, 65536, (37, 101), dtype=np.uint16),
    "1xN": RNG.integers(0, 65536, (1, 1001), dtype=np.uint16),
    "Nx1": RNG.integers(0, 65536, (999, 1), dtype=np.uint16),
    "1x1": np.array([[65535]], np.uint16),
    "alternating 0/65535": (np.indices((64, 65)).sum(0) % 2 * 65535).astype(np.uint16),
    "ramp that wraps": (np.arange(65536 * 2, dtype=np.uint32) % 65536).astype(np.uint16).reshape(256, 512),
    "big-endian input": RNG.integers(0, 65536, (33, 47), dtype=np.uint16).astype(">u2"),
    "non-contiguous": RNG.integers(0, 65536, (64, 128), dtype=np.uint16)[::2, ::3],
}


@pytest.mark.parametrize("filter_id", [FILTER_NONE, FILTER_SHUFFLE, FILTER_HDELTA_SHUFFLE])
@pytest.mark.parametrize("name", list(U16_CASES))
def test_uint16_round_trip_is_bit_exact_and_deterministic(name: str, filter_id: int) -> None:
    image = U16_CASES[name]
    blob = encode_pixels(image, filter_id=filter_id)
    back = decode_pixels(blob)
    assert back.dtype == np.uint16 and back.shape == image.shape
    np.testing.assert_array_equal(back, image)
    assert back.flags.writeable and back.flags.c_contiguous
    assert blob == encode_pixels(image.astype(np.uint16), filter_id=filter_id)  # same pixels, same bytes
    assert HEADER.unpack_from(blob)[3] == filter_id


def test_uint8_masks_round_trip_small() -> None:
    mask = np.zeros((760, 480), np.uint8)
    mask[100:180, 200:260] = 255
    blob = encode_pixels(mask)
    assert extension_of(mask) == "u8.zst" and extension_of(mask.astype(np.uint16)) == "u16.zst"
    back = decode_pixels(blob)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, mask)
    assert len(blob) < 400  # long runs: a 365 KB mask is a few hundred bytes
    with pytest.raises(ValueError, match="needs uint16"):
        encode_pixels(mask, filter_id=FILTER_SHUFFLE)


def test_smooth_16_bit_images_compress_better_than_png() -> None:
    h, w = 760, 480
    y, x = np.mgrid[0:h, 0:w]
    tissue = 20000 + 15000 * np.sin(x / 37.0) * np.cos(y / 53.0) + RNG.normal(0, 200, (h, w))
    image = np.clip(tissue, 0, 65535).astype(np.uint16)
    assert len(encode_pixels(image)) < len(imagecodecs.png_encode(image, level=1))


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.float32), np.zeros((2, 4, 4), np.uint16),
                                 np.zeros((0, 4), np.uint16), np.zeros((4, 4), np.int16)])  # fmt: skip
def test_encode_rejects_what_it_cannot_store(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_pixels(bad)


def test_every_corruption_is_a_payload_error() -> None:
    blob = encode_pixels(U16_CASES["random 760x480"])
    corrupt = {
        "empty": b"",
        "header cut": blob[:10],
        "bad magic": b"XXXX" + blob[4:],
        "truncated body": blob[:-5],
        "wrong size": blob[:8] + struct.pack("<II", 761, 480) + blob[16:],
        "trailing garbage": blob + b"junk",
        "unknown version": blob[:4] + b"\x09" + blob[5:],
        "unknown filter": blob[:6] + b"\x07" + blob[7:],
        "zero height": blob[:8] + struct.pack("<II", 0, 480) + blob[16:],
    }
    for what, data in corrupt.items():
        with pytest.raises(PayloadError):
            decode_pixels(data)
            pytest.fail(f"{what}: decoded without an error")


def test_decode_file_dispatches_on_the_extension() -> None:
    image = U16_CASES["odd 37x101"]
    np.testing.assert_array_equal(decode_file("k.cc.u16.zst", encode_pixels(image)), image)
    np.testing.assert_array_equal(decode_file("cc.png", imagecodecs.png_encode(image)), image)  # schema 1 shards
    with pytest.raises(PayloadError, match="not a decodable PNG"):
        decode_file("cc.png", b"nope")
    with pytest.raises(PayloadError, match="no pixel codec"):
        decode_file("cc.jpg", b"nope")


def test_decode_into_a_given_array() -> None:
    image = U16_CASES["odd 37x101"]
    out = np.full(image.shape, 7, np.uint16)
    assert decode_pixels(encode_pixels(image), out=out) is out
    np.testing.assert_array_equal(out, image)
    with pytest.raises(ValueError, match="out is uint16 \\(37, 100\\)"):
        decode_pixels(encode_pixels(image), out=np.empty((37, 100), np.uint16))
    with pytest.raises(ValueError, match="out is uint8"):
        decode_pixels(encode_pixels(image), out=np.empty(image.shape, np.uint8))
