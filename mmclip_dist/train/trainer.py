"""Driver side of training: Ray Train ``TorchTrainer`` set-up, run storage, resume and MLflow run.

Ray Train V2 resumes a run when a trainer is created again with the same ``(storage_path, name)``;
``train.resume`` makes that explicit: without it an existing run is an error, so two jobs never
write into one run by accident.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from mmclip_dist.config import Config
from mmclip_dist.tracking import finish_run, reopen_run, resolve_tracking_uri, start_run
from mmclip_dist.train.loop import train_worker, worker_env
from mmclip_dist.train.state import STATE_FILE, TrainState


@dataclass
class TrainResult:
    """What a finished training job leaves behind."""

    mlflow_run_id: str
    tracking_uri: str
    export_dir: str
    checkpoint_path: str | None
    metrics: dict[str, Any]


def storage_location(storage_path: str, endpoint: str | None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local folder or ``s3://bucket/prefix``."""
    if storage_path.startswith("s3://"):
        kwargs: dict[str, Any] = {}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs = {"endpoint_override": host or scheme, "scheme": scheme if host else "https"}
        return pafs.S3FileSystem(**kwargs), storage_path[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(storage_path)


def latest_checkpoint_state(fs: pafs.FileSystem, run_dir: str) -> TrainState | None:
    """The TrainState of the newest checkpoint in a run folder (names sort by time), or None."""
    infos = fs.get_file_info(pafs.FileSelector(run_dir, allow_not_found=True))
    checkpoints = sorted(i.path for i in infos if i.type == pafs.FileType.Directory and "checkpoint_" in i.base_name)
    for path in reversed(checkpoints):
        state_path = posixpath.join(path, STATE_FILE)
        if fs.get_file_info(state_path).type == pafs.FileType.File:
            with fs.open_input_stream(state_path) as stream:
                return TrainState(**json.loads(stream.read()))
    return None


def run_training(cfg: Config) -> TrainResult:
    """Train with ``cfg`` on the connected Ray cluster; returns when the run (and its retries) ends."""
    train = cfg.train
    fs, root = storage_location(train.storage_path, train.storage_endpoint)
    run_dir = posixpath.join(root, train.run_name)
    previous = latest_checkpoint_state(fs, run_dir)
    if previous is not None and not train.resume:
        raise RuntimeError(
            f"run {train.run_name!r} already has checkpoints in {train.storage_path}; "
            "pass --resume (train.resume=true) to continue it or choose another train.run_name"
        )
    if not train.export_dir:
        cfg = cfg.model_copy(deep=True)
        cfg.train.export_dir = posixpath.join(train.storage_path.rstrip("/"), train.run_name, "model")
    tracking_uri = resolve_tracking_uri(cfg.tracking)
    if previous is not None:
        run_id = previous.mlflow_run_id
        reopen_run(tracking_uri, run_id)
    else:
        run_id = start_run(cfg, train.run_name, {"ray_run": train.run_name})
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "mlflow_run_id": run_id,
            "tracking_uri": tracking_uri,
        },
        torch_config=TorchConfig(backend="nccl" if train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker},
            elastic_resize_monitor_interval_s=train.elastic_resize_interval_s,
        ),
        run_config=RunConfig(
            name=train.run_name,
            storage_path=root,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=train.keep_checkpoints),
            worker_runtime_env={"env_vars": worker_env(train.use_gpu)},
        ),
    )
    try:
        result = trainer.fit()
    except Exception:
        finish_run(tracking_uri, run_id, status="FAILED")
        raise
    finish_run(tracking_uri, run_id)
    return TrainResult(
        mlflow_run_id=run_id,
        tracking_uri=tracking_uri,
        export_dir=cfg.train.export_dir,
        checkpoint_path=result.checkpoint.path if result.checkpoint else None,
        metrics=dict(result.metrics or {}),
    )
