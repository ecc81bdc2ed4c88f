"""Fault tolerance of the training loop: a SIGKILLed worker, Ray Train's restore, one continuous MLflow run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from mmclip_devtools.fault_hooks import PID_DIR_ENV, STEP_SLEEP_ENV, read_events
from mmclip_devtools.fixtures.training import (
    TrainAssets,
    checkpoint_dirs,
    checkpoint_fp32_weights,
    finish_train,
    metric_steps,
    read_json,
    runs_of,
    start_train,
    tiny_config,
    wait_for,
)
from mmclip_devtools.local_ray import LocalRayCluster
from mmclip_dist.model import MMCLIP
from mmclip_dist.train.state import STATE_FILE, TENSORS_FILE


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_sigkilled_worker_is_restored_from_its_last_checkpoint(
    train_assets: TrainAssets, ray_node: LocalRayCluster, tmp_path: Path
) -> None:
    every, total = 3, 8
    cfg = tiny_config(
        train_assets,
        tmp_path,
        [
            f"train.max_steps={total}",
            f"train.checkpoint_every={every}",
            "train.max_failures=1",
            "train.run_name=fault",
        ],
    )
    pid_dir = tmp_path / "pids"
    # 0.5 s after every step: the kill below lands while steps are still to come.
    env = {**ray_node.env(), PID_DIR_ENV: str(pid_dir), STEP_SLEEP_ENV: "0.5"}
    proc, log = start_train(cfg, tmp_path, env)

    snapshot = tmp_path / "runs" / "fault" / "checkpoint_manager_snapshot.json"

    def victim() -> dict | None:
        # A reported checkpoint counts once Ray Train's controller has registered it (it then writes the
        # snapshot); killing before that legitimately restarts from the previous one, here from scratch.
        steps = [e for e in read_events(pid_dir, 1) if e["event"] == "step"]
        return steps[-1] if registered_steps(snapshot) and steps[-1]["step"] > every else None

    target = wait_for(victim, f"rank 1 to pass the registered step-{every} checkpoint", 180, proc, log)
    registered = max(registered_steps(snapshot))
    os.kill(target["pid"], signal.SIGKILL)
    finish_train(proc, log, timeout=180)
    killed_at = max(e["step"] for e in read_events(pid_dir, 1) if e["pid"] == target["pid"])

    # Both ranks were replaced (Ray Train restarts the whole group) and resumed from a reported checkpoint.
    for rank in (0, 1):
        starts = [e for e in read_events(pid_dir, rank) if e["event"] == "start"]
        assert len(starts) == 2, (rank, starts)
        assert starts[0]["step"] == 0 and starts[1]["pid"] != starts[0]["pid"]
    restored = starts[1]["step"]
    assert restored % every == 0 and registered <= restored <= killed_at, (restored, registered, killed_at)

    # One MLflow run; after the restore it continues at restored + 1, never further back.
    runs = runs_of(cfg.tracking.tracking_uri, cfg.tracking.experiment)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = metric_steps(cfg.tracking.tracking_uri, runs[0].info.run_id, "loss")
    drops = [(before, after) for before, after in zip(steps, steps[1:]) if after <= before]
    assert all(after == restored + 1 for _, after in drops) and len(drops) <= 1, steps
    assert sorted(set(steps)) == list(range(1, total + 1)) and steps[-1] == total

    # The final checkpoint and the export are complete and agree: nothing half-written survived the kill.
    final = checkpoint_dirs(tmp_path / "runs" / "fault")[-1]
    assert read_json(final / STATE_FILE)["step"] == total
    assert TENSORS_FILE in {p.name for p in final.iterdir()}
    model = MMCLIP.from_pretrained(cfg.train.export_dir)
    checkpointed = checkpoint_fp32_weights(final)
    params = dict(model.named_parameters())
    assert set(params) <= set(checkpointed)
    for name, value in params.items():
        assert torch.equal(checkpointed[name].float(), value.detach()), name


def registered_steps(snapshot: Path) -> list[int]:
    """Steps of the checkpoints Ray Train's controller has registered (its snapshot file), [] if none yet."""
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return []  # not written yet, or caught mid-write
    return [int(r["metrics"]["step"]) for r in results]
