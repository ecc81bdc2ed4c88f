"""Pytest fixtures for a real local SeaweedFS S3 server. tests/data/conftest.py provides them to every test
under tests/data; test modules elsewhere import them (pytest finds fixtures by name)::

    from tests.data.s3_fixture import s3_env, s3_prefix, s3_server  # noqa: F401

``s3_server`` is session scoped: one server (a single ``weed`` process on 127.0.0.1) with the bucket
``s3_server.bucket`` created, stopped by PID at the end of the session. Tests share it, so each test must
write under its own prefix: ``s3_prefix`` gives a fresh ``s3://bucket/<test>-<random>`` URL per test. Tests
that restart or break the server must start their own ``LocalS3Server`` instead of using this one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from mmclip_dist.data.s3_server import LocalS3Server

S3_TEST_BUCKET = "mmclip-test"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3Server]:
    """A running SeaweedFS S3 server with bucket ``S3_TEST_BUCKET`` (``.endpoint``, ``.env()``, ``.client()``)."""
    server = LocalS3Server(tmp_path_factory.mktemp("seaweedfs"), bucket=S3_TEST_BUCKET)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def s3_prefix(s3_server: LocalS3Server, request: pytest.FixtureRequest) -> str:
    """A unique ``s3://bucket/prefix`` for one test in the shared server."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:60]
    return f"s3://{s3_server.bucket}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def s3_env(s3_server: LocalS3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Export the server's ``AWS_*`` variables into ``os.environ`` for the duration of one test."""
    env = s3_server.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
