"""Object storage behind one small interface: a local folder or an S3 prefix (boto3).

``open_storage("s3://bucket/shards")`` or ``open_storage("/data/shards")`` returns a ``Storage`` whose names
are paths relative to that root (``"train-000000.tar"``). Local writes are atomic (temporary name, fsync,
rename) so a reader never sees half a file. S3 calls are retried by one loop of our own (``RetryPolicy``:
exponential back-off on connection drops, throttling and 5xx, each retry logged with the object it was for;
botocore's own retries are off so an outage is never absorbed silently), and ``open_read`` returns a stream that
reconnects with an HTTP Range request from the byte it had reached when a connection drops, so an S3 server
restart in the middle of a shard costs a pause, not the training run. Credentials come from the standard
``AWS_*`` variables / boto3 chain and are never logged.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, TypeVar

import boto3
import botocore.exceptions
import urllib3.exceptions
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

log = logging.getLogger(__name__)

T = TypeVar("T")
_CHUNK = 1 << 20


class StorageError(RuntimeError):
    """A storage operation that failed for good (after retries), naming the object."""


# ---------------------------------------------------------------------------------------------- interface


class Storage(ABC):
    """Named blobs under one root; names are relative POSIX paths (``"a/b.tar"``)."""

    url: str

    @abstractmethod
    def put_file(self, local_path: str | Path, name: str) -> None:
        """Copy a local file to ``name`` (replacing it)."""

    @abstractmethod
    def put_bytes(self, data: bytes, name: str) -> None:
        """Write ``data`` to ``name`` (replacing it)."""

    @abstractmethod
    def get_bytes(self, name: str) -> bytes:
        """The whole content of ``name``."""

    @abstractmethod
    def open_read(self, name: str) -> BinaryIO:
        """A streaming binary reader of ``name``; close it when done."""

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether ``name`` exists."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted names (recursively) starting with ``prefix``."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove ``name``; removing a missing name is not an error."""

    @abstractmethod
    def url_for(self, name: str) -> str:
        """Absolute URL (or path) of ``name``, accepted by ``open_url``."""

    def verify(self, name: str, sha256: str) -> bool:
        """Read ``name`` back and compare its SHA-256 with the expected hex digest."""
        digest = hashlib.sha256()
        with self.open_read(name) as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest() == sha256.lower()


def _check_name(name: str) -> str:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or name.endswith("/"):
        raise ValueError(f"invalid storage name {name!r}: must be a relative path without '..'")
    return str(path)


# ---------------------------------------------------------------------------------------------- local


