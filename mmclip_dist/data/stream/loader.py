"""WebDataset shards → collated training / evaluation batches (the "Batch" contract in docs/architecture.md).

Training stream, per rank: ``make_train_loader`` gives each of the rank's DataLoader workers its own subset of
shards (split by node, then by worker), resamples shards from that subset with an RNG seeded by (seed, epoch,
rank, worker), shuffles raw samples in a buffer, and cuts batches of ``micro_batch``. Every rank yields exactly
``epoch_samples // (world_size * micro_batch)`` batches per epoch: ranks that disagreed would leave one rank
waiting forever in a collective op. Shuffling happens on the raw tar bytes and decoding afterwards, so
``skip_batches`` (resume) only reads tar members and skips PNG decoding and tokenisation.

Evaluation stream: shards in order, each sample exactly once, last partial batch kept.

Shards are read through ``storage.open_url``: on S3 a dropped connection resumes from its byte offset.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_iterator

from mmclip_dist.config import DataConfig
from mmclip_dist.data.shard_format import MANIFEST, VIEWS, image_file, mask_file, sidecar_name
from mmclip_dist.data.storage import Storage, open_storage, open_url, split_url
from mmclip_dist.data.stream.shard_list import list_shards  # noqa: F401 - part of this module's API

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- shards


def iter_shard(url: str, endpoint: str | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard: ``{"__key__", "__url__", "cc.png": bytes, ...}`` (nothing decoded)."""
    with open_url(url, endpoint) as stream:
        files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
        yield from group_by_keys(files)


def _manifest_counts(storage: Storage) -> dict[str, int]:
    """``{shard name: samples}`` from the shard writer's ``manifest.json``; empty when there is none."""
    if not storage.exists(MANIFEST):
        return {}
    manifest = json.loads(storage.get_bytes(MANIFEST))
    return {entry["name"]: int(entry["samples"]) for entry in manifest.get("shards", [])}


def count_samples(shards: Sequence[str], endpoint: str | None = None) -> int:
    """Samples in ``shards``, from the shard writer's records: ``manifest.json`` (one read per folder), else
    each shard's sidecar ``{split}-NNNNNN.json``, else by reading the tar headers (nothing decoded)."""
    total = 0
    manifests: dict[str, dict[str, int]] = {}
    for url in shards:
        parent, name = split_url(url)
        storage = open_storage(parent, endpoint)
        if parent not in manifests:
            manifests[parent] = _manifest_counts(storage)
        count = manifests[parent].get(name)
        if count is None and storage.exists(sidecar_name(name)):
            count = int(json.loads(storage.get_bytes(sidecar_name(name)))["samples"])
        if count is None:
            log.info("no manifest or sidecar for %s; counting its samples by reading it", url)
            count = sum(1 for _ in iter_shard(url, endpoint))
        total += count
    return total


# ---------------------------------------------------------------------------------------------- decoding


def _decode_png(data: bytes, what: str) -> np.ndarray:
    try:
        array = imagecodecs.png_decode(data)
    except Exception as err:  # noqa: BLE001 - re-raised with the sample's name
        raise ValueError(f"{what}: not a decodable PNG ({err})") from err
    if array.ndim != 2:
        raise ValueError(f"{what}: expected a single-channel image, got shape {array.shape}")
    return array


