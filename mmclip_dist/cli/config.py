"""``mmclip-dist config``: print the resolved config, or every field with its description."""

from __future__ import annotations

import argparse

from mmclip_dist.cli.common import add_config_args, config_from_args
from mmclip_dist.config import field_docs, redacted_dump


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="print the resolved config, secrets redacted (or --docs: every field)")
    add_config_args(parser)
    parser.add_argument("--docs", action="store_true", help="list every field, its default and description")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.docs:
        for name, description, default in field_docs():
            print(f"{name:32s} {default!r:>36s}  {description}")
        return 0
    print(redacted_dump(config_from_args(args)), end="")  # a printed config ends up in logs: no secrets
    return 0
