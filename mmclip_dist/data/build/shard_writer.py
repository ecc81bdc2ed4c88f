"""Deterministic, atomic, resumable WebDataset shard writing: tars, sidecars, manifest, rejects.

Layout of an output (local folder or ``s3://bucket/prefix``)::

    train-000000.tar   train-000000.json   ...   test-000000.tar   test-000000.json
    train-tail.json    (only when a split ends with rejects after its last shard)
    manifest.json      rejects.jsonl

Determinism: the builder feeds each split's records in a fixed order (sorted by hashed key); a shard
is cut before a sample that would take it past ``shard_max_bytes`` or ``shard_max_samples``; tar
headers have fixed mtime/uid/gid/uname/mode. The same inputs and config give byte-identical shards.

Atomicity and resume: a shard is written under a temporary name and renamed (local) or uploaded
whole and read back to check its sha256 (S3); its sidecar is written after it and is the commit
record: ``inputs`` = the [start, stop) positions of the split's record list the shard covers, the
rejects met in that range and a ``fingerprint`` of the build inputs. A restarted build keeps every
shard whose sidecar carries the same fingerprint and continues at the last committed ``stop``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmclip_dist.data.build.records import Reject
from mmclip_dist.data.shard_format import MANIFEST, REJECTS, shard_name, sidecar_name, tail_name
from mmclip_dist.data.storage import LocalStorage, Storage, open_storage

TAR_MTIME = 946684800  # 2000-01-01: fixed so that rebuilding gives the same bytes
TAR_BLOCK = 512


class ShardSink:
    """The output of a build, on top of ``storage.Storage`` (local folder or S3).

    Shards are staged as temporary files (in the output folder itself for local outputs, so committing
    is a rename on one file system; in a local temp folder for S3, where committing is one upload
    whose read-back sha256 must match before the shard counts as written).
    """

    def __init__(self, url: str, endpoint: str | None = None, create: bool = True) -> None:
        if not url:
            raise ValueError("shards.output is empty: give a folder or s3://bucket/prefix")
        self.url = url
        self.storage: Storage = open_storage(url, endpoint=endpoint)
        if isinstance(self.storage, LocalStorage):
            if create:
                self.storage.root.mkdir(parents=True, exist_ok=True)
            self.staging = self.storage.root
        else:
            self.staging = Path(tempfile.mkdtemp(prefix="mmclip-shards-"))

    def staging_path(self, name: str) -> Path:
        # LocalStorage.list() skips names carrying its temp mark, so a staged shard is never listed.
        return self.staging / f".{name}{LocalStorage._TMP_MARK}build"

    def commit_file(self, staged: Path, name: str, sha256: str) -> None:
        """Make a staged file visible under ``name`` atomically, verified."""
        if isinstance(self.storage, LocalStorage):
            with open(staged, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(staged, self.storage.root / name)
            return
        self.storage.put_file(staged, name)
        # Read back what the server stored: a truncated or corrupted upload must not be committed.
        if not self.storage.verify(name, sha256):
            self.storage.delete(name)
            raise OSError(f"{self.storage.url_for(name)}: read-back sha256 differs from the written shard")
        staged.unlink()

    def exists(self, name: str) -> bool:
        return self.storage.exists(name)

    def read_bytes(self, name: str) -> bytes:
        return self.storage.get_bytes(name)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.storage.put_bytes(data, name)

    def list(self) -> list[str]:
        return self.storage.list("")

    def delete(self, name: str) -> None:
        self.storage.delete(name)

    def clean_staging(self) -> None:
        """Remove staged files a killed build left behind."""
        for path in self.staging.glob(f".*{LocalStorage._TMP_MARK}*"):
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """Drop the local staging folder of a remote output."""
        if not isinstance(self.storage, LocalStorage):
            shutil.rmtree(self.staging, ignore_errors=True)


def tar_member_size(data_len: int) -> int:
    """Bytes a file of ``data_len`` takes in a tar (header + data padded to the block)."""
    return TAR_BLOCK + -(-data_len // TAR_BLOCK) * TAR_BLOCK


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = TAR_MTIME
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


@dataclass
class ShardInfo:
    """One committed shard, as recorded in its sidecar."""

    name: str
    split: str
    index: int
    samples: int
    sha256: str
    bytes: int
    inputs: tuple[int, int]
    rejects: list[dict[str, str]] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    deid: dict[str, int] = field(default_factory=dict)  # de-identification counts of its samples

    def sidecar(self, fingerprint: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "split": self.split,
            "index": self.index,
            "samples": self.samples,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "inputs": list(self.inputs),
            "labels": self.labels,
            "deid": self.deid,
            "rejects": self.rejects,
            "fingerprint": fingerprint,
        }

    @classmethod
    def from_sidecar(cls, data: dict[str, Any]) -> ShardInfo:
        return cls(
            name=data["name"],
            split=data["split"],
            index=data["index"],
            samples=data["samples"],
            sha256=data["sha256"],
            bytes=data["bytes"],
            inputs=tuple(data["inputs"]),
            rejects=data.get("rejects", []),
            labels=data.get("labels", {}),
            deid=data.get("deid", {}),
        )


@dataclass
class SplitResume:
    """What a restarted build keeps of one split."""

    shards: list[ShardInfo]
    tail: dict[str, Any] | None

    @property
    def next_input(self) -> int:
        if self.tail is not None:
            return self.tail["inputs"][1]
        return self.shards[-1].inputs[1] if self.shards else 0


class SplitWriter:
    """Writes one split's stream of samples and rejects into numbered shards."""

    def __init__(
        self,
        sink: ShardSink,
        split: str,
        fingerprint: str,
        max_bytes: int,
        max_samples: int,
        resume: SplitResume | None = None,
    ) -> None:
        self.sink, self.split, self.fingerprint = sink, split, fingerprint
        self.max_bytes, self.max_samples = max_bytes, max_samples
        self.shards: list[ShardInfo] = list(resume.shards) if resume else []
        self.position = resume.next_input if resume else 0  # next input of the split's record list
        self._start = self.position
        self._tar: tarfile.TarFile | None = None
        self._tmp_path: Path | None = None
        self._samples = 0
        self._bytes = 0
        # Rejects met since the last committed shard; a resumed split that had ended in a tail keeps it.
        self._rejects: list[dict[str, str]] = list(resume.tail["rejects"]) if resume and resume.tail else []
        if resume and resume.tail:
            self._start = resume.tail["inputs"][0]
        self._labels: Counter[str] = Counter()
        self._deid: Counter[str] = Counter()

    def add_sample(self, key: str, files: dict[str, bytes], label: int, deid: dict[str, int] | None = None) -> None:
        """Append one sample (files in the given order, named ``key.ext``)."""
        size = sum(tar_member_size(len(data)) for data in files.values())
        if (
            self._tar is not None
            and self._samples
            and (self._samples >= self.max_samples or self._bytes + size > self.max_bytes)
        ):
            self._close_shard()
        tar = self._tar if self._tar is not None else self._open_shard()
        for ext, data in files.items():
            tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
        self._samples += 1
        self._bytes += size
        self._labels[str(label)] += 1
        self._deid.update(deid or {})
        self.position += 1

    def add_reject(self, reject: Reject, advance: bool = True) -> None:
        """Record a reject; ``advance=False`` for a part of a sample just added (it is not a record of its own)."""
        self._rejects.append(reject.to_json())
        self.position += advance

    def finish(self) -> list[ShardInfo]:
        """Close the open shard (or record trailing rejects) and drop leftovers of older builds."""
        if self._tar is not None:
            self._close_shard()
        tail = tail_name(self.split)
        if self._rejects:
            # Rejects after the last shard still need a durable home, or a resumed build would lose them.
            self.sink.write_bytes(
                tail,
                _dumps(
                    {
                        "split": self.split,
                        "inputs": [self._start, self.position],
                        "rejects": self._rejects,
                        "fingerprint": self.fingerprint,
                    }
                ),
            )
        keep = {s.name for s in self.shards} | {sidecar_name(s.name) for s in self.shards}
        if self._rejects:
            keep.add(tail)
        for name in self.sink.list():
            if name.startswith(f"{self.split}-") and name not in keep:
                self.sink.delete(name)  # shard of an older, longer build of this split
        return self.shards

    def trailing_rejects(self) -> list[dict[str, str]]:
        """Rejects after the split's last shard (they live in ``{split}-tail.json``)."""
        return list(self._rejects)

    def _open_shard(self) -> tarfile.TarFile:
        name = shard_name(self.split, len(self.shards))
        self._tmp_path = self.sink.staging_path(name)
        self._tar = tarfile.open(self._tmp_path, "w", format=tarfile.GNU_FORMAT)  # noqa: SIM115  (closed by _close_shard)
        self._samples = 0
        self._bytes = 0
        return self._tar

    def _close_shard(self) -> None:
        assert self._tar is not None and self._tmp_path is not None
        self._tar.close()
        name = shard_name(self.split, len(self.shards))
        digest = hashlib.sha256()
        with open(self._tmp_path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        size = self._tmp_path.stat().st_size
        info = ShardInfo(
            name=name,
            split=self.split,
            index=len(self.shards),
            samples=self._samples,
            sha256=digest.hexdigest(),
            bytes=size,
            inputs=(self._start, self.position),
            rejects=self._rejects,
            labels=dict(sorted(self._labels.items())),
            deid=dict(sorted(self._deid.items())),
        )
        self.sink.commit_file(self._tmp_path, name, info.sha256)
        # The sidecar is written last: it is what marks the shard as committed for a resumed build.
        self.sink.write_bytes(sidecar_name(name), _dumps(info.sidecar(self.fingerprint)))
        self.shards.append(info)
        self._tar = None
        self._tmp_path = None
        self._rejects = []
        self._labels = Counter()
        self._deid = Counter()
        self._start = self.position


def load_resume(sink: ShardSink, split: str, fingerprint: str) -> SplitResume:
    """The committed prefix of a split from an earlier run with the same fingerprint."""
    shards: list[ShardInfo] = []
    position = 0
    while True:
        name = shard_name(split, len(shards))
        side = sidecar_name(name)
        if not (sink.exists(side) and sink.exists(name)):
            break
        data = json.loads(sink.read_bytes(side))
        if data.get("fingerprint") != fingerprint or data["inputs"][0] != position:
            break
        shards.append(ShardInfo.from_sidecar(data))
        position = data["inputs"][1]
    tail = None
    tail_file = tail_name(split)
    if sink.exists(tail_file):
        data = json.loads(sink.read_bytes(tail_file))
        if data.get("fingerprint") == fingerprint and data["inputs"][0] == position:
            tail = data
    return SplitResume(shards=shards, tail=tail)


def write_manifest(sink: ShardSink, manifest: dict[str, Any], rejects: list[dict[str, str]]) -> None:
    """``rejects.jsonl`` then ``manifest.json`` (the manifest last: its presence means the build finished)."""
    sink.write_bytes(REJECTS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects).encode())
    sink.write_bytes(MANIFEST, _dumps(manifest))


