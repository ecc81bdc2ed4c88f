"""A local MLflow tracking server (sqlite + local artifacts) for tests and local development.

``with LocalMlflowServer(tmp_path) as server: MlflowClient(server.uri)`` starts ``mlflow server`` on
127.0.0.1 and a free port, waits for ``/health`` and, on exit, stops it. The server runs in its own
session: ``mlflow server`` forks uvicorn/gunicorn workers (and may start job runners), so stopping
signals the whole process group rather than the one PID we started, and waits until none is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from mmclip_dist.loopback import free_port


def process_group_members(pgid: int) -> list[int]:
    """PIDs (from /proc) whose process group is ``pgid``; zombies count until reaped."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process exited while we were listing
            continue
        # Fields after the parenthesised command name (which may contain spaces): state ppid pgrp ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


class LocalMlflowServer:
    """``mlflow server`` over ``root/mlflow.db`` with artifacts under ``root/artifacts``.

    ``port=None`` picks a free one; ``host`` is the address to bind (run ``start`` inside a test-bed host's
    namespace for a non-loopback one) and ``allowed_name`` a host name clients may use for it; ``job_execution`` enables MLflow 3's GenAI job runner (off: not
    needed for tracking). The server log goes to ``root/server.log``.
    """

    def __init__(
        self,
        root: Path | str,
        port: int | None = None,
        workers: int = 1,
        startup_timeout: float = 120.0,
        job_execution: bool = False,
        host: str = "127.0.0.1",
        allowed_name: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.port = port
        self.workers = workers
        self.startup_timeout = startup_timeout
        self.job_execution = job_execution
        self.allowed_name = allowed_name
        self.host = host
        self.log_path = self.root / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None

    @property
    def uri(self) -> str:
        if self.port is None:
            raise RuntimeError("the MLflow server is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of ``mlflow server`` (also its process group id, since it leads a new session)."""
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        db = (self.root / "mlflow.db").resolve()
        artifacts = (self.root / "artifacts").resolve()
        return [
            sys.executable, "-m", "mlflow", "server",
            "--host", self.host,
            "--port", str(self.port),
            "--workers", str(self.workers),
            "--backend-store-uri", f"sqlite:///{db}",
            # Artifacts are proxied through the server (mlflow-artifacts:/), so clients need no
            # access to the folder; it is the same setup as a remote server with an S3 destination.
            "--serve-artifacts",
            "--artifacts-destination", artifacts.as_uri(),
        ] + (
            # MLflow 3 answers only Host headers of localhost and private IPs unless told otherwise
            # (a DNS-rebinding guard); a test-bed host is also reached by its name.
            ["--allowed-hosts", f"{self.host},{self.host}:{self.port},{self.allowed_name},{self.allowed_name}:{self.port}"]
            if self.allowed_name else []
        )  # fmt: skip

    def start(self) -> LocalMlflowServer:
        if self._proc is not None:
            raise RuntimeError(f"the MLflow server is already running (pid {self._proc.pid})")
        self.root.mkdir(parents=True, exist_ok=True)
        pick_port = self.port is None
        # A port picked by free_port can be taken before the server binds it: retry with another.
        for attempt in range(3 if pick_port else 1):
            if pick_port:
                self.port = free_port(self.host)
            try:
                self._launch()
                return self
            except RuntimeError:
                if attempt == 2 or not pick_port or "address already in use" not in self._log_tail().lower():
                    raise
        return self  # unreachable: the loop either returns or raises

    def _launch(self) -> None:
        env = dict(os.environ)
        env.pop("MLFLOW_TRACKING_URI", None)  # the server must not point at some other store
        # MLflow 3 starts a job runner with ~7 huey consumer processes for GenAI scoring jobs;
        # experiment tracking never uses them, and on a small machine they cost seconds of start-up.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if self.job_execution else "false"
        with open(self.log_path, "ab") as log:
            # start_new_session: the server and every worker it forks share a fresh process group
            # that stop() can signal as a whole, without touching the caller's own group.
            self._proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.root, env=env, start_new_session=True,
            )  # fmt: skip
        self._pgid = self._proc.pid
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise RuntimeError(f"mlflow server exited with code {code} during start-up:\n{self._log_tail()}")
            if self._healthy():
                return
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(
            f"mlflow server on {self.uri} not healthy after {self.startup_timeout:.0f} s:\n{self._log_tail()}"
        )

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def alive_pids(self) -> list[int]:
        """Processes still in the server's process group (empty once stopped)."""
        return process_group_members(self._pgid) if self._pgid is not None else []

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server's process group, SIGKILL what is left after ``timeout`` seconds."""
        if self._proc is None or self._pgid is None:
            return
        try:
            os.killpg(self._pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        # Workers can outlive the parent briefly; wait for the group to empty before escalating.
        while process_group_members(self._pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_group_members(self._pgid):
            try:
                os.killpg(self._pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait(timeout=5)
            end = time.monotonic() + 5
            while process_group_members(self._pgid) and time.monotonic() < end:
                time.sleep(0.1)
        self._proc = None

    def __enter__(self) -> LocalMlflowServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
