"""Fixtures of the training tests: tiny shards + text encoder built once, a shared 1-node local Ray cluster.

Builders and driver helpers live in ``mmclip_devtools/fixtures/training.py``; the S3 fixtures come from ``tests/data``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from unittest import mock

import pytest

from mmclip_devtools.fixtures.s3 import s3_env, s3_prefix, s3_server  # noqa: E402,F401
from mmclip_devtools.fixtures.training import TrainAssets, build_train_assets  # noqa: E402
from mmclip_devtools.local_ray import LocalRayCluster  # noqa: E402
from mmclip_devtools.s3_server import LocalS3Server  # noqa: E402


@pytest.fixture(scope="session")
def train_assets(tmp_path_factory: pytest.TempPathFactory) -> TrainAssets:
    """16 synthetic patients -> ~24 training breasts in 4+ local shards, 64x48 images, a 1-layer BERT."""
    return build_train_assets(tmp_path_factory.mktemp("train-assets"))


@pytest.fixture(scope="session")
def ray_node(s3_server: LocalS3Server) -> Iterator[LocalRayCluster]:  # noqa: F811
    """One local Ray node (2 CPUs, 127.0.0.1 only) that training drivers join through ``.env()``; stopped by
    PID at the end of the session. Its processes hold the S3 credentials of ``s3_server`` (like the pods of
    a real cluster); jobs name the endpoint, so any server sharing those keys is reachable."""
    cluster = LocalRayCluster(cpus_per_node=(2,), start_timeout_s=120)
    credentials = {k: v for k, v in s3_server.env().items() if "ENDPOINT" not in k}
    with mock.patch.dict(os.environ, credentials):  # the nodes copy os.environ when they start
        cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
