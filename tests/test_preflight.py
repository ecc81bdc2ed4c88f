"""``mmclip-dist preflight``: passes on a debug config with built shards; each broken input gives its one
line (check name + fix) and a non-zero exit. Real shards, a real local BERT folder, real SeaweedFS for S3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmclip_devtools.fixtures.s3 import s3_env, s3_prefix, s3_server  # noqa: F401
from mmclip_devtools.fixtures.training import DEBUG_CONFIG, REPO, TrainAssets, build_train_assets
from mmclip_devtools.s3_server import LocalS3Server
from mmclip_dist.config import load_config
from mmclip_dist.loopback import free_loopback_ports
from mmclip_dist.preflight import check_mlflow, check_storage, failures, run_preflight

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> TrainAssets:
    return build_train_assets(tmp_path_factory.mktemp("preflight-assets"), num_patients=8)


def _overrides(assets: TrainAssets, work: Path) -> list[str]:
    # debug.yaml with the debug run's paths; a micro-batch of 2 keeps the probe step short on 2 busy cores.
    return [
        f"data.train_shards={assets.shards}",
        f"model.text_encoder={assets.text_encoder}",
        f"train.storage_path={work / 'runs'}",
        f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        "train.micro_batch=2",
        "train.global_batch=4",
    ]


def _preflight(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmclip_dist.cli.main", "preflight", "--config", str(DEBUG_CONFIG), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})},
    )


@pytest.mark.timeout(450)
def test_preflight_passes_on_the_debug_config(assets: TrainAssets, tmp_path: Path) -> None:
    done = _preflight(_overrides(assets, tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert out.rstrip().endswith("preflight ok") and "FAILED" not in out
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines()}
    for name in ("config", "shards", "text encoder", "storage", "mlflow", "device step"):
        assert " ok " in rows[name], rows.get(name)
    assert f"{assets.train_samples} samples" in rows["shards"]  # the manifest's count
    assert "cpu fp32" in rows["device step"] and "peak RSS" in rows["device step"]
    assert "estimate at global batch 4" in rows["device step"]
    assert not list((tmp_path / "runs").iterdir()), "the storage probe leaves nothing behind"


def _broken(assets: TrainAssets, tmp: Path, case: str) -> tuple[list[str], dict[str, str]]:
    base = _overrides(assets, tmp)
    if case == "shards":
        (tmp / "empty").mkdir()
        return [*base, f"data.train_shards={tmp / 'empty'}"], {}
    if case == "text encoder":
        # A hub id with hub access off and an empty cache: what a cluster worker without the download sees.
        return [*base, "model.text_encoder=emilyalsentzer/Bio_ClinicalBERT"], {"HF_HOME": str(tmp / "hf")}
    if case == "storage":
        (tmp / "a-file").write_text("not a folder")
        return [*base, f"train.storage_path={tmp / 'a-file' / 'runs'}"], {}
    port = free_loopback_ports(1)[0]  # nothing listens there
    return [*base, f"tracking.tracking_uri=http://127.0.0.1:{port}"], {}


@pytest.mark.timeout(450)
@pytest.mark.parametrize("case", ["shards", "text encoder", "storage", "mlflow"])
def test_each_broken_input_gives_its_one_line_and_fails(assets: TrainAssets, tmp_path: Path, case: str) -> None:
    args, env = _broken(assets, tmp_path, case)
    done = _preflight(args, env)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("preflight FAILED")]
    assert len(lines) == 1, done.stdout
    assert lines[0].startswith(f"preflight FAILED [{case}]: ") and " -- fix: " in lines[0], lines[0]
    hints = {
        "shards": "mmclip-dist shards build",
        "text encoder": "model.text_encoder",
        "storage": "train.storage_path",
        "mlflow": "tracking.tracking_uri",
    }
    assert hints[case] in lines[0]


@pytest.mark.timeout(120)
def test_storage_check_writes_to_s3_and_names_a_missing_bucket(
    s3_server: LocalS3Server,  # noqa: F811
    s3_prefix: str,  # noqa: F811
    s3_env: dict[str, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ok = check_storage(load_config(DEBUG_CONFIG, [f"train.storage_path={s3_prefix}/runs"]))
    assert ok.ok, ok.line()
    assert (
        s3_server.client()
        .list_objects_v2(Bucket=s3_server.bucket, Prefix=s3_prefix[5:].split("/", 1)[1])
        .get("KeyCount", 0)
        == 0
    ), "the probe object was deleted"
    # SeaweedFS creates missing buckets on write, so the broken S3 input is a wrong secret key (403, not retried).
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    bad = check_storage(load_config(DEBUG_CONFIG, [f"train.storage_path={s3_prefix}/runs"]))
    assert not bad.ok and s3_prefix in bad.line() and "train.storage_path" in bad.line(), bad.line()


def test_unreachable_mlflow_fails_within_the_timeout() -> None:
    port = free_loopback_ports(1)[0]
    result = check_mlflow(load_config(DEBUG_CONFIG, [f"tracking.tracking_uri=http://127.0.0.1:{port}"]))
    assert not result.ok and f"127.0.0.1:{port}" in result.message


def test_invalid_config_is_one_failure_and_nothing_else(tmp_path: Path) -> None:
    results = run_preflight(str(DEBUG_CONFIG), ["train.no_such_key=1"])
    assert [r.name for r in results] == ["config"] and failures(results) == results
    assert "no_such_key" in results[0].line()


@pytest.mark.timeout(600)
def test_on_workers_runs_the_device_step_in_every_ray_worker(assets: TrainAssets, tmp_path: Path) -> None:
    from mmclip_devtools.local_ray import LocalRayCluster

    with LocalRayCluster(cpus_per_node=(1, 1), start_timeout_s=120) as cluster:
        done = _preflight(["--on-workers", *_overrides(assets, tmp_path)], cluster.env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("device step (worker")]
    assert len(rows) == 2 and all(" ok " in row for row in rows), done.stdout
    nodes = {row.split("node ")[1].split(")")[0] for row in rows}
    assert len(nodes) == 2, "one worker per node of the 2-node cluster (1 CPU each)"
