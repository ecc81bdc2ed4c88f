"""``mmclip-dist synthetic --out DIR``: write a synthetic VinDr-format dataset (debug mode, tests)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmclip_dist.cli.common import add_config_args, config_from_args
from mmclip_dist.data.synthetic import generate_vindr_dataset, summary_dict


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("synthetic", help="write a synthetic VinDr-Mammo-format DICOM dataset")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    add_config_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    summary = generate_vindr_dataset(args.out, cfg.synthetic)
    print(json.dumps(summary_dict(summary), indent=1))
    return 0
