"""Training state and checkpoints that any world size restores, reported through Ray Train.

A checkpoint folder holds ``train_state.pt``, written by rank 0 and independent of DeepSpeed's partitioning:
every trainable parameter's full fp32 master value and AdamW moments by parameter name (gathered from the
ZeRO partitions with DeepSpeed's ``safe_get_full_*`` API, set back with ``safe_set_full_*`` on whatever world
size restores it), the Adam step, the lr scheduler, the model's buffers, each rank's RNG state, and
``train_state.json`` (step, world-size-independent data position, MLflow run id). An elastic run that loses
or gains workers therefore continues with the same weights *and* optimizer state.

Cost: the full fp32 state (3 x 4 bytes per parameter) passes through rank 0's memory at save and every
rank's at restore; fine for MM-CLIP's ~10^8 parameters, to be revisited for models an order larger.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed as dist

from mmclip_dist.rng import get_rng_state, set_rng_state

STATE_FILE = "train_state.json"
TENSORS_FILE = "train_state.pt"
MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass
class TrainState:
    """Where training stands; everything needed to continue exactly."""

    step: int = 0
    epoch: int = 0
    data_position: dict[str, Any] = field(default_factory=dict)  # epoch_plan.DataPosition of ``epoch``, as a dict
    mlflow_run_id: str = ""
    samples_seen: int = 0
    world_size: int = 0  # ranks that wrote the checkpoint (a restore on another count is a resize)


def _trainable(engine: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in engine.module.named_parameters() if p.requires_grad]


def _basic_optimizer(engine: Any) -> torch.optim.Optimizer:
    """The torch optimizer DeepSpeed drives (behind its ZeRO / bf16 wrapper, if any)."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def _zero_partitioned(engine: Any) -> bool:
    params = [p for _, p in _trainable(engine)]
    return any(hasattr(p, "ds_id") or hasattr(p, "_hp_mapping") for p in params)


def _full_state(engine: Any) -> dict[str, dict[str, torch.Tensor]]:
    """``{name: {"param", "exp_avg", "exp_avg_sq"}}`` full fp32 tensors (collective: every rank calls it)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    partitioned = _zero_partitioned(engine)
    state = _basic_optimizer(engine).state
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, param in _trainable(engine):
        if partitioned:
            entry = {"param": safe_get_full_fp32_param(param)}
            entry |= {key: safe_get_full_optimizer_state(param, key) for key in MOMENTS}
        else:  # ZeRO 0, fp32: the module's parameters are the optimizer's
            entry = {"param": param.detach()} | {key: state[param][key] for key in MOMENTS if key in state[param]}
        out[name] = {key: value.detach().float().cpu().clone() for key, value in entry.items() if value is not None}
    return out


def _adam_step(engine: Any) -> int:
    for value in _basic_optimizer(engine).state.values():
        if "step" in value:
            return int(value["step"])
    return 0


def save_and_report(engine: Any, state: TrainState, metrics: dict[str, float], rank: int) -> None:
    """Gather the full state to rank 0, write it, report; ``ray.train.report`` is a barrier for all ranks."""
    tensors = _full_state(engine)
    rng = [None] * dist.get_world_size()
    dist.all_gather_object(rng, get_rng_state())
    with tempfile.TemporaryDirectory(prefix="mmclip-ckpt-") as tmp:
        checkpoint = None
        if rank == 0:
            payload = {
                "tensors": tensors,
                "adam_step": _adam_step(engine),
                "lr_scheduler": engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None,
                "buffers": {name: b.detach().cpu().clone() for name, b in engine.module.named_buffers()},
                "rng": rng,
                "global_steps": engine.global_steps,
                "global_samples": engine.global_samples,
            }
            torch.save(payload, Path(tmp) / TENSORS_FILE)
            (Path(tmp) / STATE_FILE).write_text(json.dumps(asdict(state)))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({**metrics, "step": state.step}, checkpoint=checkpoint)


def restore(engine: Any, rank: int) -> TrainState | None:
    """Load the latest reported checkpoint into ``engine`` at this run's world size; None when starting fresh."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        payload = torch.load(Path(folder) / TENSORS_FILE, weights_only=False, map_location="cpu")
        state = TrainState(**json.loads((Path(folder) / STATE_FILE).read_text()))
    load_full_state(engine, payload)
    rng = payload["rng"]
    if len(rng) == dist.get_world_size():
        set_rng_state(rng[rank])  # same world: dropout continues exactly as without the restart
    else:
        torch.manual_seed(1_000_003 * state.step + rank)  # resized: a fresh stream per rank
    return state


