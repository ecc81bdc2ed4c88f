"""Ray Jobs submission logic: token resolution, forwarded variables, entrypoint and runtime_env.

Submitting to a real Ray head is tested end to end in ``tests/cli/test_submit.py``.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from mmclip_dist.cli.main import build_parser
from mmclip_dist.train import job_submission

REPO = Path(__file__).resolve().parents[2]


def test_token_precedence(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    env = {"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    assert job_submission.resolve_auth_token("explicit", env, home=tmp_path) == "explicit"
    assert job_submission.resolve_auth_token(None, env, home=tmp_path) == "from-env"
    assert (
        job_submission.resolve_auth_token(None, {"RAY_AUTH_TOKEN_PATH": str(token_file)}, home=tmp_path) == "from-file"
    )
    assert job_submission.resolve_auth_token(None, {}, home=tmp_path) is None
    # Explicitly disabled: nothing is sent even when a token is around.
    assert job_submission.resolve_auth_token("explicit", {"RAY_AUTH_MODE": "disabled", **env}, home=tmp_path) is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("default-path")
    assert job_submission.resolve_auth_token(None, {"RAY_AUTH_MODE": "token"}, home=tmp_path) == "default-path"


def test_token_errors(tmp_path: Path) -> None:
    with pytest.raises(job_submission.SubmitError, match="no token found"):
        job_submission.resolve_auth_token(None, {"RAY_AUTH_MODE": "token"}, home=tmp_path)
    with pytest.raises(job_submission.SubmitError, match="cannot read"):
        job_submission.resolve_auth_token(None, {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, home=tmp_path)
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(job_submission.SubmitError, match="empty"):
        job_submission.resolve_auth_token(None, {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty")}, home=tmp_path)
    with pytest.raises(job_submission.SubmitError, match="'k8s'"):
        job_submission.resolve_auth_token(None, {"RAY_AUTH_MODE": "k8s"}, home=tmp_path)


def test_parse_env() -> None:
    local = {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    assert job_submission.parse_env(["A=1", "B=x=y", "MLFLOW_TRACKING_URI", "C="], local) == {
        "A": "1",
        "B": "x=y",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "C": "",
    }
    with pytest.raises(job_submission.SubmitError, match="not set in this shell"):
        job_submission.parse_env(["NOPE"], local)
    with pytest.raises(job_submission.SubmitError, match="not a valid"):
        job_submission.parse_env(["1A=2"], local)
    with pytest.raises(job_submission.SubmitError, match="not a valid"):
        job_submission.parse_env(["A-B=2"], local)


def test_secrets_never_go_into_a_job() -> None:
    from mmclip_dist.config import load_config

    plain = load_config(REPO / "launch/configs/debug.yaml", ["tracking.tracking_uri=http://mlflow:5000"])
    job_submission.check_no_secrets(
        plain, {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "AWS_ENDPOINT_URL": "http://s3"}
    )
    salted = load_config(
        REPO / "launch/configs/debug.yaml",
        ["shards.salt=planted-salt-0123456789", "train.storage_endpoint=http://AKID:planted-key@s3:8333"],
    )
    with pytest.raises(job_submission.SubmitError) as err:
        job_submission.check_no_secrets(salted, {})
    assert "shards.salt" in str(err.value) and "train.storage_endpoint" in str(err.value)
    assert "planted" not in str(err.value)
    for env in ({"AWS_SECRET_ACCESS_KEY": "planted"}, {"MMCLIP_ID_SALT": "planted"}, {"X": "s3://a:planted@h"}):
        with pytest.raises(job_submission.SubmitError, match=next(iter(env))) as err:
            job_submission.check_no_secrets(plain, env)
        assert "planted" not in str(err.value)


def test_config_path_for_job(tmp_path: Path) -> None:
    (tmp_path / "launch").mkdir()
    config = tmp_path / "launch" / "a.yaml"
    assert job_submission.config_path_for_job(str(config), str(tmp_path)) == "launch/a.yaml"
    assert job_submission.config_path_for_job("/app/launch/a.yaml", "") == "/app/launch/a.yaml"
    with pytest.raises(job_submission.SubmitError, match="outside --working-dir"):
        job_submission.config_path_for_job("/etc/passwd", str(tmp_path))


def test_entrypoint_is_a_train_command_the_cli_accepts() -> None:
    overrides = ["train.max_steps=2", "train.run_name=a b", "data.image_size=[64, 32]"]
    entrypoint = job_submission.build_entrypoint("launch/configs/debug.yaml", overrides, resume=True)
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["mmclip-dist", "train"]
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.config, args.overrides, args.resume) == (
        "train",
        "launch/configs/debug.yaml",
        overrides,
        True,
    )


def test_runtime_env() -> None:
    env = job_submission.build_runtime_env(str(REPO), {"A": "1"})
    assert env["working_dir"] == str(REPO) and env["env_vars"] == {"A": "1"} and ".venv" in env["excludes"]
    assert job_submission.build_runtime_env("", {}) == {"env_vars": {}}


class _RecordedJob:
    """A job client that replays recorded log chunks and statuses (the Ray side is tested in tests/cli)."""

    def __init__(self, chunks: list[str], statuses: list[str], fail_stream: bool = False) -> None:
        self.chunks, self.statuses, self.fail_stream = chunks, statuses, fail_stream

    async def tail_job_logs(self, job_id: str):  # noqa: ANN201
        for chunk in self.chunks:
            yield chunk
        if self.fail_stream:
            raise RuntimeError("socket closed")

    def get_job_status(self, job_id: str):  # noqa: ANN201
        from ray.job_submission import JobStatus

        return JobStatus(self.statuses.pop(0))


def test_follow_job_streams_logs_and_waits_for_a_terminal_status() -> None:
    written: list[str] = []
    warnings: list[str] = []
    client = _RecordedJob(["a\n", "b\n"], ["RUNNING", "SUCCEEDED"], fail_stream=True)
    status = job_submission.follow_job(client, "job", written.append, warnings.append, poll_s=0.0)
    assert (status, written) == ("SUCCEEDED", ["a\n", "b\n"])
    assert warnings == ["log stream ended early: socket closed"]
    failed = _RecordedJob([], ["FAILED"])
    assert job_submission.follow_job(failed, "job", written.append, warnings.append, poll_s=0.0) == "FAILED"
