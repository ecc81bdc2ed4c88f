"""``mmclip-dist submit``: run ``mmclip-dist train`` as a Ray job on a remote cluster and follow it.

The job is sent to the cluster's dashboard (Ray Jobs API) with the local repository as its
``working_dir``, so the code and ``launch/configs`` the driver sees are exactly the local ones.
The config and overrides are validated here first: a typo fails in a second, not after the
cluster has pulled images and started workers.

Secrets: the entrypoint, runtime_env and metadata of a Ray job are shown to anyone who can read the
dashboard, so nothing secret is ever sent: a config field marked ``Secret`` (the id salt) or a
``user:password@`` in a ``Url`` field, and a credential variable (``config.secret_env_names``) or a
URL with credentials in ``--env``, are refused before submission. Credentials come from the cluster's
own Secret (the pods' environment). ``--env NAME`` forwards a local variable by name; values are never
printed, only names. Ray token authentication (``RAY_AUTH_MODE=token``, Ray >= 2.52): the token is
taken from ``--auth-token``, else ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``,
else Ray's default ``~/.ray/auth_token`` when ``RAY_AUTH_MODE=token``, and sent as a bearer
token; with ``RAY_AUTH_MODE=disabled`` no token is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from mmclip_dist.cli.common import add_config_args
from mmclip_dist.config import Config, load_config, secret_env_names, secret_fields, url_credentials

# Directories never uploaded with the working_dir: environments, run outputs, data. Ray also
# honours .gitignore, but these are large enough to hit the 500 MiB upload limit if ignored.
WORKING_DIR_EXCLUDES = [".git", ".venv", "runs", "mlruns", "shards", "**/__pycache__", "*.egg-info"]


class SubmitError(RuntimeError):
    """A submission that cannot go ahead (bad arguments, missing token, unreadable file)."""


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


def resolve_auth_token(explicit: str | None, env: Mapping[str, str], home: Path | None = None) -> str | None:
    """The Ray auth token to send, following Ray's own precedence; None when auth is off or unset."""
    mode = env.get("RAY_AUTH_MODE", "").strip().lower()
    if mode == "disabled":
        return None
    if mode not in ("", "token"):
        raise SubmitError(f"RAY_AUTH_MODE={mode!r} is not supported here: use 'token' or 'disabled'")
    if explicit:
        return explicit.strip()
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return env["RAY_AUTH_TOKEN"].strip()
    if env.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(env["RAY_AUTH_TOKEN_PATH"])
        # Like Ray: a token file that is named but unusable is a misconfiguration, not "no auth".
        try:
            token = path.read_text().strip()
        except OSError as err:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the token file ({err})") from err
        if not token:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path}: the token file is empty")
        return token
    if mode == "token":
        default = (home if home is not None else Path.home()) / ".ray" / "auth_token"
        if default.is_file() and default.read_text().strip():
            return default.read_text().strip()
        raise SubmitError(
            "RAY_AUTH_MODE=token but no token found: pass --auth-token, set RAY_AUTH_TOKEN or "
            f"RAY_AUTH_TOKEN_PATH, or write it to {default}"
        )
    return None


def parse_env(items: list[str], local_env: Mapping[str, str]) -> dict[str, str]:
    """``["A=1", "B"]`` -> ``{"A": "1", "B": <local value of B>}``; a forwarded name must be set locally."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise SubmitError(f"--env {item!r}: {name!r} is not a valid environment variable name")
        if not sep:
            if name not in local_env:
                raise SubmitError(f"--env {name}: nothing to forward, {name} is not set in this shell")
            value = local_env[name]
        out[name] = value
    return out


def check_no_secrets(cfg: Config, env_vars: Mapping[str, str]) -> None:
    """Refuse a job that would carry a credential in its entrypoint or runtime_env (names only in the error)."""
    problems = [f"{name} is a secret config field" for name, _ in secret_fields(cfg)]
    secret_env = set(secret_env_names())
    for name, value in sorted(env_vars.items()):
        if name in secret_env:
            problems.append(f"--env {name} is a credential variable")
        elif url_credentials(value):
            problems.append(f"--env {name} holds a URL with user:password@")
    if problems:
        raise SubmitError(
            "refusing to put secrets into the Ray job (its entrypoint and runtime_env are shown by the dashboard "
            "and the job API): " + "; ".join(dict.fromkeys(problems)) + ". Give them to the cluster through its "
            "Secret instead (pod environment: " + ", ".join(sorted(secret_env)) + "; k8s/examples/)"
        )


def config_path_for_job(config: str, working_dir: str) -> str:
    """The config path as the job's driver sees it: relative to the uploaded working_dir."""
    if not working_dir:
        return config  # code comes from the image; the path names a file there
    root = Path(working_dir).resolve()
    path = Path(config).resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise SubmitError(
            f"--config {config} is outside --working-dir {working_dir}: the job could not read it"
        ) from None


def build_entrypoint(config: str | None, overrides: list[str], resume: bool) -> str:
    """The shell command the Ray job runs; overrides pass through verbatim, quoted."""
    argv = ["mmclip-dist", "train"]
    if config:
        argv += ["--config", config]
    argv += list(overrides)
    if resume:
        argv.append("--resume")
    return shlex.join(argv)


def build_runtime_env(working_dir: str, env_vars: dict[str, str]) -> dict[str, object]:
    """runtime_env of the job: the uploaded code (unless baked into the image) and its variables."""
    runtime_env: dict[str, object] = {"env_vars": dict(env_vars)}
    if working_dir:
        runtime_env["working_dir"] = str(Path(working_dir).resolve())
        runtime_env["excludes"] = list(WORKING_DIR_EXCLUDES)
    return runtime_env


def _follow(client: object, job_id: str) -> str:
    """Stream the job's logs to stdout until it ends; return its final status."""
    from ray.job_submission import JobStatus

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):  # type: ignore[attr-defined]
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except RuntimeError as err:
        # The log socket can close before the status is final (dashboard restart); the status
        # poll below still gives the right answer.
        print(f"[submit] log stream ended early: {err}", file=sys.stderr)
    while True:
        status = client.get_job_status(job_id)  # type: ignore[attr-defined]
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status)
        time.sleep(1.0)


def run(args: argparse.Namespace) -> int:
    # Validate before contacting the cluster; ConfigError names the file and the bad key.
    cfg = load_config(args.config, args.overrides)
    job_config = config_path_for_job(args.config, args.working_dir) if args.config else None
    entrypoint = build_entrypoint(job_config, args.overrides, args.resume)
    env_vars = parse_env(args.env, os.environ)
    check_no_secrets(cfg, env_vars)
    token = resolve_auth_token(args.auth_token, os.environ)

    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    client = JobSubmissionClient(args.address, headers=headers)
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env=build_runtime_env(args.working_dir, env_vars),
        submission_id=args.submission_id,
    )
    # Names only: values may be credentials, and job logs are often pasted into issues.
    print(f"[submit] job {job_id} on {args.address}\n[submit] entrypoint: {entrypoint}")
    print(f"[submit] env: {', '.join(sorted(env_vars)) or 'none'}")
    if args.no_follow:
        print(f"[submit] not following; logs: ray job logs --address {args.address} --follow {job_id}")
        return 0
    try:
        status = _follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\n[submit] stopped following; job {job_id} keeps running (ray job stop {job_id})", file=sys.stderr)
        return 130
    print(f"[submit] job {job_id} finished: {status}")
    return 0 if status == "SUCCEEDED" else 1
