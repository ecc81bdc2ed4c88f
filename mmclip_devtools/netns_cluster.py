"""A training cluster of six test-bed hosts: Ray ``head``, ``w1``, ``w2``, SeaweedFS on ``s3``, MLflow on ``mlflow``, a
``client`` (``mmclip_devtools.netns``), for tests of node and network faults.

Ray starts the way the KubeRay manifests start it (k8s/base/raycluster/raycluster.yaml): ``ray start --head
--num-cpus=0`` on ``head``, ``ray start --address=<head>:6379`` on each worker host, token auth, no loopback switch;
every node advertises its own test-bed address. The Ray processes hold the S3 credentials (like the pods' Secret);
jobs name the endpoint. Shorter GCS health checks (:data:`HEALTH_CHECK_ENV`) make a cut-off node dead in seconds
instead of Ray's default ~65 s; they are test settings, documented in docs/operations.md.

    with NetnsCluster(tmp_path) as cluster:
        proc = cluster.run_driver([...])     # a driver process in ``head`` (RAY_ADDRESS set)
        cluster.bed.cut("w2"); ...; cluster.bed.restore("w2"); cluster.restart_ray("w2")
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from mmclip_devtools.mlflow_server import LocalMlflowServer
from mmclip_devtools.netns import TestBed
from mmclip_devtools.s3_server import LocalS3Server

HOSTS = ("head", "w1", "w2", "s3", "mlflow", "client")
WORKER_HOSTS = ("w1", "w2")
GCS_PORT = 6379
DASHBOARD_PORT = 8265
S3_PORT = 8333
MLFLOW_PORT = 5000
REPO = Path(__file__).resolve().parents[1]
# Read by the GCS (the env of `ray start --head`): a node that misses 3 checks 1 s apart (1 s timeout each)
# is declared dead after ~3-4 s; Ray's defaults (period 3 s, timeout 10 s, threshold 5) take ~65 s.
HEALTH_CHECK_ENV = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
# Variables of the developer's shell that would steer Ray elsewhere (loopback mode, another cluster).
_DROPPED_ENV = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_DASHBOARD_ADDRESS")


class NetnsCluster:
    """Six hosts, SeaweedFS with ``bucket``, an MLflow server, and a 3-node Ray cluster (1 CPU per worker host)."""

    def __init__(self, workdir: Path, bucket: str = "mmclip", start_timeout_s: float = 180.0) -> None:
        self.workdir = Path(workdir)
        self.bucket = bucket
        self.start_timeout_s = start_timeout_s
        self.bed = TestBed(HOSTS, workdir=self.workdir / "bed")
        self.auth_token = secrets.token_hex(32)
        self.s3: LocalS3Server | None = None
        self.mlflow: LocalMlflowServer | None = None
        self._ray: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ addresses

    @property
    def head_ip(self) -> str:
        return self.bed.ip("head")

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.bed.ip('s3')}:{S3_PORT}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.bed.ip('mlflow')}:{MLFLOW_PORT}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head_ip}:{DASHBOARD_PORT}"

    def ray_env(self) -> dict[str, str]:
        """Environment of every Ray process and driver: token auth, S3 credentials, this checkout on PYTHONPATH."""
        assert self.s3 is not None
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        credentials = {k: v for k, v in self.s3.env().items() if "ENDPOINT" not in k}
        return env | credentials | {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.auth_token,
            "RAY_USAGE_STATS_ENABLED": "0",
            # Ray's memory monitor kills workers when the *machine* is nearly full; on a shared test machine
            # that is other people's memory (in Kubernetes it reads the pod's cgroup limit instead).
            "RAY_memory_monitor_refresh_ms": "0",
            # State/job clients (Ray Train's PlacementGroupCleaner too) otherwise look for "the" cluster by
            # scanning local processes, and find the other Ray clusters running on this machine.
            "RAY_API_SERVER_ADDRESS": self.dashboard_url,
            "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
        }  # fmt: skip

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> NetnsCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> NetnsCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bed.setup()
        try:
            s3_ip, mlflow_ip = self.bed.ip("s3"), self.bed.ip("mlflow")
            # Started from inside their hosts (TestBed.call): the server processes and the readiness probes
            # live in those namespaces and bind the hosts' addresses.
            self.s3 = LocalS3Server(self.workdir / "seaweedfs", S3_PORT, bucket=self.bucket, host=s3_ip)
            self.bed.call("s3", self.s3.start)
            self.mlflow = LocalMlflowServer(self.workdir / "mlflow", MLFLOW_PORT, host=mlflow_ip, allowed_name="mlflow")
            self.bed.call("mlflow", self.mlflow.start)
            self._ray["head"] = self.bed.run(
                "head",
                [
                    "ray", "start", "--head", f"--node-ip-address={self.head_ip}", f"--port={GCS_PORT}",
                    "--num-cpus=0", "--object-store-memory=200000000", "--dashboard-host=0.0.0.0", f"--dashboard-port={DASHBOARD_PORT}",
                    f"--temp-dir={self.ray_temp_dir('head')}", "--block",
                ],
                env=self.ray_env() | HEALTH_CHECK_ENV,
                log=self.bed.log_path("ray-head"),
            )  # fmt: skip
            if not self.bed.wait_port("w1", "head", GCS_PORT, timeout=self.start_timeout_s):
                raise TimeoutError(f"Ray GCS not reachable from w1; log:\n{self.log_tail('ray-head')}")
            for host in WORKER_HOSTS:
                self.start_ray(host)
            self.wait_nodes(len(WORKER_HOSTS), self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Tear down every host (processes by namespace and process group, links, namespaces); idempotent."""
        if self.s3 is not None:
            self.s3.stop()
        if self.mlflow is not None:
            self.mlflow.stop()
        self.bed.teardown()
        for host in ("head", *WORKER_HOSTS):
            shutil.rmtree(self.ray_temp_dir(host), ignore_errors=True)

    # ------------------------------------------------------------------ Ray nodes

    def start_ray(self, host: str) -> subprocess.Popen:
        """``ray start --address=<head>:6379 --block`` on a worker host, 1 CPU, advertising the host's address."""
        proc = self.bed.run(
            host,
            [
                "ray", "start", f"--address={self.head_ip}:{GCS_PORT}", f"--node-ip-address={self.bed.ip(host)}",
                "--num-cpus=1", "--object-store-memory=200000000", f"--temp-dir={self.ray_temp_dir(host)}", "--block",
            ],
            env=self.ray_env(),
            log=self.bed.log_path(f"ray-{host}"),
        )  # fmt: skip
        self._ray[host] = proc
        return proc

    def restart_ray(self, host: str) -> subprocess.Popen:
        """What a pod restart does: every process of ``host`` is stopped, then ``ray start`` runs again there."""
        self.bed.kill_host(host)
        return self.start_ray(host)

    def ray_temp_dir(self, host: str) -> Path:
        # Short: Ray's AF_UNIX socket paths under it must stay below 107 bytes.
        return Path(f"/tmp/{self.bed.tag}-{host}")

    def ray_process(self, host: str) -> subprocess.Popen:
        return self._ray[host]

    def nodes(self) -> list[dict[str, Any]]:
        """Ray's node table (state API of the head's dashboard), asked from ``client`` like a remote user would."""
        url = f"{self.dashboard_url}/api/v0/nodes?limit=100&detail=1"

        def get() -> list[dict[str, Any]]:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.auth_token}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())["data"]["result"]["result"]

        return self.bed.call("client", get, timeout=60)

    def node_state(self, host: str) -> str | None:
        """State (ALIVE/DEAD) of the newest Ray node with ``host``'s address; None when there is none."""
        ip = self.bed.ip(host)
        found = [n for n in self.nodes() if n.get("node_ip") == ip]
        alive = [n for n in found if n.get("state") == "ALIVE"]
        return "ALIVE" if alive else ("DEAD" if found else None)

    def wait_nodes(self, count: int, timeout: float) -> None:
        """Until ``count`` worker nodes (besides the head) are alive."""
        deadline = time.monotonic() + timeout
        alive: list[str] = []
        while time.monotonic() < deadline:
            try:
                alive = [n["node_ip"] for n in self.nodes() if n.get("state") == "ALIVE"]
            except OSError:
                alive = []  # dashboard still starting
            if len([ip for ip in alive if ip != self.head_ip]) >= count:
                return
            time.sleep(0.5)
        raise TimeoutError(f"only {alive} alive after {timeout:.0f}s; head log:\n{self.log_tail('ray-head')}")

    # ------------------------------------------------------------------ drivers and clients

    def run_driver(
        self, argv: Sequence[str], name: str, env: Mapping[str, str] | None = None, host: str = "head"
    ) -> tuple[subprocess.Popen, Path]:
        """A driver process on ``host`` joined to the cluster (RAY_ADDRESS); output in the bed's ``<name>.log``."""
        log = self.bed.log_path(name)
        extra = {"RAY_ADDRESS": f"{self.head_ip}:{GCS_PORT}", **(env or {})}
        return self.bed.run(host, list(argv), env=self.ray_env() | extra, log=log, cwd=self.workdir), log

    def s3_client(self) -> Any:  # noqa: ANN401 - boto3 clients have no importable static type
        """A boto3 client of the S3 server; use it only inside ``bed.call("client", ...)``."""
        assert self.s3 is not None
        return self.s3.client()

    def log_tail(self, name: str, chars: int = 4000) -> str:
        try:
            return self.bed.log_path(name).read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"
