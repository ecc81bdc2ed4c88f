"""``mmclip-dist eval``: zero-shot, linear-probe or fine-tune evaluation of a pretrained model on shards."""

from __future__ import annotations

import argparse

from mmclip_dist.cli.common import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="score a downstream task (malignancy, mass, calcification, density, birads) and log it to MLflow",
        description=(
            "Evaluate a model (folder, runs:/<run_id>/model, or an MLflow run id) on the test split of --shards; "
            "linear / finetune train on the train split (validation patients carved from it) and also run the "
            "baselines of eval.baselines through the same code."
        ),
    )
    parser.add_argument("--model", required=True, help="model folder, runs:/<run_id>/model, or an MLflow run id")
    parser.add_argument("--shards", default=None, help="shard folder / s3:// prefix (default: data.eval_shards)")
    parser.add_argument(
        "--task", choices=("malignancy", "mass", "calcification", "density", "birads"), help="eval.task"
    )
    parser.add_argument("--mode", choices=("zeroshot", "linear", "finetune"), help="eval.mode")
    parser.add_argument("--log-to", metavar="RUN_ID", help="log into this MLflow run instead of a new eval run")
    parser.add_argument("--no-mlflow", action="store_true", help="print the table only, log nothing")
    add_config_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmclip_dist.tracking import resolve_tracking_uri
    from mmclip_dist.train.input_checks import check_shards, check_tracking

    cfg = config_from_args(args)
    if args.task:
        cfg.eval.task = args.task
    if args.mode:
        cfg.eval.mode = args.mode
    # Seconds, before a model is loaded or an MLflow run created.
    check_shards(
        args.shards or cfg.data.eval_shards, cfg.data.s3_endpoint, cfg.data.eval_split, "--shards / data.eval_shards"
    )
    if not args.no_mlflow:
        check_tracking(resolve_tracking_uri(cfg.tracking))
    # torch and mlflow load here, after the quick checks
    from mmclip_dist.eval.result_mlflow import log_result
    from mmclip_dist.eval.result_table import print_result
    from mmclip_dist.eval.runner import evaluate

    try:
        result = evaluate(cfg, args.model, args.shards)
    except (FileNotFoundError, ValueError, MemoryError) as err:
        raise SystemExit(f"mmclip-dist eval: {err}") from err
    print_result(result)
    if not args.no_mlflow:
        run_id = log_result(result, cfg, args.model, args.shards, args.log_to)
        print(
            f"MLflow run {run_id}: metrics {result.mode}/{result.task.name}/<method>/<metric>, "
            f"figures under eval/{result.mode}/{result.task.name}/"
        )
    print(f"done in {result.seconds:.0f} s")
    return 0
