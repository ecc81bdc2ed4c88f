"""Which samples each rank reads, from a data position that does not depend on the world size.

An epoch is one pass over the training shards in an order drawn from ``(seed, epoch)``; each shard is read
in its stored order. The position inside an epoch is what has been *consumed*, recorded per shard as sample
intervals ``{shard url: [[start, end), ...]}`` (normally a single prefix per shard).

At every (re)start, whatever the world size, the samples not yet consumed (in the epoch's shard order) are
laid end to end and cut into ``world_size x readers`` contiguous *lanes*, one per DataLoader worker of each
rank; each lane holds a whole number of micro-batches and every rank the same number of steps. After ``m``
micro-batches per rank the consumed set is known on every rank without communication (lane ``(r, k)``
consumed its first ``share(m, readers, k)`` micro-batches), so a checkpoint written after any step records
it exactly; the next start (any world size) splits what is left. Each training sample of an epoch is thus
used exactly once however often the run is resized; the tail of ``remaining % global_batch`` samples that
cannot fill a step is left out of that epoch (the same count as without resizes: ``N mod global_batch``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Intervals = list[list[int]]  # sorted, disjoint, non-adjacent [start, end) pairs
Consumed = dict[str, Intervals]


@dataclass
class DataPosition:
    """Where an epoch stands. ``consumed`` (per shard) is what any world size resumes from; ``plan_*`` name the
    plan that got there, so a restart on the same shape continues that plan batch for batch (bit-identical to
    an uninterrupted run) instead of re-splitting what is left."""

    consumed: Consumed = field(default_factory=dict)
    plan_base: Consumed = field(default_factory=dict)
    plan_shape: list[int] = field(default_factory=list)  # world size, readers, micro-batch, accumulation, window
    plan_batches: int = 0  # micro-batches per rank of that plan already trained on


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, end)`` of one shard, in stored order."""

    shard: str
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


