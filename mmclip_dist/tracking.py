"""MLflow tracking: one run per training job, created by the driver and continued by rank 0.

The driver creates the run and logs the config before any worker starts; workers only receive the
run id. A worker restored after a failure (or a ``--resume`` from a new driver) reads the run id from
the checkpoint, so every attempt of one training job writes into the same MLflow run.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import deque
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from mmclip_dist.config import Config, TrackingConfig, dump_config, flatten

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# Anything that looks like a secret is never sent to MLflow, whatever section it sits in.
_SECRET_KEY = re.compile(r"(secret|password|token|credential|access_key)", re.IGNORECASE)
_MLFLOW_PARAM_MAX = 6000


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """Config value, else ``MLFLOW_TRACKING_URI``, else a sqlite file in the working directory."""
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def loggable_params(cfg: Config) -> dict[str, str]:
    """Flattened config for ``log_params``: secrets dropped, credentials stripped from URLs."""
    params: dict[str, str] = {}
    for key, value in flatten(cfg).items():
        if _SECRET_KEY.search(key):
            continue
        text = re.sub(r"//[^/@\s]+@", "//", str(value))  # scheme://user:pass@host -> scheme://host
        params[key] = text[:_MLFLOW_PARAM_MAX]
    return params


def start_run(cfg: Config, run_name: str, tags: dict[str, str] | None = None) -> str:
    """Create the MLflow run of a training job, log its config; return the run id.

    Uses a client bound to the URI rather than MLflow's process-global tracking URI and experiment, so
    starting a run never changes where other code in the same process logs.
    """
    client = MlflowClient(resolve_tracking_uri(cfg.tracking))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.tracking.experiment)
    run = client.create_run(experiment_id, run_name=run_name, tags=tags or {})
    run_id = run.info.run_id
    items = list(loggable_params(cfg).items())
    for start in range(0, len(items), 100):  # MLflow caps params per batch call
        chunk = items[start : start + 100]
        client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in chunk])
    client.log_text(run_id, dump_config(cfg), "config.yaml")
    return run_id


# Metrics wait in memory while the tracking server is unreachable; a run logs a few values per step, so this
# bounds memory without ever dropping metrics of a realistic outage (hours at one step per second).
_MAX_PENDING_METRICS = 1_000_000
_BATCH = 1000  # MLflow's log_batch limit on metrics per call
_FLUSH_TIMEOUT_S = 300.0
METRICS_DROPPED_TAG = "metrics_dropped"
log = logging.getLogger(__name__)


class RunLogger:
    """Rank-0 logger bound to one run; a no-op object on the other ranks keeps the loop free of ifs.

    Metrics are sent by a background thread, so an unreachable tracking server never stalls training: values
    logged meanwhile wait in memory (with the time they were logged) and arrive once the server answers again.
    ``close`` waits up to ``flush_timeout_s`` for the backlog and records in the tag ``metrics_dropped`` how many
    values never arrived (0 normally).
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        enabled: bool,
        system_metrics: bool = True,
        flush_timeout_s: float = _FLUSH_TIMEOUT_S,
    ) -> None:
        self.enabled = enabled
        self.run_id = run_id
        self.flush_timeout_s = flush_timeout_s
        self.dropped = 0
        self._client = MlflowClient(tracking_uri) if enabled else None
        self._system = None
        self._pending: deque[mlflow.entities.Metric] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._sender: threading.Thread | None = None
        if enabled:
            self._sender = threading.Thread(target=self._send_loop, name="mlflow-metrics", daemon=True)
            self._sender.start()
        if enabled and system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            # resume_logging: a restored worker continues the system-metric steps instead of restarting at 0.
            self._system = SystemMetricsMonitor(
                run_id, sampling_interval=10, resume_logging=True, tracking_uri=tracking_uri
            )
            self._system.start()

    def close(self) -> None:
        """Deliver the backlog (bounded wait), then tag the run with the number of values that never arrived."""
        if self._system is not None:
            self._system.finish()
            self._system = None
        if self._sender is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._sender.join(self.flush_timeout_s)
        with self._cond:
            self.dropped += len(self._pending)
            self._pending.clear()
        self._sender = None
        if self.dropped:
            log.error("%d metric values could not be sent to MLflow run %s", self.dropped, self.run_id)
        try:
            self._client.set_tag(self.run_id, METRICS_DROPPED_TAG, str(self.dropped))
        except Exception as err:  # noqa: BLE001 - the server is gone for good; the log line above is the record
            log.error("could not tag MLflow run %s with %s=%d: %s", self.run_id, METRICS_DROPPED_TAG, self.dropped, err)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        now = _now_ms()
        with self._cond:
            for key, value in metrics.items():
                if len(self._pending) >= _MAX_PENDING_METRICS:
                    self.dropped += 1
                    continue
                self._pending.append(mlflow.entities.Metric(key, float(value), now, step))
            self._cond.notify_all()

    def _send_loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return  # closing, all delivered
                batch = [self._pending[i] for i in range(min(_BATCH, len(self._pending)))]
            try:
                self._client.log_batch(self.run_id, metrics=batch)
            except Exception as err:  # noqa: BLE001 - kept and retried; close() counts what never arrives
                failures += 1
                delay = min(30.0, 0.5 * 2**failures)
                log.warning("MLflow log_batch failed (%s: %s); %d values pending, retry in %.0fs",
                            type(err).__name__, err, len(self._pending), delay)  # fmt: skip
                with self._cond:
                    self._cond.wait(delay)
                continue
            failures = 0
            with self._cond:
                for _ in batch:
                    self._pending.popleft()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._client.log_artifacts(self.run_id, str(folder), artifact_path)

    def set_tag(self, key: str, value: Any) -> None:
        if self.enabled:
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
