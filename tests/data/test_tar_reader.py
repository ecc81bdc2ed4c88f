"""The loader's tar reader gives what ``tarfile`` gives for every header flavour a shard can have, and names
the shard and offset when the bytes are not a whole tar."""

from __future__ import annotations

import gzip
import io
import random
import tarfile

import pytest

from mmclip_dist.data.stream.tar_reader import TarFormatError, tar_members

LONG = "k" * 120 + ".cc.u16.zst"  # past the 100-byte name field


def _tar(fmt: int, files: dict[str, bytes], directory: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        if directory:
            info = tarfile.TarInfo("somedir")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _reference(blob: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r|") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]


@pytest.mark.parametrize(
    "fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT], ids=["gnu", "pax", "ustar"]
)
def test_members_equal_tarfiles(fmt: int) -> None:
    files = {
        "b000.cc.u16.zst": bytes(range(256)) * 7,
        "b000.json": b'{"schema": 2}',
        "b001.empty": b"",
        "b002.exact": b"x" * 512,
        # ustar keeps a long name in its prefix field (it needs a '/'), GNU / PAX in an extra header
        ("dir/" * 30 + "b003.mlo.u16.zst" if fmt == tarfile.USTAR_FORMAT else LONG): b"y" * 1000,
    }
    blob = _tar(fmt, files, directory=True)
    got = [(m["fname"], m["data"]) for m in tar_members(io.BytesIO(blob), "mem.tar")]
    assert got == _reference(blob) and [name for name, _ in got] == list(files)


def test_not_a_whole_tar_is_an_error_naming_the_shard() -> None:
    blob = _tar(tarfile.GNU_FORMAT, {"a.json": b"1" * 700, "b.json": b"2"})
    with pytest.raises(TarFormatError, match=r"s3://b/train-000001.tar @ byte 0: truncated \(100 of 700 bytes\)"):
        list(tar_members(io.BytesIO(blob[: 512 + 100]), "s3://b/train-000001.tar"))
    corrupt = bytearray(blob)
    corrupt[1536 + 3] ^= 0xFF  # a byte of the second header's name (after 512 + 2 x 512 of the first)
    with pytest.raises(TarFormatError, match="@ byte 1536: tar header checksum mismatch"):
        list(tar_members(io.BytesIO(bytes(corrupt)), "x.tar"))
    with pytest.raises(TarFormatError, match="not an uncompressed tar"):
        list(tar_members(io.BytesIO(gzip.compress(_tar(tarfile.GNU_FORMAT, {"r": random.randbytes(2000)}))), "x.tar"))
    assert list(tar_members(io.BytesIO(b""), "empty.tar")) == []
