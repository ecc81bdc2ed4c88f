"""Turning the per-rank micro-batch stream into optimizer steps, across epochs, resumable at any world size."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mmclip_dist.config import Config, accumulation_steps
from mmclip_dist.data.stream.epoch_plan import DataPosition
from mmclip_dist.data.stream.loader import make_train_loader


@dataclass
class StepBatches:
    """The micro-batches of one optimizer step and the data position after them (every rank agrees on it)."""

    micro_batches: list[dict[str, Any]]
    epoch: int
    position: DataPosition


def step_stream(
    cfg: Config, tokenizer: Any, rank: int, world_size: int, epoch: int, position: DataPosition | None
) -> Iterator[StepBatches]:
    """Yield ``accumulation_steps`` micro-batches at a time, forever, starting at a saved position.

    Every rank yields the same number of whole steps per epoch (the epoch plan guarantees it), so all ranks
    reach each collective together; the epoch's last ``samples % global_batch`` samples are left out.
    """
    accumulation = accumulation_steps(cfg.train.global_batch, world_size, cfg.train.micro_batch)
    while True:
        loader = make_train_loader(
            cfg.data,
            tokenizer,
            rank=rank,
            world_size=world_size,
            micro_batch=cfg.train.micro_batch,
            seed=cfg.train.seed,
            epoch=epoch,
            accumulation=accumulation,
            position=position,
        )
        pending: list[dict[str, Any]] = []
        for done, batch in enumerate(loader, start=loader.skip + 1):
            pending.append(batch)
            if len(pending) == accumulation:
                yield StepBatches(pending, epoch, loader.plan.position_after(done))
                pending = []
        epoch, position = epoch + 1, None