def share(total: int, parts: int, index: int) -> int:
    """Items ``index`` gets when ``total`` are dealt round-robin to ``parts`` (index < total % parts get one more)."""
    return max(0, (total - index + parts - 1) // parts)


def epoch_order(shards: Sequence[str], seed: int, epoch: int) -> list[str]:
    """The shards in the order of ``epoch``: a permutation drawn from ``(seed, epoch)`` only."""
    order = sorted(shards)  # the listing order of a bucket is not part of the contract; names are
    # A string seed goes through SHA-512 in random.seed: stable across processes and Python runs.
    random.Random(f"mmclip-epoch:{seed}:{epoch}").shuffle(order)
    return order


def add_interval(intervals: Intervals, start: int, end: int) -> Intervals:
    """``intervals`` ∪ ``[start, end)``, merged; raises if they overlap (a sample consumed twice)."""
    for a, b in intervals:
        if a < end and start < b:
            raise ValueError(f"samples [{max(a, start)}, {min(b, end)}) consumed twice")
    merged: Intervals = []
    for a, b in sorted([*intervals, [start, end]] if end > start else intervals):
        if merged and merged[-1][1] >= a:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


class EpochPlan:
    """The samples one (re)start of an epoch reads, for ``world_size`` ranks of ``readers`` workers each.

    ``counts[i]`` is the number of samples of ``shards[i]``; ``consumed`` is the position saved so far
    in this epoch (empty at its start); ``epoch_samples`` > 0 limits the epoch to the first that many samples
    of its order (a debug knob). ``global_batch = world_size x micro_batch x accumulation``.
    """

    def __init__(
        self,
        shards: Sequence[str],
        counts: Sequence[int],
        *,
        seed: int,
        epoch: int,
        world_size: int,
        readers: int,
        micro_batch: int,
        accumulation: int,
        consumed: Mapping[str, Intervals] | None = None,
        epoch_samples: int = 0,
        shuffle_window: int = 0,
    ) -> None:
        if len(shards) != len(counts):
            raise ValueError(f"{len(shards)} shards but {len(counts)} sample counts")
        if min(world_size, readers, micro_batch, accumulation) < 1:
            raise ValueError("world_size, readers, micro_batch and accumulation must all be >= 1")
        self.world_size, self.readers = world_size, readers
        self.micro_batch, self.accumulation = micro_batch, accumulation
        self.seed, self.epoch = seed, epoch
        # Lanes are shuffled in windows of whole micro-batches; the permutation is known to every rank.
        self.window = max(1, -(-shuffle_window // micro_batch)) * micro_batch
        count_of = dict(zip(shards, counts, strict=True))
        unknown = set(consumed or {}) - set(count_of)
        if unknown:
            raise ValueError(f"saved data position names shards that are not in the training set: {sorted(unknown)}")
        self.base: Consumed = {k: [list(i) for i in v] for k, v in (consumed or {}).items() if v}
        self.remaining: list[Segment] = []
        budget = epoch_samples if epoch_samples > 0 else None
        for shard in epoch_order(shards, seed, epoch):
            end = count_of[shard] if budget is None else min(count_of[shard], budget)
            if budget is not None:
                budget -= end
            cursor = 0
            for a, b in self.base.get(shard, []):
                if b > count_of[shard]:
                    raise ValueError(f"saved position has samples [{a}, {b}) of {shard}, which has {count_of[shard]}")
                if a > cursor:
                    self._append(shard, cursor, min(a, end))
                cursor = max(cursor, b)
            self._append(shard, cursor, end)
        remaining = sum(len(s) for s in self.remaining)
        per_step = world_size * micro_batch * accumulation
        self.steps = remaining // per_step
        self.batches_per_rank = self.steps * accumulation
        samples_per_rank = self.batches_per_rank * micro_batch
        # Lane (r, k) = rank r's DataLoader worker k: batch b of rank r is batch b // readers of lane (r, b % readers).
        self.lane_start: dict[tuple[int, int], int] = {}
        offset = 0
        for rank in range(world_size):
            assert offset == rank * samples_per_rank
            for k in range(readers):
                self.lane_start[rank, k] = offset
                offset += share(self.batches_per_rank, readers, k) * micro_batch

    @property
    def shape(self) -> list[int]:
        return [self.world_size, self.readers, self.micro_batch, self.accumulation, self.window]

    def position_after(self, batches: int) -> DataPosition:
        """The data position once every rank has trained on its first ``batches`` micro-batches of this plan."""
        return DataPosition(self.consumed_after(batches), self.base, self.shape, batches)

    def _append(self, shard: str, start: int, end: int) -> None:
        if end > start:
            self.remaining.append(Segment(shard, start, end))

    def _slice(self, lo: int, hi: int) -> list[Segment]:
        """Segments covering positions ``[lo, hi)`` of the remaining sequence."""
        out: list[Segment] = []
        position = 0
        for seg in self.remaining:
            a, b = max(lo, position), min(hi, position + len(seg))
            if a < b:
                out.append(Segment(seg.shard, seg.start + a - position, seg.start + b - position))
            position += len(seg)
            if position >= hi:
                break
        return out

    def lane(self, rank: int, reader: int) -> list[Segment]:
        """What worker ``reader`` of ``rank`` reads from storage, in order: ``share(batches_per_rank, readers,
        reader)`` micro-batches; ``window_order`` says in which order it trains on them."""
        start = self.lane_start[rank, reader]
        return self._slice(start, start + share(self.batches_per_rank, self.readers, reader) * self.micro_batch)

    def window_order(self, rank: int, reader: int, window: int, size: int) -> list[int]:
        """Training order of the ``size`` samples of window ``window`` of a lane (offsets inside the window)."""
        order = list(range(size))
        random.Random(f"mmclip-window:{self.seed}:{self.epoch}:{self.lane_start[rank, reader]}:{window}").shuffle(order)
        return order

    def consumed_after(self, batches: int) -> Consumed:
        """The epoch's consumed intervals once every rank has trained on its first ``batches`` micro-batches."""
        if not 0 <= batches <= self.batches_per_rank:
            raise ValueError(f"{batches} micro-batches per rank; this plan has {self.batches_per_rank}")
        out: Consumed = {k: [list(i) for i in v] for k, v in self.base.items()}
        for (rank, k), start in self.lane_start.items():
            used = share(batches, self.readers, k) * self.micro_batch
            full = used // self.window * self.window
            lane = self._slice(start, start + share(self.batches_per_rank, self.readers, k) * self.micro_batch)
            positions = [(seg.shard, seg.start, seg.end) for seg in self._slice(start, start + full)]
            if used > full:  # a window partly trained on: the samples its permutation put first
                size = min(self.window, sum(len(s) for s in lane) - full)
                offsets = sorted(self.window_order(rank, k, full // self.window, size)[: used - full])
                flat = [
                    (seg.shard, i)
                    for seg in self._slice(start + full, start + full + size)
                    for i in range(seg.start, seg.end)
                ]
                positions += [(flat[o][0], flat[o][1], flat[o][1] + 1) for o in offsets]
            for shard, a, b in positions:
                out[shard] = add_interval(out.get(shard, []), a, b)
        return out


def resume_plan(
    shards: Sequence[str], counts: Sequence[int], position: DataPosition | None, **plan: Any
) -> tuple[EpochPlan, int]:
    """The plan to continue ``position`` with and how many of its micro-batches per rank are already done:
    the saved plan itself when this start has its shape, else a new split of what is left (a resize)."""
    position = position or DataPosition()
    same = EpochPlan(shards, counts, consumed=position.plan_base, **plan) if position.plan_shape else None
    if same is not None and same.shape == position.plan_shape:
        return same, position.plan_batches
    return EpochPlan(shards, counts, consumed=position.consumed, **plan), 0
