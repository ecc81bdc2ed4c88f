"""Shard writing: size/count cuts, reproducible tar bytes, sidecars, resume prefix, tail rejects, verify."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from mmclip_dist.data.build.records import Reject
from mmclip_dist.data.build.shard_writer import (
    TAR_MTIME,
    ShardSink,
    SplitWriter,
    load_resume,
    tar_member_size,
    verify_output,
    write_manifest,
)


def _sample(i: int, size: int = 100) -> tuple[str, dict[str, bytes]]:
    return f"k{i:03d}", {"cc.png": bytes([i]) * size, "json": b'{"i": %d}' % i}


def _write(root: Path, n: int, max_bytes: int = 10**9, max_samples: int = 10**6, rejects_at: tuple[int, ...] = ()):
    sink = ShardSink(str(root))
    writer = SplitWriter(sink, "train", "fp", max_bytes, max_samples)
    for i in range(n):
        if i in rejects_at:
            writer.add_reject(Reject(f"f.csv:{i}", "truncated", ""))
        else:
            key, files = _sample(i)
            writer.add_sample(key, files, label=i % 2)
    return sink, writer.finish(), writer


def test_tar_member_size() -> None:
    assert tar_member_size(0) == 512
    assert tar_member_size(1) == 1024
    assert tar_member_size(512) == 1024
    assert tar_member_size(513) == 1536


def test_cut_by_sample_count_and_sidecars(tmp_path: Path) -> None:
    sink, shards, _ = _write(tmp_path, 5, max_samples=2)
    assert [s.name for s in shards] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert [s.samples for s in shards] == [2, 2, 1]
    assert [s.inputs for s in shards] == [(0, 2), (2, 4), (4, 5)]
    side = json.loads((tmp_path / "train-000001.json").read_text())
    data = (tmp_path / "train-000001.tar").read_bytes()
    assert side["sha256"] == hashlib.sha256(data).hexdigest()
    assert side["bytes"] == len(data)
    assert side["samples"] == 2
    assert side["labels"] == {"0": 1, "1": 1}
    with tarfile.open(tmp_path / "train-000001.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["k002.cc.png", "k002.json", "k003.cc.png", "k003.json"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(TAR_MTIME, 0, 0, "", "", 0o444)}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_cut_by_bytes(tmp_path: Path) -> None:
    # One sample = 100-byte png (1024 in the tar) + 9/10-byte json (1024) = 2048 bytes.
    _, shards, _ = _write(tmp_path, 5, max_bytes=2 * 2048 + 100)
    assert [s.samples for s in shards] == [2, 2, 1]
    # A sample larger than the limit still gets a shard of its own rather than being dropped.
    _, shards, _ = _write(tmp_path / "small", 3, max_bytes=10)
    assert [s.samples for s in shards] == [1, 1, 1]


def test_same_input_same_bytes(tmp_path: Path) -> None:
    _write(tmp_path / "a", 7, max_samples=3)
    _write(tmp_path / "b", 7, max_samples=3)
    for name in ("train-000000.tar", "train-000001.tar", "train-000002.tar"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_rejects_recorded_in_the_shard_range(tmp_path: Path) -> None:
    _, shards, writer = _write(tmp_path, 6, max_samples=2, rejects_at=(1, 5))
    # inputs 0, 2 → shard 0 (reject 1 inside its range); 3, 4 → shard 1, which stays open for reject 5.
    assert [s.inputs for s in shards] == [(0, 3), (3, 6)]
    assert [r["source"] for r in shards[0].rejects] == ["f.csv:1"]
    assert [r["source"] for r in shards[1].rejects] == ["f.csv:5"]
    assert writer.trailing_rejects() == []
    assert not (tmp_path / "train-tail.json").exists()


def test_split_of_only_rejects_keeps_them_in_a_tail(tmp_path: Path) -> None:
    sink, shards, writer = _write(tmp_path, 2, rejects_at=(0, 1))
    assert shards == []
    tail = json.loads((tmp_path / "train-tail.json").read_text())
    assert tail["inputs"] == [0, 2]
    assert [r["source"] for r in tail["rejects"]] == ["f.csv:0", "f.csv:1"]
    assert writer.trailing_rejects() == tail["rejects"]
    # A restart finds the finished tail and has nothing left to do, but still reports the rejects.
    resume = load_resume(sink, "train", "fp")
    assert resume.next_input == 2
    again = SplitWriter(sink, "train", "fp", 10**9, 2, resume)
    assert again.finish() == [] and again.trailing_rejects() == tail["rejects"]


def test_resume_keeps_committed_prefix(tmp_path: Path) -> None:
    sink, shards, _ = _write(tmp_path, 7, max_samples=2, rejects_at=(1,))
    assert [s.inputs for s in shards] == [(0, 3), (3, 5), (5, 7)]
    # A killed run: the last sidecar never got written, and a staged file was left behind.
    (tmp_path / "train-000002.json").unlink()
    (tmp_path / ".train-000002.tar.tmp-build").write_bytes(b"partial")
    resume = load_resume(sink, "train", "fp")
    assert [s.name for s in resume.shards] == ["train-000000.tar", "train-000001.tar"]
    assert resume.next_input == 5
    assert load_resume(sink, "train", "other-fingerprint").shards == []
    sink.clean_staging()
    assert not (tmp_path / ".train-000002.tar.tmp-build").exists()
    writer = SplitWriter(sink, "train", "fp", 10**9, 2, resume)
    for i in range(resume.next_input, 7):
        key, files = _sample(i)
        writer.add_sample(key, files, i % 2)
    again = writer.finish()
    assert [s.sha256 for s in again] == [s.sha256 for s in shards]
    assert [s.rejects for s in again] == [s.rejects for s in shards]


def test_finish_removes_shards_of_an_older_longer_build(tmp_path: Path) -> None:
    _write(tmp_path, 6, max_samples=2)
    _write(tmp_path, 3, max_samples=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "train-000000.json",
        "train-000000.tar",
        "train-000001.json",
        "train-000001.tar",
    ]


def test_verify_output_detects_corruption(tmp_path: Path) -> None:
    sink, shards, _ = _write(tmp_path, 4, max_samples=2)
    manifest = {
        "shards": [
            {"name": s.name, "split": s.split, "samples": s.samples, "sha256": s.sha256, "bytes": s.bytes}
            for s in shards
        ],
        "splits": {"train": {"samples": 4}},
    }
    write_manifest(sink, manifest, [])
    assert verify_output(sink) == []
    path = tmp_path / "train-000001.tar"
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF  # inside the first file's payload
    path.write_bytes(bytes(data))
    problems = verify_output(sink)
    assert len(problems) == 2 and all("train-000001.tar: sha256" in p for p in problems)
    (tmp_path / "train-000000.tar").unlink()
    assert any("train-000000.tar: listed in manifest.json but missing" in p for p in verify_output(sink))


def test_verify_without_manifest(tmp_path: Path) -> None:
    assert verify_output(ShardSink(str(tmp_path))) == ["manifest.json is missing (build not finished?)"]


def test_empty_output_url_is_an_error() -> None:
    with pytest.raises(ValueError, match="shards.output is empty"):
        ShardSink("")


def test_tar_readable_by_webdataset(tmp_path: Path) -> None:
    import webdataset as wds

    _write(tmp_path, 3)
    samples = list(wds.WebDataset(str(tmp_path / "train-000000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["k000", "k001", "k002"]
    assert samples[1]["cc.png"] == bytes([1]) * 100
    assert io.BytesIO(samples[2]["json"]).read() == b'{"i": 2}'