def verify_output(sink: ShardSink) -> list[str]:
    """Recompute every shard's sha256, size and sample count against its sidecar and the manifest.

    Returns a list of problems (empty = the output is intact).
    """
    problems: list[str] = []
    if not sink.exists(MANIFEST):
        return ["manifest.json is missing (build not finished?)"]
    manifest = json.loads(sink.read_bytes(MANIFEST))
    for entry in manifest.get("shards", []):
        name = entry["name"]
        if not sink.exists(name):
            problems.append(f"{name}: listed in manifest.json but missing")
            continue
        data = sink.read_bytes(name)
        side = json.loads(sink.read_bytes(sidecar_name(name))) if sink.exists(sidecar_name(name)) else None
        sha = hashlib.sha256(data).hexdigest()
        keys = set()
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                for member in tar.getmembers():
                    keys.add(member.name.split(".", 1)[0])
        except tarfile.TarError as err:
            problems.append(f"{name}: not a readable tar ({err})")
            continue
        for where, ref in ((MANIFEST, entry), (sidecar_name(name), side)):
            if ref is None:
                problems.append(f"{name}: sidecar {sidecar_name(name)} is missing")
                continue
            if ref["sha256"] != sha:
                problems.append(f"{name}: sha256 {sha} != {ref['sha256']} in {where}")
            if ref["bytes"] != len(data):
                problems.append(f"{name}: {len(data)} bytes != {ref['bytes']} in {where}")
            if ref["samples"] != len(keys):
                problems.append(f"{name}: {len(keys)} samples != {ref['samples']} in {where}")
    listed_names = {MANIFEST, REJECTS}
    for entry in manifest.get("shards", []):
        listed_names |= {entry["name"], sidecar_name(entry["name"])}
    listed_names |= {tail_name(split) for split in manifest.get("splits", {})}
    for name in sink.list():
        if name not in listed_names:
            # The loader reads only the manifest's shards; anything else here is a leftover or a mistake.
            problems.append(
                f"{name}: in the output folder but not listed in manifest.json (the loader ignores it; "
                "remove it or rebuild)"
            )
    for split, info in manifest.get("splits", {}).items():
        listed = sum(e["samples"] for e in manifest.get("shards", []) if e["split"] == split)
        if listed != info["samples"]:
            problems.append(f"split {split}: shards hold {listed} samples, manifest says {info['samples']}")
    return problems


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()
