"""The production path at production precision: a paper preset, only its sizes scaled down, trained by
``mmclip-dist train`` on a real local Ray cluster (2 ranks, DeepSpeed with the preset's bf16 and ZeRO stage,
feature cache over 2 micro-batches per rank, real AdamW steps), checkpointed, cut, resumed and exported.

What a GPU cluster job runs is what this test ran, except for the device: bf16 RoIAlign, bf16 checkpoints,
the bf16 optimizer's fp32 master weights in the export.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from mmclip_devtools.fault_hooks import STOP_AFTER_ENV
from mmclip_devtools.fixtures.training import (
    REPO,
    TrainAssets,
    checkpoint_dirs,
    read_json,
    run_train,
    runs_of,
    scaled_preset,
    state_dict_of,
)
from mmclip_devtools.local_ray import LocalRayCluster
from mmclip_dist.config import accumulation_steps, load_config
from mmclip_dist.train.state import STATE_FILE

pytestmark = pytest.mark.integration

PRESET = REPO / "launch" / "configs" / "vindr_efficientnet_b2.yaml"


@pytest.mark.timeout(1800)
def test_bf16_paper_preset_trains_checkpoints_resumes_and_exports(
    train_assets: TrainAssets, ray_node: LocalRayCluster, tmp_path: Path
) -> None:
    preset = load_config(PRESET)
    assert preset.train.precision == "bf16", "the paper presets train in bf16; this test must follow them"
    total, cut = 4, 2
    common = [f"train.max_steps={total}", "train.checkpoint_every=1", "train.keep_checkpoints=1"]
    straight = scaled_preset(
        PRESET, train_assets, tmp_path, [*common, "train.run_name=straight", f"train.export_dir={tmp_path / 's'}"]
    )
    # Only sizes and paths changed: precision, ZeRO stage, optimiser and loss settings are the preset's.
    for section in ("loss",):
        assert getattr(straight, section) == getattr(preset, section)
    for key in ("precision", "zero_stage", "lr", "weight_decay", "betas", "grad_clip", "min_lr_ratio"):
        assert getattr(straight.train, key) == getattr(preset.train, key), key
    assert (straight.model.text_pooling, straight.model.dropout) == (preset.model.text_pooling, preset.model.dropout)
    assert accumulation_steps(straight.train.global_batch, straight.train.num_workers, straight.train.micro_batch) == 2

    env = ray_node.env()
    run_train(straight, tmp_path, env, name="straight", timeout=600)

    resumed = scaled_preset(
        PRESET, train_assets, tmp_path, [*common, "train.run_name=resumed", f"train.export_dir={tmp_path / 'r'}"]
    )
    run_train(resumed, tmp_path, {**env, STOP_AFTER_ENV: str(cut)}, name="cut", timeout=600)
    assert read_json(checkpoint_dirs(tmp_path / "runs" / "resumed")[-1] / STATE_FILE)["step"] == cut
    assert not (tmp_path / "r").exists(), "a job stopped early must not export"
    run_train(resumed, tmp_path, env, name="final", resume=True, timeout=600)

    want, got = state_dict_of(tmp_path / "s"), state_dict_of(tmp_path / "r")
    differing = [k for k in want if not torch.equal(want[k], got[k])]
    assert not differing, f"resumed bf16 run differs from the uninterrupted one in {differing[:5]}"

    # The export loads and is finite. (DeepSpeed's fp32 master weights start from the bf16-cast init, so the
    # export differs from the seed's fp32 init by bf16 rounding plus ~lr per step; not asserted numerically.)
    assert all(torch.isfinite(v).all() for v in want.values() if v.is_floating_point())

    uri = straight.tracking.tracking_uri
    runs = {r.info.run_name: r for r in runs_of(uri, straight.tracking.experiment)}
    for run_name in ("straight", "resumed"):
        history = MlflowClient(uri).get_metric_history(runs[run_name].info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(1, total + 1)), run_name
        assert all(math.isfinite(m.value) and m.value > 0 for m in history)
