"""MLflow tracking: the one place runs are created (``start_run``), reopened and finished, for training
jobs and eval results alike; ``RunLogger`` logs into a run from rank 0.

A training job has one run. The driver creates the run and logs the config before any worker starts; workers only receive the
run id. A worker restored after a failure (or a ``--resume`` from a new driver) reads the run id from
the checkpoint, so every attempt of one training job writes into the same MLflow run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mmclip_dist.config import Config, TrackingConfig, flatten, redacted_dump, url_credentials

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def MlflowClient(tracking_uri: str) -> Any:  # noqa: N802 - stands in for the class it returns
    """``mlflow.tracking.MlflowClient``, imported on first use: importing mlflow costs seconds, which a driver
    that only checks its inputs (``train.input_checks``) or reports a bad config should not pay."""
    from mlflow.tracking import MlflowClient as Client

    return Client(tracking_uri)


_MLFLOW_PARAM_MAX = 6000


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """Config value, else ``MLFLOW_TRACKING_URI``, else a sqlite file in the working directory."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if url_credentials(uri):
        # MLflow prints "View run <name> at: <tracking URI>/#/..." when a run ends, password included.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    return uri


def loggable_params(cfg: Config) -> dict[str, str]:
    """Flattened config for ``log_params``; ``flatten`` already redacted the config's secrets (field markers)."""
    return {key: str(value)[:_MLFLOW_PARAM_MAX] for key, value in flatten(cfg).items()}


def start_run(
    cfg: Config,
    run_name: str,
    tags: dict[str, str] | None = None,
    *,
    experiment: str | None = None,
    extra_params: dict[str, str] | None = None,
    config_artifact: str = "config.yaml",
) -> str:
    """Create an MLflow run in ``experiment`` (default ``tracking.experiment``), log the config; return the run id.

    The one way runs are created, for training jobs and eval results alike. ``extra_params`` are logged
    next to the config's params. Uses a client bound to the URI rather than MLflow's process-global
    tracking URI and experiment, so starting a run never changes where other code in the same process logs.
    """
    from mlflow.entities import Param

    client = MlflowClient(resolve_tracking_uri(cfg.tracking))
    name = experiment or cfg.tracking.experiment
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found else client.create_experiment(name)
    run = client.create_run(experiment_id, run_name=run_name, tags=tags or {})
    run_id = run.info.run_id
    params = {**loggable_params(cfg), **{k: str(v)[:_MLFLOW_PARAM_MAX] for k, v in (extra_params or {}).items()}}
    items = list(params.items())
    for start in range(0, len(items), 100):  # MLflow caps params per batch call
        chunk = items[start : start + 100]
        client.log_batch(run_id, params=[Param(k, v) for k, v in chunk])
    client.log_text(run_id, redacted_dump(cfg), config_artifact)
    return run_id


def require_run(tracking_uri: str, run_id: str) -> None:
    """Raise ``ValueError`` naming the store when ``run_id`` is not a run there."""
    try:
        MlflowClient(tracking_uri).get_run(run_id)
    except Exception as err:  # noqa: BLE001 - MLflow raises several types; the message is what matters
        raise ValueError(f"no such MLflow run {run_id!r} at {tracking_uri} ({err})") from err


class RunLogger:
    """Rank-0 logger bound to one run; a no-op object on the other ranks keeps the loop free of ifs."""

    def __init__(self, tracking_uri: str, run_id: str, enabled: bool, system_metrics: bool = True) -> None:
        self.enabled = enabled
        self.run_id = run_id
        self._client = MlflowClient(tracking_uri) if enabled else None
        self._system = None
        if enabled and system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            # resume_logging: a restored worker continues the system-metric steps instead of restarting at 0.
            self._system = SystemMetricsMonitor(
                run_id, sampling_interval=10, resume_logging=True, tracking_uri=tracking_uri
            )
            self._system.start()

    def close(self) -> None:
        if self._system is not None:
            self._system.finish()
            self._system = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._client is None:  # not rank 0
            return
        from mlflow.entities import Metric

        entities = [Metric(k, float(v), _now_ms(), step) for k, v in metrics.items()]
        self._client.log_batch(self.run_id, metrics=entities)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._client is not None:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        if self._client is not None:
            self._client.log_artifacts(self.run_id, str(folder), artifact_path)

    def set_tag(self, key: str, value: Any) -> None:
        if self._client is not None:
            self._client.set_tag(self.run_id, key, str(value))


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Close the run from the driver once the job (all attempts) is over."""
    MlflowClient(tracking_uri).set_terminated(run_id, status=status)


def reopen_run(tracking_uri: str, run_id: str) -> None:
    """Mark the run of a resumed job RUNNING again; the driver that stopped earlier had closed it."""
    MlflowClient(tracking_uri).update_run(run_id, status="RUNNING")
