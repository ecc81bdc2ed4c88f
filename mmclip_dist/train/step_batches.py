"""Turning the per-rank micro-batch stream into optimizer steps, across epochs, resumable."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mmclip_dist.config import Config, accumulation_steps
from mmclip_dist.data.stream.loader import make_train_loader, train_shard_set
from mmclip_dist.data.stream.shard_set import ShardSet


@dataclass
class StepBatches:
    """The micro-batches of one optimizer step and the data position after them."""

    micro_batches: list[dict[str, Any]]
    epoch: int
    batches_in_epoch: int


def step_stream(
    cfg: Config,
    tokenizer: Any,
    rank: int,
    world_size: int,
    epoch: int,
    batches_in_epoch: int,
    shard_set: ShardSet | None = None,
) -> Iterator[StepBatches]:
    """Yield ``accumulation_steps`` micro-batches at a time, forever, starting at a saved position.
    ``shard_set``: the training shards as resolved on the driver (else listed here, once).

    Every rank yields the same number of micro-batches per epoch (the loader guarantees it), so all
    ranks reach each collective together; a step may span an epoch boundary.
    """
    accumulation = accumulation_steps(cfg.train.global_batch, world_size, cfg.train.micro_batch)
    pending: list[dict[str, Any]] = []
    skip = batches_in_epoch
    shard_set = shard_set if shard_set is not None else train_shard_set(cfg.data)
    while True:
        loader = make_train_loader(
            cfg.data,
            tokenizer,
            rank=rank,
            world_size=world_size,
            micro_batch=cfg.train.micro_batch,
            seed=cfg.train.seed,
            epoch=epoch,
            skip_batches=skip,
            shard_set=shard_set,
        )
        position = skip
        for batch in loader:
            position += 1
            pending.append(batch)
            if len(pending) == accumulation:
                yield StepBatches(pending, epoch, position)
                pending = []
        if position == skip and skip == 0:  # (a resume exactly at an epoch's end legitimately reads nothing)
            raise RuntimeError(
                f"epoch {epoch} of {cfg.data.train_shards!r} gave rank {rank} no batches; "
                "check data.epoch_samples and the shard count"
            )
        epoch, skip = epoch + 1, 0
