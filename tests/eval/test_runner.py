"""End to end: MM-CLIP pretrained by the real trainer (session fixture) -> `mmclip-dist eval` protocols -> MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from mmclip_dist.eval.result_mlflow import log_result
from mmclip_dist.eval.result_table import result_header
from mmclip_dist.eval.runner import evaluate, resolve_model

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def n_test_breasts(pretrained) -> int:
    return int(json.loads((pretrained.shards / "manifest.json").read_text())["splits"]["test"]["samples"])


def test_linear_probe_of_pretrained_mmclip_beats_random_init(pretrained):
    """The paper's claim at debug scale: pretrained features separate malignancy better than random ones.

    Margin measured offline with ``python -m mmclip_devtools.fixtures.pretrained OUT SEED...`` (this fixture's
    setup: 96 patients, 33 of them test, 50 steps of 32), per-breast test AUC MM-CLIP vs random init:
    seed 0 0.870 vs 0.672, seed 1 0.834 vs 0.694, seed 2 0.893 vs 0.678, seed 3 0.793 vs 0.616,
    seed 4 0.843 vs 0.643 (gaps 0.14-0.21). The test uses seed 0 and asks for a gap of 0.05.
    (With 64 patients / 40 steps of 16 the gap was seed-dependent, -0.02 to +0.32: too little to
    pretrain on, so this size was chosen.)
    On the shortcut-free synthetic data (issue 18: box area, signal and position matched between classes),
    seed 0 gives 0.771 vs 0.596 (gap 0.18; measured with the fixture's settings on 2026-11-30).
    """
    cfg = pretrained.config.model_copy(deep=True)
    cfg.eval.mode = "linear"
    cfg.eval.baselines = ["random", "imagenet"]
    lines: list[str] = []
    result = evaluate(cfg, str(pretrained.model), str(pretrained.shards), log_fn=lines.append)
    assert result.label_source == "birads_proxy"
    assert set(result.methods) == {"mmclip", "random_init"}
    assert "eval.imagenet_weights is empty" in result.skipped["imagenet_init"]
    mm, rnd = result.methods["mmclip"].metrics, result.methods["random_init"].metrics
    # every test breast has a known label (normal_fraction 0)
    assert mm["breast_n"] == rnd["breast_n"] == n_test_breasts(pretrained)
    assert mm["breast_roc_auc"] > rnd["breast_roc_auc"] + 0.05, (mm["breast_roc_auc"], rnd["breast_roc_auc"])
    for m in (mm, rnd):  # 95% bootstrap intervals reported around each point estimate
        assert m["breast_roc_auc_ci_low"] <= m["breast_roc_auc"] <= m["breast_roc_auc_ci_high"]
        assert m["breast_roc_auc_ci_high"] - m["breast_roc_auc_ci_low"] > 0
    assert result.details["mmclip"]["C"] in cfg.eval.probe_c and result.details["mmclip"]["val_breasts"] > 0

    run_id = log_result(result, cfg, str(pretrained.model), str(pretrained.shards))
    client = MlflowClient(pretrained.tracking_uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "eval-tests-eval"
    assert run.data.metrics["linear/malignancy/mmclip/breast_roc_auc"] == pytest.approx(mm["breast_roc_auc"])
    assert "linear/malignancy/random_init/breast_roc_auc_ci_low" in run.data.metrics
    assert run.data.tags["linear/malignancy/label_source"] == "birads_proxy"
    assert run.data.params["eval.mode"] == "linear"
    figures = {a.path for a in client.list_artifacts(run_id, "eval/linear/malignancy")}
    expected = {"roc_breast.png", "roc_image.png", "confusion_mmclip.png", "confusion_random_init.png",
                "similarity_global_cc.png", "similarity_roi_cc.png", "similarity_global_mlo.png", "result.json"}  # fmt: skip
    assert {f"eval/linear/malignancy/{name}" for name in expected} <= figures
    rendered = result_header(result)
    assert "label source: BI-RADS proxy" in rendered and f"{n_test_breasts(pretrained)} test breasts" in rendered


def test_zeroshot_cli_from_an_mlflow_run_logs_into_that_run(pretrained, tmp_path):
    """`mmclip-dist eval --model <run id>` downloads the run's model artifact; --log-to writes into the run."""
    command = [
        sys.executable, "-m", "mmclip_dist.cli.main", "eval", "--model", pretrained.run_id, "--task", "density",
        "--mode", "zeroshot", "--log-to", pretrained.run_id, "--config", str(tmp_path / "cfg.yaml"),
    ]  # fmt: skip
    from mmclip_dist.config import dump_config

    (tmp_path / "cfg.yaml").write_text(dump_config(pretrained.config))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "label source: radiologist assessment" in done.stdout and "breast_macro_auc" in done.stdout
    run = MlflowClient(pretrained.tracking_uri).get_run(pretrained.run_id)
    auc = run.data.metrics["zeroshot/density/mmclip/breast_macro_auc"]
    assert 0.0 <= auc <= 1.0
    assert run.data.params["loss.roi_weight"] == "0.5"  # the training run, not a new one
    assert resolve_model(f"runs:/{pretrained.run_id}/model", pretrained.tracking_uri).joinpath("config.json").is_file()
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        resolve_model(str(tmp_path / "missing"), pretrained.tracking_uri)


def test_finetune_mass_task_runs_the_same_protocol(pretrained):
    cfg = pretrained.config.model_copy(deep=True)
    cfg.eval.mode, cfg.eval.task = "finetune", "mass"
    cfg.eval.baselines, cfg.eval.finetune_epochs, cfg.eval.bootstrap = ["random"], 1, 50
    result = evaluate(cfg, str(pretrained.model), str(pretrained.shards), log_fn=lambda _: None, figures=False)
    assert result.label_source == "annotation"
    for method in ("mmclip", "random_init"):
        pred = result.methods[method]
        assert pred.probs.shape == (n_test_breasts(pretrained), 2, 2) and np.allclose(
            pred.probs.sum(-1), 1.0, atol=1e-5
        )
        assert result.details[method]["best_epoch"] == 1 and len(result.details[method]["val_scores"]) == 1
        assert 0.0 <= pred.metrics["breast_roc_auc"] <= 1.0


def test_probe_refuses_to_train_on_the_test_shards(pretrained):
    cfg = pretrained.config.model_copy(deep=True)
    cfg.data.train_shards = ""
    test_pattern = str(pretrained.shards / "test-{000000..000001}.tar")  # a pattern names shards of any split
    with pytest.raises(ValueError, match="train and test shards overlap"):
        evaluate(cfg, str(pretrained.model), test_pattern, log_fn=lambda _: None)
