"""Production training through ``mmclip-dist train`` on real local Ray clusters, DeepSpeed, MLflow and SeaweedFS.

Each test runs the CLI driver in a subprocess joined to a local Ray cluster on 127.0.0.1 (``LocalRayCluster``)
and steers the workers through the test hooks of ``mmclip_devtools.fault_hooks``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from mmclip_devtools.fault_hooks import PID_DIR_ENV, STEP_SLEEP_ENV, STOP_AFTER_ENV, read_events
from mmclip_devtools.fixtures.training import (
    TrainAssets,
    checkpoint_dirs,
    finish_train,
    read_json,
    run_train,
    runs_of,
    start_train,
    state_dict_of,
    tiny_config,
    wait_for,
)
from mmclip_devtools.local_ray import LocalRayCluster
from mmclip_devtools.s3_server import LocalS3Server
from mmclip_dist.data.storage import open_storage
from mmclip_dist.model import MMCLIP
from mmclip_dist.train.state import STATE_FILE, TENSORS_FILE

pytestmark = pytest.mark.integration


def _losses(tracking_uri: str, run_id: str) -> dict[int, list[float]]:
    """``{step: [loss values logged at that step]}``."""
    out: dict[int, list[float]] = {}
    for metric in MlflowClient(tracking_uri).get_metric_history(run_id, "loss"):
        out.setdefault(metric.step, []).append(metric.value)
    return out


@pytest.mark.timeout(600)
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(
    train_assets: TrainAssets, ray_node: LocalRayCluster, tmp_path: Path
) -> None:
    # 2 ranks x micro-batch 2 x 2 accumulation: 8 breasts per step. The job is cut twice: mid-epoch (the
    # loader skips what was consumed) and exactly at an epoch's end (the resumed epoch yields nothing).
    steps_per_epoch = train_assets.train_samples // (2 * 2) // 2
    assert steps_per_epoch >= 3, train_assets
    cuts = [1, steps_per_epoch]
    total = steps_per_epoch + 2
    common = [f"train.max_steps={total}", "train.checkpoint_every=1", "train.warmup_steps=2", "model.dropout=0.2"]
    env = ray_node.env()

    straight = tiny_config(
        train_assets, tmp_path, [*common, "train.run_name=straight", f"train.export_dir={tmp_path / 'straight'}"]
    )
    run_train(straight, tmp_path, env, name="straight")

    resumed = tiny_config(
        train_assets, tmp_path, [*common, "train.run_name=resumed", f"train.export_dir={tmp_path / 'resumed'}"]
    )
    for attempt, cut in enumerate(cuts):
        run_train(resumed, tmp_path, {**env, STOP_AFTER_ENV: str(cut)}, name=f"cut{cut}", resume=attempt > 0)
        newest = checkpoint_dirs(tmp_path / "runs" / "resumed")[-1]
        assert read_json(newest / STATE_FILE)["step"] == cut
        assert not (tmp_path / "resumed").exists(), "a job stopped early must not export"
    run_train(resumed, tmp_path, env, name="final", resume=True)

    # Same data order, same dropout masks, same optimizer and lr-schedule state: bit-identical weights.
    want, got = state_dict_of(tmp_path / "straight"), state_dict_of(tmp_path / "resumed")
    assert want.keys() == got.keys()
    differing = {
        k: float((want[k].double() - got[k].double()).abs().max()) for k in want if not torch.equal(want[k], got[k])
    }
    assert not differing, f"resumed weights differ from the uninterrupted run: {differing}"

    tracking_uri = resumed.tracking.tracking_uri
    runs = {r.info.run_name: r for r in runs_of(tracking_uri, resumed.tracking.experiment)}
    assert set(runs) == {"straight", "resumed"}, "each job (with all its resumptions) is one MLflow run"
    run = runs["resumed"]
    assert run.info.status == "FINISHED"
    resumed_losses = _losses(tracking_uri, run.info.run_id)
    straight_losses = _losses(tracking_uri, runs["straight"].info.run_id)
    assert sorted(resumed_losses) == list(range(1, total + 1))
    assert all(len(v) == 1 for v in resumed_losses.values()), "no step is logged twice after a clean stop"
    assert resumed_losses == straight_losses


def _upload_shards(folder: Path, url: str, endpoint: str) -> None:
    storage = open_storage(url, endpoint)
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        storage.put_file(path, path.name)


def _alive_node_ids(cluster: LocalRayCluster) -> set[str]:
    """Node ids of the cluster, asked from a fresh driver (this process must not import a configured ray)."""
    script = "import json, ray; ray.init(logging_level='ERROR'); print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"
    done = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **cluster.env()}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.timeout(420)
def test_two_node_run_streams_shards_from_s3_and_checkpoints_there(
    train_assets: TrainAssets, s3_server: LocalS3Server, s3_prefix: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    endpoint = s3_server.endpoint
    _upload_shards(train_assets.shards, f"{s3_prefix}/shards", endpoint)
    cfg = tiny_config(
        train_assets,
        tmp_path,
        [
            f"data.train_shards={s3_prefix}/shards",
            f"data.eval_shards={s3_prefix}/shards",
            f"data.s3_endpoint={endpoint}",
            f"train.storage_path={s3_prefix}/runs",
            f"train.storage_endpoint={endpoint}",
            "train.export_dir=",
            "train.max_steps=4",
            "train.checkpoint_every=2",
            "train.run_name=two-node",
        ],
    )
    pid_dir = tmp_path / "pids"
    # s3_env put the credentials in os.environ before the nodes start: the workers hold them the way pods
    # of a real cluster do, never through the job's runtime env.
    with LocalRayCluster(cpus_per_node=(1, 1), start_timeout_s=120) as cluster:
        nodes = _alive_node_ids(cluster)
        run_train(cfg, tmp_path, {**cluster.env(), PID_DIR_ENV: str(pid_dir)}, timeout=300)
    ran_on = {rank: {e["node_id"] for e in read_events(pid_dir, rank)} for rank in (0, 1)}
    assert len(ran_on[0]) == len(ran_on[1]) == 1 and ran_on[0] != ran_on[1], ran_on
    assert ran_on[0] | ran_on[1] == nodes, "the two ranks ran on the cluster's two nodes"

    runs = open_storage(f"{s3_prefix}/runs/two-node", endpoint)
    names = runs.list()
    checkpoints = sorted({n.split("/")[0] for n in names if n.startswith("checkpoint_") and "/" in n})
    assert len(checkpoints) == 2, names  # steps 2 and 4, keep_checkpoints=2
    for checkpoint in checkpoints:
        files = {n[len(checkpoint) + 1 :] for n in names if n.startswith(checkpoint + "/")}
        # Rank 0 gathered the full state (any world size restores it) and uploaded it.
        assert {STATE_FILE, TENSORS_FILE} <= files, files
    assert json.loads(runs.get_bytes(f"{checkpoints[-1]}/{STATE_FILE}"))["step"] == 4

    local_model = tmp_path / "exported"
    for name in (n for n in names if n.startswith("model/")):
        (local_model / name).parent.mkdir(parents=True, exist_ok=True)
        (local_model / name).write_bytes(runs.get_bytes(name))
    model = MMCLIP.from_pretrained(local_model / "model")
    assert model.cfg.backbone == "test_resnet"
    run = runs_of(cfg.tracking.tracking_uri, cfg.tracking.experiment)[0]
    assert sorted(_losses(cfg.tracking.tracking_uri, run.info.run_id)) == [1, 2, 3, 4]


@pytest.mark.timeout(420)
def test_training_rides_out_an_s3_server_restart(
    train_assets: TrainAssets,
    ray_node: LocalRayCluster,
    s3_server: LocalS3Server,
    s3_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # A server of its own (the shared one must stay up), with the credentials the Ray node already holds.
    with LocalS3Server(
        tmp_path / "s3", bucket="restart", access_key=s3_server.access_key, secret_key=s3_server.secret_key
    ) as server:
        _upload_shards(train_assets.shards, "s3://restart/shards", server.endpoint)
        total = 12
        cfg = tiny_config(
            train_assets,
            tmp_path,
            [
                "data.train_shards=s3://restart/shards",
                f"data.s3_endpoint={server.endpoint}",
                f"train.max_steps={total}",
                "train.checkpoint_every=0",
                "train.max_failures=0",
                "train.run_name=s3-restart",
            ],
        )
        pid_dir = tmp_path / "pids"
        env = {**ray_node.env(), PID_DIR_ENV: str(pid_dir), STEP_SLEEP_ENV: "0.5"}
        proc, log = start_train(cfg, tmp_path, env)
        wait_for(lambda: any(e["step"] >= 2 for e in read_events(pid_dir, 0)), "step 2", 180, proc, log)
        down = time.time()
        server.stop()
        # A shard holds at most 6 breasts = 1.5 steps of one rank, so during the outage both ranks must open
        # new shards; a shuffle buffer of 8 cannot bridge it.
        time.sleep(4.0)
        server.start()
        up = time.time()
        output = finish_train(proc, log, timeout=240)

    # The workers' reader saw the outage (storage.RetryPolicy's warning, forwarded to the driver's log).
    assert re.search(r"GET restart/shards/train-\d{6}\.tar @ byte \d+ failed", output), output[-4000:]

    for rank in (0, 1):
        events = read_events(pid_dir, rank)
        assert [e["event"] for e in events].count("start") == 1, "the reader recovered without a worker restart"
        steps = [e for e in events if e["event"] == "step"]
        assert [e["step"] for e in steps] == list(range(1, total + 1))
        assert steps[0]["time"] < down and steps[-1]["time"] > up, "the restart happened mid-run"
        # 0.5 s per step: unblocked, a rank would finish ~8 steps in the outage; data for at most 2 was in hand.
        assert sum(down <= e["time"] <= up for e in steps) <= 3, steps
    run = runs_of(cfg.tracking.tracking_uri, cfg.tracking.experiment)[0]
    assert run.info.status == "FINISHED"
    assert sorted(_losses(cfg.tracking.tracking_uri, run.info.run_id)) == list(range(1, total + 1))
