"""Training on a six-host cluster (network namespaces) through node and network faults.

Ray head, w1, w2 are separate hosts, each node advertising its own address; shards and checkpoints live in
SeaweedFS on ``s3``, tracking on ``mlflow``. One worker runs on w1 and one on w2 (1 CPU each, none on the head).
Every test ends with a finished run: one MLflow run with every step's loss, and an export in S3 that loads.
Recovery times are printed (``pytest -s``) and recorded in docs/operations.md ("Node and network faults").
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from mmclip_devtools.fault_hooks import PID_DIR_ENV, STEP_SLEEP_ENV, read_events
from mmclip_devtools.fixtures.training import TrainAssets, build_train_assets, cli_command, tiny_config, wait_for
from mmclip_devtools.netns_cluster import DASHBOARD_PORT, WORKER_HOSTS, NetnsCluster
from mmclip_dist.config import Config, dump_config
from mmclip_dist.model import MMCLIP
from mmclip_dist.train.state import DEEPSPEED_TAG, STATE_FILE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def train_assets(tmp_path_factory: pytest.TempPathFactory) -> TrainAssets:
    return build_train_assets(tmp_path_factory.mktemp("train-assets"))


@pytest.fixture(scope="module")
def shards(netns_cluster: NetnsCluster, train_assets: TrainAssets) -> str:
    """The tiny training shards, uploaded to the ``s3`` host from ``client``."""
    files = sorted(p for p in train_assets.shards.iterdir() if p.is_file())

    def upload() -> None:
        client = netns_cluster.s3_client()
        for path in files:
            client.upload_file(str(path), netns_cluster.bucket, f"shards/{path.name}")

    netns_cluster.bed.call("client", upload, timeout=120)
    return f"s3://{netns_cluster.bucket}/shards"


_STARTED: list[Run] = []


@pytest.fixture(autouse=True)
def _leave_the_cluster_whole(netns_cluster: NetnsCluster) -> Iterator[None]:
    """After each test, failed or not: no driver left running, every link up, both worker nodes alive."""
    yield
    while _STARTED:
        run = _STARTED.pop()
        if run.proc is not None and run.proc.poll() is None:
            netns_cluster.bed.stop(run.proc)
    for host in netns_cluster.bed.hosts:
        if netns_cluster.bed.is_cut(host):
            netns_cluster.bed.restore(host)
    for host in WORKER_HOSTS:
        if netns_cluster.node_state(host) != "ALIVE":
            netns_cluster.restart_ray(host)
    netns_cluster.wait_nodes(len(WORKER_HOSTS), 300)


class Run:
    """One training job on the cluster: its config, worker events, and what it left in S3 and MLflow."""

    def __init__(self, cluster: NetnsCluster, cfg: Config, workdir: Path) -> None:
        self.cluster = cluster
        self.cfg = cfg
        self.name = cfg.train.run_name
        self.pid_dir = workdir / "pids"
        self.config_file = workdir / f"{self.name}.yaml"
        self.config_file.write_text(dump_config(cfg))
        self.proc: subprocess.Popen | None = None
        self.log = cluster.bed.log_path(self.name)

    def start_driver(self, step_sleep: float) -> Run:
        """The driver on ``head`` (where a Ray job's entrypoint runs), joined through RAY_ADDRESS."""
        env = {PID_DIR_ENV: str(self.pid_dir), STEP_SLEEP_ENV: str(step_sleep)}
        self.proc, self.log = self.cluster.run_driver(cli_command(self.config_file), self.name, env)
        _STARTED.append(self)
        return self

    def steps(self, rank: int) -> list[dict[str, Any]]:
        return [e for e in read_events(self.pid_dir, rank) if e["event"] == "step"]

    def starts(self, rank: int) -> list[dict[str, Any]]:
        return [e for e in read_events(self.pid_dir, rank) if e["event"] == "start"]

    def wait(self, predicate: Any, what: str, timeout: float = 900) -> Any:
        return wait_for(predicate, what, timeout, self.proc, self.log)

    def finish(self, timeout: float = 900) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cluster.bed.stop(self.proc)
            raise AssertionError(
                f"training did not finish in {timeout:.0f}s:\n{self.log.read_text()[-6000:]}"
            ) from None
        assert self.proc.returncode == 0, f"driver exited {self.proc.returncode}:\n{self.log.read_text()[-6000:]}"

    def s3_object(self, key: str) -> bytes | None:
        def get() -> bytes | None:
            client = self.cluster.s3_client()
            try:
                return client.get_object(Bucket=self.cluster.bucket, Key=key)["Body"].read()
            except client.exceptions.NoSuchKey:
                return None

        return self.cluster.bed.call("client", get, timeout=120)

    def s3_keys(self, prefix: str) -> list[str]:
        def keys() -> list[str]:
            pages = (
                self.cluster.s3_client()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=self.cluster.bucket, Prefix=prefix)
            )
            return [o["Key"] for page in pages for o in page.get("Contents", [])]

        return self.cluster.bed.call("client", keys, timeout=120)

    def registered_steps(self) -> list[int]:
        """Checkpoints Ray Train's controller has registered (its snapshot in S3)."""
        raw = self.s3_object(f"runs/{self.name}/checkpoint_manager_snapshot.json")
        try:
            return [int(r["metrics"]["step"]) for r in json.loads(raw)["checkpoint_results"]] if raw else []
        except (json.JSONDecodeError, KeyError):
            return []

    def hosts_of_ranks(self) -> dict[int, str]:
        """Host each rank's current worker process runs in (its PID is in that host's namespace)."""
        bed = self.cluster.bed
        pids = {host: set(bed.pids(host)) for host in ("head", "w1", "w2")}
        return {rank: next((h for h, p in pids.items() if self.steps(rank)[-1]["pid"] in p), "?") for rank in (0, 1)}

    def check_finished(self, total: int, mlflow_tag: tuple[str, str] | None = None) -> MlflowClient:
        """One FINISHED MLflow run with the loss of every step, complete checkpoints, an export that loads."""
        outcome: dict[str, Any] = {}

        def query() -> None:
            client = MlflowClient(self.cluster.tracking_uri)
            experiment = client.get_experiment_by_name(self.cfg.tracking.experiment)
            runs = client.search_runs([experiment.experiment_id])
            outcome["runs"] = runs
            outcome["loss_steps"] = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")]

        self.cluster.bed.call("client", query, timeout=120)
        runs = outcome["runs"]
        assert len(runs) == 1 and runs[0].info.status == "FINISHED", [(r.info.run_id, r.info.status) for r in runs]
        assert sorted(set(outcome["loss_steps"])) == list(range(1, total + 1)), outcome["loss_steps"]
        if mlflow_tag is not None:
            assert runs[0].data.tags.get(mlflow_tag[0]) == mlflow_tag[1], runs[0].data.tags

        keys = self.s3_keys(f"runs/{self.name}/")
        files: dict[str, set[str]] = {}
        for key in keys:  # runs/<name>/checkpoint_*/<file>
            parts = key.split("/", 3)
            if len(parts) == 4 and parts[2].startswith("checkpoint_") and parts[3]:
                files.setdefault(parts[2], set()).add(parts[3])
        assert files, keys
        for checkpoint, names in files.items():  # every checkpoint left in storage is complete
            assert {STATE_FILE, "rng_rank0.pt", "rng_rank1.pt"} <= names, (checkpoint, names)
            assert any(f.startswith(f"{DEEPSPEED_TAG}/") and "optim_states" in f for f in names), names
        export = self.log.parent / f"{self.name}-export"
        # (keys ending in "/" are the folder markers pyarrow writes)
        for key in (k for k in keys if k.startswith(f"runs/{self.name}/model/") and not k.endswith("/")):
            target = export / key.split("/model/", 1)[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.s3_object(key))
        assert MMCLIP.from_pretrained(export).cfg.backbone == "test_resnet"
        return runs[0]


