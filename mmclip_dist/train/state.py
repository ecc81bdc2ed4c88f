"""Training state and checkpoints: DeepSpeed shards + our own small state, reported through Ray Train.

A checkpoint folder holds DeepSpeed's files under ``deepspeed/`` (every rank writes its optimizer
shard; Ray Train merges the ranks' folders into one checkpoint in storage), ``train_state.json``
(step, data position, MLflow run id) and one ``rng_rank{r}.pt`` per rank, so a restored run draws the
same dropout masks as an uninterrupted one.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray.train
import torch

from mmclip_dist.rng import get_rng_state, set_rng_state

DEEPSPEED_TAG = "deepspeed"
STATE_FILE = "train_state.json"


@dataclass
class TrainState:
    """Where training stands; everything needed to continue exactly."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches this rank consumed in ``epoch``
    mlflow_run_id: str = ""
    samples_seen: int = 0


def save_and_report(engine: Any, state: TrainState, metrics: dict[str, float], rank: int) -> None:
    """Every rank saves its DeepSpeed shard and reports; ``ray.train.report`` is a barrier for all ranks."""
    with tempfile.TemporaryDirectory(prefix="mmclip-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag=DEEPSPEED_TAG)
        torch.save(get_rng_state(), Path(tmp) / f"rng_rank{rank}.pt")
        if rank == 0:
            (Path(tmp) / STATE_FILE).write_text(json.dumps(asdict(state)))
        ray.train.report({**metrics, "step": state.step}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def restore(engine: Any, rank: int) -> TrainState | None:
    """Load the latest reported checkpoint into ``engine``; None when the run starts fresh."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        folder = Path(folder)
        engine.load_checkpoint(str(folder), tag=DEEPSPEED_TAG)
        rng_file = folder / f"rng_rank{rank}.pt"
        if rng_file.exists():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return TrainState(**json.loads((folder / STATE_FILE).read_text()))
