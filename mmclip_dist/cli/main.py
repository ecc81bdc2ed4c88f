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


DEBUG_ENV = "MMCLIP_DEBUG"


def main(argv: list[str] | None = None) -> int:
    # Before anything imports Ray: without it Ray swaps a 127.0.0.1 node IP for the host's routable
    # address and binds its servers on all interfaces (docs/operations.md). No effect on cluster
    # nodes, whose IPs are not loopback.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line (overrides never start with --)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every failure ends in one line unless --debug asks for more
        if debug:
            raise
        print(f"error: {describe_error(err)}", file=sys.stderr)
        return 1


def describe_error(err: BaseException) -> str:
    """One line: what is wrong and what to do (expected errors), or the error's first line and how to see more."""
    hint = ""
    if _is_known(err):
        text = _first_line(err)
    elif isinstance(err, FileNotFoundError) and err.filename:
        text, hint = f"{err.filename}: no such file or folder", "check the path"
    elif isinstance(err, PermissionError) and err.filename:
        text, hint = f"{err.filename}: permission denied", "choose a path you can write, or fix its permissions"
    elif isinstance(err, IsADirectoryError | NotADirectoryError) and err.filename:
        text, hint = f"{err.filename}: {err.strerror}", "check the path"
    elif isinstance(err, ConnectionError) or _is_connection_error(err):
        text, hint = _first_line(err), "is the server running and the address right?"
    elif type(err).__name__ == "NoCredentialsError":
        text, hint = "no S3 credentials found", "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile)"
    elif _is_yaml_error(err):
        text, hint = f"not valid YAML: {' '.join(str(err).split())}", "fix the config file"
    else:
        text = f"{type(err).__name__}: {_first_line(err)}"
        hint = f"run with --debug (or {DEBUG_ENV}=1) for the traceback"
    return f"{text}; {hint}" if hint else text


def _first_line(err: BaseException) -> str:
    """The first line of the message; when it only announces what follows ("...error:"), the next one too."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def _is_yaml_error(err: BaseException) -> bool:
    import yaml

    return isinstance(err, yaml.YAMLError)


def _is_connection_error(err: BaseException) -> bool:
    """Connection failures of the libraries underneath (requests, urllib3, botocore) in the cause chain."""
    seen: BaseException | None = err
    while seen is not None:
        name = type(seen).__name__
        if isinstance(seen, ConnectionError) or name in (
            "EndpointConnectionError",
            "NewConnectionError",
            "MaxRetryError",
            "ConnectTimeoutError",
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# Errors whose message already says what is wrong (raised by this package on bad input). Matched by name so
# that reporting an error never imports torch or Ray (seconds on a busy machine).
KNOWN_ERRORS = frozenset({"ConfigError", "AdapterError", "SaltError", "DataSkipError", "UserError"})


def _is_known(err: BaseException) -> bool:
    return any(cls.__name__ in KNOWN_ERRORS and cls.__module__.startswith("mmclip_dist") for cls in type(err).__mro__)


if __name__ == "__main__":
    sys.exit(main())
