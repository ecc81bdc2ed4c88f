"""Eval results to MLflow: metrics, tags, the result summary and figures, into a new eval run or an existing one.

Runs are created through ``mmclip_dist.tracking`` (the one place runs are made, for training and eval alike).
Metric keys: ``<mode>/<task>/<method>/<metric>`` (see ``EvalResult.metric_key``); figures and ``result.json``
under ``eval/<mode>/<task>/``.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from mmclip_dist.config import Config, strip_url_credentials
from mmclip_dist.eval.result import EvalResult
from mmclip_dist.eval.tasks import describe_source
from mmclip_dist.tracking import finish_run, require_run, resolve_tracking_uri, start_run


def log_result(result: EvalResult, cfg: Config, model_ref: str, shards: str | None, log_to: str | None = None) -> str:
    """Log metrics, label source, details and figures to MLflow; returns the run id.

    ``log_to``: an existing run (e.g. the training run of the model); otherwise a new run in
    ``eval.experiment`` (default ``<tracking.experiment>-eval``) carrying the config as params.
    """
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(cfg.tracking)
    prefix = f"{result.mode}/{result.task.name}"
    if log_to:
        try:
            require_run(uri, log_to)
        except ValueError as err:
            raise ValueError(f"--log-to: {err}") from err
        run_id, created = log_to, False
    else:
        run_id = start_run(
            cfg,
            f"eval-{result.task.name}-{result.mode}",
            experiment=cfg.eval.experiment or f"{cfg.tracking.experiment}-eval",
            extra_params={
                "eval.model": strip_url_credentials(model_ref),
                "eval.shards": strip_url_credentials(shards or cfg.data.eval_shards),
            },
            config_artifact="eval_config.yaml",
        )
        created = True
    client = MlflowClient(uri)
    client.set_tag(run_id, f"{prefix}/label_source", result.label_source)
    client.set_tag(run_id, f"{prefix}/model", strip_url_credentials(model_ref))
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in result.mlflow_metrics().items()]
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start : start + 500])
    summary = {
        "task": result.task.name, "mode": result.mode, "label_source": result.label_source,
        "label_source_text": describe_source(result.label_source), "skipped": result.skipped,
        "details": result.details, "metrics": {m: p.metrics for m, p in result.methods.items()},
    }  # fmt: skip
    client.log_text(run_id, json.dumps(summary, indent=1, default=float), f"eval/{prefix}/result.json")
    if result.figures:
        log_figures_to_mlflow(result.figures, run_id, artifact_dir=f"eval/{prefix}", tracking_uri=uri)
    if created:
        finish_run(uri, run_id)
    mlflow.set_tracking_uri(uri)  # later mlflow.* calls in this process talk to the same store
    result.run_id = run_id
    return run_id


def log_figures_to_mlflow(
    figures: Mapping[str, bytes | Path | str], run_id: str | None = None, artifact_dir: str = "figures",
    tracking_uri: str | None = None,
) -> list[str]:  # fmt: skip
    """Log ``{file name: PNG bytes or path}`` as artifacts under ``artifact_dir``; returns their paths.

    ``run_id=None`` logs to the active run (``mlflow.start_run``); without one it is an error.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            raise RuntimeError("log_figures_to_mlflow: no run_id given and no active MLflow run")
        run_id = active.info.run_id
    client = MlflowClient(tracking_uri)
    logged = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, fig in figures.items():
            if isinstance(fig, bytes):
                file = Path(tmp) / name
                file.write_bytes(fig)
            else:
                file = Path(fig)
                if not file.is_file():
                    raise FileNotFoundError(f"figure {name!r}: {file} does not exist")
                if file.name != name:  # the artifact takes the file's name; copy under the requested one
                    (Path(tmp) / name).write_bytes(file.read_bytes())
                    file = Path(tmp) / name
            client.log_artifact(run_id, str(file), artifact_dir)
            logged.append(f"{artifact_dir}/{name}")
    return logged
