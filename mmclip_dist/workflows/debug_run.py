"""The single-node debug pipeline: synthetic DICOMs → shards → text encoder → Ray/DeepSpeed training
→ zero-shot evaluation, all logged to one MLflow run.

Every stage is the production code path (real DICOM decoding, WebDataset shards, Ray Train,
DeepSpeed, MLflow); only the data and the model sizes are small.
"""

from __future__ import annotations

import json
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmclip_dist.config import Config, strip_url_credentials


@dataclass
class DebugSummary:
    """What ``mmclip-dist debug`` prints at the end."""

    workdir: Path
    samples: dict[str, int]
    shards: int
    rejects: int
    steps: int
    final_losses: dict[str, float]
    zero_shot: dict[str, float]
    mlflow_run_id: str
    tracking_uri: str
    seconds: dict[str, float] = field(default_factory=dict)
    cue_aucs: dict[str, float] = field(default_factory=dict)  # synthetic data's scalar cues alone (~0.5: none)

    def ui_command(self) -> str:
        """A command that works as printed from any folder: the store is an absolute sqlite path, and ``mlflow``
        is named by the path of this interpreter's copy (the virtualenv need not be activated)."""
        local = Path(sys.executable).parent / "mlflow"
        mlflow = str(local) if local.is_file() else "mlflow"
        return (
            f"{mlflow} ui --backend-store-uri {strip_url_credentials(self.tracking_uri)} --host 127.0.0.1 --port 5000"
        )


def training_reports(shard_paths: list[Path]) -> list[str]:
    """Every report text in the given shards (the corpus the debug tokenizer is trained on)."""
    texts: list[str] = []
    for path in shard_paths:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    handle = tar.extractfile(member)
                    if handle is None:
                        raise ValueError(f"{path}: {member.name} is not a regular file")
                    meta = json.load(handle)
                    texts.extend(view["report"] for view in meta["views"].values())
    return texts


def prepare_debug_config(cfg: Config, workdir: Path) -> Config:
    """Point every path of the config into ``workdir`` (data, shards, model, runs, MLflow store)."""
    cfg = cfg.model_copy(deep=True)
    workdir = workdir.resolve()
    cfg.shards.input = str(workdir / "vindr")
    cfg.shards.output = str(workdir / "shards")
    cfg.data.train_shards = cfg.data.eval_shards = cfg.shards.output
    cfg.model.text_encoder = str(workdir / "text_encoder")
    cfg.model.tokenizer = ""
    cfg.train.storage_path = str(workdir / "runs")
    cfg.train.export_dir = str(workdir / "model")
    if not cfg.tracking.tracking_uri:
        cfg.tracking.tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    if not cfg.shards.salt:
        cfg.shards.salt = "synthetic-debug-salt"  # synthetic data holds no PHI; real builds need a secret salt
    return cfg


def run_debug_pipeline(cfg: Config, workdir: Path, *, log: Any = print) -> DebugSummary:
    """Run every stage; ``log`` receives one line per stage."""
    from mmclip_dist.data.build.builder import build_shards
    from mmclip_dist.data.stream.loader import list_shards, make_eval_loader
    from mmclip_dist.data.synthetic import format_cue_aucs, generate_vindr_dataset
    from mmclip_dist.eval.zeroshot import zero_shot_malignancy
    from mmclip_dist.model import MMCLIP
    from mmclip_dist.model.text_pretrain import pretrain_mlm
    from mmclip_dist.model.tokenizer import build_text_encoder_folder, train_wordpiece_tokenizer
    from mmclip_dist.tracking import RunLogger
    from mmclip_dist.train.trainer import run_training

    cfg = prepare_debug_config(cfg, workdir)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(now - clock, 1)
        clock = now

    synthetic = generate_vindr_dataset(Path(cfg.shards.input), cfg.synthetic)
    lap("synthetic")
    log(f"[1/5] synthetic VinDr-format dataset: {synthetic.patients} patients, {synthetic.images} DICOMs")
    log("      AUC of each scalar cue alone (no shortcut: ~0.5): " + format_cue_aucs(synthetic.cue_aucs))

    built = build_shards(cfg.shards, progress=False)
    lap("shards")
    log(f"[2/5] shards: {built.samples} samples in {len(built.shards)} shards, {len(built.rejects)} rejects")

    train_shards = [Path(p) for p in list_shards(cfg.data.train_shards, split=cfg.data.train_split)]
    reports = training_reports(train_shards)
    syn = cfg.synthetic
    tokenizer = train_wordpiece_tokenizer(reports, Path(cfg.model.text_encoder), vocab_size=syn.text_vocab)
    build_text_encoder_folder(
        Path(cfg.model.text_encoder),
        tokenizer,
        hidden_size=syn.text_hidden,
        layers=syn.text_layers,
        heads=max(1, syn.text_hidden // 32),
    )
    mlm_loss = pretrain_mlm(cfg.model.text_encoder, reports, steps=syn.mlm_steps) if syn.mlm_steps else float("nan")
    lap("text_encoder")
    pretrained = f"MLM-pretrained on the train reports (loss {mlm_loss:.3f})" if syn.mlm_steps else "random init"
    log(
        f"[3/5] WordPiece tokenizer ({len(tokenizer)} tokens) and a {syn.text_layers}-layer BERT "
        f"({pretrained}) in {cfg.model.text_encoder}"
    )

    result = run_training(cfg, progress=lambda line: log(f"      {line}"))
    lap("train")
    log(
        f"[4/5] trained {cfg.train.max_steps} steps on {cfg.train.num_workers} Ray workers (DeepSpeed ZeRO-{cfg.train.zero_stage})"
    )

    model = MMCLIP.from_pretrained(result.export_dir)
    eval_batches = make_eval_loader(
        list_shards(cfg.data.eval_shards, split=cfg.data.eval_split), cfg.data, tokenizer, cfg.eval.batch_size
    )
    zero_shot = zero_shot_malignancy(model, tokenizer, eval_batches, cfg.data.max_text_len, cfg.eval.bootstrap)
    logger = RunLogger(result.tracking_uri, result.mlflow_run_id, enabled=True, system_metrics=False)
    logger.log_metrics({f"zeroshot_malignancy_{k}": v for k, v in zero_shot.metrics.items()}, step=cfg.train.max_steps)
    logger.log_metrics({f"synthetic_cue_auc_{k}": v for k, v in synthetic.cue_aucs.items()}, step=cfg.train.max_steps)
    lap("eval")
    log(f"[5/5] zero-shot malignancy on the held-out split: AUC {zero_shot.metrics['auc']:.3f}")

    losses = {k: v for k, v in result.metrics.items() if k.startswith("loss")}
    return DebugSummary(
        workdir=workdir,
        samples={k: v["samples"] for k, v in built.manifest["splits"].items()},
        shards=len(built.shards),
        rejects=len(built.rejects),
        steps=cfg.train.max_steps,
        final_losses=losses,
        zero_shot=zero_shot.metrics,
        mlflow_run_id=result.mlflow_run_id,
        tracking_uri=result.tracking_uri,
        seconds=seconds,
        cue_aucs=synthetic.cue_aucs,
    )
