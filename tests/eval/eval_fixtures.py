"""Builders for the end-to-end evaluation tests: synthetic shards, a text encoder and a pretrained MM-CLIP.

Everything is the production path (synthetic DICOMs -> ``build_shards`` -> WordPiece + tiny BERT ->
``mmclip-dist train`` through Ray Train + DeepSpeed -> exported model folder), at a size that trains in
about a minute on two CPU cores. Run as a script to measure the probe margin over several seeds::

    python tests/eval/eval_fixtures.py /tmp/margin 0 1 2 [section.key=value ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mmclip_dist.config import Config, dump_config, load_config

REPO = Path(__file__).resolve().parents[2]
DEBUG_CONFIG = REPO / "launch" / "configs" / "debug.yaml"


@dataclass(frozen=True)
class Pretrained:
    """Shards (train + test splits), the exported model and the MLflow run that trained it."""

    shards: Path
    text_encoder: Path
    model: Path
    tracking_uri: str
    run_id: str
    config: Config


def eval_config(root: Path, seed: int = 0, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The debug config at test size, every path under ``root``."""
    base = [
        "synthetic.num_patients=96", "synthetic.height=384", "synthetic.width=288", "synthetic.test_fraction=0.34",
        f"synthetic.seed={seed}", "synthetic.text_hidden=64", "synthetic.text_layers=1", "synthetic.text_vocab=400",
        "synthetic.mlm_steps=0",
        "shards.image_size=[160, 96]", "shards.shard_max_samples=16", "shards.processes=1",
        "shards.salt=eval-tests-salt", f"shards.input={root / 'vindr'}", f"shards.output={root / 'shards'}",
        f"data.train_shards={root / 'shards'}", f"data.eval_shards={root / 'shards'}", "data.image_size=[160, 96]",
        "data.max_text_len=80", "data.shuffle_buffer=64", "data.loader_workers=0",
        f"model.text_encoder={root / 'text_encoder'}", "model.backbone=resnet10t",  # the margins were measured with it
        "train.num_workers=1", "train.cpus_per_worker=1", "train.micro_batch=16", "train.global_batch=32",
        "train.max_steps=50", "train.warmup_steps=3", "train.checkpoint_every=0", "train.max_failures=0",
        f"train.seed={seed}", f"train.storage_path={root / 'runs'}", f"train.export_dir={root / 'model'}",
        "train.run_name=eval-e2e", f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        "tracking.experiment=eval-tests", "eval.batch_size=32", "eval.bootstrap=200", f"eval.seed={seed}",
    ]  # fmt: skip
    return load_config(DEBUG_CONFIG, [*base, *overrides])


def build_data(cfg: Config) -> None:
    """Synthetic DICOMs -> shards -> WordPiece tokenizer + tiny BERT (the debug pipeline's stages 1-3)."""
    from mmclip_dist.data.build import build_shards
    from mmclip_dist.data.loader import list_shards
    from mmclip_dist.data.synthetic import generate_vindr_dataset
    from mmclip_dist.model.tokenizer import build_text_encoder_folder, train_wordpiece_tokenizer
    from mmclip_dist.pipeline import training_reports

    generate_vindr_dataset(Path(cfg.shards.input), cfg.synthetic)
    build_shards(cfg.shards, progress=False)
    reports = training_reports([Path(p) for p in list_shards(cfg.shards.output, split="train")])
    syn = cfg.synthetic
    tokenizer = train_wordpiece_tokenizer(reports, Path(cfg.model.text_encoder), vocab_size=syn.text_vocab)
    build_text_encoder_folder(
        Path(cfg.model.text_encoder), tokenizer, hidden_size=syn.text_hidden, layers=syn.text_layers, heads=2
    )


def train(cfg: Config, root: Path, timeout: float = 600) -> str:
    """``mmclip-dist train`` in a subprocess (Ray's loopback switch must precede ``import ray``); its run id."""
    from mlflow.tracking import MlflowClient

    config_file = root / "train.yaml"
    config_file.write_text(dump_config(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mmclip_dist.cli.main", "train", "--config", str(config_file)],
        cwd=root, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"training failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    client = MlflowClient(cfg.tracking.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0].info.run_id


def pretrain(root: Path, seed: int = 0, overrides: list[str] | tuple[str, ...] = ()) -> Pretrained:
    """Build the data and pretrain MM-CLIP under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = eval_config(root, seed, overrides)
    build_data(cfg)
    run_id = train(cfg, root)
    return Pretrained(root / "shards", root / "text_encoder", root / "model", cfg.tracking.tracking_uri, run_id, cfg)


if __name__ == "__main__":  # margin measurement: python tests/eval/eval_fixtures.py OUT SEED...
    import time

    from mmclip_dist.eval.runner import evaluate

    out = Path(sys.argv[1])
    seeds = [int(a) for a in sys.argv[2:] if "=" not in a]
    extra = [a for a in sys.argv[2:] if "=" in a]  # config overrides, e.g. train.max_steps=60
    for seed in seeds:
        started = time.perf_counter()
        assets = pretrain(out / f"seed{seed}", seed, extra)
        built = time.perf_counter() - started
        cfg = assets.config.model_copy(deep=True)
        cfg.eval.baselines = ["random"]
        result = evaluate(cfg, str(assets.model), str(assets.shards), log_fn=lambda _: None, figures=False)
        auc = {m: p.metrics["breast_roc_auc"] for m, p in result.methods.items()}
        lo = {m: p.metrics["breast_roc_auc_ci_low"] for m, p in result.methods.items()}
        print(f"seed {seed}: breast AUC {auc} (CI low {lo}); pretrain {built:.0f} s, eval {result.seconds:.0f} s", flush=True)
