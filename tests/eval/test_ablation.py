"""Ablation launcher bookkeeping: the overrides of each variant, and that compare sees every run.

Training is replaced by a stand-in that creates the MLflow run the way the trainer does (``start_run``
logs the resolved config as params), so the test is fast; MLflow itself is real (a sqlite store).
The full launcher at debug scale is a documented manual run (docs/evaluation.md, "Ablation").
"""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mmclip_dist.config import load_config
from mmclip_dist.tracking import finish_run, start_run
from mmclip_dist.workflows.ablation import comparison_metrics, plan_ablation, run_ablation, select_variants


def base_config(tmp_path: Path, export: str = ""):
    return load_config(None, [
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "tracking.experiment=ablation-test",
        "train.run_name=abl", f"train.export_dir={export}", "loss.roi_weight=0.5", "loss.cross_view_weight=0.2",
        "eval.baselines=[random]",
    ])  # fmt: skip


def test_plan_gives_each_variant_its_loss_weights_run_name_and_export(tmp_path):
    plans = plan_ablation(base_config(tmp_path, export=str(tmp_path / "models")))
    assert [v.name for v, _ in plans] == ["clip", "clip+roi", "full"]
    weights = [(c.loss.global_weight, c.loss.roi_weight, c.loss.cross_view_weight) for _, c in plans]
    assert weights == [(1.0, 0.0, 0.0), (1.0, 0.5, 0.0), (1.0, 0.5, 0.2)]
    assert [c.train.run_name for _, c in plans] == ["abl-ablation-clip", "abl-ablation-clip-roi", "abl-ablation-full"]
    assert [c.train.export_dir for _, c in plans] == [
        str(tmp_path / "models" / s) for s in ("clip", "clip-roi", "full")
    ]
    # without an export folder the trainer derives one per run name
    assert {c.train.export_dir for _, c in plan_ablation(base_config(tmp_path))} == {""}
    assert [v.name for v in select_variants(["full", "clip"])] == ["clip", "full"]  # table order kept
    with pytest.raises(ValueError, match=r"unknown ablation variant\(s\) \['roi'\]"):
        select_variants(["roi"])


def test_run_ablation_evaluates_every_variant_and_compares_all_runs(tmp_path):
    cfg = base_config(tmp_path)
    trained, evaluated = [], []

    def fake_train(vcfg):
        run_id = start_run(vcfg, vcfg.train.run_name)  # what the trainer's driver does
        MlflowClient(vcfg.tracking.tracking_uri).log_metric(run_id, "loss", 1.0 + vcfg.loss.roi_weight, step=1)
        finish_run(vcfg.tracking.tracking_uri, run_id)
        trained.append(vcfg)
        return run_id, f"/models/{vcfg.train.run_name}"

    def fake_eval(ecfg, model_ref, run_id, log_fn):
        evaluated.append((ecfg.eval.mode, list(ecfg.eval.baselines), model_ref))
        value = 0.6 + ecfg.loss.roi_weight / 2 + ecfg.loss.cross_view_weight / 10  # 0.6, 0.85, 0.87
        MlflowClient(ecfg.tracking.tracking_uri).log_metric(
            run_id, f"{ecfg.eval.mode}/malignancy/mmclip/breast_roc_auc", value, step=0
        )
        return value

    result = run_ablation(cfg, ("linear", "zeroshot"), train_fn=fake_train, eval_fn=fake_eval, log_fn=lambda _: None)
    assert [c.loss.roi_weight for c in trained] == [0.0, 0.5, 0.5]
    # every variant in both modes; the random baseline only once, with the first variant's linear probe
    assert evaluated == [
        ("linear", ["random"], "/models/abl-ablation-clip"), ("zeroshot", [], "/models/abl-ablation-clip"),
        ("linear", [], "/models/abl-ablation-clip-roi"), ("zeroshot", [], "/models/abl-ablation-clip-roi"),
        ("linear", [], "/models/abl-ablation-full"), ("zeroshot", [], "/models/abl-ablation-full"),
    ]  # fmt: skip
    comp = result.comparison
    assert [label.split(" ")[0] for label in comp.labels] == [
        "abl-ablation-clip",
        "abl-ablation-clip-roi",
        "abl-ablation-full",
    ]
    assert comp.params["loss.roi_weight"] == ["0.0", "0.5", "0.5"]
    assert comp.params["loss.cross_view_weight"] == ["0.0", "0.0", "0.2"]
    assert "loss.global_weight" not in comp.params  # same in every run
    assert comp.metrics["linear/malignancy/mmclip/breast_roc_auc"] == pytest.approx([0.6, 0.85, 0.87])
    assert comp.metrics["loss"] == pytest.approx([1.0, 1.5, 1.5])
    assert comp.metrics["linear/malignancy/random_init/breast_roc_auc"] == [None, None, None]  # not logged here
    assert list(comp.metrics) == comparison_metrics("malignancy", ("linear", "zeroshot"))
    with pytest.raises(ValueError, match="each must be one of"):
        run_ablation(cfg, ("probe",), train_fn=fake_train, eval_fn=fake_eval)
