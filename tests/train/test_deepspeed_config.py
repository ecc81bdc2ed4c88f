"""DeepSpeed config and optimizer groups: bf16 casts buffers too (BatchNorm), fp32 leaves them; the lr scaling
rule; which parameters are not decayed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmclip_devtools.toy_models import build_debug_text_encoder
from mmclip_dist.config import ConfigError, ModelConfig, TrainConfig, load_config, scaled_lr
from mmclip_dist.model import MMCLIP
from mmclip_dist.train.deepspeed_config import build_deepspeed_config, optimizer_param_groups


@pytest.mark.parametrize(
    ("scaling", "global_batch", "expected"),
    [("none", 256, 1e-6), ("linear", 256, 16e-6), ("sqrt", 256, 4e-6), ("linear", 16, 1e-6), ("sqrt", 64, 2e-6)],
)
def test_lr_is_stated_per_reference_batch_and_scaled(scaling: str, global_batch: int, expected: float) -> None:
    train = TrainConfig(lr=1e-6, lr_scaling=scaling, lr_reference_batch=16, global_batch=global_batch, micro_batch=8)
    assert scaled_lr(train) == pytest.approx(expected)
    assert build_deepspeed_config(train, 2)["optimizer"]["params"]["lr"] == pytest.approx(expected)


def test_lr_reference_batch_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="lr_reference_batch"):
        load_config(None, ["train.lr_reference_batch=0"])


def test_logit_scales_and_roi_matcher_are_not_decayed(tmp_path: Path) -> None:
    text = build_debug_text_encoder(tmp_path / "bert")
    cfg = ModelConfig(backbone="test_resnet", text_encoder=str(text), embed_dim=8, roi_match_dim=8, roi_match_heads=2)
    model = MMCLIP.from_config(cfg)
    groups = optimizer_param_groups(model)
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert "logit_scales.log_scale" in no_decay and any(n.startswith("roi_matcher.") for n in no_decay)
    assert all(n.startswith(("logit_scales.", "roi_matcher.")) for n in no_decay)
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    # With zero gradients AdamW only decays: the decayed group shrinks, the other does not move.
    optimizer = torch.optim.AdamW(groups, lr=0.1, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = dict(model.named_parameters())
    assert torch.equal(after["logit_scales.log_scale"], before["logit_scales.log_scale"])
    stem = next(n for n in before if n.startswith("visual.backbone") and n.endswith("weight"))
    assert torch.allclose(after[stem], before[stem] * (1 - 0.1 * 0.5))


def test_bf16_casts_buffers_with_the_parameters() -> None:
    ds = build_deepspeed_config(TrainConfig(precision="bf16", num_workers=2, micro_batch=2, global_batch=8), 2)
    assert ds["bf16"] == {"enabled": True} and ds["data_types"] == {"buffer_dtype": "bf16"}
    assert ds["gradient_accumulation_steps"] == 2


def test_fp32_has_no_mixed_precision_settings() -> None:
    ds = build_deepspeed_config(TrainConfig(precision="fp32"), 2)
    assert ds["bf16"] == {"enabled": False} and "data_types" not in ds
