"""Building shards straight into a real S3 server (SeaweedFS) and reading every sample back."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from mmclip_devtools.s3_server import LocalS3Server
from mmclip_dist.cli.main import main as cli_main
from mmclip_dist.config import ShardsConfig, SyntheticConfig
from mmclip_dist.data.build.builder import build_shards
from mmclip_dist.data.storage import open_storage
from mmclip_dist.data.synthetic import generate_vindr_dataset


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_build_into_s3_matches_local_build(
    s3_server: LocalS3Server,
    s3_prefix: str,
    s3_env: dict,
    tmp_path: Path,
) -> None:
    root = tmp_path / "in"
    generate_vindr_dataset(root, SyntheticConfig(num_patients=3, height=160, width=120))
    common = dict(input=str(root), image_size=(96, 64), shard_max_samples=2, processes=2)
    local = build_shards(ShardsConfig(output=str(tmp_path / "local"), **common), progress=False)
    remote = build_shards(ShardsConfig(output=s3_prefix, s3_endpoint=s3_server.endpoint, **common), progress=False)
    assert [s.sha256 for s in remote.shards] == [s.sha256 for s in local.shards]

    storage = open_storage(s3_prefix, endpoint=s3_server.endpoint)
    names = storage.list()
    assert "manifest.json" in names and "rejects.jsonl" in names
    assert not [n for n in names if "tmp" in n]  # nothing staged is left in the bucket
    keys = set()
    for shard in remote.shards:
        data = storage.get_bytes(shard.name)
        assert data == (tmp_path / "local" / shard.name).read_bytes()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            keys |= {m.name.split(".", 1)[0] for m in tar.getmembers()}
    assert len(keys) == remote.samples == 6
    assert cli_main(["shards", "verify", "--output", s3_prefix, "--endpoint", s3_server.endpoint]) == 0
    # A corrupted object is caught by verify.
    first = remote.shards[0].name
    storage.put_bytes(storage.get_bytes(first)[:-512], first)
    assert cli_main(["shards", "verify", "--output", s3_prefix, "--endpoint", s3_server.endpoint]) == 1