class LocalStorage(Storage):
    """A folder on the local (or network-mounted) file system."""

    _TMP_MARK = ".tmp-"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)

    def _path(self, name: str) -> Path:
        return self.root / _check_name(name)

    def _atomic_write(self, name: str, write: Callable[[BinaryIO], object]) -> None:
        target = self._path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Same folder as the target so the rename is atomic; a crash leaves only an ignorable temp file.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}{self._TMP_MARK}", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, local_path: str | Path, name: str) -> None:
        with open(local_path, "rb") as src:
            self._atomic_write(name, lambda dst: shutil.copyfileobj(src, dst, _CHUNK))

    def put_bytes(self, data: bytes, name: str) -> None:
        self._atomic_write(name, lambda dst: dst.write(data))

    def get_bytes(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def open_read(self, name: str) -> BinaryIO:
        return open(self._path(name), "rb")

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        names = []
        for path in self.root.rglob("*"):
            if path.is_file() and self._TMP_MARK not in path.name:
                rel = path.relative_to(self.root).as_posix()
                if rel.startswith(prefix):
                    names.append(rel)
        return sorted(names)

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def url_for(self, name: str) -> str:
        return str(self._path(name))


# ---------------------------------------------------------------------------------------------- S3


def _is_transient(err: BaseException) -> bool:
    """Connection drops, timeouts, throttling and 5xx: worth retrying. 4xx, bad credentials, a missing
    local file are not (retrying them would only delay the real error)."""
    if isinstance(err, S3UploadFailedError) and err.__context__ is not None:
        # boto3's upload wraps the ClientError it caught; classify the original.
        return _is_transient(err.__context__)
    if isinstance(err, ClientError):
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = err.response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in {"SlowDown", "RequestTimeout", "ServiceUnavailable"}
    # HTTPClientError covers ConnectionClosedError, ReadTimeoutError and ResponseStreamingError (a body
    # read cut short); builtin ConnectionError/TimeoutError are raw socket failures surfacing from urllib3.
    transient = (
        botocore.exceptions.ConnectionError,
        botocore.exceptions.HTTPClientError,
        botocore.exceptions.IncompleteReadError,
        ConnectionError,
        TimeoutError,
        urllib3.exceptions.HTTPError,
    )
    return isinstance(err, transient)


class RetryPolicy:
    """Exponential back-off with jitter, bounded by a total deadline (enough to ride out a server restart)."""

    def __init__(self, deadline_s: float = 180.0, base_s: float = 0.25, max_sleep_s: float = 8.0) -> None:
        self.deadline_s = deadline_s
        self.base_s = base_s
        self.max_sleep_s = max_sleep_s

    def run(self, what: str, fn: Callable[[], T]) -> T:
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as err:  # noqa: BLE001 - classified just below
                if not _is_transient(err):
                    raise
                elapsed = time.monotonic() - start
                if elapsed >= self.deadline_s:
                    raise StorageError(
                        f"{what}: giving up after {attempt + 1} attempts / {elapsed:.0f}s: {err}"
                    ) from err
                sleep = min(self.max_sleep_s, self.base_s * 2**attempt) * (0.5 + random.random() / 2)
                attempt += 1
                log.warning("%s failed (%s: %s); retry %d in %.1fs", what, type(err).__name__, err, attempt, sleep)
                time.sleep(sleep)


def _split_s3(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, key = url[5:].partition("/")
    if not bucket:
        raise ValueError(f"S3 URL without a bucket: {url!r}")
    return bucket, key.strip("/")


class _S3ReadStream(io.RawIOBase):
    """Sequential reader of one S3 object that resumes from its offset after a dropped connection."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        super().__init__()
        self._storage = storage
        self._key = key
        self._pos = 0
        self._body: BinaryIO | None = None  # boto3 StreamingBody: read() and close()
        self._etag: str | None = None
        self._size: int | None = None
        self._open()

    def _open(self) -> None:
        def request():  # noqa: ANN202
            kwargs = {"Bucket": self._storage.bucket, "Key": self._key}
            if self._pos:
                kwargs["Range"] = f"bytes={self._pos}-"
            if self._etag:
                # Resuming into a different version of the object would splice two files together.
                kwargs["IfMatch"] = self._etag
            return self._storage.client.get_object(**kwargs)

        what = f"GET {self._storage.bucket}/{self._key} @ byte {self._pos}"
        try:
            response = self._storage.retry.run(what, request)
        except ClientError as err:
            raise StorageError(f"cannot read s3://{self._storage.bucket}/{self._key}: {err}") from err
        if self._etag is None:
            self._etag = response.get("ETag")
            self._size = int(response["ContentLength"])
        self._body = response["Body"]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._size is not None and self._pos >= self._size:
            return 0
        start = time.monotonic()
        attempt = 0
        while True:
            if self._body is None:
                raise ValueError(f"read of s3://{self._storage.bucket}/{self._key} after close()")
            try:
                data = self._body.read(len(buffer))
                if not data and self._size is not None and self._pos < self._size:
                    # The server closed the connection cleanly but early: treat like a drop.
                    raise ConnectionResetError(f"stream ended at byte {self._pos} of {self._size}")
                break
            except Exception as err:  # noqa: BLE001 - only transient errors are retried
                if not _is_transient(err) or time.monotonic() - start > self._storage.retry.deadline_s:
                    raise StorageError(
                        f"reading s3://{self._storage.bucket}/{self._key} failed at byte {self._pos}: {err}"
                    ) from err
                attempt += 1
                log.warning(
                    "read of s3://%s/%s dropped at byte %d (%s); reconnecting (attempt %d)",
                    self._storage.bucket,
                    self._key,
                    self._pos,
                    type(err).__name__,
                    attempt,
                )
                self._close_body()
                self._open()
        n = len(data)
        buffer[:n] = data
        self._pos += n
        return n

    def _close_body(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; nothing to do
                pass
            self._body = None

    def close(self) -> None:
        self._close_body()
        super().close()


_CLIENTS: dict[tuple[int, str | None, str], Any] = {}


def _shared_client(endpoint: str | None):  # noqa: ANN202
    """One boto3 client per process, endpoint and access key: the loader opens one storage per shard, and
    building a client costs tens of milliseconds. Clients are thread-safe; the pid key keeps forks apart."""
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    identity = os.environ.get("AWS_ACCESS_KEY_ID", "") + ":" + hashlib.sha256(secret.encode()).hexdigest()
    key = (os.getpid(), endpoint, identity)
    if key not in _CLIENTS:
        _CLIENTS[key] = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            config=BotoConfig(
                signature_version="s3v4",
                # RetryPolicy is the one retry layer (logged, with a deadline); a second, silent one inside
                # botocore would multiply the attempts and hide outages from the logs.
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
            ),
        )
    return _CLIENTS[key]


class S3Storage(Storage):
    """Objects under ``s3://bucket/prefix`` through boto3."""

    def __init__(
        self,
        url: str,
        endpoint: str | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.bucket, self.prefix = _split_s3(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.retry = retry or RetryPolicy()
        self._client = None
        self._client_pid = -1

    @property
    def client(self):  # noqa: ANN201 - boto3 clients have no importable static type
        # boto3 clients are not fork-safe: a DataLoader worker forked from the trainer gets its own.
        if self._client is None or self._client_pid != os.getpid():
            self._client = _shared_client(self.endpoint)
            self._client_pid = os.getpid()
        return self._client

    def __getstate__(self) -> dict:
        # Picklable for DataLoader workers / Ray: the client is rebuilt on the other side.
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    def _key(self, name: str) -> str:
        name = _check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def put_file(self, local_path: str | Path, name: str) -> None:
        key = self._key(name)
        # S3 PUTs are atomic per object; multipart above 64 MiB keeps memory flat for 500 MB shards.
        config = TransferConfig(multipart_threshold=64 * _CHUNK, multipart_chunksize=64 * _CHUNK)
        self.retry.run(
            f"PUT s3://{self.bucket}/{key}",
            lambda: self.client.upload_file(str(local_path), self.bucket, key, Config=config),
        )

    def put_bytes(self, data: bytes, name: str) -> None:
        key = self._key(name)
        self.retry.run(
            f"PUT s3://{self.bucket}/{key}", lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        )

    def get_bytes(self, name: str) -> bytes:
        with self.open_read(name) as stream:
            return stream.read()

    def open_read(self, name: str) -> BinaryIO:
        return io.BufferedReader(_S3ReadStream(self, self._key(name)), buffer_size=_CHUNK)

    def exists(self, name: str) -> bool:
        key = self._key(name)
        try:
            self.retry.run(
                f"HEAD s3://{self.bucket}/{key}", lambda: self.client.head_object(Bucket=self.bucket, Key=key)
            )
        except ClientError as err:
            if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""

        def listing() -> list[str]:
            keys: list[str] = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root + prefix):
                keys.extend(obj["Key"][len(root) :] for obj in page.get("Contents", []))
            return keys

        return sorted(self.retry.run(f"LIST s3://{self.bucket}/{root}{prefix}", listing))

    def delete(self, name: str) -> None:
        key = self._key(name)
        self.retry.run(
            f"DELETE s3://{self.bucket}/{key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=key)
        )

    def url_for(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"


# ---------------------------------------------------------------------------------------------- factories


def open_storage(url: str, endpoint: str | None = None) -> Storage:
    """``s3://bucket/prefix`` → ``S3Storage``; a folder path (or ``file://`` URL) → ``LocalStorage``."""
    if url.startswith("s3://"):
        return S3Storage(url, endpoint)
    if url.startswith("file://"):
        return LocalStorage(url[len("file://") :])
    if "://" in url:
        raise ValueError(f"unsupported storage URL {url!r}: use a local folder or s3://bucket/prefix")
    return LocalStorage(url)


def split_url(url: str) -> tuple[str, str]:
    """``"s3://b/p/x.tar"`` → ``("s3://b/p", "x.tar")``; the same for local paths."""
    if url.startswith("s3://"):
        bucket, key = _split_s3(url)
        parent, _, name = key.rpartition("/")
        return (f"s3://{bucket}/{parent}" if parent else f"s3://{bucket}"), name
    path = Path(url[len("file://") :] if url.startswith("file://") else url)
    return str(path.parent), path.name


def open_url(url: str, endpoint: str | None = None) -> BinaryIO:
    """A streaming reader of one object given its full URL or path (retrying and resuming on S3)."""
    parent, name = split_url(url)
    return open_storage(parent, endpoint).open_read(name)