def _config(cluster: NetnsCluster, assets: TrainAssets, shards: str, workdir: Path, name: str, **train: Any) -> Config:
    overrides = [
        f"data.train_shards={shards}",
        f"data.eval_shards={shards}",
        f"data.s3_endpoint={cluster.s3_endpoint}",
        f"train.storage_path=s3://{cluster.bucket}/runs",
        f"train.storage_endpoint={cluster.s3_endpoint}",
        "train.export_dir=",
        f"train.run_name={name}",
        f"tracking.tracking_uri={cluster.tracking_uri}",
        f"tracking.experiment={name}",
        *[f"train.{k}={v}" for k, v in train.items()],
    ]
    return tiny_config(assets, workdir, overrides)


def _report(name: str, **figures: float) -> None:
    print(f"\n[{name}] " + ", ".join(f"{k} {v:.1f}s" for k, v in figures.items()), flush=True)


@pytest.mark.timeout(1500)
def test_submit_from_client_trains_on_w1_and_w2(
    netns_cluster: NetnsCluster, train_assets: TrainAssets, shards: str, tmp_path: Path
) -> None:
    """``mmclip-dist submit`` on the client host sends the job to the head's job server and follows it."""
    total = 4
    cfg = _config(netns_cluster, train_assets, shards, tmp_path, "submitted", max_steps=total, checkpoint_every=2)
    run = Run(netns_cluster, cfg, tmp_path)
    pid_dir = run.pid_dir
    argv = [
        *cli_command(run.config_file)[:3], "submit", "--config", str(run.config_file),
        "--address", f"http://head:{DASHBOARD_PORT}", "--working-dir", "", "--env", f"{PID_DIR_ENV}={pid_dir}",
    ]  # fmt: skip
    log = run.log
    proc = netns_cluster.bed.run("client", argv, env=netns_cluster.ray_env(), log=log, cwd=tmp_path)
    try:
        proc.wait(timeout=540)
    except subprocess.TimeoutExpired:
        netns_cluster.bed.stop(proc)
        raise AssertionError(f"submit did not finish:\n{log.read_text()[-6000:]}") from None
    output = log.read_text(errors="replace")
    assert proc.returncode == 0, output[-6000:]
    assert "SUCCEEDED" in output, output[-3000:]
    bed = netns_cluster.bed
    by_rank = {rank: [e for e in read_events(pid_dir, rank) if e["event"] == "step"] for rank in (0, 1)}
    assert [e["step"] for e in by_rank[0]] == [e["step"] for e in by_rank[1]] == list(range(1, total + 1))
    # The two ranks ran on two different worker nodes: the node ids are those of w1 and w2 (by address).
    nodes = {n["node_id"]: n["node_ip"] for n in netns_cluster.nodes()}
    ips = {nodes[by_rank[rank][0]["node_id"]] for rank in (0, 1)}
    assert ips == {bed.ip("w1"), bed.ip("w2")}, ips
    run.check_finished(total, mlflow_tag=("metrics_dropped", "0"))


