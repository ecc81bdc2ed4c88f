"""Training-loader throughput at production size: breasts/s per loader process, PNG vs zstd payload, local vs S3.

Writes the same synthetic breasts (760x480 16-bit tissue plus noise, a box and a report per view) twice: as
schema-1 shards (16-bit PNG members, what the builder wrote before) and as current shards (``.u16.zst``),
optionally uploads both to a local SeaweedFS S3 server, and then measures, in one run:

* the per-stage CPU cost of turning one breast into its batch row (tar read, json, pixel decode, float
  conversion, masks from boxes, tokenisation, all of ``decode_batch``), for each payload;
* the train loader (one rank, shard set resolved once) with 1 and 2 loader processes for every
  (payload, source): wall-clock breasts/s, and breasts per CPU-second of the loader processes (their user +
  system time, read when they exit; steady state: an epoch of ``--samples`` minus an epoch of one batch per
  process). The latter is "breasts/s per loader process on one core": it does not depend on how many other
  jobs share the machine, while wall-clock figures do;
* ratios: zstd vs PNG, S3 vs local; and the loader cores one GPU needs at ``--gpu-images-per-s``.

    .venv/bin/python bench/loader_throughput.py --s3   # defaults: --samples 192 --size 760 480 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per loader process, tokenizer included

import imagecodecs  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402

from mmclip_devtools.s3_server import LocalS3Server  # noqa: E402
from mmclip_dist.config import DataConfig  # noqa: E402
from mmclip_dist.data.codecs import decode_file, encode_pixels  # noqa: E402
from mmclip_dist.data.storage import open_storage  # noqa: E402
from mmclip_dist.data.stream import loader as loader_module  # noqa: E402
from mmclip_dist.data.stream.loader import decode_batch, iter_shard, make_train_loader  # noqa: E402
from mmclip_dist.data.stream.shard_set import ShardSet, resolve_shard_set  # noqa: E402
from mmclip_dist.model.tokenizer import train_wordpiece_tokenizer  # noqa: E402

REPORT = (
    "Projection Position: {lat}{view}\nBreast Density: B. The breast tissue is heterogeneously dense.\n"
    "Findings: an irregular mass with spiculated margins in the upper outer quadrant, about {mm} mm.\n"
    "Impression: BI-RADS 4 (BI-RADS proxy, not biopsy-proven)."
)
FORMATS = {"png": "png", "zstd": "u16.zst"}  # label -> member extension


def write_shards(folder: Path, fmt: str, samples: int, per_shard: int, size: tuple[int, int]) -> None:
    """``train-NNNNNN.tar`` shards and a manifest; the same pixels for every format (same seed)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    tissue = 20000 + 15000 * np.sin(x / 37.0) * np.cos(y / 53.0)
    entries = []
    for index in range(-(-samples // per_shard)):
        name = f"train-{index:06d}.tar"
        keys = range(index * per_shard, min(samples, (index + 1) * per_shard))
        with wds.TarWriter(str(folder / name)) as sink:
            for i in keys:
                views = {
                    v: {"boxes": [[40, 60, 120, 150]], "box_labels": ["Mass"], "box_flags": ["ok"],
                        "report": REPORT.format(lat="L", view=v.upper(), mm=5 + i % 30), "transform": {}}
                    for v in ("cc", "mlo")
                }  # fmt: skip
                meta = {"schema": 1 if fmt == "png" else 2, "label": {"malignant": i % 2}, "views": views}
                sample: dict[str, Any] = {"__key__": f"b{i:06d}", "json": json.dumps(meta).encode()}
                for v in ("cc", "mlo"):
                    image = np.clip(tissue + rng.normal(0, 800, (h, w)), 0, 65535).astype(np.uint16)
                    # level 1: what the builder wrote before the zstd payload
                    payload = imagecodecs.png_encode(image, level=1) if fmt == "png" else encode_pixels(image)
                    sample[f"{v}.{FORMATS[fmt]}"] = payload
                sink.write(sample)
        entries.append({"name": name, "split": "train", "samples": len(keys)})
    (folder / "manifest.json").write_text(json.dumps({"shards": entries}))


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    """CPU milliseconds of this process per call (best of ``repeats``)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best * 1000


def stage_breakdown(url: str, cfg: DataConfig, tokenizer: Any, micro_batch: int, repeats: int) -> dict[str, float]:
    """CPU ms per breast of each stage of the loader's per-sample work, in this process (1 torch thread)."""
    raw = [s for s in iter_shard(url)][:micro_batch]
    n = len(raw)
    names = [[k for k in s if k.startswith(("cc.", "mlo."))] for s in raw]
    h, w = cfg.image_size
    row = np.zeros((2, h, w), np.float32)
    decoded = [[decode_file(k, s[k]) for k in ks] for s, ks in zip(raw, names, strict=True)]
    boxes = np.array([[40, 60, 120, 150]], np.float32)
    texts = [json.loads(s["json"])["views"][v]["report"] for s in raw for v in ("cc", "mlo")]

    def decode_all() -> None:
        for s, ks in zip(raw, names, strict=True):
            for k in ks:
                if k.endswith(".png"):
                    decode_file(k, s[k])
                else:  # the loader's path: into the process's reusable buffer
                    loader_module._decode_pixels(s, k, "bench")

    def to_float() -> None:
        for views in decoded:
            for v, image in enumerate(views):
                np.divide(image, np.float32(65535), out=row[v])

    def masks() -> None:
        for _ in range(n):
            out = np.zeros((2, h, w), np.float32)
            for v in range(2):
                loader_module.masks_from_boxes(boxes, h, w, out=out[v])

    stages = {
        "tar read (local, page cache)": cpu_ms(lambda: sum(1 for _ in iter_shard(url)), repeats) / (
            sum(1 for _ in iter_shard(url))),
        "json parse": cpu_ms(lambda: [json.loads(s["json"]) for s in raw], repeats) / n,
        "pixel decode, 2 views": cpu_ms(decode_all, repeats) / n,
        "uint16 -> float32 into the batch row": cpu_ms(to_float, repeats) / n,
        "masks from boxes (fresh zeroed pages)": cpu_ms(masks, repeats) / n,
        "tokenise 2 reports": cpu_ms(lambda: loader_module._tokenise(
            [{"reports": texts[i : i + 2]} for i in range(0, len(texts), 2)], cfg, tokenizer), repeats) / n,
        "decode_batch, all of it": cpu_ms(lambda: decode_batch(raw, cfg, tokenizer), repeats) / n,
    }  # fmt: skip
    return stages


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_loader(cfg: DataConfig, shards: ShardSet, tokenizer: Any, micro_batch: int) -> tuple[float, float]:
    """One epoch of one rank: (wall breasts/s after the first batch, loader-process CPU seconds of the epoch)."""
    loader = make_train_loader(cfg, tokenizer, rank=0, world_size=1, micro_batch=micro_batch, seed=0, shard_set=shards)
    cpu0, own0 = children_cpu(), time.process_time()
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    rest = sum(1 for _ in iterator)
    wall = time.perf_counter() - start
    del iterator  # the workers exit with the epoch; their CPU time is in RUSAGE_CHILDREN once reaped
    loader_cpu = children_cpu() - cpu0 if cfg.loader_workers else time.process_time() - own0
    return rest * micro_batch / max(wall, 1e-9), loader_cpu


def loader_rates(cfg: DataConfig, shards: ShardSet, tokenizer: Any, micro_batch: int, samples: int
                 ) -> tuple[float, float, float]:  # fmt: skip
    """(wall breasts/s, breasts per loader CPU second at steady state, start-up CPU s per loader process).

    Steady state = the marginal cost: an epoch of ``samples`` minus an epoch of one batch per process, so
    forking the workers, their S3 client and first connection (paid once per epoch) are not spread over
    this short epoch as they would not be over a real one."""
    workers = max(1, cfg.loader_workers)
    short = cfg.model_copy(update={"epoch_samples": micro_batch * workers})
    _, cpu_short = time_loader(short, shards, tokenizer, micro_batch)
    wall, cpu_long = time_loader(cfg.model_copy(update={"epoch_samples": samples}), shards, tokenizer, micro_batch)
    marginal = (samples - micro_batch * workers) / max(cpu_long - cpu_short, 1e-9)
    startup = (cpu_short - micro_batch * workers / marginal) / workers
    return wall, marginal, startup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=192)
    parser.add_argument("--per-shard", type=int, default=24)
    parser.add_argument("--size", type=int, nargs=2, default=(760, 480))
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="loader processes per rank")
    parser.add_argument("--repeats", type=int, default=5, help="best of N for the stage timings")
    parser.add_argument("--s3", action="store_true", help="also read the shards from a local SeaweedFS S3")
    parser.add_argument(
        "--gpu-images-per-s", type=float, default=500.0,
        help="images/s one GPU consumes (default: EfficientNet-B2 760x480 bf16 training, H100-class; "
             "see docs/benchmarks.md)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)  # DataLoader workers run with one thread; the in-process timings match them
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    size = (args.size[0], args.size[1])
    tokenizer = train_wordpiece_tokenizer(
        [REPORT.format(lat="L", view=v, mm=m) for v in ("CC", "MLO") for m in range(5, 35)], vocab_size=300
    )
    base = DataConfig(image_size=size, shuffle_buffer=16, max_text_len=128, split_by_node=False)
    sources: dict[tuple[str, str], str] = {}
    for fmt in FORMATS:
        write_shards(work / fmt, fmt, args.samples, args.per_shard, size)
        mib = sum(p.stat().st_size for p in (work / fmt).iterdir()) / 2**20
        print(f"{fmt:5s}: {args.samples} breasts {size[0]}x{size[1]}, {mib:.0f} MiB of shards")
        sources[(fmt, "local")] = str(work / fmt)

    print(f"\nCPU ms per breast by stage (one process, 1 thread, best of {args.repeats}):")
    stages = {fmt: stage_breakdown(str(work / fmt / "train-000000.tar"), base, tokenizer, args.micro_batch,
                                   args.repeats) for fmt in FORMATS}  # fmt: skip
    print(f"  {'stage':40s}" + "".join(f"{fmt:>9s}" for fmt in FORMATS))
    for stage in stages["png"]:
        print(f"  {stage:40s}" + "".join(f"{stages[fmt][stage]:9.2f}" for fmt in FORMATS))

    server = None
    if args.s3:
        server = LocalS3Server(work / "s3", bucket="bench").start()
        os.environ.update(server.env())
        for fmt in FORMATS:
            storage = open_storage(f"s3://bench/{fmt}")
            for path in sorted((work / fmt).iterdir()):
                storage.put_file(path, path.name)
            sources[(fmt, "s3")] = f"s3://bench/{fmt}"
    results: dict[tuple[str, str, int], tuple[float, float]] = {}
    try:
        print(f"\ntrain loader, one rank, micro-batch {args.micro_batch}, {args.samples} breasts per epoch:")
        print(f"  {'payload':7s} {'source':6s} {'procs':>5s} {'wall br/s':>10s} {'wall/proc':>10s} "
              f"{'br/CPU-s':>9s} {'start-up CPU s/proc':>20s}")  # fmt: skip
        for (fmt, where), url in sources.items():
            shards = resolve_shard_set(url, split="train")
            for workers in args.workers:
                cfg = base.model_copy(update={"train_shards": url, "loader_workers": workers})
                wall, per_cpu, startup = loader_rates(cfg, shards, tokenizer, args.micro_batch, args.samples)
                results[(fmt, where, workers)] = (wall, per_cpu)
                print(f"  {fmt:7s} {where:6s} {workers:5d} {wall:10.1f} {wall / max(workers, 1):10.1f} "
                      f"{per_cpu:9.1f} {startup:20.3f}")  # fmt: skip
    finally:
        if server is not None:
            server.stop()

    print("\nratios (breasts per loader-process CPU second):")
    for where in ("local", "s3") if args.s3 else ("local",):
        for workers in args.workers:
            new, old = results[("zstd", where, workers)][1], results[("png", where, workers)][1]
            print(f"  zstd / png, {where}, {workers} proc: {new / old:5.2f}")
    if args.s3:
        for fmt in FORMATS:
            for workers in args.workers:
                s3, local = results[(fmt, "s3", workers)][1], results[(fmt, "local", workers)][1]
                print(f"  s3 / local, {fmt}, {workers} proc: {s3 / local:5.2f}  (goal >= 0.8)")
    breasts_per_gpu = args.gpu_images_per_s / 2
    print(f"\nloader cores per GPU consuming {args.gpu_images_per_s:.0f} images/s = {breasts_per_gpu:.0f} breasts/s:")
    for fmt in FORMATS:
        per_core = results[(fmt, "local", args.workers[0])][1]
        print(f"  {fmt:5s}: {per_core:6.1f} breasts/s per core -> {breasts_per_gpu / per_core:5.1f} cores"
              + ("  (goal: >= 150 breasts/s per core)" if fmt == "zstd" else ""))  # fmt: skip


if __name__ == "__main__":
    main()
