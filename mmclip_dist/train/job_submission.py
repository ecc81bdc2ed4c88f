"""Ray Jobs submission of a training run: the job's entrypoint, runtime_env, auth token, submission, following.

The job is sent to the cluster's dashboard (Ray Jobs API) with the local repository as its
``working_dir``, so the code and ``launch/configs`` the driver sees are exactly the local ones.

Secrets: S3 credentials normally come from the cluster's own Secret (the pods' environment), so
nothing secret is sent. Variables forwarded to the job are named by the caller; their values are
never printed, only names. Ray token authentication (``RAY_AUTH_MODE=token``, Ray >= 2.52): the token is
the explicit one, else ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``,
else Ray's default ``~/.ray/auth_token`` when ``RAY_AUTH_MODE=token``, and sent as a bearer
token; with ``RAY_AUTH_MODE=disabled`` no token is sent.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mmclip_dist.config import Config, secret_env_names, secret_fields, url_credentials

# Directories never uploaded with the working_dir: environments, run outputs, data. Ray also
# honours .gitignore, but these are large enough to hit the 500 MiB upload limit if ignored.
WORKING_DIR_EXCLUDES = [".git", ".venv", "runs", "mlruns", "shards", "**/__pycache__", "*.egg-info"]


class SubmitError(RuntimeError):
    """A submission that cannot go ahead (bad arguments, missing token, unreadable file)."""


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
    """Refuse a job that would carry a credential in its entrypoint or runtime_env (names only in the error).

    A job's entrypoint, runtime_env and metadata are shown to anyone who can read the dashboard: a config
    field marked ``Secret`` (the id salt), a ``user:password@`` in a ``Url`` field, a credential variable
    (``config.secret_env_names``) or a URL with credentials in ``--env`` never go there; the cluster's own
    Secret (the pods' environment) carries them.
    """
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


def job_client(address: str, token: str | None) -> Any:
    """A ``JobSubmissionClient`` for the dashboard at ``address``, sending ``token`` as a bearer token."""
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    return JobSubmissionClient(address, headers=headers)


def submit_job(client: Any, entrypoint: str, runtime_env: dict[str, object], submission_id: str | None = None) -> str:
    """Submit ``entrypoint`` with ``runtime_env``; returns the job id."""
    job_id: str = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id)
    return job_id


def follow_job(
    client: Any,
    job_id: str,
    write: Callable[[str], None],
    warn: Callable[[str], None],
    poll_s: float = 1.0,
) -> str:
    """Stream the job's logs to ``write`` until it ends; return its final status (e.g. ``"SUCCEEDED"``)."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except RuntimeError as err:
        # The log socket can close before the status is final (dashboard restart); the status
        # poll below still gives the right answer.
        warn(f"log stream ended early: {err}")
    while True:
        status = client.get_job_status(job_id)  # a JobStatus, whose str() is its value
        if status.is_terminal():
            return str(status)
        time.sleep(poll_s)
