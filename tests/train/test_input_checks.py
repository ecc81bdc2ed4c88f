"""Driver input checks and the progress line: fast, named failures before Ray or MLflow start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mmclip_dist.config import ModelConfig
from mmclip_dist.errors import UserError
from mmclip_dist.loopback import free_loopback_ports
from mmclip_dist.train.input_checks import (
    check_reachable,
    check_shards,
    check_text_encoder,
    check_tracking,
    check_writable,
)
from mmclip_dist.train.progress import format_eta, progress_line


def test_shard_checks(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data.train_shards is empty"):
        check_shards("", None, "train", "data.train_shards")
    with pytest.raises(UserError, match=r"no shards named train-NNNNNN.tar .*shards build"):
        check_shards(str(tmp_path), None, "train", "data.train_shards")
    (tmp_path / "train-000000.tar").write_bytes(b"")
    assert check_shards(str(tmp_path), None, "train", "data.train_shards") == [str(tmp_path / "train-000000.tar")]
    with pytest.raises(UserError, match="do not exist"):
        check_shards(str(tmp_path / "train-{000000..000001}.tar"), None, "train", "data.train_shards")


def test_text_encoder_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(UserError, match="neither a local folder nor in the Hugging Face cache"):
        check_text_encoder(ModelConfig(text_encoder="someone/some-bert"))
    with pytest.raises(UserError, match="no such folder"):
        check_text_encoder(ModelConfig(text_encoder=str(tmp_path / "missing")))
    (tmp_path / "enc").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        check_text_encoder(ModelConfig(text_encoder=str(tmp_path / "enc")))
    (tmp_path / "enc" / "config.json").write_text("{}")
    check_text_encoder(ModelConfig(text_encoder=str(tmp_path / "enc")))


def test_writable_and_reachable(tmp_path: Path) -> None:
    check_writable(str(tmp_path / "new" / "runs"), None, "train.storage_path")
    assert list(tmp_path.iterdir()) == []  # checked on the nearest existing folder, nothing left behind
    (tmp_path / "locked").mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere: the permission case only means something for other users
        with pytest.raises(UserError, match="is not writable"):
            check_writable(str(tmp_path / "locked" / "runs"), None, "train.storage_path")
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="train.storage_path=.* is not writable"):
        check_writable(str(tmp_path / "file" / "runs"), None, "train.storage_path")
    (port,) = free_loopback_ports(1)
    with pytest.raises(UserError, match=rf"cannot reach the MLflow server at 127.0.0.1:{port} \(connection refused\)"):
        check_reachable(f"http://127.0.0.1:{port}", "the MLflow server")
    with pytest.raises(UserError, match="cannot reach the MLflow tracking server"):
        check_tracking(f"http://127.0.0.1:{port}")
    check_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_progress_line() -> None:
    assert format_eta(5) == "5s" and format_eta(75) == "1m15s" and format_eta(3720) == "1h02m"
    assert progress_line(3, 20, 2.71828, 6.43, 41) == "step 3/20  loss 2.7183  6.4 samples/s  ETA 41s"
    assert progress_line(1, 20, 3.0, 1.0, None).endswith("ETA ?")


def test_progress_reporter_reads_new_steps_from_the_run(tmp_path: Path) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from mmclip_dist.train.progress import ProgressReporter

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("progress")).info.run_id
    lines: list[str] = []
    reporter = ProgressReporter(uri, run_id, total_steps=4, emit=lines.append)

    def log(step: int) -> None:  # one step every 10 s of logging time
        ts = 1_000_000 + step * 10_000
        client.log_batch(run_id, metrics=[Metric("loss", 4.0 - step, ts, step), Metric("samples_per_s", 8.0, ts, step)])

    log(1)
    log(2)
    reporter.poll()
    log(3)
    reporter.poll()
    reporter.poll()  # nothing new: nothing printed
    assert lines == [
        "step 1/4  loss 3.0000  8.0 samples/s  ETA ?",
        "step 2/4  loss 2.0000  8.0 samples/s  ETA 20s",
        "step 3/4  loss 1.0000  8.0 samples/s  ETA 10s",
    ]
