"""The shard set: resolved once (listing + manifest counts), dealt to ranks x loader workers by one rule, and
handed to the ranks so that they never list or count again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmclip_dist.config import Config, DataConfig
from mmclip_dist.data import storage as storage_module
from mmclip_dist.data.stream import shard_set as shard_set_module
from mmclip_dist.data.stream.loader import make_train_loader, train_shard_set
from mmclip_dist.data.stream.shard_set import ShardSet, resolve_shard_set, share
from mmclip_dist.train.step_batches import step_stream
from tests.data.test_loader import H, W, keys_of, tiny_tokenizer, write_shards


def _manifest(folder: Path, counts: dict[str, int]) -> None:
    shards = [{"name": name, "split": name.split("-")[0], "samples": n} for name, n in counts.items()]
    (folder / "manifest.json").write_text(json.dumps({"shards": shards}))


def test_resolve_reads_per_shard_counts_and_round_trips(tmp_path: Path) -> None:
    write_shards(tmp_path, "train", [3, 5, 2])
    write_shards(tmp_path, "test", [4])
    scanned = resolve_shard_set(str(tmp_path), split="train")
    assert [Path(u).name for u in scanned.urls] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert scanned.counts == (3, 5, 2) and scanned.total == 10 and scanned.source == str(tmp_path)
    # the manifest is the record when present (one read for the folder)
    _manifest(tmp_path, {"train-000000.tar": 30, "train-000001.tar": 50, "train-000002.tar": 20})
    resolved = resolve_shard_set(str(tmp_path), "http://s3.example:8333", "train")
    assert resolved.counts == (30, 50, 20) and resolved.endpoint == "http://s3.example:8333"
    assert ShardSet.from_json(json.loads(json.dumps(resolved.to_json()))) == resolved
    with pytest.raises(ValueError, match="3 shard URLs but 2 counts"):
        ShardSet(resolved.urls, (1, 2))


def test_split_rule_deals_every_shard_to_exactly_one_reader() -> None:
    shards = ShardSet(tuple(f"s{i}.tar" for i in range(10)), tuple(range(10)))
    world, readers = 2, 3
    dealt = [
        shards.for_reader(rank=r, world_size=world, readers=readers, role=w, split_by_node=True)
        for r in range(world)
        for w in range(readers)
    ]
    assert sorted(u for d in dealt for u in d.urls) == sorted(shards.urls)
    assert dealt[0].urls == ("s0.tar", "s6.tar") and dealt[0].counts == (0, 6)  # reader 0 of 6
    assert dealt[4].urls == ("s4.tar",)  # rank 1, worker 1 = reader 4
    assert shards.for_reader(rank=1, world_size=2, readers=3, role=2, split_by_node=False) is shards
    assert [share(10, 3, i) for i in range(3)] == [4, 3, 3] and share(2, 3, 2) == 0
    with pytest.raises(ValueError, match=r"10 training shard\(s\) .* 4 x 3 = 12 readers"):
        shards.check_split(4, 3)


def test_ranks_given_the_shard_set_never_list_or_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the driver hands the ranks (``train_loop_config``) is all they need: listing, manifest and sidecar
    reads raise on the 'ranks' (also in their forked DataLoader workers), and the batches are unchanged."""
    from mmclip_dist.train.trainer import train_loop_config

    write_shards(tmp_path, "train", [3, 5, 7, 9])
    _manifest(tmp_path, {f"train-{i:06d}.tar": n for i, n in enumerate([3, 5, 7, 9])})
    data = {"train_shards": str(tmp_path), "image_size": [H, W], "loader_workers": 2, "shuffle_buffer": 4,
            "max_text_len": 8}  # fmt: skip
    cfg = Config.model_validate({"data": data, "train": {"global_batch": 8, "micro_batch": 2}})
    expected = {r: keys_of(make_train_loader(cfg.data, tiny_tokenizer(), rank=r, world_size=2, micro_batch=2, seed=0))
                for r in (0, 1)}  # fmt: skip

    handed = train_loop_config(cfg, "run-id", "file:///nowhere")["train_shards"]
    assert handed["counts"] == [3, 5, 7, 9] and len(handed["urls"]) == 4

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a rank listed or counted the shards")

    monkeypatch.setattr(storage_module.LocalStorage, "list", forbidden)
    monkeypatch.setattr(storage_module.LocalStorage, "exists", forbidden)
    monkeypatch.setattr(storage_module.LocalStorage, "get_bytes", forbidden)
    monkeypatch.setattr(shard_set_module, "list_shards", forbidden)
    with pytest.raises(AssertionError, match="listed or counted"):
        train_shard_set(cfg.data)  # the instrumentation bites
    shard_set = ShardSet.from_json(handed)
    for rank in (0, 1):
        stream = step_stream(cfg, tiny_tokenizer(), rank, 2, 0, 0, shard_set)
        got = [b["keys"] for _ in range(6) for b in next(stream).micro_batches]  # two epochs of 6 batches
        assert got[:6] == expected[rank] and len(got) == 12


def test_epoch_samples_override_the_counts(tmp_path: Path) -> None:
    write_shards(tmp_path, "train", [3, 4])
    cfg = DataConfig(train_shards=str(tmp_path), image_size=(H, W), loader_workers=0, epoch_samples=20, max_text_len=8)
    loader = make_train_loader(cfg, tiny_tokenizer(), rank=0, world_size=2, micro_batch=3, seed=1,
                               shard_set=train_shard_set(cfg))  # fmt: skip
    assert len(loader) == 20 // 6
