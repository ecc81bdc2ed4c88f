"""``mmclip-dist ablation``: pretrain the loss variants of the paper's Table 3, evaluate each, compare them."""

from __future__ import annotations

import argparse

from mmclip_dist.cli.common import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "ablation",
        help="pretrain global-CLIP / +RoI / full variants, evaluate each, print a compare table",
        description=(
            "Each variant is a full `train` run with the given config plus its loss-weight overrides; its "
            "linear-probe / zero-shot results (eval.task on data.eval_shards) are logged into that run."
        ),
    )
    parser.add_argument("--modes", default="linear,zeroshot", help="comma-separated eval modes (default: %(default)s)")
    parser.add_argument("--variants", default="", help="comma-separated subset of clip,clip+roi,full (default: all)")
    add_config_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmclip_dist.train.ray_env import connect_ray

    cfg = config_from_args(args)
    connect_ray(
        cfg.train.max_workers * cfg.train.cpus_per_worker
    )  # first: Ray must be configured before anything imports it
    from mmclip_dist.eval.compare import print_comparison
    from mmclip_dist.workflows.ablation import run_ablation, select_variants

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    try:
        variants = select_variants([v.strip() for v in args.variants.split(",") if v.strip()])
    except ValueError as err:
        raise SystemExit(f"mmclip-dist ablation: {err}") from err
    result = run_ablation(cfg, modes, variants)
    print(f"\n=== ablation: {cfg.eval.task}, modes {', '.join(modes)} ({result.tracking_uri}) ===")
    print_comparison(result.comparison)
    print("runs: " + " ".join(f"{r.variant.name}={r.run_id}" for r in result.runs))
    print(
        f"again later: mmclip-dist compare {' '.join(r.run_id for r in result.runs)} --tracking-uri {result.tracking_uri}"
    )
    return 0
