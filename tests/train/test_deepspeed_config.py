"""The DeepSpeed config built from ``TrainConfig``: bf16 casts buffers too (BatchNorm), fp32 leaves them."""

from mmclip_dist.config import TrainConfig
from mmclip_dist.train.deepspeed_config import build_deepspeed_config


def test_bf16_casts_buffers_with_the_parameters() -> None:
    ds = build_deepspeed_config(TrainConfig(precision="bf16", num_workers=2, micro_batch=2, global_batch=8), 2)
    assert ds["bf16"] == {"enabled": True} and ds["data_types"] == {"buffer_dtype": "bf16"}
    assert ds["gradient_accumulation_steps"] == 2


def test_fp32_has_no_mixed_precision_settings() -> None:
    ds = build_deepspeed_config(TrainConfig(precision="fp32"), 2)
    assert ds["bf16"] == {"enabled": False} and "data_types" not in ds
