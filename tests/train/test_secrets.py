"""Secrets never leave: a unique value in every secret-bearing config field (and the salt variable), then
train + eval + submit, and a byte search of everything they wrote, printed or registered finds none of them."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mmclip_devtools.fixtures.training import REPO, TrainAssets, run_train, tiny_config
from mmclip_devtools.local_ray import LocalRayCluster
from mmclip_devtools.mlflow_server import LocalMlflowServer
from mmclip_dist.config import dump_config, secret_fields

pytestmark = pytest.mark.integration


def _ray_state(cluster: LocalRayCluster) -> bytes:
    """Everything Ray's job API and state API say about jobs, actors and tasks (runtime envs included)."""
    out = []
    for path in ("/api/jobs/", "/api/v0/actors?detail=true&limit=10000", "/api/v0/tasks?detail=true&limit=10000"):
        request = urllib.request.Request(
            f"{cluster.dashboard_url}{path}", headers={"Authorization": f"Bearer {cluster.auth_token}"}
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            body = resp.read()
        assert body and json.loads(body) is not None, path
        out.append(body)
    return b"\n".join(out)


def _tree(root: Path, skip: set[Path] = frozenset()) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p not in skip}


@pytest.mark.timeout(1800)
def test_planted_secrets_never_leave(train_assets: TrainAssets, ray_node: LocalRayCluster, tmp_path: Path) -> None:
    tag = secrets.token_hex(6)
    salt, env_salt = f"planted-salt-{tag}", f"planted-envsalt-{tag}"
    user, password = f"planteduser{tag}", f"plantedpw{tag}"
    key_id, key = f"PLANTEDAK{tag.upper()}", f"plantedsk{tag}"
    mlflow = LocalMlflowServer(tmp_path / "mlflow", startup_timeout=400).start()
    try:
        s3_url = f"http://{key_id}:{key}@127.0.0.1:9"  # endpoints the local run never dials (local shards/storage)
        cfg = tiny_config(
            train_assets,
            tmp_path,
            [
                f"shards.salt={salt}",
                f"shards.s3_endpoint={s3_url}",
                f"shards.output=s3://{key_id}:{key}@bucket/shards",
                f"data.s3_endpoint={s3_url}",
                f"train.storage_endpoint={s3_url}",
                # The server has no auth: the MLflow client sends these as basic auth and they are ignored.
                f"tracking.tracking_uri={mlflow.uri.replace('http://', f'http://{user}:{password}@')}",
                "train.max_steps=2",
                "train.checkpoint_every=2",
                "train.run_name=secrets",
                "train.max_failures=2",  # the shared test machine can time a placement group out
                "eval.bootstrap=20",
                "eval.batch_size=8",
            ],
        )
        marked = {name for name, _ in secret_fields(cfg)}
        assert marked == {
            "shards.salt", "shards.s3_endpoint", "shards.output", "data.s3_endpoint", "train.storage_endpoint",
            "tracking.tracking_uri",
        }  # fmt: skip
        planted = [salt, env_salt, user, password, key_id, key]
        driver = tmp_path / "driver"
        env = {**ray_node.env(), "MMCLIP_ID_SALT": env_salt}
        outputs = {"train stdout/stderr": run_train(cfg, driver, env, timeout=600).encode()}
        config_file = driver / "train.yaml"  # the user's input: the only place the secrets may be

        cli = [sys.executable, "-m", "mmclip_dist.cli.main"]
        run_env = {**os.environ, "PYTHONPATH": str(REPO), **env}

        def run(argv: list[str], name: str) -> subprocess.CompletedProcess:
            done = subprocess.run([*cli, *argv], cwd=driver, env=run_env, capture_output=True, timeout=600)
            outputs[name] = done.stdout + done.stderr
            return done

        evaluated = run(
            ["eval", "--model", cfg.train.export_dir, "--mode", "zeroshot", "--config", str(config_file)], "eval"
        )
        assert evaluated.returncode == 0, evaluated.stderr[-3000:].decode()
        shown = run(["config", "--config", str(config_file)], "config")
        assert shown.returncode == 0 and b"salt: <redacted>" in shown.stdout
        submitted = run(
            ["submit", "--address", ray_node.dashboard_url, "--config", str(config_file), "--no-follow",
             "--env", "MMCLIP_ID_SALT"],
            "submit",
        )  # fmt: skip
        assert submitted.returncode != 0
        for field in marked | {"--env MMCLIP_ID_SALT"}:
            assert field.encode() in submitted.stderr, submitted.stderr.decode()[-2000:]

        files = {
            **_tree(mlflow.root),  # the MLflow store: runs, params, tags, artifacts (config.yaml, eval_config.yaml)
            **_tree(tmp_path / "runs"),  # Ray Train run folder: checkpoints, state
            **_tree(Path(cfg.train.export_dir)),
            **_tree(driver, skip={config_file}),  # the driver's folder (its log is in outputs too)
            **_tree(ray_node.temp_root),  # Ray session logs: driver, workers, dashboard, GCS
        }
        files.update(outputs)
        files["ray job/actor/task info"] = _ray_state(ray_node)
        artifacts = [name for name in files if name.endswith(("config.yaml", "eval_config.yaml"))]
        assert any(a.endswith("/config.yaml") for a in artifacts) and any(
            a.endswith("eval_config.yaml") for a in artifacts
        )
        leaks = {
            name: [s for s in planted if s.encode() in blob or s.lower().encode() in blob.lower()]
            for name, blob in files.items()
        }
        leaks = {name: found for name, found in leaks.items() if found}
        print(
            f"\nsearched {len(files)} files/outputs ({sum(map(len, files.values())) / 1e6:.1f} MB) for {len(planted)} planted secrets"
        )
        assert leaks == {}
        # The logged config is the redacted one, and still says which fields were set.
        logged = next(files[a] for a in artifacts if a.endswith("/config.yaml")).decode()
        assert "salt: <redacted>" in logged and f"tracking_uri: http://<redacted>@127.0.0.1:{mlflow.port}" in logged
        assert config_file.read_text() == dump_config(cfg)  # (the input itself is untouched)
    finally:
        mlflow.stop()
