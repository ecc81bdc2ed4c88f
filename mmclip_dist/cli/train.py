"""``mmclip-dist train``: pretraining on the connected Ray cluster (or a local one)."""

from __future__ import annotations

import argparse

from mmclip_dist.cli.common import add_config_args, config_from_args
from mmclip_dist.train.ray_env import connect_ray


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="pretrain MM-CLIP with Ray Train + DeepSpeed")
    add_config_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue run train.run_name from its latest checkpoint")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.resume:
        cfg.train.resume = True
    connect_ray(
        cfg.train.max_workers * cfg.train.cpus_per_worker
    )  # first: Ray must be configured before anything imports it
    from mmclip_dist.train.trainer import run_training

    result = run_training(cfg)
    print(f"MLflow run {result.mlflow_run_id} ({result.tracking_uri}); model exported to {result.export_dir}")
    return 0
