"""Export the trained model in the DeepSpeed-independent ``from_pretrained`` format."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mmclip_dist.config import Config
from mmclip_dist.tracking import RunLogger


def export_model(engine: Any, cfg: Config, rank: int, logger: RunLogger) -> None:
    """Consolidate fp32 weights on rank 0 and write them to ``train.export_dir`` (folder or s3://); in bf16 the
    fp32 master weights of the optimizer, not the bf16 module copies.

    Every rank must call this: under ZeRO-3 the parameters are partitioned and gathering them is a
    collective. Under ZeRO-1/2 every rank already holds the full weights.
    """
    import deepspeed

    master = fp32_master_weights(engine) if cfg.train.precision == "bf16" else {}
    gather = (
        deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)
        if cfg.train.zero_stage == 3
        else contextlib.nullcontext()
    )
    with gather:
        if rank != 0:
            return
        with tempfile.TemporaryDirectory(prefix="mmclip-export-") as tmp:
            folder = Path(tmp) / "model"
            # bf16: the module holds bf16 copies; the optimizer's fp32 master weights are the trained model.
            engine.module.save_pretrained(folder, engine.module.state_dict() | master)
            publish_folder(folder, cfg.train.export_dir, cfg.train.storage_endpoint)
            logger.log_artifacts(folder, "model")


def fp32_master_weights(engine: Any) -> dict[str, Any]:
    """``{name: fp32 tensor}`` of every trainable parameter from DeepSpeed's optimizer (ZeRO-1/2/3, bf16).

    A collective (each parameter's fragments are all-reduced / all-gathered): every rank must call it.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    out: dict[str, Any] = {}
    for name, param in engine.module.named_parameters():
        full = safe_get_full_fp32_param(param)
        if full is not None:
            out[name] = full.detach().reshape(getattr(param, "ds_shape", param.shape)).float().cpu()
    return out


def publish_folder(folder: Path, target: str, endpoint: str | None = None) -> None:
    """Copy a local folder to a local path or an ``s3://bucket/prefix`` (replacing what was there)."""
    if target.startswith("s3://"):
        from mmclip_dist.data.storage import open_storage

        storage = open_storage(target, endpoint)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            storage.put_file(path, path.relative_to(folder).as_posix())
        return
    destination = Path(target)
    if destination.exists():
        shutil.rmtree(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder, destination)
