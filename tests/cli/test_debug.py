"""End to end: `mmclip-dist debug` at small scale through real Ray, DeepSpeed, MLflow and WebDataset."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mmclip_dist.config import load_config

REPO = Path(__file__).resolve().parents[2]
LOSS_TERMS = ("loss", "loss_global", "loss_roi", "loss_cross_view")


@pytest.mark.integration
def test_debug_pipeline_logs_every_loss_term_and_eval_metrics(tmp_path: Path) -> None:
    workdir = tmp_path / "debug"
    command = [
        sys.executable,
        "-m",
        "mmclip_dist.cli.main",
        "debug",
        "--config",
        str(REPO / "launch/configs/debug.yaml"),
        "--workdir",
        str(workdir),
        "synthetic.num_patients=24",
        "synthetic.test_fraction=0.34",
        "shards.shard_max_samples=8",
        "train.micro_batch=8",  # 2 ranks x 8 x 2 accumulation steps: the feature cache runs
        "train.max_steps=4",
        "train.checkpoint_every=2",
        "train.warmup_steps=1",
        "eval.bootstrap=50",
    ]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    # stderr into stdout: what a user sees in the terminal, in the order it was written.
    done = subprocess.run(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-8000:]
    assert "zero-shot AUC" in done.stdout and "mlflow ui --backend-store-uri" in done.stdout
    # Progress from the driver while training runs: one line per logged step, with loss, speed and ETA.
    progress = re.findall(r"step (\d+)/4  loss (\d+\.\d+)  (\d+\.\d+|nan) samples/s  ETA (\S+)", done.stdout)
    assert [int(step) for step, *_ in progress] == [1, 2, 3, 4], done.stdout[-8000:]
    # The summary is the last thing printed: no late worker line after it.
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    start = lines.index("=== mmclip-dist debug: summary ===")
    summary = lines[start:]
    assert len(summary) == 9 and summary[-1].startswith("open the UI"), summary
    # No third-party deprecation or CUDA warnings without --verbose.
    assert "DeprecationWarning" not in done.stdout and "FutureWarning" not in done.stdout
    assert "cue AUCs         box_area" in done.stdout

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mmclip-debug")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "one debug job must be exactly one MLflow run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    for term in LOSS_TERMS:
        history = client.get_metric_history(run.info.run_id, term)
        assert [m.step for m in history] == [1, 2, 3, 4], term
        assert all(m.value == m.value and m.value > 0 for m in history), term  # finite, positive
    for metric in ("lr", "samples_per_s", "data_wait_fraction", "logit_scale_cc", "roi_scale_mlo"):
        assert metric in run.data.metrics, metric
    for metric in ("auc", "accuracy", "auc_ci_low", "auc_ci_high", "image_auc"):
        value = run.data.metrics[f"zeroshot_malignancy_{metric}"]
        assert 0.0 <= value <= 1.0, (metric, value)
    assert run.data.params["train.max_steps"] == "4"
    assert run.data.params["loss.roi_weight"] == "0.5"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model"} <= artifacts
    # The exported model is the DeepSpeed-independent format and loads on its own.
    from mmclip_dist.model import MMCLIP

    model = MMCLIP.from_pretrained(workdir / "model")
    assert model.cfg.backbone == load_config(REPO / "launch/configs/debug.yaml").model.backbone