def _lose_a_node_and_recover(
    cluster: NetnsCluster,
    assets: TrainAssets,
    shards: str,
    workdir: Path,
    name: str,
    victim: str,
    fault: str,
) -> None:
    every, total = 2, 8
    cfg = _config(cluster, assets, shards, workdir, name, max_steps=total, checkpoint_every=every, max_failures=2)
    run = Run(cluster, cfg, workdir).start_driver(step_sleep=1.0)
    run.wait(lambda: all(run.steps(r) for r in (0, 1)), "the first step of both ranks")
    assert sorted(run.hosts_of_ranks().values()) == ["w1", "w2"], run.hosts_of_ranks()
    run.wait(lambda: run.registered_steps() and run.steps(0)[-1]["step"] > every, "a registered checkpoint")
    registered = max(run.registered_steps())

    started = time.time()
    if fault == "cut":
        cluster.bed.cut(victim)
    else:
        (raylet,) = cluster.bed.pids_named(victim, "raylet")
        cluster.bed.kill_pid(raylet, signal.SIGKILL)
    run.wait(lambda: cluster.node_state(victim) == "DEAD", f"Ray to declare {victim} dead", timeout=120)
    dead = time.time()
    last_step_before = max(e["step"] for r in (0, 1) for e in run.steps(r))
    if fault == "cut":
        cluster.bed.restore(victim)
    # The old node cannot come back (its raylet exits once it learns it was declared dead): like a pod
    # restart, the host's processes go and `ray start` runs again.
    cluster.restart_ray(victim)
    rejoin_started = time.time()
    run.wait(lambda: cluster.node_state(victim) == "ALIVE", f"{victim} to rejoin", timeout=300)
    rejoined = time.time()
    run.wait(lambda: all(len(run.starts(r)) == 2 for r in (0, 1)), "both ranks to restart", timeout=600)
    resumed = max(run.starts(r)[1]["time"] for r in (0, 1))
    run.finish()

    for rank in (0, 1):
        first, second = run.starts(rank)
        assert first["step"] == 0 and second["pid"] != first["pid"]
    restored = run.starts(0)[1]["step"]
    assert restored % every == 0 and registered <= restored <= last_step_before, (restored, registered)
    assert run.starts(1)[1]["step"] == restored
    steps = [e["step"] for e in run.steps(0)]
    assert steps[-1] == total and sorted(set(steps)) == list(range(1, total + 1)), steps
    run.check_finished(total)
    _report(
        name,
        declared_dead_after=dead - started,
        rejoined_after_ray_start=rejoined - rejoin_started,
        training_resumed_after_ray_start=resumed - rejoin_started,
        fault_to_resumed=resumed - started,
    )


