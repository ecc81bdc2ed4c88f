"""The local SeaweedFS S3 server: loopback-only ports, SigV4 auth, env for subprocesses, restart keeps data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from botocore.exceptions import ClientError

from mmclip_devtools.s3_server import LocalS3Server

pytestmark = pytest.mark.integration


def _listening(pid: int) -> set[tuple[str, int]]:
    return {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.Process(pid).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }


def test_binds_only_loopback_and_every_port_is_known(s3_server: LocalS3Server) -> None:
    assert s3_server.pid is not None
    listening = _listening(s3_server.pid)
    assert listening, "server listens on nothing"
    assert {ip for ip, _ in listening} == {"127.0.0.1"}
    assert {port for _, port in listening} == set(s3_server.ports.values())
    # UDP too: nothing on a public interface
    udp = [c for c in psutil.Process(s3_server.pid).net_connections(kind="udp")]
    assert all(c.laddr.ip == "127.0.0.1" for c in udp)
    # a single process, no helper children to leak
    assert psutil.Process(s3_server.pid).children(recursive=True) == []


def test_roundtrip_and_wrong_secret_is_rejected(s3_server: LocalS3Server) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_server.bucket, Key="t/roundtrip.bin", Body=b"\x00\x01" * 1000)
    got = client.get_object(Bucket=s3_server.bucket, Key="t/roundtrip.bin", Range="bytes=2-5")["Body"].read()
    assert got == b"\x00\x01\x00\x01"

    import boto3
    from botocore.config import Config

    bad = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key="wrong-" + s3_server.secret_key,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as err:
        bad.list_objects_v2(Bucket=s3_server.bucket)
    assert err.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId"}


def test_env_reaches_a_subprocess(s3_server: LocalS3Server) -> None:
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="t/env.txt", Body=b"from-parent")
    code = (
        "import boto3; c = boto3.client('s3');"
        f"print(c.get_object(Bucket='{s3_server.bucket}', Key='t/env.txt')['Body'].read().decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": "/usr/bin:/bin", **s3_server.env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "from-parent"


def test_restart_keeps_ports_and_objects(tmp_path: Path) -> None:
    with LocalS3Server(tmp_path / "s3", bucket="restart-test") as server:
        server.client().put_object(Bucket="restart-test", Key="k", Body=b"survives")
        ports, old_pid = server.ports, server.pid
        server.restart()
        assert server.ports == ports
        assert server.pid != old_pid
        assert not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == psutil.STATUS_ZOMBIE
        assert server.client().get_object(Bucket="restart-test", Key="k")["Body"].read() == b"survives"
        pid = server.pid
    assert server.pid is None
    assert not psutil.pid_exists(pid)
