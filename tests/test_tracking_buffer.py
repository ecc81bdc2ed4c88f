"""RunLogger sends metrics in the background: an unreachable tracking server never blocks the caller, values
logged meanwhile arrive once it answers, and what never arrives is counted in the run's ``metrics_dropped`` tag."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mmclip_devtools.mlflow_server import LocalMlflowServer
from mmclip_dist.loopback import free_port
from mmclip_dist.tracking import METRICS_DROPPED_TAG, RunLogger


def _new_run(uri: str) -> str:
    client = MlflowClient(uri)
    return client.create_run(client.create_experiment(f"buffer-{time.time_ns()}")).info.run_id


def test_metrics_arrive_in_order_and_the_run_is_tagged_with_zero_drops(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = _new_run(uri)
    logger = RunLogger(uri, run_id, enabled=True, system_metrics=False)
    for step in range(1, 2501):  # more than one log_batch of 1000
        logger.log_metrics({"loss": 1.0 / step}, step=step)
    logger.close()
    history = MlflowClient(uri).get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 2501))
    assert {m.step: m.value for m in history}[4] == 0.25
    assert MlflowClient(uri).get_run(run_id).data.tags[METRICS_DROPPED_TAG] == "0"


def test_disabled_logger_sends_nothing_and_starts_no_thread() -> None:
    logger = RunLogger("http://127.0.0.1:9", "run", enabled=False)
    logger.log_metrics({"loss": 1.0}, step=1)
    logger.close()
    assert logger._sender is None and logger.dropped == 0


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_values_logged_while_the_server_is_down_arrive_when_it_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast: RunLogger's own retries are tested
    port = free_port()
    server = LocalMlflowServer(tmp_path / "mlflow", port)
    with server:
        run_id = _new_run(server.uri)
    # Server down: logging returns at once (nothing blocks on the network).
    logger = RunLogger(server.uri, run_id, enabled=True, system_metrics=False)
    started = time.monotonic()
    for step in (1, 2, 3):
        logger.log_metrics({"loss": float(step)}, step=step)
    assert time.monotonic() - started < 0.5
    time.sleep(3.0)  # a few failed sends
    with LocalMlflowServer(tmp_path / "mlflow", port) as again:
        logger.log_metrics({"loss": 4.0}, step=4)
        logger.close()
        run = MlflowClient(again.uri).get_run(run_id)
        assert sorted(m.step for m in MlflowClient(again.uri).get_metric_history(run_id, "loss")) == [1, 2, 3, 4]
        assert run.data.tags[METRICS_DROPPED_TAG] == "0"


def test_backlog_that_never_arrives_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    logger = RunLogger(f"http://127.0.0.1:{free_port()}", "no-such-run", enabled=True, system_metrics=False,
                       flush_timeout_s=1.0)  # fmt: skip
    logger.log_metrics({"loss": 1.0, "lr": 0.1}, step=1)
    logger.close()
    assert logger.dropped == 2
