"""Run storage for Ray Train: the S3 filesystem keeps its retry settings when pickled to the workers."""

from __future__ import annotations

import pickle

import pyarrow.fs as pafs

from mmclip_dist.train.trainer import RetryingS3FileSystem, storage_location


def test_s3_storage_survives_pickling_with_its_retry_settings() -> None:
    fs, path = storage_location("s3://bucket/runs/", "http://10.213.0.4:8333")
    assert path == "bucket/runs"
    clone = pickle.loads(pickle.dumps(fs))
    # pyarrow's own S3FileSystem pickles without its retry strategy; ours comes back as itself.
    assert type(clone) is RetryingS3FileSystem
    assert clone._kwargs == {"endpoint_override": "10.213.0.4:8333", "scheme": "http"}
    assert clone.__reduce__()[1] == fs.__reduce__()[1]
    plain = pickle.loads(pickle.dumps(pafs.S3FileSystem(retry_strategy=pafs.AwsDefaultS3RetryStrategy(10))))
    assert type(plain) is pafs.S3FileSystem  # (what Ray Train would otherwise ship)


def test_local_storage_is_an_absolute_folder(tmp_path) -> None:  # noqa: ANN001
    fs, path = storage_location(str(tmp_path / "runs"), None)
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "runs")