@pytest.mark.timeout(1800)
def test_w2_cut_off_is_declared_dead_and_training_restores_when_it_is_back(
    netns_cluster: NetnsCluster, train_assets: TrainAssets, shards: str, tmp_path: Path
) -> None:
    _lose_a_node_and_recover(netns_cluster, train_assets, shards, tmp_path, "w2-cut", "w2", "cut")


@pytest.mark.timeout(1800)
def test_sigkilled_raylet_on_w1_is_declared_dead_and_training_restores(
    netns_cluster: NetnsCluster, train_assets: TrainAssets, shards: str, tmp_path: Path
) -> None:
    _lose_a_node_and_recover(netns_cluster, train_assets, shards, tmp_path, "w1-raylet", "w1", "sigkill")


def _cut_service_for(run: Run, host: str, seconds: float) -> tuple[float, float]:
    cluster = run.cluster
    cut = time.time()
    cluster.bed.cut(host)
    time.sleep(seconds)
    cluster.bed.restore(host)
    return cut, time.time()


@pytest.mark.timeout(1500)
def test_mlflow_cut_for_20s_does_not_stop_training_and_metrics_arrive_afterwards(
    netns_cluster: NetnsCluster, train_assets: TrainAssets, shards: str, tmp_path: Path
) -> None:
    total = 12
    cfg = _config(netns_cluster, train_assets, shards, tmp_path, "mlflow-cut", max_steps=total, checkpoint_every=6)
    run = Run(netns_cluster, cfg, tmp_path).start_driver(step_sleep=0.5)
    run.wait(lambda: run.steps(0) and run.steps(0)[-1]["step"] >= 2, "step 2")
    cut, restored = _cut_service_for(run, "mlflow", 20.0)
    run.finish()
    during = [e["step"] for e in run.steps(0) if cut <= e["time"] <= restored]
    assert len(during) >= 3, f"training stalled while MLflow was cut off: {during}"
    for rank in (0, 1):
        assert len(run.starts(rank)) == 1, "no worker restarted"
    run.check_finished(total, mlflow_tag=("metrics_dropped", "0"))
    _report("mlflow-cut", cut=restored - cut, steps_during_cut=float(len(during)))


@pytest.mark.timeout(1500)
def test_s3_cut_for_20s_mid_epoch_and_during_a_checkpoint_upload_is_ridden_out(
    netns_cluster: NetnsCluster, train_assets: TrainAssets, shards: str, tmp_path: Path
) -> None:
    every, total = 2, 10
    cfg = _config(
        netns_cluster, train_assets, shards, tmp_path, "s3-cut", max_steps=total, checkpoint_every=every, max_failures=0
    )
    run = Run(netns_cluster, cfg, tmp_path).start_driver(step_sleep=0.5)
    # Cut right after step 3: step 4 (its shard reads, then its checkpoint upload) runs into the cut.
    run.wait(lambda: run.steps(0) and run.steps(0)[-1]["step"] >= 3, "step 3")
    cut, restored = _cut_service_for(run, "s3", 20.0)
    run.finish()
    for rank in (0, 1):
        assert len(run.starts(rank)) == 1, "the readers and checkpoint writers retried: no restore was needed"
        times = [e["time"] for e in run.steps(rank)]
        assert any(t > restored for t in times)
    # The step whose checkpoint upload met the cut finished only after the link was back.
    step_times = {e["step"]: e["time"] for e in run.steps(0)}
    stalled = [
        s for s in step_times if s % every == 0 and step_times[s] >= restored and step_times.get(s - 1, 0) < restored
    ]
    assert stalled, step_times
    run.check_finished(total)
    gaps = [b - a for a, b in zip(sorted(step_times.values()), sorted(step_times.values())[1:])]
    _report(
        "s3-cut", cut=restored - cut, longest_step_gap=max(gaps), stall_after_restore=step_times[stalled[0]] - restored
    )
