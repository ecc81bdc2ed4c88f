"""``mmclip-dist shards build|verify``: turn a dataset into WebDataset shards, or check written shards."""

from __future__ import annotations

import argparse
import os
import sys

from mmclip_dist.cli.common import add_config_args, config_from_args
from mmclip_dist.config import strip_url_credentials


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("shards", help="build WebDataset shards from a dataset, or verify them")
    actions = parser.add_subparsers(dest="shards_command", required=True, metavar="ACTION")

    build = actions.add_parser("build", help="DICOMs + CSVs -> shards, manifest.json, rejects.jsonl")
    add_config_args(build)
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=run_build)

    verify = actions.add_parser("verify", help="recompute sha256, sizes and sample counts of written shards")
    verify.add_argument("--output", required=True, help="output folder or s3://bucket/prefix of a build")
    verify.add_argument("--endpoint", default=None, help="S3 endpoint URL (default: boto3's)")
    verify.set_defaults(func=run_verify)


def run_build(args: argparse.Namespace) -> int:
    from mmclip_dist.data.build.adapters import AdapterError
    from mmclip_dist.data.build.builder import build_shards
    from mmclip_dist.data.build.deid import SaltError

    cfg = config_from_args(args).shards
    if cfg.output.startswith("s3://"):
        from mmclip_dist.train.input_checks import check_reachable

        check_reachable(
            cfg.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL", ""), "the S3 endpoint (shards.s3_endpoint)"
        )
    try:
        result = build_shards(cfg, progress=not args.no_progress)
    except (AdapterError, SaltError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    manifest = result.manifest
    print(f"output      {strip_url_credentials(result.output)}")
    print(f"labels      {manifest['label_rule']}")
    for split, info in manifest["splits"].items():
        labels = ", ".join(f"{name} {count}" for name, count in info["labels"].items())
        print(f"{split:11s} {info['samples']} samples in {len(info['shards'])} shards ({labels})")
    print(
        f"rejects     {result.lost} of {result.samples + result.lost} inputs lost "
        f"({result.reject_fraction:.1%}; limit {cfg.max_reject_fraction:.1%}); "
        f"{len(result.rejects) - result.lost} extra images unused"
    )
    for reason, count in result.rejects_by_reason().items():
        print(f"  {reason:30s} {count}")
    if result.reject_fraction > cfg.max_reject_fraction:
        print(
            f"error: {result.reject_fraction:.1%} of inputs rejected, more than shards.max_reject_fraction="
            f"{cfg.max_reject_fraction} (details: rejects.jsonl in the output)",
            file=sys.stderr,
        )
        return 1
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from mmclip_dist.data.build.shard_writer import ShardSink, verify_output
    from mmclip_dist.train.input_checks import check_reachable

    if args.output.startswith("s3://"):
        check_reachable(args.endpoint or os.environ.get("AWS_ENDPOINT_URL", ""), "the S3 endpoint (--endpoint)")
    problems = verify_output(ShardSink(args.output, args.endpoint, create=False))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(f"ok: {args.output}")
    return 1 if problems else 0
