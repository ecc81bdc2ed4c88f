"""``mmclip-dist debug``: the whole pipeline on one CPU machine, on synthetic data, in minutes."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from mmclip_dist.cli.common import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("debug", help="synthetic data -> shards -> Ray/DeepSpeed training -> zero-shot eval")
    add_config_args(parser, default="launch/configs/debug.yaml")
    parser.add_argument("--workdir", default="runs/debug", help="folder for every artefact (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="reuse --workdir instead of starting from an empty one")
    parser.add_argument("--verbose", action="store_true", help="keep third-party warnings of the driver and workers")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shutil

    from mmclip_dist.data.synthetic import format_cue_aucs
    from mmclip_dist.train.ray_env import connect_ray
    from mmclip_dist.workflows.debug_run import run_debug_pipeline

    if args.verbose:
        os.environ["MMCLIP_VERBOSE"] = "1"  # the workers inherit MMCLIP_* (train.loop.worker_env)
    else:
        warnings.filterwarnings("ignore")
    cfg = config_from_args(args)
    workdir = Path(args.workdir)
    if workdir.exists() and not args.keep:
        shutil.rmtree(workdir)  # a debug run is disposable; a stale run dir would otherwise be resumed
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    connect_ray(cfg.train.num_workers * cfg.train.cpus_per_worker)
    summary = run_debug_pipeline(cfg, workdir)
    elapsed = time.perf_counter() - started
    import ray

    ray.shutdown()  # worker log lines still in flight are printed now, not after the summary
    sys.stdout.flush()
    sys.stderr.flush()
    zs = summary.zero_shot
    print("\n=== mmclip-dist debug: summary ===")
    print(f"samples          {summary.samples}  in {summary.shards} shards ({summary.rejects} rejects)")
    print(f"steps            {summary.steps}")
    print("final losses     " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(summary.final_losses.items())))
    print(
        f"zero-shot AUC    {zs['auc']:.3f} (95% CI {zs['auc_ci_low']:.3f}-{zs['auc_ci_high']:.3f}), "
        f"accuracy {zs['accuracy']:.3f}, per-image AUC {zs['image_auc']:.3f}, {int(zs['n_breasts'])} held-out breasts"
    )
    print(
        f"cue AUCs         {format_cue_aucs(summary.cue_aucs)}  (each scalar cue alone; the zero-shot AUC must come from morphology)"
    )
    print(f"stage seconds    {summary.seconds}  (total {elapsed:.0f} s)")
    print(f"MLflow run       {summary.mlflow_run_id}")
    print(f"open the UI      {summary.ui_command()}")
    return 0
