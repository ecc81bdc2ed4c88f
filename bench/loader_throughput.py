"""Training-loader throughput: samples/s per DataLoader worker count, local folder vs S3, and resume cost.

Writes shards of synthetic breasts at the model input size (16-bit PNGs of smooth tissue plus noise, so
PNG decoding costs what it costs on real data), optionally uploads them to a local SeaweedFS S3 server,
then times on the same shards:

* decode only: ``decode_sample`` + ``collate_samples`` in the main process (the per-sample CPU floor);
* the train loader with 0, 1, 2, ... workers (one rank of ``world_size`` 1), first batch excluded;
* resume: starting from a saved position after the same number of batches (skipped without decoding).

    .venv/bin/python bench/loader_throughput.py [--samples 192 --size 760 480 --workers 0 2 --s3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

from mmclip_devtools.s3_server import LocalS3Server
from mmclip_dist.config import DataConfig
from mmclip_dist.data.storage import open_storage
from mmclip_dist.data.stream.loader import collate_samples, decode_sample, iter_shard, list_shards, make_train_loader
from mmclip_dist.model.tokenizer import train_wordpiece_tokenizer

REPORT = "Projection Position: LCC\nBreast Density: B.\nFindings: an irregular mass in the upper outer quadrant."


def _png16(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(folder: Path, samples: int, per_shard: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    tissue = 20000 + 15000 * np.sin(x / 37.0) * np.cos(y / 53.0)
    for index in range(-(-samples // per_shard)):
        with wds.TarWriter(str(folder / f"train-{index:06d}.tar")) as sink:
            for i in range(index * per_shard, min(samples, (index + 1) * per_shard)):
                views = {
                    v: {
                        "boxes": [[40, 60, 120, 150]],
                        "box_labels": ["Mass"],
                        "box_flags": ["ok"],
                        "report": REPORT,
                        "transform": {},
                    }
                    for v in ("cc", "mlo")
                }
                meta = {"schema": 1, "label": {"malignant": i % 2}, "views": views}
                images = {v: _png16(np.clip(tissue + rng.normal(0, 800, (h, w)), 0, 65535)) for v in ("cc", "mlo")}
                sink.write(
                    {
                        "__key__": f"b{i:06d}",
                        "cc.png": images["cc"],
                        "mlo.png": images["mlo"],
                        "json": json.dumps(meta).encode(),
                    }
                )


def time_loader(cfg: DataConfig, tokenizer: Any, micro_batch: int, batches: int) -> float:
    """Seconds per batch after the first (the first pays worker start-up and the shuffle-buffer fill)."""
    loader = make_train_loader(cfg, tokenizer, rank=0, world_size=1, micro_batch=micro_batch, seed=0)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    count = sum(1 for _ in zip(range(batches), iterator, strict=False))
    return (time.perf_counter() - start) / max(count, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=192)
    parser.add_argument("--per-shard", type=int, default=24)
    parser.add_argument("--size", type=int, nargs=2, default=(760, 480))
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per configuration")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--s3", action="store_true", help="also read the shards from a local SeaweedFS S3")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    size = (args.size[0], args.size[1])
    (work / "shards").mkdir()
    write_shards(work / "shards", args.samples, args.per_shard, size)
    tokenizer = train_wordpiece_tokenizer([REPORT] * 4, vocab_size=200)
    base = DataConfig(image_size=size, shuffle_buffer=16, max_text_len=128)
    mib = sum(p.stat().st_size for p in (work / "shards").iterdir()) / 2**20
    print(f"{args.samples} samples {size[0]}x{size[1]} in {mib:.0f} MiB of shards; micro-batch {args.micro_batch}")

    raw = [s for url in list_shards(str(work / "shards"), split="train")[:1] for s in iter_shard(url)]
    raw = raw[: args.micro_batch]
    start = time.perf_counter()
    for _ in range(3):
        collate_samples([decode_sample(s, base) for s in raw], base, tokenizer)
    floor = (time.perf_counter() - start) / 3
    print(f"decode+collate only, main process: {args.micro_batch / floor:7.1f} samples/s")

    sources = {"local": str(work / "shards")}
    server = None
    if args.s3:
        server = LocalS3Server(work / "s3", bucket="bench").start()
        os.environ.update(server.env())
        storage = open_storage("s3://bench/shards")
        for path in sorted((work / "shards").iterdir()):
            storage.put_file(path, path.name)
        sources["s3"] = "s3://bench/shards"
    try:
        for name, url in sources.items():
            for workers in args.workers:
                cfg = base.model_copy(update={"train_shards": url, "loader_workers": workers})
                per_batch = time_loader(cfg, tokenizer, args.micro_batch, args.batches)
                print(f"{name:5s} workers={workers}: {args.micro_batch / per_batch:7.1f} samples/s")
            cfg = base.model_copy(update={"train_shards": url, "loader_workers": 0})
            loader_full = time_loader(cfg, tokenizer, args.micro_batch, args.batches)
            start = time.perf_counter()
            fresh = make_train_loader(cfg, tokenizer, rank=0, world_size=1, micro_batch=args.micro_batch, seed=0)
            position = fresh.plan.position_after(args.batches)
            skipped = make_train_loader(
                cfg, tokenizer, rank=0, world_size=1, micro_batch=args.micro_batch, seed=0, position=position
            )
            next(iter(skipped))
            skip_time = time.perf_counter() - start
            print(
                f"{name:5s} resume: skipping {args.batches} batches + 1 batch took {skip_time:.2f}s "
                f"vs {loader_full * (args.batches + 1):.2f}s to produce them"
            )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
