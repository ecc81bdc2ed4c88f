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
