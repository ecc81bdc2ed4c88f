"""ZeRO stages 2 and 3 in real 2-rank training runs (Ray + DeepSpeed on CPU, bf16 like the presets):
checkpoint, cut, resume to bit-identical weights, export equal to the optimizer's consolidated fp32 weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmclip_devtools.fault_hooks import STOP_AFTER_ENV
from mmclip_devtools.fixtures.training import (
    TrainAssets,
    checkpoint_dirs,
    deepspeed_fp32_weights,
    read_json,
    run_train,
    state_dict_of,
    tiny_config,
)
from mmclip_devtools.local_ray import LocalRayCluster
from mmclip_dist.train.state import STATE_FILE

pytestmark = pytest.mark.integration


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stage_checkpoints_resumes_and_exports(
    stage: int, train_assets: TrainAssets, ray_node: LocalRayCluster, tmp_path: Path
) -> None:
    total, cut = 3, 1
    common = [
        f"train.zero_stage={stage}",
        "train.precision=bf16",
        f"train.max_steps={total}",
        "train.checkpoint_every=1",
        "train.keep_checkpoints=1",
        "train.warmup_steps=1",
        "model.dropout=0.2",
    ]
    env = ray_node.env()
    straight = tiny_config(
        train_assets, tmp_path, [*common, "train.run_name=straight", f"train.export_dir={tmp_path / 's'}"]
    )
    run_train(straight, tmp_path, env, name="straight", timeout=600)
    resumed = tiny_config(
        train_assets, tmp_path, [*common, "train.run_name=resumed", f"train.export_dir={tmp_path / 'r'}"]
    )
    run_train(resumed, tmp_path, {**env, STOP_AFTER_ENV: str(cut)}, name="cut", timeout=600)
    newest = checkpoint_dirs(tmp_path / "runs" / "resumed")[-1]
    assert read_json(newest / STATE_FILE)["step"] == cut
    run_train(resumed, tmp_path, env, name="final", resume=True, timeout=600)

    want, got = state_dict_of(tmp_path / "s"), state_dict_of(tmp_path / "r")
    differing = [k for k in want if not torch.equal(want[k], got[k])]
    assert not differing, f"ZeRO-{stage}: resumed weights differ from the uninterrupted run in {differing[:5]}"

    # The export is the trained model: DeepSpeed's consolidated fp32 weights of the last checkpoint.
    final = checkpoint_dirs(tmp_path / "runs" / "straight")[-1]
    assert read_json(final / STATE_FILE)["step"] == total
    master = deepspeed_fp32_weights(final)
    assert master, "the checkpoint holds no fp32 weights"
    for name, value in master.items():
        assert torch.equal(want[name], value.float()), f"ZeRO-{stage}: exported {name} is not the master weight"
