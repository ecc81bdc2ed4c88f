"""Skipped-data bookkeeping of a training run: every rank's skipped samples summed, and the run's budget.

The loader skips samples and shards it cannot read or decode (``loader.SkipCounter``) and attaches the count
to each batch. Every step, all ranks sum their counts (one small all-reduce) so they agree on whether the run
goes on: past ``data.max_skip_fraction`` of the run's samples, or when a rank's shards cannot be read at all,
every rank leaves the loop together and rank 0 sets the MLflow tag ``data_error``. The driver turns that into
a failed run with one message: raising in the workers instead would make Ray Train retry the same data (and
Ray Train 2.60 V2 retries every worker error up to ``FailureConfig.max_failures``; only its report of a
checkpoint reaches the driver's ``Result``, so the tag carries the reason).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from mmclip_dist.config import Config

DATA_ERROR_KEY = "data_error"  # MLflow tag: the reason a run stopped for its data (the driver reads it)


def take_data_error(tracking_uri: str, run_id: str) -> str | None:
    """The ``data_error`` tag of a run, removed so a resumed run starts clean; None when it has none."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    value = client.get_run(run_id).data.tags.get(DATA_ERROR_KEY)
    if value is not None:
        client.delete_tag(run_id, DATA_ERROR_KEY)
    return value


class SkipBudget:
    """Running total of skipped samples over all ranks and the run's limit."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        self.samples = cfg.train.max_steps * cfg.train.global_batch  # what the run reads in all
        self.limit = cfg.data.max_skip_fraction * self.samples
        self.fraction = cfg.data.max_skip_fraction
        self.device = device
        self.total = 0

    def update(self, micro_batches: list[dict[str, Any]] | None, reader_failed: bool) -> str | None:
        """Add this step's skips (``micro_batches`` None when this rank's reader failed); returns the reason to
        stop, the same on every rank, or None. A collective: every rank must call it every step."""
        skipped = sum(int(mb.get("skipped_samples", 0)) for mb in micro_batches or [])
        counts = torch.tensor([skipped, int(reader_failed)], dtype=torch.int64, device=self.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(counts)
        self.total += int(counts[0])
        failed_readers = int(counts[1])
        if failed_readers:
            return (
                f"data: the shards of {failed_readers} rank(s) could not be read at all ({self.total} samples "
                "skipped); run `mmclip-dist shards verify` on data.train_shards"
            )
        if self.total > self.limit:
            return (
                f"data: {self.total} samples could not be read or decoded, more than "
                f"data.max_skip_fraction={self.fraction:g} of the run's {self.samples} "
                "samples; the worker log names the shards (run `mmclip-dist shards verify`, or raise the limit)"
            )
        return None
