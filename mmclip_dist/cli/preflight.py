"""``mmclip-dist preflight``: check a config's data, text encoder, storage, MLflow and one device step in
under a minute, without starting training (checks in ``mmclip_dist/preflight.py``)."""

from __future__ import annotations

import argparse

from mmclip_dist.cli.common import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("preflight", help="check everything a training run needs, without training")
    add_config_args(parser)
    parser.add_argument(
        "--on-workers",
        action="store_true",
        help="run the device step inside each Ray worker of the connected cluster (RAY_ADDRESS), not here",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.on_workers:
        from mmclip_dist.config import ConfigError, load_config
        from mmclip_dist.train.ray_env import connect_ray

        try:
            cfg = load_config(args.config, args.overrides)
        except (ConfigError, OSError):
            cfg = None  # the config check below reports it as its one line
        if cfg is not None:
            connect_ray(cfg.train.num_workers * cfg.train.cpus_per_worker)
    from mmclip_dist.preflight import failures, format_table, run_preflight

    results = run_preflight(args.config, args.overrides, on_workers=args.on_workers)
    print(format_table(results), flush=True)
    failed = failures(results)
    for result in failed:
        print(result.line(), flush=True)
    if failed:
        return 1
    print("preflight ok")
    return 0