def load_full_state(engine: Any, payload: dict[str, Any]) -> None:
    """Set parameters, AdamW moments and step, lr schedule and buffers from a full-state checkpoint."""
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    tensors = payload["tensors"]
    trainable = _trainable(engine)
    missing = sorted({n for n, _ in trainable} - set(tensors))
    if missing:
        raise ValueError(f"checkpoint lacks parameters {missing[:5]} ({len(missing)} in all): another model?")
    partitioned = _zero_partitioned(engine)
    optimizer = _basic_optimizer(engine)
    step = payload["adam_step"]
    # AdamW creates its state at the first step; a restore comes before it, so create it here (zeros, then
    # overwritten below) and let DeepSpeed link its per-parameter views into the flat ZeRO partitions.
    flats = [p for group in optimizer.param_groups for p in group["params"]]
    # ZeRO-3 hands its fp32 partitions to the optimizer one sub-group at a time, only inside step().
    flats += list(getattr(engine.optimizer, "fp32_partitioned_groups_flat", []))
    for flat in {id(f): f for f in flats}.values():
        entry = optimizer.state[flat]
        entry.setdefault("step", torch.tensor(0.0))
        for key in MOMENTS:
            entry.setdefault(key, torch.zeros_like(flat))
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()
    for name, param in trainable:
        entry = tensors[name]
        if hasattr(param, "ds_id"):  # ZeRO-3
            for key in (None, *MOMENTS):
                if key is None or key in entry:
                    _set_zero3_partition(param, entry["param" if key is None else key], key)
        elif partitioned:
            safe_set_full_fp32_param(param, entry["param"].to(engine.device))
            for key in MOMENTS:
                if key in entry:
                    safe_set_full_optimizer_state(param, entry[key].to(engine.device), key)
            # The forward reads the low-precision / partitioned copy, which DeepSpeed only refreshes at a step.
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                if dist.get_rank() == 0 or not hasattr(param, "ds_id"):
                    param.data.copy_(entry["param"].reshape(param.shape).to(param.dtype))
        else:
            param.data.copy_(entry["param"].to(param.dtype))
            for key in MOMENTS:
                if key in entry:
                    optimizer.state[param][key].copy_(entry[key])
    for value in optimizer.state.values():  # ZeRO keeps one state per flat partition
        if "step" in value:
            value["step"] = torch.tensor(float(step)) if isinstance(value["step"], torch.Tensor) else step
    if payload["lr_scheduler"] is not None:
        engine.lr_scheduler.load_state_dict(payload["lr_scheduler"])
        # The scheduler writes an lr into the optimizer only when it steps; the next step must already use the
        # restored one (DeepSpeed's own checkpoints carry it in the optimizer's param_groups instead).
        for group, lr in zip(optimizer.param_groups, engine.lr_scheduler.get_lr(), strict=True):
            group["lr"] = lr
    buffers = dict(engine.module.named_buffers())
    for name, value in payload["buffers"].items():
        buffers[name].copy_(value)
    engine.global_steps = payload["global_steps"]
    engine.global_samples = payload["global_samples"]


def _set_zero3_partition(param: Any, value: torch.Tensor, key: str | None) -> None:
    """This rank's slice of a full fp32 tensor into ZeRO-3's partition of ``param`` (``key`` None: the master
    weights). DeepSpeed's ``safe_set_full_*`` slices the unpadded tensor, which fails for the last rank when the
    parameter's size is not a multiple of the world size; the partitions are padded, so pad first."""
    optimizer = param._z3_optimizer
    part, _ = optimizer._get_fp32_opt_state_partition(param, release_swap_buffers=False, optim_state_key=key)
    size, rank = part.numel(), optimizer._get_param_partition_rank(param)
    padded = torch.zeros(size * optimizer._get_param_partition_world_size(param), dtype=part.dtype)
    padded[: value.numel()] = value.flatten().to(part.dtype)
    part.data.copy_(padded.narrow(0, size * rank, size).to(part.device))
