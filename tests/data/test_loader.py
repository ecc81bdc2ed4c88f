"""Loader: decoding keeps 16 bits, masks/boxes/tokens follow the batch contract, and the training stream keeps
the distributed invariants (equal batch counts, determinism, cheap skip) on local folders and real S3."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from mmclip_devtools.s3_server import LocalS3Server
from mmclip_dist.config import DataConfig
from mmclip_dist.data.storage import open_storage
from mmclip_dist.data.stream.loader import (
    collate_samples,
    count_samples,
    decode_sample,
    list_shards,
    make_eval_loader,
    make_train_loader,
    masks_from_boxes,
)

H, W = 12, 16
WORDS = ["projection", "position", "lcc", "lmlo", "mass", "in", "left", "breast", "density", "b", ".", ":"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """WordPiece over a 16-word vocabulary with BERT's [CLS] ... [SEP] template."""
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def png16(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def png8(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_sample(
    key: str,
    *,
    size: tuple[int, int] = (H, W),
    cc_boxes: list[list[float]] | None = None,
    mlo_boxes: list[list[float]] | None = None,
    label: int = 1,
    value: int = 1000,
    noise: bool = False,
) -> dict[str, Any]:
    """One breast following the shard schema of docs/architecture.md."""
    rng = np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:8], 16))
    cc = np.full(size, value, np.uint16)
    mlo = np.full(size, value // 2, np.uint16)
    if noise:  # incompressible pixels, so shards are big enough to be cut mid-stream
        cc = rng.integers(0, 65536, size).astype(np.uint16)
        mlo = rng.integers(0, 65536, size).astype(np.uint16)
    meta = {
        "schema": 1,
        "dataset": "vindr",
        "breast_id": key,
        "patient_id": "p" + key,
        "laterality": "L",
        "split": "train",
        "label": {"malignant": label, "source": "birads_proxy"},
        "density": "B",
        "birads": 4,
        "views": {
            "cc": {
                "boxes": cc_boxes or [],
                "box_labels": [],
                "box_flags": [],
                "report": "Projection Position: LCC\nMass in left breast.",
                "transform": {},
            },
            "mlo": {
                "boxes": mlo_boxes or [],
                "box_labels": [],
                "box_flags": [],
                "report": "Projection Position: LMLO",
                "transform": {},
            },
        },
    }
    return {"__key__": key, "cc.png": png16(cc), "mlo.png": png16(mlo), "json": json.dumps(meta).encode()}


def write_shards(folder: Path, split: str, counts: list[int], **sample_kwargs: Any) -> list[str]:
    """Shards ``{split}-NNNNNN.tar`` with ``counts[i]`` samples; keys ``{split}{shard}x{i}`` (no dots)."""
    folder.mkdir(parents=True, exist_ok=True)
    urls = []
    for index, count in enumerate(counts):
        path = folder / f"{split}-{index:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(count):
                sink.write(make_sample(f"{split}{index}x{i}", label=i % 2, **sample_kwargs))
        urls.append(str(path))
    return urls


def decoded(sample: dict[str, Any], cfg: DataConfig) -> dict[str, Any]:
    return decode_sample({**sample, "__url__": "mem"}, cfg)


def keys_of(loader: Any) -> list[list[str]]:
    return [batch["keys"] for batch in loader]


# ---------------------------------------------------------------------------------------------- decoding


def test_decode_keeps_16_bit_values() -> None:
    sample = make_sample("a1")
    cc = np.full((H, W), 1000, np.uint16)
    cc[2, 3] = 40000
    cc[5, 7] = 65535
    sample["cc.png"] = png16(cc)
    out = decoded(sample, DataConfig(image_size=(H, W)))
    assert out["images"].shape == (2, 1, H, W) and out["images"].dtype == np.float32
    assert out["images"][0, 0, 2, 3] == np.float32(40000 / 65535)
    assert out["images"][0, 0, 5, 7] == 1.0
    assert out["images"][0, 0, 0, 0] == np.float32(1000 / 65535)
    assert out["images"][1, 0, 0, 0] == np.float32(500 / 65535)  # mlo
    # 40000 and 40001 stay distinguishable: an 8-bit squash would merge them
    cc[2, 4] = 40001
    sample["cc.png"] = png16(cc)
    out = decoded(sample, DataConfig(image_size=(H, W)))
    assert round(float(out["images"][0, 0, 2, 4]) * 65535) == 40001


def test_masks_from_boxes_cover_overlapped_pixels() -> None:
    # x 1.5..4.0 overlaps columns 1, 2, 3; y 2.2..5.0 overlaps rows 2, 3, 4
    mask = masks_from_boxes(np.array([[1.5, 2.2, 4.0, 5.0]], np.float32), H, W)
    expected = np.zeros((H, W), np.uint8)
    expected[2:5, 1:4] = 1
    np.testing.assert_array_equal(mask, expected)
    # a box past the border is clipped to the image
    mask = masks_from_boxes(np.array([[14.2, 10.0, 30.0, 20.0]], np.float32), H, W)
    assert mask.sum() == 2 * 2 and mask[10:12, 14:16].all()


def test_boxes_padded_truncated_and_masked() -> None:
    cfg = DataConfig(image_size=(H, W), max_rois=3)
    five = [[0, 0, 2, 2], [3, 3, 5, 5], [6, 6, 8, 8], [9, 1, 11, 3], [12, 4, 14, 6]]
    out = decoded(make_sample("b1", cc_boxes=[[1.5, 2.25, 4.0, 5.0]], mlo_boxes=five), cfg)
    assert out["boxes"].shape == (2, 3, 4) and out["box_valid"].dtype == bool
    np.testing.assert_array_equal(out["boxes"][0], [[1.5, 2.25, 4.0, 5.0], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(out["box_valid"][0], [True, False, False])
    np.testing.assert_array_equal(out["boxes"][1], five[:3])
    np.testing.assert_array_equal(out["box_valid"][1], [True, True, True])
    # cc mask: the 3x3 block of the one box; mlo mask: all five boxes (the mask is the lesion map, not the RoIs)
    assert out["masks"][0, 0].sum() == 9 and out["masks"][0, 0, 2:5, 1:4].all()
    assert out["masks"][1, 0].sum() == 5 * 4
    # a zero-area box is dropped, not kept as a valid RoI
    out = decoded(make_sample("b2", cc_boxes=[[4, 4, 4, 9], [1, 1, 3, 3]]), cfg)
    np.testing.assert_array_equal(out["boxes"][0, 0], [1, 1, 3, 3])
    np.testing.assert_array_equal(out["box_valid"][0], [True, False, False])
    assert out["label"] == 1 and out["key"] == "b2"


def test_stored_mask_wins_over_boxes() -> None:
    sample = make_sample("c1", cc_boxes=[[0, 0, 4, 4]])
    stored = np.zeros((H, W), np.uint8)
    stored[7, 9] = 255
    sample["cc_mask.png"] = png8(stored)
    out = decoded(sample, DataConfig(image_size=(H, W)))
    assert out["masks"][0, 0].sum() == 1 and out["masks"][0, 0, 7, 9] == 1.0
    assert out["masks"][1, 0].sum() == 0  # mlo: no stored mask, no boxes


def test_resize_scales_boxes_and_masks() -> None:
    sample = make_sample("d1", size=(6, 8), cc_boxes=[[1, 1, 3, 2]], value=30000)
    out = decoded(sample, DataConfig(image_size=(H, W)))  # twice the stored size
    assert out["images"].shape == (2, 1, H, W)
    np.testing.assert_allclose(out["images"][0, 0], 30000 / 65535, rtol=1e-6)
    np.testing.assert_array_equal(out["boxes"][0, 0], [2, 2, 6, 4])
    assert out["masks"][0, 0].sum() == 4 * 2 and out["masks"][0, 0, 2:4, 2:6].all()


def test_decode_errors_name_the_sample() -> None:
    cfg = DataConfig(image_size=(H, W))
    sample = make_sample("e1")
    del sample["mlo.png"]
    with pytest.raises(ValueError, match=r"sample e1 in mem: view 'mlo' missing"):
        decoded(sample, cfg)
    sample = make_sample("e2")
    sample["cc.png"] = b"not a png"
    with pytest.raises(ValueError, match=r"sample e2 in mem cc.png: not a decodable PNG"):
        decoded(sample, cfg)
    sample = make_sample("e3")
    meta = json.loads(sample["json"])
    meta["views"]["cc"]["boxes"] = [[1, 2, 3]]
    sample["json"] = json.dumps(meta).encode()
    with pytest.raises(ValueError, match=r"sample e3 in mem views.cc: boxes must be"):
        decoded(sample, cfg)


def test_collate_tokenises_each_view() -> None:
    cfg = DataConfig(image_size=(H, W), max_text_len=10, max_rois=2)
    tokenizer = tiny_tokenizer()
    batch = collate_samples(
        [decoded(make_sample(k, label=lab), cfg) for k, lab in [("f1", 1), ("f2", -1)]], cfg, tokenizer
    )
    assert batch["images"].shape == (2, 2, 1, H, W) and batch["images"].dtype == torch.float32
    assert batch["masks"].shape == (2, 2, 1, H, W)
    assert batch["boxes"].shape == (2, 2, 2, 4) and batch["box_valid"].dtype == torch.bool
    assert batch["input_ids"].shape == (2, 2, 10) and batch["input_ids"].dtype == torch.int64
    assert batch["attention_mask"].shape == (2, 2, 10) and batch["attention_mask"].dtype == torch.int64
    assert batch["label"].tolist() == [1, -1] and batch["keys"] == ["f1", "f2"]
    vocab = tokenizer.get_vocab()
    # cc: [CLS] projection position : lcc mass in left breast . [SEP] = 11 tokens -> truncated to 10
    cc_ids = [vocab[t] for t in ["[CLS]", "projection", "position", ":", "lcc", "mass", "in", "left", "breast"]]
    assert batch["input_ids"][0, 0].tolist() == cc_ids + [vocab["[SEP]"]]
    assert batch["attention_mask"][0, 0].tolist() == [1] * 10
    # mlo: [CLS] projection position : lmlo [SEP] then padding
    mlo_ids = [vocab[t] for t in ["[CLS]", "projection", "position", ":", "lmlo", "[SEP]"]]
    assert batch["input_ids"][1, 1].tolist() == mlo_ids + [vocab["[PAD]"]] * 4
    assert batch["attention_mask"][1, 1].tolist() == [1] * 6 + [0] * 4


# ---------------------------------------------------------------------------------------------- shards


def test_list_and_count_shards(tmp_path: Path) -> None:
    write_shards(tmp_path, "train", [3, 2])
    write_shards(tmp_path, "test", [4])
    (tmp_path / "notes.txt").write_text("x")
    assert list_shards(str(tmp_path), split="train") == [
        str(tmp_path / "train-000000.tar"),
        str(tmp_path / "train-000001.tar"),
    ]
    assert [Path(u).name for u in list_shards(str(tmp_path))] == [
        "test-000000.tar",
        "train-000000.tar",
        "train-000001.tar",
    ]
    assert list_shards(str(tmp_path / "train-{000000..000002}.tar"))[-1] == str(tmp_path / "train-000002.tar")
    with pytest.raises(FileNotFoundError, match=r"no shards named val-NNNNNN.tar .* \['test', 'train'\]"):
        list_shards(str(tmp_path), split="val")
    # no records: tar headers are read
    assert count_samples(list_shards(str(tmp_path), split="train")) == 5
    assert count_samples(list_shards(str(tmp_path))) == 9
    # the shard writer's sidecar (train-000000.json) is trusted when present ...
    (tmp_path / "train-000000.json").write_text(json.dumps({"name": "train-000000.tar", "samples": 30}))
    assert count_samples(list_shards(str(tmp_path), split="train")) == 32
    # ... and its manifest before that
    manifest = {
        "shards": [
            {"name": "train-000000.tar", "split": "train", "samples": 300},
            {"name": "train-000001.tar", "split": "train", "samples": 200},
        ]
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert count_samples(list_shards(str(tmp_path), split="train")) == 500
    assert count_samples(list_shards(str(tmp_path))) == 504  # test-000000.tar is not in it: scanned


# ---------------------------------------------------------------------------------------------- training


def train_keys(folder: Path, *, rank: int, world: int = 2, workers: int = 2, **kw: Any) -> list[list[str]]:
    cfg = DataConfig(
        train_shards=str(folder), image_size=(H, W), loader_workers=workers, shuffle_buffer=4, max_text_len=8
    )
    args = {"micro_batch": 2, "seed": 7, "epoch": 0, **kw}
    return keys_of(make_train_loader(cfg, tiny_tokenizer(), rank=rank, world_size=world, **args))


def test_train_stream_invariants(tmp_path: Path) -> None:
    write_shards(tmp_path, "train", [3, 5, 7, 9])  # 24 samples, uneven shards
    write_shards(tmp_path, "test", [6])  # must not leak into training
    cfg = DataConfig(train_shards=str(tmp_path), image_size=(H, W), loader_workers=2, shuffle_buffer=4, max_text_len=8)
    loader = make_train_loader(cfg, tiny_tokenizer(), rank=0, world_size=2, micro_batch=2, seed=7)
    assert len(loader) == 24 // (2 * 2)
    ranks = [train_keys(tmp_path, rank=r) for r in (0, 1)]
    assert [len(k) for k in ranks] == [6, 6]  # equal batch counts on every rank
    assert all(len(b) == 2 for k in ranks for b in k)
    flat = [key for k in ranks for b in k for key in b]
    assert all(key.startswith("train") for key in flat)
    assert len(set(flat)) == 24  # one epoch: every sample exactly once
    # deterministic for the same (seed, epoch, rank); another epoch reorders
    assert train_keys(tmp_path, rank=1) == ranks[1]
    assert train_keys(tmp_path, rank=1, epoch=1) != ranks[1]
    # resume at another world size from the position after 2 batches per rank: the rest, exactly once
    first = [key for k in ranks for b in k[:2] for key in b]
    rest = train_keys(tmp_path, rank=0, world=1, workers=1, position=loader.plan.position_after(2))
    assert sorted(first + [key for b in rest for key in b]) == sorted(flat)
    # resume on the same shape after s batches (mid-window too): exactly the uninterrupted tail, batch for batch
    for skip in (1, 3, 6):
        resumed = train_keys(tmp_path, rank=1, position=loader.plan.position_after(skip))
        assert resumed == ranks[1][skip:], skip


def test_train_epoch_samples_and_in_process_reader(tmp_path: Path) -> None:
    write_shards(tmp_path, "train", [3, 4])
    cfg = DataConfig(train_shards=str(tmp_path), image_size=(H, W), loader_workers=0, epoch_samples=6, max_text_len=8)
    keys = [
        keys_of(make_train_loader(cfg, tiny_tokenizer(), rank=r, world_size=2, micro_batch=3, seed=1)) for r in (0, 1)
    ]
    assert [len(k) for k in keys] == [1, 1]  # epoch_samples=6 of 7: one step of 2 x 3
    batch = next(iter(make_train_loader(cfg, tiny_tokenizer(), rank=0, world_size=2, micro_batch=3, seed=1)))
    assert batch["images"].shape == (3, 2, 1, H, W) and batch["input_ids"].shape == (3, 2, 8)
    with pytest.raises(ValueError, match="cannot fill one step"):
        make_train_loader(cfg, tiny_tokenizer(), rank=0, world_size=2, micro_batch=8, seed=0)


# ---------------------------------------------------------------------------------------------- evaluation


def test_eval_stream_is_ordered_complete_and_keeps_last_batch(tmp_path: Path) -> None:
    write_shards(tmp_path, "test", [4, 3, 3])
    write_shards(tmp_path, "train", [5])
    cfg = DataConfig(image_size=(H, W), max_text_len=8)
    batches = list(make_eval_loader(str(tmp_path), cfg, tiny_tokenizer(), batch_size=4))
    assert [len(b["keys"]) for b in batches] == [4, 4, 2]
    expected = [f"test{s}x{i}" for s, n in enumerate([4, 3, 3]) for i in range(n)]
    assert [k for b in batches for k in b["keys"]] == expected
    assert batches[-1]["images"].shape == (2, 2, 1, H, W)
    assert batches[0]["label"].tolist() == [0, 1, 0, 1]
    # an explicit shard list is read in the given order
    shards = list_shards(str(tmp_path), split="test")[::-1]
    keys = [k for b in make_eval_loader(shards, cfg, tiny_tokenizer(), batch_size=3) for k in b["keys"]]
    assert keys[:3] == ["test2x0", "test2x1", "test2x2"] and len(keys) == 10


# ---------------------------------------------------------------------------------------------- S3


@pytest.mark.integration
def test_s3_train_stream_matches_local(
    tmp_path: Path, s3_server: LocalS3Server, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    local = tmp_path / "shards"
    write_shards(local, "train", [3, 5, 4, 6])
    storage = open_storage(s3_prefix)
    for path in sorted(local.iterdir()):
        storage.put_file(path, path.name)
    assert list_shards(s3_prefix, split="train") == [f"{s3_prefix}/train-{i:06d}.tar" for i in range(4)]
    assert count_samples(list_shards(s3_prefix, split="train")) == 18
    local_keys = train_keys(local, rank=0)
    s3_keys = train_keys(s3_prefix, rank=0)  # type: ignore[arg-type]
    assert s3_keys == local_keys and len(s3_keys) == 18 // 4


@pytest.mark.integration
def test_s3_restart_mid_stream_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size = (256, 256)  # incompressible 16-bit noise: 256 KB per sample, 4 MB per shard
    local = tmp_path / "shards"
    write_shards(local, "test", [16, 16], size=size, noise=True)
    with LocalS3Server(tmp_path / "s3", bucket="restart") as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        storage = open_storage("s3://restart/eval")
        for path in sorted(local.iterdir()):
            storage.put_file(path, path.name)
        cfg = DataConfig(image_size=size, max_text_len=8)
        keys: list[str] = []
        restarter = threading.Thread(target=server.start)
        first_pid = server.pid
        loader = make_eval_loader("s3://restart/eval", cfg, tiny_tokenizer(), batch_size=4)
        for index, batch in enumerate(loader):
            keys.extend(batch["keys"])
            if index == 0:
                # Kill the server after 4 of the first shard's 16 samples and bring it back (same ports and
                # data) while the loop goes on: the stream meets a dead or starting server and must wait.
                server.stop()
                restarter.start()
        restarter.join()
        # Shard 1 is opened only after batch 0, i.e. after the kill: its bytes can only come from the restarted
        # server (mid-body resumption itself is pinned down in test_storage with an object too big to buffer).
        assert keys == [f"test{s}x{i}" for s in range(2) for i in range(16)]
        assert server.pid is not None and server.pid != first_pid


# ---------------------------------------------------------------------------------------------- real shards


@pytest.mark.integration
def test_reads_shards_written_by_the_shard_builder(tmp_path: Path) -> None:
    """The schema contract end to end: synthetic DICOMs → build_shards → both streams."""
    from mmclip_dist.config import ShardsConfig, SyntheticConfig
    from mmclip_dist.data.build.builder import build_shards
    from mmclip_dist.data.synthetic import generate_vindr_dataset

    generate_vindr_dataset(
        tmp_path / "dicom", SyntheticConfig(num_patients=4, height=160, width=120, test_fraction=0.5)
    )
    out = tmp_path / "shards"
    result = build_shards(
        ShardsConfig(
            input=str(tmp_path / "dicom"), output=str(out), image_size=(96, 64), shard_max_samples=2, processes=1
        ),
        progress=False,
    )
    splits = result.manifest["splits"]
    cfg = DataConfig(
        train_shards=str(out),
        eval_shards=str(out),
        image_size=(96, 64),
        max_rois=2,
        max_text_len=32,
        loader_workers=0,
        shuffle_buffer=2,
    )
    train = list(make_train_loader(cfg, tiny_tokenizer(), rank=0, world_size=1, micro_batch=2, seed=0))
    assert len(train) == splits["train"]["samples"] // 2
    evals = list(make_eval_loader(cfg.eval_shards, cfg, tiny_tokenizer(), batch_size=3))
    assert sum(len(b["keys"]) for b in evals) == splits["test"]["samples"]
    assert sum(int(b["box_valid"].sum()) for b in train + evals) > 0  # lesions made it through
    for batch in train + evals:
        images, masks = batch["images"], batch["masks"]
        assert images.shape[1:] == (2, 1, 96, 64) and images.min() >= 0.0 and images.max() <= 1.0
        assert set(masks.unique().tolist()) <= {0.0, 1.0}
        boxes, valid = batch["boxes"], batch["box_valid"]
        assert (boxes[~valid] == 0).all()
        # every valid RoI lies in the image and is covered by the mask
        assert (boxes[valid][:, 2] <= 64).all() and (boxes[valid][:, 3] <= 96).all()
        for b, v, r in valid.nonzero().tolist():
            x1, y1, x2, y2 = boxes[b, v, r].tolist()
            cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
            assert masks[b, v, 0, cy, cx] == 1.0
        assert batch["attention_mask"][:, :, 0].all()  # [CLS] of every report
