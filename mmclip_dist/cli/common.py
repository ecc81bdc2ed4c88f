"""Arguments shared by the sub-commands that read the config tree."""

from __future__ import annotations

import argparse

from mmclip_dist.config import Config, load_config


def add_config_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--config FILE`` plus trailing ``section.key=value`` overrides."""
    parser.add_argument("--config", default=default, help="YAML file under launch/configs/ (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="dotted config overrides")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)
