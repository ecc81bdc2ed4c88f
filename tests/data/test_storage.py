"""Storage: local folder and real SeaweedFS S3 behave the same; retries classify errors; reads survive restarts."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from mmclip_devtools.s3_server import LocalS3Server
from mmclip_dist.data.storage import (
    LocalStorage,
    RetryPolicy,
    S3Storage,
    Storage,
    StorageError,
    _is_transient,
    open_storage,
    open_url,
    split_url,
)

ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256(b"abc"), FIPS 180-2


def _exercise(storage: Storage, tmp_path: Path) -> None:
    """The behaviour every backend must share."""
    storage.put_bytes(b"abc", "train-000001.tar")
    storage.put_bytes(b"zz", "train-000000.tar")
    storage.put_bytes(b"{}", "sub/manifest.json")
    local = tmp_path / "big.bin"
    local.write_bytes(bytes(range(256)) * 9000)  # 2.3 MB: several read chunks
    storage.put_file(local, "sub/big.bin")

    assert storage.list() == ["sub/big.bin", "sub/manifest.json", "train-000000.tar", "train-000001.tar"]
    assert storage.list("train-") == ["train-000000.tar", "train-000001.tar"]
    assert storage.list("sub/") == ["sub/big.bin", "sub/manifest.json"]
    assert storage.get_bytes("train-000001.tar") == b"abc"
    with storage.open_read("sub/big.bin") as stream:
        assert stream.read(3) == b"\x00\x01\x02"
        assert stream.read() == local.read_bytes()[3:]
    assert storage.exists("train-000000.tar")
    assert not storage.exists("train-000009.tar")
    assert storage.verify("train-000001.tar", ABC_SHA256)
    assert storage.verify("train-000001.tar", ABC_SHA256.upper())
    assert not storage.verify("train-000000.tar", ABC_SHA256)
    assert storage.verify("sub/big.bin", hashlib.sha256(local.read_bytes()).hexdigest())

    storage.put_bytes(b"new", "train-000001.tar")  # overwrite
    assert storage.get_bytes("train-000001.tar") == b"new"
    storage.delete("train-000001.tar")
    storage.delete("train-000001.tar")  # idempotent
    assert storage.list("train-") == ["train-000000.tar"]
    with open_url(storage.url_for("train-000000.tar"), getattr(storage, "endpoint", None)) as stream:
        assert stream.read() == b"zz"
    for bad in ["", "/etc/passwd", "../x", "a/../../x", "dir/"]:
        with pytest.raises(ValueError, match="invalid storage name"):
            storage.put_bytes(b"x", bad)


def test_local_storage(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "root"))
    assert isinstance(storage, LocalStorage)
    assert storage.list() == []  # missing root folder lists as empty
    _exercise(storage, tmp_path)
    assert storage.url_for("a/b.tar") == str(tmp_path / "root" / "a" / "b.tar")
    # no temporary files are left behind, and a stray one (crashed writer) is never listed
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["sub", "train-000000.tar"]
    (tmp_path / "root" / ".x.tar.tmp-abc").write_bytes(b"partial")
    assert ".x.tar.tmp-abc" not in storage.list()
    with pytest.raises(FileNotFoundError):
        storage.get_bytes("missing.tar")


def test_local_write_is_atomic_on_failure(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_bytes(b"old", "f.bin")
    with pytest.raises(FileNotFoundError):
        storage.put_file(tmp_path / "does-not-exist", "f.bin")
    assert storage.get_bytes("f.bin") == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_urls() -> None:
    assert split_url("s3://b/p/q/x.tar") == ("s3://b/p/q", "x.tar")
    assert split_url("s3://b/x.tar") == ("s3://b", "x.tar")
    assert split_url("/data/s/x.tar") == ("/data/s", "x.tar")
    assert split_url("file:///data/s/x.tar") == ("/data/s", "x.tar")
    storage = open_storage("s3://bucket/a/b/", endpoint="http://127.0.0.1:1")
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.url) == ("bucket", "a/b", "s3://bucket/a/b")
    assert storage.url_for("x.tar") == "s3://bucket/a/b/x.tar"
    assert open_storage("s3://bucket").url_for("x.tar") == "s3://bucket/x.tar"
    with pytest.raises(ValueError, match="unsupported storage URL"):
        open_storage("gs://bucket/x")
    with pytest.raises(ValueError, match="without a bucket"):
        open_storage("s3:///x")


def _client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def test_transient_error_classification() -> None:
    assert _is_transient(_client_error(503, "ServiceUnavailable"))
    assert _is_transient(_client_error(500, "InternalError"))
    assert _is_transient(_client_error(429, "TooManyRequests"))
    assert _is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert _is_transient(ConnectionResetError())
    assert not _is_transient(_client_error(404, "NoSuchKey"))
    assert not _is_transient(_client_error(403, "SignatureDoesNotMatch"))
    assert not _is_transient(NoCredentialsError())
    assert not _is_transient(FileNotFoundError())


def test_retry_policy_backs_off_then_gives_up() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("drop")
        return "ok"

    assert RetryPolicy(deadline_s=5, base_s=0.01).run("flaky", flaky) == "ok"
    assert len(calls) == 3

    def missing() -> None:
        calls.append(1)
        raise _client_error(404, "NoSuchKey")

    calls.clear()
    with pytest.raises(ClientError):
        RetryPolicy(deadline_s=5, base_s=0.01).run("missing", missing)
    assert len(calls) == 1  # permanent errors are not retried

    def down() -> None:
        raise ConnectionRefusedError("down")

    with pytest.raises(StorageError, match="giving up"):
        RetryPolicy(deadline_s=0.05, base_s=0.01).run("GET s3://b/k", down)


@pytest.mark.integration
def test_s3_storage(s3_server: LocalS3Server, s3_prefix: str, tmp_path: Path) -> None:
    storage = open_storage(s3_prefix, endpoint=s3_server.endpoint)
    assert isinstance(storage, S3Storage)
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update({k: v for k, v in s3_server.env().items() if k.startswith("AWS_") and "KEY" in k})
    try:
        assert storage.list() == []
        _exercise(storage, tmp_path)
        with pytest.raises(StorageError, match="cannot read s3://"):
            storage.get_bytes("missing.tar")
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.integration
def test_s3_read_resumes_across_server_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with LocalS3Server(tmp_path / "s3", bucket="restart") as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        caplog.set_level(logging.WARNING, logger="mmclip_dist.data.storage")
        storage = S3Storage("s3://restart/p", retry=RetryPolicy(deadline_s=120))
        # Larger than all the bytes loopback TCP can hold in flight (32 MiB receive window + send buffer),
        # so the kill below necessarily cuts the body before its end.
        payload = np.random.default_rng(0).integers(0, 256, 48 << 20, dtype=np.uint8).tobytes()
        storage.put_bytes(payload, "big.bin")
        with storage.open_read("big.bin") as stream:
            head = stream.read(1 << 20)
            server.stop()  # kills every open connection mid-body
            restarter = threading.Thread(target=server.start)  # same ports and data, back in a few seconds
            restarter.start()
            rest = stream.read()
            restarter.join()
        assert head + rest == payload
        # the drop really happened and was bridged by a ranged re-request
        assert any("reconnecting" in r.getMessage() for r in caplog.records)
