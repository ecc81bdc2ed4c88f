"""Builders for the training tests and benches: a tiny synthetic dataset, its shards, a text encoder, a config.

Everything goes through the production code (synthetic DICOMs -> ``build_shards`` -> WordPiece tokenizer +
tiny BERT), only at toy sizes, so a training step costs about a second on one CPU core.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.entities
from mlflow.tracking import MlflowClient

from mmclip_dist.config import Config, dump_config, load_config

REPO = Path(__file__).resolve().parents[2]
DEBUG_CONFIG = REPO / "launch" / "configs" / "debug.yaml"
IMAGE_SIZE = (64, 48)


@dataclass(frozen=True)
class TrainAssets:
    """Shards (local folder, 4 ``train-*.tar`` of 4-8 breasts each) and a local text encoder folder."""

    shards: Path
    text_encoder: Path
    train_samples: int


def build_train_assets(root: Path, num_patients: int = 16) -> TrainAssets:
    """Synthetic VinDr DICOMs -> shards -> tokenizer + 2-layer BERT, under ``root``."""
    from mmclip_dist.data.build import build_shards
    from mmclip_dist.data.loader import list_shards
    from mmclip_dist.data.synthetic import generate_vindr_dataset
    from mmclip_dist.model.tokenizer import build_text_encoder_folder, train_wordpiece_tokenizer
    from mmclip_dist.pipeline import training_reports

    cfg = load_config(
        DEBUG_CONFIG,
        [
            f"synthetic.num_patients={num_patients}", "synthetic.height=256", "synthetic.width=192",
            "synthetic.test_fraction=0.25", f"shards.image_size={list(IMAGE_SIZE)}", "shards.shard_max_samples=6",
            "shards.processes=1", "shards.salt=train-tests-salt",
            f"shards.input={root / 'vindr'}", f"shards.output={root / 'shards'}",
        ],
    )
    generate_vindr_dataset(Path(cfg.shards.input), cfg.synthetic)
    built = build_shards(cfg.shards, progress=False)
    train_shards = [Path(p) for p in list_shards(cfg.shards.output, split="train")]
    text_dir = root / "text_encoder"
    tokenizer = train_wordpiece_tokenizer(training_reports(train_shards), text_dir, vocab_size=300)
    build_text_encoder_folder(text_dir, tokenizer, hidden_size=32, layers=1, heads=2)
    return TrainAssets(Path(cfg.shards.output), text_dir, int(built.manifest["splits"]["train"]["samples"]))


def tiny_config(assets: TrainAssets, workdir: Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The debug config shrunk to toy size, every path under ``workdir``; ``overrides`` applied last."""
    base = [
        f"data.train_shards={assets.shards}", f"data.eval_shards={assets.shards}",
        f"data.image_size={list(IMAGE_SIZE)}", "data.max_rois=2", "data.max_text_len=32", "data.shuffle_buffer=8",
        "data.loader_workers=0",
        f"model.text_encoder={assets.text_encoder}", "model.backbone=test_resnet", "model.embed_dim=16", "model.roi_output_size=2",
        "model.roi_match_dim=16", "model.roi_match_heads=2",
        "train.num_workers=2", "train.cpus_per_worker=1", "train.micro_batch=2", "train.global_batch=8",
        "train.max_steps=4", "train.warmup_steps=1", "train.checkpoint_every=2", "train.keep_checkpoints=2",
        "train.max_failures=0", f"train.storage_path={workdir / 'runs'}", f"train.export_dir={workdir / 'model'}",
        "train.run_name=tiny", f"tracking.tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
        "tracking.experiment=train-tests",
    ]
    return load_config(DEBUG_CONFIG, [*base, *overrides])


def metric_steps(tracking_uri: str, run_id: str, key: str = "loss") -> list[int]:
    """Steps of every logged value of ``key`` in the order MLflow stored them (by timestamp)."""
    history: list[mlflow.entities.Metric] = MlflowClient(tracking_uri).get_metric_history(run_id, key)
    return [m.step for m in sorted(history, key=lambda m: (m.timestamp, m.step))]


def runs_of(tracking_uri: str, experiment: str) -> list[Any]:
    """Every MLflow run of ``experiment``."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def cli_command(config_file: Path, resume: bool = False) -> list[str]:
    """``mmclip-dist train`` as a subprocess argv (the driver needs its own interpreter: Ray's loopback
    switch must be set before ``import ray``, and this pytest process may have imported ray already)."""
    return [sys.executable, "-m", "mmclip_dist.cli.main", "train", "--config", str(config_file),
            *(["--resume"] if resume else [])]


def start_train(
    cfg: Config, workdir: Path, env: dict[str, str], *, name: str = "train", resume: bool = False
) -> tuple[subprocess.Popen, Path]:
    """Start the training CLI on ``cfg`` with ``env`` added; its output goes to ``workdir/<name>.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / f"{name}.yaml"
    config_file.write_text(dump_config(cfg))
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cli_command(config_file, resume), cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
        )
    return proc, log_path


def finish_train(proc: subprocess.Popen, log_path: Path, timeout: float) -> str:
    """Wait for a started training CLI; assert it succeeded; return its output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"training did not finish in {timeout:.0f}s:\n{log_tail(log_path)}") from None
    assert proc.returncode == 0, f"training exited with {proc.returncode}:\n{log_tail(log_path)}"
    return log_path.read_text(errors="replace")


def run_train(cfg: Config, workdir: Path, env: dict[str, str], *, name: str = "train", resume: bool = False,
              timeout: float = 240) -> str:
    """Run the training CLI to completion; returns its output."""
    proc, log_path = start_train(cfg, workdir, env, name=name, resume=resume)
    return finish_train(proc, log_path, timeout)


def log_tail(path: Path, chars: int = 6000) -> str:
    return Path(path).read_text(errors="replace")[-chars:]


def wait_for(predicate: Callable[[], Any], what: str, timeout: float, proc: subprocess.Popen | None = None,
             log_path: Path | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` (and the driver log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {what}:\n{log_tail(log_path)}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (
        f":\n{log_tail(log_path)}" if log_path else ""))


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Checkpoint folders Ray Train left in a local run folder, oldest first."""
    return sorted(p for p in Path(run_dir).glob("checkpoint_*") if p.is_dir())


def state_dict_of(folder: str | Path) -> dict[str, Any]:
    """Weights of an exported model folder, loaded through ``MMCLIP.from_pretrained``."""
    from mmclip_dist.model import MMCLIP

    return MMCLIP.from_pretrained(folder).state_dict()


def deepspeed_fp32_weights(checkpoint: Path) -> dict[str, Any]:
    """Consolidated fp32 weights of a reported checkpoint's DeepSpeed shards (what a restore would load)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from mmclip_dist.train.state import DEEPSPEED_TAG

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=DEEPSPEED_TAG)
