"""Every expected CLI error is one line on stderr with exit code 1 (usage errors 2), fast, without a traceback.

Each case runs the real CLI in a subprocess (no mocks); "servers" that refuse connections are closed
loopback ports.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmclip_dist.loopback import free_loopback_ports

REPO = Path(__file__).resolve().parents[2]
DEBUG_YAML = str(REPO / "launch" / "configs" / "debug.yaml")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A folder with shard files and a text-encoder folder: enough for the driver's input checks to pass."""
    root = tmp_path_factory.mktemp("cli-errors")
    shards = root / "shards"
    shards.mkdir()
    (shards / "train-000000.tar").write_bytes(b"")
    encoder = root / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    (root / "bad.yaml").write_text("train: [unclosed\n")
    (closed,) = free_loopback_ports(1)  # nothing listens there: connections are refused
    return {"root": str(root), "shards": str(shards), "encoder": str(encoder), "closed": str(closed)}


def _train(inputs: dict[str, str], *extra: str) -> list[str]:
    return [
        "train",
        "--config",
        DEBUG_YAML,
        f"data.train_shards={inputs['shards']}",
        f"model.text_encoder={inputs['encoder']}",
        *extra,
    ]


# (name, argv builder, extra env, exit code, text the one line must contain)
CASES = [
    (
        "config_missing",
        lambda i: ["train", "--config", f"{i['root']}/nope.yaml"],
        {},
        1,
        "config file '{root}/nope.yaml' not found",
    ),
    ("config_not_yaml", lambda i: ["train", "--config", f"{i['root']}/bad.yaml"], {}, 1, "not valid YAML"),
    ("unknown_key", lambda i: _train(i, "train.max_stepz=3"), {}, 1, "train.max_stepz: unknown key"),
    (
        "wrong_type",
        lambda i: _train(i, "train.max_steps=many"),
        {},
        1,
        "train.max_steps: Input should be a valid integer",
    ),
    ("usage", lambda i: ["train", "--no-such-flag"], {}, 2, "unrecognized arguments: --no-such-flag"),
    (
        "no_shards",
        lambda i: _train(i, f"data.train_shards={i['root']}/encoder"),
        {},
        1,
        "no shards named train-NNNNNN.tar",
    ),
    ("no_shard_location", lambda i: ["train", "--config", DEBUG_YAML], {}, 1, "data.train_shards is empty"),
    (
        "eval_no_shards",
        lambda i: ["eval", "--model", i["encoder"], "--shards", i["encoder"], "--config", DEBUG_YAML],
        {},
        1,
        "no shards named test-NNNNNN.tar",
    ),
    (
        "ablation_no_shards",
        lambda i: [
            "ablation",
            "--config",
            DEBUG_YAML,
            f"data.train_shards={i['root']}/encoder",
            f"model.text_encoder={i['encoder']}",
        ],
        {},
        1,
        "no shards named train-NNNNNN.tar",
    ),
    (
        "hub_encoder_offline",
        lambda i: _train(i, "model.text_encoder=nobody/no-such-encoder"),
        {"HF_HUB_OFFLINE": "1"},
        1,
        "neither a local folder nor in the Hugging Face cache",
    ),
    (
        "permission_denied",
        lambda i: _train(i, "train.storage_path=/sys/mmclip-runs"),
        {},
        1,
        "train.storage_path='/sys/mmclip-runs' is not writable",
    ),
    (
        "mlflow_refused",
        lambda i: _train(i, f"tracking.tracking_uri=http://127.0.0.1:{i['closed']}"),
        {},
        1,
        "cannot reach the MLflow tracking server",
    ),
    (
        "s3_refused",
        lambda i: [
            "shards",
            "verify",
            "--output",
            "s3://bucket/shards",
            "--endpoint",
            f"http://127.0.0.1:{i['closed']}",
        ],
        {},
        1,
        "connection refused",
    ),
    (
        "ray_unreachable",
        lambda i: _train(i),
        {"RAY_ADDRESS": "127.0.0.1:{closed}"},
        1,
        "cannot reach the Ray cluster (RAY_ADDRESS)",
    ),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("name", "argv", "env", "code", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_invocation_is_one_line(inputs, tmp_path: Path, name, argv, env, code, expected) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MMCLIP_DEBUG", "MLFLOW_TRACKING_URI")}
    environ.update({k: v.format(**inputs) for k, v in env.items()})
    environ["PYTHONPATH"] = str(REPO)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mmclip_dist.cli.main", *argv(inputs)],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=100,
    )
    seconds = time.monotonic() - started
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert expected.format(**inputs) in proc.stderr, proc.stderr
    if code == 1:
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert seconds < 10, f"{name} took {seconds:.1f} s"
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run was created


def test_debug_flag_shows_the_traceback(inputs, tmp_path: Path) -> None:
    environ = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "mmclip_dist.cli.main", "--debug", "train", "--config", f"{inputs['root']}/nope.yaml"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr
