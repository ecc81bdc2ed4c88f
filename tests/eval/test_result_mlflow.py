"""Eval results to MLflow: figure artifacts land under the requested folder, bytes unchanged."""

from pathlib import Path

import numpy as np
import pytest

from mmclip_dist.eval.plots import roc_curve_png, similarity_matrix_png
from mmclip_dist.eval.result_mlflow import log_figures_to_mlflow


@pytest.mark.integration
def test_log_figures_to_mlflow(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("plots", artifact_location=(tmp_path / "artifacts").as_uri())
    png = similarity_matrix_png(np.eye(3), "global")
    file = roc_curve_png({"m": (np.array([0, 1, 1]), np.array([0.1, 0.9, 0.4]))}, tmp_path / "r.png")
    with mlflow.start_run(experiment_id=exp) as run:
        logged = log_figures_to_mlflow({"similarity.png": png, "roc.png": file})
    assert logged == ["figures/similarity.png", "figures/roc.png"]
    listed = sorted(a.path for a in client.list_artifacts(run.info.run_id, "figures"))
    assert listed == ["figures/roc.png", "figures/similarity.png"]
    local = client.download_artifacts(run.info.run_id, "figures/similarity.png", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == png
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        log_figures_to_mlflow({"x.png": png})


def _scored_result():
    from mmclip_dist.eval.result import EvalResult
    from mmclip_dist.eval.scoring import make_predictions, score
    from mmclip_dist.eval.tasks import get_task

    task = get_task("malignancy")
    metas = [{"label": {"malignant": i % 2, "source": "pathology"}, "patient_id": f"p{i}"} for i in range(8)]
    probs = np.stack([np.tile([[0.8, 0.2]], (2, 1)) if i % 2 == 0 else np.tile([[0.3, 0.7]], (2, 1)) for i in range(8)])
    pred = make_predictions(task, metas, [f"k{i}" for i in range(8)], probs)
    score(task, pred, bootstrap=20, seed=0)
    return EvalResult(task, "linear", task.label_source(metas), {"mmclip": pred}, figures={"x.png": b"png"})


@pytest.mark.integration
def test_log_result_creates_the_eval_run_through_tracking_or_adds_to_an_existing_one(tmp_path):
    from mlflow.tracking import MlflowClient

    from mmclip_dist.config import load_config
    from mmclip_dist.eval.result_mlflow import log_result
    from mmclip_dist.tracking import start_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, [f"tracking.tracking_uri={uri}", "tracking.experiment=exp"])
    result = _scored_result()
    client = MlflowClient(uri)

    run_id = log_result(result, cfg, "model-dir", "shards-dir")
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "exp-eval" and run.info.status == "FINISHED"
    assert run.data.params["eval.model"] == "model-dir" and run.data.params["eval.mode"] == "linear"
    assert run.data.metrics["linear/malignancy/mmclip/breast_roc_auc"] == pytest.approx(1.0)
    assert run.data.tags["linear/malignancy/label_source"] == "pathology"
    listed = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for a in client.list_artifacts(run_id, "eval/linear/malignancy")
    }
    assert {"eval_config.yaml", "eval/linear/malignancy/result.json", "eval/linear/malignancy/x.png"} <= listed

    train_run = start_run(cfg, "train-run")  # the trainer's run: eval results can be added to it
    assert log_result(result, cfg, "model-dir", None, log_to=train_run) == train_run
    assert "linear/malignancy/mmclip/breast_roc_auc" in client.get_run(train_run).data.metrics
    assert client.get_run(train_run).info.status == "RUNNING"  # not closed: the trainer owns it
    with pytest.raises(ValueError, match="--log-to: no such MLflow run 'f+'"):
        log_result(result, cfg, "model-dir", None, log_to="f" * 32)
