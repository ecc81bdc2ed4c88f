"""Elastic training: the world-size range, resharding checkpoints, exactly-once data across resizes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mmclip_dist.config import TrainConfig


def test_elastic_range_must_split_the_global_batch_at_every_world_size() -> None:
    cfg = TrainConfig(num_workers=[1, 2], micro_batch=4, global_batch=16)
    assert cfg.world_size_range == (1, 2) and cfg.max_workers == 2
    assert TrainConfig(num_workers=3, micro_batch=2, global_batch=12).world_size_range == (3, 3)
    with pytest.raises(ValidationError, match=r"\[1, 3\] includes world size 3: .* 3 x 4 = 12"):
        TrainConfig(num_workers=[1, 3], micro_batch=4, global_batch=16)
    with pytest.raises(ValidationError, match="1 <= min <= max"):
        TrainConfig(num_workers=[2, 1], micro_batch=4, global_batch=16)
    with pytest.raises(ValidationError, match=r"world size x micro_batch = 3 x 4"):
        TrainConfig(num_workers=3, micro_batch=4, global_batch=16)
