"""``mmclip-dist``: one entry point, one module per sub-command.

Each sub-command module exposes ``register(subparsers)`` which adds its parser and sets
``func(args) -> int``; this file only wires them together, so adding a command never edits another.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules under mmclip_dist.cli that each provide a sub-command; imported lazily so `--help`
# stays fast and a heavy import (Ray, DeepSpeed) only happens for the command that needs it.
COMMANDS = ("config", "debug", "shards", "train", "eval", "compare", "submit", "synthetic", "ablation", "preflight")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmclip-dist", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"mmclip_dist.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"mmclip_dist.cli.{name}":
                continue  # command not built in this checkout
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before anything imports Ray: without it Ray swaps a 127.0.0.1 node IP for the host's routable
    # address and binds its servers on all interfaces (docs/operations.md). No effect on cluster
    # nodes, whose IPs are not loopback.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