def _boxes_of(view: dict[str, Any], what: str) -> np.ndarray:
    boxes = np.asarray(view.get("boxes") or [], dtype=np.float32)
    if boxes.size == 0:
        return np.zeros((0, 4), np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what}: boxes must be a list of [x1, y1, x2, y2], got shape {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{what}: boxes contain NaN or infinity")
    return boxes


def masks_from_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W] mask, 1 on every pixel a box overlaps: columns floor(x1)..ceil(x2)-1, same for rows."""
    mask = np.zeros((height, width), np.uint8)
    for x1, y1, x2, y2 in boxes:
        c0, c1 = max(0, math.floor(x1)), min(width, math.ceil(x2))
        r0, r1 = max(0, math.floor(y1)), min(height, math.ceil(y2))
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = 1
    return mask


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    if nearest:
        out = F.interpolate(tensor, size=size, mode="nearest")
    else:
        out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].numpy()


def decode_sample(sample: dict[str, Any], cfg: DataConfig) -> dict[str, Any]:
    """Tar members of one breast → ``images``/``masks`` float32 [2, 1, H, W], ``boxes`` float32 [2, R, 4],
    ``box_valid`` bool [2, R], ``reports`` [cc, mlo], ``label``, ``key`` and the parsed ``meta`` JSON."""
    key = sample.get("__key__", "?")
    where = f"sample {key} in {sample.get('__url__', '?')}"
    if "json" not in sample:
        raise ValueError(f"{where}: missing 'json' member")
    try:
        meta = json.loads(sample["json"])
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{where}: invalid json member ({err})") from err
    height, width = cfg.image_size
    rois = cfg.max_rois
    images = np.zeros((2, 1, height, width), np.float32)
    masks = np.zeros((2, 1, height, width), np.float32)
    boxes_out = np.zeros((2, rois, 4), np.float32)
    valid = np.zeros((2, rois), bool)
    reports: list[str] = []
    for v, name in enumerate(VIEWS):
        view = meta.get("views", {}).get(name)
        if view is None or image_file(name) not in sample:
            raise ValueError(f"{where}: view {name!r} missing (need '{name}.png' and json views.{name})")
        raw = _decode_png(sample[image_file(name)], f"{where} {image_file(name)}")
        # Scale by the stored dtype's full range so 16-bit intensities keep their resolution.
        if raw.dtype == np.uint16:
            image = raw.astype(np.float32) / 65535.0
        elif raw.dtype == np.uint8:
            image = raw.astype(np.float32) / 255.0
        else:
            raise ValueError(f"{where} {name}.png: unsupported pixel type {raw.dtype}")
        stored_h, stored_w = image.shape
        boxes = _boxes_of(view, f"{where} views.{name}")
        if (stored_h, stored_w) != (height, width):
            image = np.clip(_resize(image, (height, width), nearest=False), 0.0, 1.0)
            boxes = boxes * np.array([width / stored_w, height / stored_h] * 2, np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # zero-area boxes carry no region
        boxes = boxes[keep]

        mask_name = mask_file(name)
        if mask_name in sample:
            mask = (_decode_png(sample[mask_name], f"{where} {mask_name}") > 0).astype(np.float32)
            if mask.shape != (stored_h, stored_w):
                raise ValueError(f"{where}: {mask_name} is {mask.shape}, {name}.png is {(stored_h, stored_w)}")
            if mask.shape != (height, width):
                mask = _resize(mask, (height, width), nearest=True)
        else:
            mask = masks_from_boxes(boxes, height, width).astype(np.float32)

        n = min(len(boxes), rois)
        images[v, 0] = image
        masks[v, 0] = mask
        boxes_out[v, :n] = boxes[:n]
        valid[v, :n] = True
        report = view.get("report")
        if not isinstance(report, str):
            raise ValueError(f"{where}: views.{name}.report missing or not a string")
        reports.append(report)
    label = meta.get("label", {}).get("malignant", -1)
    return {
        "key": key,
        "images": images,
        "masks": masks,
        "boxes": boxes_out,
        "box_valid": valid,
        "reports": reports,
        "label": int(label),
        "meta": meta,
    }


class DataSkipError(ValueError):
    """The shards cannot feed the run: every shard of a reader is unreadable, or more samples were skipped than
    ``data.max_skip_fraction`` allows. The training loop stops every rank on it (no Ray retry: the same data
    would fail the same way)."""


class SkipCounter:
    """Samples and shards one reader skipped because they could not be read or decoded.

    Each shard is logged once (its name and the first error); later problems in it are only counted.
    ``take()`` hands out the count not yet reported, which the stream attaches to the next batch."""

    def __init__(self) -> None:
        self.total = 0
        self._reported = 0
        self._logged: set[str] = set()

    def skip(self, url: str, what: str, err: BaseException) -> None:
        self.total += 1
        shard = url.rsplit("/", 1)[-1]
        if shard not in self._logged:
            self._logged.add(shard)
            log.warning(
                "skipping %s of shard %s: %s: %s (counted in data/skipped_samples; further problems in "
                "this shard are counted, not logged)",
                what,
                shard,
                type(err).__name__,
                str(err)[:300],
            )

    def take(self) -> int:
        new, self._reported = self.total - self._reported, self.total
        return new


def decode_or_skip(sample: dict[str, Any], cfg: DataConfig, skips: SkipCounter) -> dict[str, Any] | None:
    """``decode_sample``, or None (counted and logged in ``skips``) for a sample that cannot be decoded."""
    try:
        return decode_sample(sample, cfg)
    except Exception as err:  # noqa: BLE001 - any decode failure of one sample costs that sample, not the run
        skips.skip(str(sample.get("__url__", "?")), f"sample {sample.get('__key__', '?')}", err)
        return None


def tolerant_shard(url: str, endpoint: str | None, skips: SkipCounter) -> Generator[dict[str, Any], None, bool]:
    """``iter_shard`` that ends (one skip counted) where the tar cannot be read further (truncated, corrupt);
    the samples before that point are kept. Returns whether the whole shard could be read."""
    try:
        yield from iter_shard(url, endpoint)
    except Exception as err:  # noqa: BLE001 - tarfile/webdataset/storage raise assorted types for a bad shard
        skips.skip(url, "the rest", err)
        return False
    return True


def collate_samples(samples: list[dict[str, Any]], cfg: DataConfig, tokenizer: Any) -> dict[str, Any]:
    """Decoded samples → the batch dict (tensors stacked, both views' reports tokenised in one call)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    texts = [report for sample in samples for report in sample["reports"]]  # [cc0, mlo0, cc1, mlo1, ...]
    tokens = tokenizer(texts, padding="max_length", truncation=True, max_length=cfg.max_text_len, return_tensors="pt")
    batch = len(samples)
    return {
        "images": torch.from_numpy(np.stack([s["images"] for s in samples])),
        "masks": torch.from_numpy(np.stack([s["masks"] for s in samples])),
        "boxes": torch.from_numpy(np.stack([s["boxes"] for s in samples])),
        "box_valid": torch.from_numpy(np.stack([s["box_valid"] for s in samples])),
        "input_ids": tokens["input_ids"].long().view(batch, len(VIEWS), -1),
        "attention_mask": tokens["attention_mask"].long().view(batch, len(VIEWS), -1),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
        "keys": [s["key"] for s in samples],
        # Parsed shard json of each breast (density, birads, box_labels, patient_id, ...): downstream
        # tasks read their labels from it (mmclip_dist.eval.tasks); the model ignores it.
        "meta": [s["meta"] for s in samples],
    }


# ---------------------------------------------------------------------------------------------- training


def _shuffle(stream: Iterator[dict[str, Any]], size: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """Reservoir-style shuffle buffer; deterministic for a given rng."""
    buffer: list[dict[str, Any]] = []
    for sample in stream:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        index = rng.randrange(size)
        buffer[index], sample = sample, buffer[index]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def _resampled(
    shards: list[str], rng: random.Random, endpoint: str | None, skips: SkipCounter | None = None
) -> Iterator[dict[str, Any]]:
    """Endless samples from shards drawn with replacement (webdataset's ResampledShards, with our rng). A shard
    that fails to read is skipped (``skips``) and not drawn again."""
    skips = skips if skips is not None else SkipCounter()
    live = list(shards)
    empty: set[str] = set()
    while True:
        if not live:
            raise DataSkipError(
                f"no shard of this reader can be read ({len(shards)} tried: {shards[:3]}...); "
                "run `mmclip-dist shards verify` on the shard folder"
            )
        url = rng.choice(live)
        count = 0
        reader = tolerant_shard(url, endpoint, skips)
        while True:
            try:
                sample = next(reader)
            except StopIteration as end:
                readable = end.value  # (decode skips of its samples, counted meanwhile, do not retire a shard)
                break
            count += 1
            yield sample
        if not readable:
            live.remove(url)
        elif count == 0:
            empty.add(url)
            if empty == set(live):
                raise ValueError(f"every shard of this reader is empty: {shards}")


def _share(total: int, parts: int, index: int) -> int:
    """Items ``index`` gets when ``total`` are dealt round-robin to ``parts`` (index < total % parts get one more)."""
    return max(0, (total - index + parts - 1) // parts)


@dataclass(frozen=True)
class _RankPlan:
    """Where one rank's stream stands: its place in the world, batch size, seed/epoch, batches to make and skip."""

    rank: int
    world_size: int
    micro_batch: int
    seed: int
    epoch: int
    num_batches: int
    skip_batches: int


class _TrainStream(IterableDataset):
    """One rank's stream; each DataLoader worker yields its round-robin share of the rank's batches."""

    def __init__(self, shards: list[str], cfg: DataConfig, tokenizer: Any, plan: _RankPlan) -> None:
        self.shards = shards
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.rank, self.world_size = plan.rank, plan.world_size
        self.micro_batch, self.seed, self.epoch = plan.micro_batch, plan.seed, plan.epoch
        self.num_batches, self.skip_batches = plan.num_batches, plan.skip_batches
        self.readers = max(1, cfg.loader_workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.readers:
            raise RuntimeError(f"DataLoader has {info.num_workers} workers, stream was planned for {self.readers}")
        # The DataLoader takes the rank's k-th remaining batch from worker k % readers. Batch b of the full
        # epoch belongs to reader "role" b % readers, so after skipping s batches worker w plays role
        # (w + s) % readers: the full-epoch stream and a resumed one then agree batch for batch.
        role = (worker + self.skip_batches) % self.readers
        if self.cfg.split_by_node:
            reader = self.rank * self.readers + role
            shards = self.shards[reader :: self.world_size * self.readers]
        else:
            shards = self.shards
        # A string seed goes through SHA-512 in random.seed: stable across processes and Python runs.
        rng = random.Random(f"mmclip-train:{self.seed}:{self.epoch}:{self.rank}:{role}")
        mine = _share(self.num_batches, self.readers, role)
        skip = min(mine, _share(self.skip_batches, self.readers, role))
        if skip == mine:
            return
        skips = SkipCounter()
        samples = _shuffle(_resampled(shards, rng, self.cfg.s3_endpoint, skips), self.cfg.shuffle_buffer, rng)
        for index in range(mine):
            raw = [next(samples) for _ in range(self.micro_batch)]
            if index < skip:
                continue  # consumed but not decoded: resuming costs tar reads only
            decoded = [d for d in (decode_or_skip(s, self.cfg, skips) for s in raw) if d is not None]
            while len(decoded) < self.micro_batch:  # a skipped sample is replaced by the stream's next one
                replacement = decode_or_skip(next(samples), self.cfg, skips)
                if replacement is not None:
                    decoded.append(replacement)
            batch = collate_samples(decoded, self.cfg, self.tokenizer)
            batch["skipped_samples"] = skips.take()  # summed over ranks and logged by the training loop
            yield batch


class TrainLoader:
    """Iterable of one rank's batches for one epoch; ``len()`` is the batches still to come."""

    def __init__(self, dataloader: DataLoader, num_batches: int, skip_batches: int) -> None:
        self.dataloader = dataloader
        self.num_batches = num_batches
        self.skip_batches = min(skip_batches, num_batches)

    def __len__(self) -> int:
        return self.num_batches - self.skip_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        produced = 0
        for batch in self.dataloader:
            produced += 1
            yield batch
        # Fail loudly rather than let this rank fall out of step with the others (a hang in all-gather).
        if produced != len(self):
            raise RuntimeError(f"training stream yielded {produced} batches, expected {len(self)}")


def make_train_loader(
    cfg: DataConfig,
    tokenizer: Any,
    *,
    rank: int,
    world_size: int,
    micro_batch: int,
    seed: int,
    epoch: int = 0,
    skip_batches: int = 0,
    shards: list[str] | None = None,
    total_samples: int | None = None,
) -> TrainLoader:
    """This rank's batches of one epoch; every rank gets the same number. ``shards`` / ``total_samples``
    skip the listing / counting when the caller already has them (e.g. computed once on the driver)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    split = cfg.train_split if "{" not in cfg.train_shards and not cfg.train_shards.endswith(".tar") else None
    shards = shards if shards is not None else list_shards(cfg.train_shards, cfg.s3_endpoint, split)
    readers = max(1, cfg.loader_workers)
    if cfg.split_by_node and len(shards) < world_size * readers:
        raise ValueError(
            f"{len(shards)} training shard(s) at {cfg.train_shards!r} but world_size x data.loader_workers = "
            f"{world_size} x {readers} = {world_size * readers} readers each need their own shard; "
            "write smaller shards (shards.shard_max_samples), use fewer loader workers, "
            "or set data.split_by_node=false"
        )
    if cfg.epoch_samples:
        total = cfg.epoch_samples
    else:
        total = total_samples if total_samples is not None else count_samples(shards, cfg.s3_endpoint)
    num_batches = total // (world_size * micro_batch)
    if num_batches == 0:
        raise ValueError(
            f"{total} samples per epoch cannot fill one batch of {micro_batch} on each of {world_size} ranks"
        )
    plan = _RankPlan(rank, world_size, micro_batch, seed, epoch, num_batches, min(skip_batches, num_batches))
    dataset = _TrainStream(shards, cfg, tokenizer, plan)
    dataloader = DataLoader(
        dataset,
        batch_size=None,  # the stream batches itself, so batch b comes from worker b % workers
        num_workers=cfg.loader_workers,
        prefetch_factor=2 if cfg.loader_workers > 0 else None,
        persistent_workers=False,
        in_order=True,
    )
    return TrainLoader(dataloader, num_batches, skip_batches)


# ---------------------------------------------------------------------------------------------- evaluation


class EvalLoader:
    """Every sample of ``shards`` exactly once, in shard order, in batches of ``batch_size``."""

    def __init__(self, shards: list[str], cfg: DataConfig, tokenizer: Any, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shards, self.cfg, self.tokenizer, self.batch_size = shards, cfg, tokenizer, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pending: list[dict[str, Any]] = []
        self.skips = SkipCounter()  # what this pass could not read or decode (logged once per shard)
        for url in self.shards:
            for sample in tolerant_shard(url, self.cfg.s3_endpoint, self.skips):
                decoded = decode_or_skip(sample, self.cfg, self.skips)
                if decoded is None:
                    continue
                pending.append(decoded)
                if len(pending) == self.batch_size:
                    yield collate_samples(pending, self.cfg, self.tokenizer)
                    pending = []
        if pending:
            yield collate_samples(pending, self.cfg, self.tokenizer)


def make_eval_loader(
    url_or_shards: str | Sequence[str], cfg: DataConfig, tokenizer: Any, batch_size: int
) -> Iterable[dict[str, Any]]:
    """Deterministic single pass; a folder / S3 prefix is read for ``cfg.eval_split`` shards."""
    if isinstance(url_or_shards, str):
        url = url_or_shards
        split = cfg.eval_split if "{" not in url and not url.endswith(".tar") else None
        shards = list_shards(url, cfg.s3_endpoint, split)
    else:
        shards = list(url_or_shards)
    return EvalLoader(shards, cfg, tokenizer, batch_size)
