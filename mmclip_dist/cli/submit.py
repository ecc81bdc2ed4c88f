"""``mmclip-dist submit``: run ``mmclip-dist train`` as a Ray job on a remote cluster and follow it.

Argument parsing and printing only; the Ray Jobs logic (entrypoint, runtime_env, auth token,
submission, following) is ``mmclip_dist.train.job_submission``. The config and overrides are validated
here first: a typo fails in a second, not after the cluster has pulled images and started workers.
``--env NAME`` forwards a local variable by name; values are never printed, only names; a job that would
carry a secret is refused (``job_submission.check_no_secrets``).
"""

from __future__ import annotations

import argparse
import os
import sys

from mmclip_dist.cli.common import add_config_args
from mmclip_dist.config import load_config
from mmclip_dist.train.job_submission import (
    build_entrypoint,
    build_runtime_env,
    check_no_secrets,
    config_path_for_job,
    follow_job,
    job_client,
    parse_env,
    resolve_auth_token,
    submit_job,
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("submit", help="run `mmclip-dist train` as a job on a Ray cluster and follow its logs")
    add_config_args(parser)
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_DASHBOARD_ADDRESS", "http://127.0.0.1:8265"),
        help="Ray dashboard URL (default: $RAY_DASHBOARD_ADDRESS or %(default)s)",
    )
    parser.add_argument("--resume", action="store_true", help="continue train.run_name from its latest checkpoint")
    parser.add_argument("--no-follow", action="store_true", help="print the submission id and return at once")
    parser.add_argument(
        "--working-dir",
        default=".",
        help="folder uploaded as the job's working_dir (default: %(default)s); '' runs the code baked into the image",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="environment variable for the job: NAME=VALUE, or NAME to forward the local value (repeatable)",
    )
    parser.add_argument(
        "--auth-token",
        default=None,
        help="Ray auth token (prefer $RAY_AUTH_TOKEN: a command-line value is visible to other local users)",
    )
    parser.add_argument("--submission-id", default=None, help="job id to use (default: Ray picks one)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Validate before contacting the cluster; ConfigError names the file and the bad key.
    cfg = load_config(args.config, args.overrides)
    job_config = config_path_for_job(args.config, args.working_dir) if args.config else None
    entrypoint = build_entrypoint(job_config, args.overrides, args.resume)
    env_vars = parse_env(args.env, os.environ)
    check_no_secrets(cfg, env_vars)
    token = resolve_auth_token(args.auth_token, os.environ)

    client = job_client(args.address, token)
    job_id = submit_job(client, entrypoint, build_runtime_env(args.working_dir, env_vars), args.submission_id)
    # Names only: values may be credentials, and job logs are often pasted into issues.
    print(f"[submit] job {job_id} on {args.address}\n[submit] entrypoint: {entrypoint}")
    print(f"[submit] env: {', '.join(sorted(env_vars)) or 'none'}")
    if args.no_follow:
        print(f"[submit] not following; logs: ray job logs --address {args.address} --follow {job_id}")
        return 0
    try:
        status = follow_job(client, job_id, write=_write_stdout, warn=lambda m: print(f"[submit] {m}", file=sys.stderr))
    except KeyboardInterrupt:
        print(f"\n[submit] stopped following; job {job_id} keeps running (ray job stop {job_id})", file=sys.stderr)
        return 130
    print(f"[submit] job {job_id} finished: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _write_stdout(chunk: str) -> None:
    sys.stdout.write(chunk)
    sys.stdout.flush()
