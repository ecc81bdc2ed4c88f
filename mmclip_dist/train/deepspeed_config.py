"""The DeepSpeed config dict built from ``TrainConfig`` (one source of truth: our YAML, not a DS JSON)."""

from __future__ import annotations

from typing import Any

from torch import nn

from mmclip_dist.config import TrainConfig, accumulation_steps, scaled_lr

# Not decayed: temperatures (decay would pull the logit scales towards 1) and the RoI matcher's
# attention and scoring weights, whose scale sets the RoI logits directly.
NO_DECAY_PREFIXES = ("logit_scales.", "roi_matcher.")


def optimizer_param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Trainable parameters for ``deepspeed.initialize``: one group with the config's weight decay, one
    (``NO_DECAY_PREFIXES``) with ``weight_decay=0``; empty groups are left out."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.startswith(NO_DECAY_PREFIXES) else decay).append(param)
    groups: list[dict[str, Any]] = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_deepspeed_config(train: TrainConfig, world_size: int) -> dict[str, Any]:
    """ZeRO stage, precision, AdamW and warm-up + cosine schedule for ``world_size`` ranks.

    Gradient accumulation is done by the feature cache, which hands DeepSpeed one backward per
    micro-batch; DeepSpeed still needs the count so it only steps (and all-reduces) at the boundary.
    """
    return {
        "train_batch_size": train.global_batch,
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": accumulation_steps(train.global_batch, world_size, train.micro_batch),
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {
            "stage": train.zero_stage,
            # Keeps ZeRO-3 from prefetching the whole model on CPU debug runs; harmless on GPUs.
            **({"stage3_param_persistence_threshold": 0} if train.zero_stage == 3 else {}),
        },
        "bf16": {"enabled": train.precision == "bf16"},
        # DeepSpeed >= 0.19 casts only parameters and keeps buffers fp32; BatchNorm then meets bf16 weights
        # with fp32 running statistics and fails ("expected scalar type BFloat16 but found Float").
        **({"data_types": {"buffer_dtype": "bf16"}} if train.precision == "bf16" else {}),
        "optimizer": {
            "type": "AdamW",
            # torch_adam: DeepSpeed's fused CPU/GPU Adam needs compiled ops, which we install without.
            "params": {
                "lr": scaled_lr(train),
                "betas": list(train.betas),
                "weight_decay": train.weight_decay,
                "torch_adam": True,
                "adam_w_mode": True,
            },
        },
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": max(train.max_steps, 1),
                # DeepSpeed rejects 0 warm-up steps; one step of warm-up is the closest to "none".
                "warmup_num_steps": max(1, min(train.warmup_steps, train.max_steps)),
                "warmup_min_ratio": 0.0,
                "cos_min_ratio": train.min_lr_ratio,
                "warmup_type": "linear",
            },
        },
        "steps_per_print": 10**9,  # we log through MLflow; DeepSpeed's own prints would only add noise
        "wall_clock_breakdown": False,
    }
