"""The skipped-data budget of a run (single process; the all-reduce across ranks runs in test_bad_data.py)."""

from __future__ import annotations

import torch

from mmclip_dist.config import Config
from mmclip_dist.train.data_health import SkipBudget


def _cfg(fraction: float) -> Config:
    return Config.model_validate(
        {"data": {"max_skip_fraction": fraction}, "train": {"max_steps": 10, "global_batch": 16}}
    )


def test_budget_counts_skips_and_stops_past_the_fraction() -> None:
    budget = SkipBudget(_cfg(0.05), torch.device("cpu"))  # 5% of 10 x 16 = 160 samples: 8 skips allowed
    assert budget.update([{"skipped_samples": 2}, {"skipped_samples": 0}], reader_failed=False) is None
    assert budget.update([{"skipped_samples": 6}], reader_failed=False) is None
    assert budget.total == 8
    reason = budget.update([{"skipped_samples": 1}], reader_failed=False)
    assert reason is not None and reason.startswith("data: 9 samples could not be read or decoded")
    assert "data.max_skip_fraction=0.05 of the run's 160 samples" in reason


def test_zero_budget_and_failed_reader() -> None:
    assert SkipBudget(_cfg(0.0), torch.device("cpu")).update([{"skipped_samples": 1}], False) is not None
    assert SkipBudget(_cfg(0.0), torch.device("cpu")).update([{}], False) is None
    reason = SkipBudget(_cfg(0.5), torch.device("cpu")).update(None, reader_failed=True)
    assert reason is not None and "could not be read at all" in reason
