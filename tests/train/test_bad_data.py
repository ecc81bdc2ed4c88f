"""Training over shards with a truncated tar and a corrupt PNG: the run completes and reports what it skipped;
with ``data.max_skip_fraction=0`` it stops on the first skip with one line, without a Ray Train retry.

Real local Ray cluster, DeepSpeed on CPU, MLflow on sqlite, the production ``mmclip-dist train`` CLI.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mmclip_devtools.fixtures.training import TrainAssets, finish_train, runs_of, start_train, tiny_config
from mmclip_devtools.local_ray import LocalRayCluster

pytestmark = pytest.mark.integration


def _break_png(shard: Path) -> None:
    """Replace the cc.png of the shard's first sample by bytes that are no PNG."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        broken = False
        for member, payload in members:
            if not broken and member.name.endswith(".cc.png"):
                payload, broken = b"\x89PNG\r\n\x1a\n" + b"not really" * 50, True
                member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))


def _broken_copy(shards: Path, out: Path, every_shard: bool = False) -> Path:
    """The shard folder, with train-000000.tar cut mid-member and a corrupt cc.png in train-000001.tar (in every
    other shard too with ``every_shard``); the manifest still lists them all, as after a bad copy."""
    shutil.copytree(shards, out)
    first = out / "train-000000.tar"
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2 + 700])
    for shard in sorted(out.glob("train-*.tar"))[1:] if every_shard else [out / "train-000001.tar"]:
        _break_png(shard)
    return out


@pytest.fixture(scope="module")
def broken_shards(train_assets: TrainAssets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _broken_copy(train_assets.shards, tmp_path_factory.mktemp("broken") / "shards")


def _overrides(shards: Path, tmp_path: Path, name: str, fraction: float) -> list[str]:
    return [
        f"data.train_shards={shards}",
        f"data.max_skip_fraction={fraction}",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"train.run_name={name}",
        f"train.export_dir={tmp_path / name}",
        "train.max_failures=3",  # a retry loop would show here; a data stop must not use it
    ]


@pytest.mark.timeout(900)
def test_corrupt_shards_are_skipped_and_reported(
    train_assets: TrainAssets, broken_shards: Path, ray_node: LocalRayCluster, tmp_path: Path
) -> None:
    cfg = tiny_config(train_assets, tmp_path, _overrides(broken_shards, tmp_path, "tolerant", 0.5))
    proc, log = start_train(cfg, tmp_path, ray_node.env(), name="tolerant")
    output = finish_train(proc, log, timeout=600)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (run,) = runs_of(tracking_uri, "train-tests")
    assert run.info.status == "FINISHED"
    skipped = MlflowClient(tracking_uri).get_metric_history(run.info.run_id, "data/skipped_samples")
    assert skipped and max(m.value for m in skipped) >= 1, skipped
    assert (tmp_path / "tolerant").is_dir()  # it ran to the end and exported
    assert "skipping the rest of shard train-000000.tar" in output  # named once, in the worker log
    assert "[FailurePolicy] RETRY" not in output


@pytest.mark.timeout(900)
def test_zero_skip_budget_stops_with_one_line_and_no_retry(
    train_assets: TrainAssets, ray_node: LocalRayCluster, tmp_path: Path
) -> None:
    # One rank is enough to show the stop (the cross-rank sum runs in the test above) and halves the memory;
    # every shard has a bad sample, so the first shard it reads is bad.
    shards = _broken_copy(train_assets.shards, tmp_path / "shards", every_shard=True)
    one_rank = ["train.num_workers=1", "train.global_batch=4"]
    cfg = tiny_config(train_assets, tmp_path, [*_overrides(shards, tmp_path, "strict", 0.0), *one_rank])
    proc, log = start_train(cfg, tmp_path, ray_node.env(), name="strict")
    proc.wait(timeout=600)
    output = log.read_text(errors="replace")
    assert proc.returncode == 1, output[-4000:]
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: data: ") and "data.max_skip_fraction=0" in lines[-1], lines[-5:]
    assert sum(line.startswith("error: ") for line in lines) == 1
    assert "[FailurePolicy] RETRY" not in output  # one attempt: Ray Train was never asked to retry
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (run,) = runs_of(tracking_uri, "train-tests")
    assert run.info.status == "FAILED"
    # stopped before the end: nothing exported (and the input check's writability probe left no folder behind)
    assert not (tmp_path / "strict").exists()
