"""``mmclip-dist submit``: argument handling, token resolution, and a real job on a real Ray head."""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmclip_dist.cli import submit
from mmclip_dist.cli.main import build_parser
from mmclip_dist.config import ConfigError
from mmclip_dist.loopback import free_loopback_ports

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


# --- unit --------------------------------------------------------------------------------------


def test_token_precedence(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    env = {"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    assert submit.resolve_auth_token("explicit", env, home=tmp_path) == "explicit"
    assert submit.resolve_auth_token(None, env, home=tmp_path) == "from-env"
    assert submit.resolve_auth_token(None, {"RAY_AUTH_TOKEN_PATH": str(token_file)}, home=tmp_path) == "from-file"
    assert submit.resolve_auth_token(None, {}, home=tmp_path) is None
    # Explicitly disabled: nothing is sent even when a token is around.
    assert submit.resolve_auth_token("explicit", {"RAY_AUTH_MODE": "disabled", **env}, home=tmp_path) is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("default-path")
    assert submit.resolve_auth_token(None, {"RAY_AUTH_MODE": "token"}, home=tmp_path) == "default-path"


def test_token_errors(tmp_path: Path) -> None:
    with pytest.raises(submit.SubmitError, match="no token found"):
        submit.resolve_auth_token(None, {"RAY_AUTH_MODE": "token"}, home=tmp_path)
    with pytest.raises(submit.SubmitError, match="cannot read"):
        submit.resolve_auth_token(None, {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, home=tmp_path)
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(submit.SubmitError, match="empty"):
        submit.resolve_auth_token(None, {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty")}, home=tmp_path)
    with pytest.raises(submit.SubmitError, match="'k8s'"):
        submit.resolve_auth_token(None, {"RAY_AUTH_MODE": "k8s"}, home=tmp_path)


def test_parse_env() -> None:
    local = {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    assert submit.parse_env(["A=1", "B=x=y", "MLFLOW_TRACKING_URI", "C="], local) == {
        "A": "1",
        "B": "x=y",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "C": "",
    }
    with pytest.raises(submit.SubmitError, match="not set in this shell"):
        submit.parse_env(["NOPE"], local)
    with pytest.raises(submit.SubmitError, match="not a valid"):
        submit.parse_env(["1A=2"], local)
    with pytest.raises(submit.SubmitError, match="not a valid"):
        submit.parse_env(["A-B=2"], local)


def test_secrets_never_go_into_a_job() -> None:
    from mmclip_dist.config import load_config

    plain = load_config(REPO / "launch/configs/debug.yaml", ["tracking.tracking_uri=http://mlflow:5000"])
    submit.check_no_secrets(plain, {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "AWS_ENDPOINT_URL": "http://s3"})
    salted = load_config(
        REPO / "launch/configs/debug.yaml",
        ["shards.salt=planted-salt-0123456789", "train.storage_endpoint=http://AKID:planted-key@s3:8333"],
    )
    with pytest.raises(submit.SubmitError) as err:
        submit.check_no_secrets(salted, {})
    assert "shards.salt" in str(err.value) and "train.storage_endpoint" in str(err.value)
    assert "planted" not in str(err.value)
    for env in ({"AWS_SECRET_ACCESS_KEY": "planted"}, {"MMCLIP_ID_SALT": "planted"}, {"X": "s3://a:planted@h"}):
        with pytest.raises(submit.SubmitError, match=next(iter(env))) as err:
            submit.check_no_secrets(plain, env)
        assert "planted" not in str(err.value)


def test_config_path_for_job(tmp_path: Path) -> None:
    (tmp_path / "launch").mkdir()
    config = tmp_path / "launch" / "a.yaml"
    assert submit.config_path_for_job(str(config), str(tmp_path)) == "launch/a.yaml"
    assert submit.config_path_for_job("/app/launch/a.yaml", "") == "/app/launch/a.yaml"
    with pytest.raises(submit.SubmitError, match="outside --working-dir"):
        submit.config_path_for_job("/etc/passwd", str(tmp_path))


def test_entrypoint_is_a_train_command_the_cli_accepts() -> None:
    overrides = ["train.max_steps=2", "train.run_name=a b", "data.image_size=[64, 32]"]
    entrypoint = submit.build_entrypoint("launch/configs/debug.yaml", overrides, resume=True)
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
    env = submit.build_runtime_env(str(REPO), {"A": "1"})
    assert env["working_dir"] == str(REPO) and env["env_vars"] == {"A": "1"} and ".venv" in env["excludes"]
    assert submit.build_runtime_env("", {}) == {"env_vars": {}}


def test_bad_override_fails_before_contacting_the_cluster() -> None:
    # Port 9 (discard) on loopback: nothing answers, so reaching it would be a connection error.
    args = build_parser().parse_args(
        [
            "submit",
            "--address",
            "http://127.0.0.1:9",
            "--config",
            str(REPO / "launch/configs/debug.yaml"),
            "train.max_stepz=2",
        ]
    )
    with pytest.raises(ConfigError, match="max_stepz"):
        args.func(args)


# --- integration: a real Ray head on 127.0.0.1 ----------------------------------------------------


class RayHead:
    """``ray start --head --block`` in its own session; stopped by PID (never ``ray stop``, which
    would also kill other users' Ray processes on this machine)."""

    PORT_FLAGS = (
        "port",
        "dashboard-port",
        "ray-client-server-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
        "node-manager-port",
        "object-manager-port",
    )

    def __init__(self, token: str) -> None:
        # Short path: Ray's unix sockets live under the temp dir and the path limit is 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")
        ports = dict(zip(self.PORT_FLAGS, free_loopback_ports(len(self.PORT_FLAGS)), strict=True))
        self.address = f"http://127.0.0.1:{ports['dashboard-port']}"
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # the job's `mmclip-dist` is this venv's
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            # Keeps the node IP on loopback: without it `ray start` swaps 127.0.0.1 for the host's
            # routable address (services.resolve_ip_for_localhost).
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "DS_ACCELERATOR": "cpu",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        cmd = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=2",
            "--num-gpus=0",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
            *[f"--{flag}={port}" for flag, port in ports.items()],
        ]
        self.log = open(Path(self.temp_dir) / "ray-start.log", "w")  # noqa: SIM115  (held until stop())
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_ready(token)

    def _wait_ready(self, token: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        request = urllib.request.Request(f"{self.address}/api/version", headers={"Authorization": f"Bearer {token}"})
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"ray start exited {self.proc.returncode}: {Path(self.log.name).read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(request, timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Ray dashboard not up in {timeout:.0f} s")

    def listening(self) -> list[str]:
        """``ss -ltnp`` lines of the sockets our Ray processes listen on (for the bind report)."""
        import psutil

        pids = {self.proc.pid, *(p.pid for p in psutil.Process(self.proc.pid).children(recursive=True))}
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if any(f"pid={pid}," in line for pid in pids)]

    def stop(self) -> None:
        import psutil

        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        # SIGTERM to `ray start --block` makes it shut its own services down; whatever is left of
        # the processes it started (recorded above, by PID) is killed.
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        gone, alive = psutil.wait_procs(children, timeout=10)
        for proc in alive:
            proc.kill()
        psutil.wait_procs(alive, timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def ray_head() -> Iterator[tuple[RayHead, str]]:
    token = secrets.token_hex(16)
    head = RayHead(token)
    try:
        yield head, token
    finally:
        head.stop()


def _submit(head: RayHead, args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "mmclip-dist"), "submit", "--address", head.address, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_submit_without_token_is_refused(ray_head: tuple[RayHead, str]) -> None:
    head, token = ray_head
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"HOME": tempfile.mkdtemp()}
    done = _submit(head, ["--config", "launch/configs/debug.yaml", "--no-follow"], env, timeout=90)
    assert done.returncode != 0
    assert "Authentication required" in done.stderr or "401" in done.stderr, done.stderr[-2000:]
    assert token not in done.stdout + done.stderr


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Synthetic shards and a 2-layer text encoder, built by the library code the debug pipeline uses."""
    from mmclip_dist.config import load_config
    from mmclip_dist.data.build.builder import build_shards
    from mmclip_dist.data.stream.loader import list_shards
    from mmclip_dist.data.synthetic import generate_vindr_dataset
    from mmclip_dist.model.tokenizer import build_text_encoder_folder, train_wordpiece_tokenizer
    from mmclip_dist.workflows.debug_run import prepare_debug_config, training_reports

    workdir = tmp_path_factory.mktemp("submit-inputs")
    cfg = load_config(REPO / "launch/configs/debug.yaml", ["synthetic.num_patients=12", "shards.shard_max_samples=8"])
    cfg = prepare_debug_config(cfg, workdir)
    generate_vindr_dataset(Path(cfg.shards.input), cfg.synthetic)
    build_shards(cfg.shards, progress=False)
    shards = [Path(p) for p in list_shards(cfg.data.train_shards, split=cfg.data.train_split)]
    tokenizer = train_wordpiece_tokenizer(training_reports(shards), Path(cfg.model.text_encoder), vocab_size=500)
    build_text_encoder_folder(Path(cfg.model.text_encoder), tokenizer, hidden_size=32, layers=1, heads=2)
    return {"shards": cfg.data.train_shards, "text_encoder": cfg.model.text_encoder, "workdir": str(workdir)}


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_submit_trains_and_tracks(ray_head: tuple[RayHead, str], tiny_inputs: dict[str, str], tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    head, token = ray_head
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [
        f"data.train_shards={tiny_inputs['shards']}",
        f"data.eval_shards={tiny_inputs['shards']}",
        f"model.text_encoder={tiny_inputs['text_encoder']}",
        f"train.storage_path={tmp_path / 'runs'}",
        f"train.export_dir={tmp_path / 'model'}",
        "train.run_name=submit-test",
        "train.max_steps=2",
        "train.checkpoint_every=2",
        "train.warmup_steps=1",
        "train.num_workers=1",
        "train.micro_batch=2",
        "train.global_batch=2",
        "data.loader_workers=0",
    ]
    env = {**os.environ, "RAY_AUTH_TOKEN": token, "MLFLOW_TRACKING_URI": tracking_uri}
    done = _submit(
        head,
        [
            "--config",
            "launch/configs/debug.yaml",
            "--env",
            "MLFLOW_TRACKING_URI",
            "--env",
            "DS_ACCELERATOR=cpu",
            *overrides,
        ],
        env,
        timeout=400,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "finished: SUCCEEDED" in done.stdout
    assert token not in output
    print("Ray head listening sockets:\n" + "\n".join(head.listening()))

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("mmclip-debug")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'submit-test'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [1, 2]


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_failing_job_exits_non_zero(ray_head: tuple[RayHead, str], tmp_path: Path) -> None:
    head, token = ray_head
    env = {**os.environ, "RAY_AUTH_TOKEN": token}
    # Valid config, but a text encoder that does not exist: the job itself fails on the cluster
    # (max_failures=0: no Ray Train retries, so it fails on the first attempt).
    done = _submit(
        head,
        [
            "--config",
            "launch/configs/debug.yaml",
            f"model.text_encoder={tmp_path / 'none'}",
            f"train.storage_path={tmp_path / 'runs'}",
            "train.max_failures=0",
            "--env",
            "HF_HUB_OFFLINE=1",
        ],
        env,
        timeout=170,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "finished: FAILED" in done.stdout
