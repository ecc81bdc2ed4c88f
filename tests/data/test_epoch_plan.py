"""The epoch plan: exactly-once sample use across resizes, simulated without Ray (cheap, many cases)."""

from __future__ import annotations

import random

import pytest

from mmclip_dist.data.stream.epoch_plan import EpochPlan, add_interval, epoch_order, resume_plan, share

SHARDS = [f"s3://b/train-{i:06d}.tar" for i in range(5)]
COUNTS = [7, 13, 4, 11, 9]  # 44 samples, uneven


def rank_batches(plan: EpochPlan, rank: int) -> list[list[tuple[str, int]]]:
    """Rank ``rank``'s micro-batches in DataLoader order (batch b from worker b % readers)."""
    lanes = []
    for k in range(plan.readers):
        read = [(seg.shard, i) for seg in plan.lane(rank, k) for i in range(seg.start, seg.end)]
        samples = []
        for w, start in enumerate(range(0, len(read), plan.window)):
            window = read[start : start + plan.window]
            samples += [window[o] for o in plan.window_order(rank, k, w, len(window))]
        lanes.append([samples[j : j + plan.micro_batch] for j in range(0, len(samples), plan.micro_batch)])
    return [lanes[b % plan.readers][b // plan.readers] for b in range(plan.batches_per_rank)]


def plan_for(
    world: int, readers: int, micro: int, global_batch: int, consumed: dict, epoch: int = 0, window: int = 0
) -> EpochPlan:
    return EpochPlan(
        SHARDS,
        COUNTS,
        seed=3,
        epoch=epoch,
        world_size=world,
        readers=readers,
        micro_batch=micro,
        accumulation=global_batch // (world * micro),
        consumed=consumed,
        shuffle_window=window,
    )


def test_one_start_reads_every_sample_once_and_balances_ranks() -> None:
    plan = plan_for(world=2, readers=2, micro=2, global_batch=8, consumed={})
    assert plan.steps == 44 // 8 and plan.batches_per_rank == 5 * 2
    batches = [rank_batches(plan, r) for r in (0, 1)]
    assert all(len(b) == plan.batches_per_rank and all(len(mb) == 2 for mb in b) for b in batches)
    used = [s for b in batches for mb in b for s in mb]
    assert len(used) == len(set(used)) == 40
    # the consumed record after all of it covers exactly what was used
    after = plan.consumed_after(plan.batches_per_rank)
    assert sum(b - a for v in after.values() for a, b in v) == 40
    assert {(k, i) for k, v in after.items() for a, b in v for i in range(a, b)} == set(used)


@pytest.mark.parametrize("case", range(25))
def test_exactly_once_across_random_resizes(case: int) -> None:
    rng = random.Random(case)
    micro, global_batch = 2, 8
    consumed: dict = {}
    used: list[tuple[str, int]] = []
    restarts = 0
    while True:
        world = rng.choice([1, 2, 4])
        readers = rng.choice([1, 2, 3])
        plan = plan_for(world, readers, micro, global_batch, consumed, window=rng.choice([0, 2, 5, 100]))
        if plan.steps == 0:
            break
        steps = rng.randint(1, plan.steps)  # a checkpoint after `steps` steps, then a resize
        batches = steps * plan.accumulation
        for rank in range(world):
            for step in range(steps):
                step_batches = rank_batches(plan, rank)[step * plan.accumulation : (step + 1) * plan.accumulation]
                used.extend(s for mb in step_batches for s in mb)
        consumed = plan.consumed_after(batches)
        restarts += 1
    assert len(used) == len(set(used)), "a sample was used twice"
    assert len(used) == (sum(COUNTS) // global_batch) * global_batch  # only the N mod global_batch tail is left
    assert restarts >= 1


def test_same_plan_without_resize_matches_one_uninterrupted_start() -> None:
    full = plan_for(world=2, readers=2, micro=2, global_batch=8, consumed={})
    first = [rank_batches(full, r)[:4] for r in (0, 1)]  # 2 steps
    resumed = plan_for(world=2, readers=2, micro=2, global_batch=8, consumed=full.consumed_after(4))
    assert resumed.steps == full.steps - 2
    used = {s for r in first for mb in r for s in mb} | {
        s for r in (0, 1) for mb in rank_batches(resumed, r) for s in mb
    }
    assert len(used) == 40


def test_shuffle_window_permutes_within_windows_only() -> None:
    plain = plan_for(world=1, readers=1, micro=2, global_batch=4, consumed={})
    mixed = plan_for(world=1, readers=1, micro=2, global_batch=4, consumed={}, window=7)
    assert mixed.window == 8
    flat = [s for mb in rank_batches(plain, 0) for s in mb]
    shuffled = [s for mb in rank_batches(mixed, 0) for s in mb]
    assert shuffled != flat and sorted(shuffled[:8]) == sorted(flat[:8])
    # a checkpoint inside a window records the scattered samples trained on so far
    after = mixed.consumed_after(3)
    assert {(k, i) for k, v in after.items() for a, b in v for i in range(a, b)} == set(shuffled[:6])


def test_resume_continues_the_saved_plan_on_the_same_shape_and_resplits_otherwise() -> None:
    args = dict(seed=3, epoch=0, micro_batch=2, shuffle_window=5)
    first = EpochPlan(SHARDS, COUNTS, world_size=2, readers=3, accumulation=2, **args)
    position = first.position_after(4)
    same, skip = resume_plan(SHARDS, COUNTS, position, world_size=2, readers=3, accumulation=2, **args)
    assert skip == 4 and same.lane_start == first.lane_start and same.remaining == first.remaining
    other, skip = resume_plan(SHARDS, COUNTS, position, world_size=1, readers=3, accumulation=4, **args)
    assert skip == 0 and other.base == position.consumed
    fresh, skip = resume_plan(SHARDS, COUNTS, None, world_size=1, readers=1, accumulation=4, **args)
    assert skip == 0 and fresh.base == {}


def test_epoch_order_depends_on_seed_and_epoch_only() -> None:
    assert epoch_order(SHARDS, 3, 0) == epoch_order(list(reversed(SHARDS)), 3, 0)
    assert sorted(epoch_order(SHARDS, 3, 1)) == sorted(SHARDS)
    assert {tuple(epoch_order(SHARDS, 3, e)) for e in range(6)} != {tuple(epoch_order(SHARDS, 3, 0))}


def test_epoch_samples_limits_the_epoch() -> None:
    plan = EpochPlan(
        SHARDS, COUNTS, seed=0, epoch=0, world_size=1, readers=1, micro_batch=2, accumulation=1, epoch_samples=10
    )
    assert plan.steps == 5 and sum(len(s) for s in plan.remaining) == 10


def test_intervals_and_errors() -> None:
    assert add_interval([[0, 3], [5, 7]], 3, 5) == [[0, 7]]
    assert add_interval([[4, 6]], 0, 2) == [[0, 2], [4, 6]]
    with pytest.raises(ValueError, match=r"samples \[2, 3\) consumed twice"):
        add_interval([[0, 3]], 2, 4)
    with pytest.raises(ValueError, match="not in the training set"):
        plan_for(1, 1, 2, 8, {"s3://b/gone.tar": [[0, 1]]})
    with pytest.raises(ValueError, match="which has 7"):
        plan_for(1, 1, 2, 8, {SHARDS[0]: [[0, 9]]})
    assert share(10, 3, 0) == 4 and share(10, 3, 2) == 3
