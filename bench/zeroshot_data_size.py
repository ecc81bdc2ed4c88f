"""Debug-mode zero-shot AUC vs the number of synthetic training patients, on a separate validation set.

Each setting runs the whole debug pipeline (``mmclip_dist.workflows.debug_run.run_debug_pipeline``: synthetic DICOMs,
shards, tokenizer + BERT, Ray Train + DeepSpeed on 2 workers, export) with its own synthetic seed, then
scores the exported model zero-shot on a validation set generated once from another seed (every breast of
it unseen, none of it the debug run's held-out split). This is how ``launch/configs/debug.yaml`` was
chosen without looking at the held-out split that ``./launch/debug.sh`` reports.

    .venv/bin/python bench/zeroshot_data_size.py [--patients 160 640 --seed 3 --val-patients 200 --workdir DIR]
        [section.key=value ...]
"""

from __future__ import annotations

import os

# Ray must keep every server on 127.0.0.1 (mmclip_dist.train.ray_env); set before anything imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def build_validation(workdir: Path, seed: int, patients: int, overrides: list[str]) -> str:
    """Shards of a synthetic set whose breasts all land in the test split; returns the shard folder."""
    from mmclip_dist.config import load_config
    from mmclip_dist.data.build.builder import build_shards
    from mmclip_dist.data.synthetic import generate_vindr_dataset
    from mmclip_dist.workflows.debug_run import prepare_debug_config

    cfg = load_config(
        REPO / "launch/configs/debug.yaml",
        [
            *overrides,
            f"synthetic.seed={seed}",
            f"synthetic.num_patients={patients}",
            "synthetic.test_fraction=0.95",
        ],
    )
    cfg = prepare_debug_config(cfg, workdir)
    if not (workdir / "shards" / "manifest.json").exists():
        generate_vindr_dataset(Path(cfg.shards.input), cfg.synthetic)
        build_shards(cfg.shards, progress=False)
    return cfg.shards.output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, nargs="+", default=[160, 640], help="synthetic patients per run")
    parser.add_argument("--seed", type=int, default=3, help="synthetic seed of the training runs (not the debug 0)")
    parser.add_argument("--val-seed", type=int, default=7)
    parser.add_argument("--val-patients", type=int, default=200)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every run, e.g. train.max_steps=200")
    args = parser.parse_args()

    from mmclip_dist.config import load_config
    from mmclip_dist.data.stream.loader import list_shards, make_eval_loader
    from mmclip_dist.eval.runner import load_model
    from mmclip_dist.eval.zeroshot import zero_shot_malignancy
    from mmclip_dist.workflows.debug_run import run_debug_pipeline

    work = Path(args.workdir or tempfile.mkdtemp(prefix="zeroshot-size-"))
    val_shards = list_shards(
        build_validation(work / "validation", args.val_seed, args.val_patients, args.overrides), split="test"
    )
    rows = []
    for patients in args.patients:
        cfg = load_config(
            REPO / "launch/configs/debug.yaml",
            [
                *args.overrides,
                f"synthetic.seed={args.seed}",
                f"synthetic.num_patients={patients}",
            ],
        )
        started = time.perf_counter()
        summary = run_debug_pipeline(cfg, work / f"patients{patients}", log=lambda line: print(line, flush=True))
        seconds = time.perf_counter() - started
        model, tokenizer, _ = load_model(str(work / f"patients{patients}" / "model"), summary.tracking_uri)
        batches = make_eval_loader(val_shards, cfg.data, tokenizer, cfg.eval.batch_size)
        val = zero_shot_malignancy(model, tokenizer, batches, cfg.data.max_text_len, cfg.eval.bootstrap).metrics
        rows.append((patients, summary.samples.get("train", 0), val, summary.zero_shot["auc"], seconds))

    print(
        f"\nvalidation: seed {args.val_seed}, {int(rows[0][2]['n_breasts'])} breasts; training seed {args.seed}; "
        f"overrides {args.overrides or 'none'}"
    )
    print("| patients | train breasts | validation AUC (95% CI) | own held-out AUC | run |")
    print("| --- | --- | --- | --- | --- |")
    for patients, train, val, own, seconds in rows:
        print(
            f"| {patients} | {train} | {val['auc']:.3f} ({val['auc_ci_low']:.3f}-{val['auc_ci_high']:.3f}) "
            f"| {own:.3f} | {seconds:.0f} s |"
        )


if __name__ == "__main__":
    main()
