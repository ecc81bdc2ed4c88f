"""WebDataset shards → collated training / evaluation batches (the "Batch" contract in docs/architecture.md).

Training stream, per rank: ``make_train_loader`` reads the rank's lanes of the epoch plan (epoch_plan.py: shards
in an order drawn from (seed, epoch), each sample of the epoch exactly once whatever the world size, resumable
from a per-shard position after a resize), one lane per DataLoader worker, shuffles each lane in windows of
``shuffle_buffer`` raw samples (undecoded tar bytes) and cuts batches of ``micro_batch``.
Every rank yields the same number of batches: ranks that disagreed would leave one rank waiting forever in a
collective op. Samples consumed before a restart are skipped as tar members, without PNG decoding.

Evaluation stream: shards in order, each sample exactly once, last partial batch kept.

Shards are read through ``storage.open_url``: on S3 a dropped connection resumes from its byte offset.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import braceexpand
import imagecodecs
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_iterator

from mmclip_dist.config import DataConfig
from mmclip_dist.data.shard_format import MANIFEST, SHARD_NAME, VIEWS, image_file, mask_file, sidecar_name
from mmclip_dist.data.storage import Storage, open_storage, open_url, split_url
from mmclip_dist.data.stream.epoch_plan import DataPosition, EpochPlan, resume_plan, share

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- shards


def list_shards(url: str, endpoint: str | None = None, split: str | None = None) -> list[str]:
    """Shard URLs: a brace pattern is expanded as written; a folder / S3 prefix is listed for
    ``{split}-NNNNNN.tar`` (any split when ``split`` is None); a single ``.tar`` URL is returned as is."""
    if not url:
        raise ValueError("no shard location given (data.train_shards / data.eval_shards is empty)")
    if "{" in url:
        return list(braceexpand.braceexpand(url))
    if url.endswith(".tar"):
        return [url]
    storage = open_storage(url, endpoint)
    splits = {n: m.group("split") for n in storage.list() if "/" not in n and (m := SHARD_NAME.match(n))}
    selected = [n for n, s in splits.items() if split is None or s == split]
    if not selected:
        found = sorted(set(splits.values()))
        wanted = f"{split}-NNNNNN.tar" if split else "<split>-NNNNNN.tar"
        raise FileNotFoundError(f"no shards named {wanted} under {url} (splits found there: {found or 'none'})")
    return [storage.url_for(n) for n in selected]


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


def shard_counts(shards: Sequence[str], endpoint: str | None = None) -> list[int]:
    """Samples of each shard, from the shard writer's records: ``manifest.json`` (one read per folder), else
    each shard's sidecar ``{split}-NNNNNN.json``, else by reading the tar headers (nothing decoded)."""
    counts: list[int] = []
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
        counts.append(count)
    return counts


def count_samples(shards: Sequence[str], endpoint: str | None = None) -> int:
    """Samples in ``shards`` (see ``shard_counts``)."""
    return sum(shard_counts(shards, endpoint))


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


class _TrainStream(IterableDataset):
    """One rank's stream; DataLoader worker k reads lane (rank, k) of the epoch plan, so batch b comes from
    worker b % readers (the DataLoader's in-order round robin) and the plan knows what every batch held."""

    def __init__(self, plan: EpochPlan, skip: int, rank: int, cfg: DataConfig, tokenizer: Any) -> None:
        self.plan, self.skip, self.rank, self.cfg, self.tokenizer = plan, skip, rank, cfg, tokenizer

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.plan.readers:
            raise RuntimeError(f"DataLoader has {info.num_workers} workers, stream was planned for {self.plan.readers}")
        plan = self.plan
        # The DataLoader takes its k-th batch from worker k % readers; after skipping s batches of the plan,
        # batch s + k belongs to lane (s + k) % readers, so worker w plays lane (w + s) % readers.
        lane = (worker + self.skip) % plan.readers
        skip = share(self.skip, plan.readers, lane) * plan.micro_batch  # samples of the lane already trained on
        window: list[dict[str, Any]] = []
        index = 0
        for raw in self._lane_samples(lane):
            window.append(raw)
            if len(window) == plan.window:
                yield from self._batches(lane, index, window, skip)
                window, index, skip = [], index + 1, max(0, skip - plan.window)
        if window:
            yield from self._batches(lane, index, window, skip)

    def _lane_samples(self, lane: int) -> Iterator[dict[str, Any]]:
        for segment in self.plan.lane(self.rank, lane):
            taken = 0
            for index, raw in enumerate(iter_shard(segment.shard, self.cfg.s3_endpoint)):
                if index < segment.start:
                    continue  # consumed before this (re)start: tar reads only, nothing decoded
                if index >= segment.end:
                    break
                taken += 1
                yield raw
            if taken != len(segment):
                raise RuntimeError(
                    f"{segment.shard} gave {segment.start + taken} samples, its record says at least {segment.end}"
                )

    def _batches(self, lane: int, index: int, window: list[dict[str, Any]], skip: int) -> Iterator[dict[str, Any]]:
        order = self.plan.window_order(self.rank, lane, index, len(window))
        micro = self.plan.micro_batch
        for start in range(min(skip, len(order)), len(order), micro):  # trained on before the restart: not decoded
            raw = [window[o] for o in order[start : start + micro]]
            yield collate_samples([decode_sample(r, self.cfg) for r in raw], self.cfg, self.tokenizer)


class TrainLoader:
    """Iterable of one rank's batches for one epoch; ``len()`` is the batches still to come."""

    def __init__(self, dataloader: DataLoader, plan: EpochPlan, skip: int) -> None:
        self.dataloader = dataloader
        self.plan = plan  # what each batch held: plan.position_after(skip + batches) is where they leave the epoch
        self.skip = skip

    def __len__(self) -> int:
        return self.plan.batches_per_rank - self.skip

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
    accumulation: int = 1,
    position: DataPosition | None = None,
    shards: list[str] | None = None,
    counts: list[int] | None = None,
) -> TrainLoader:
    """This rank's batches of what is left of one epoch (``position``: the saved one, see epoch_plan.py);
    every rank gets the same number, a multiple of ``accumulation``. ``shards`` / ``counts`` skip the
    listing / counting when the caller already has them (e.g. computed once on the driver)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    split = cfg.train_split if "{" not in cfg.train_shards and not cfg.train_shards.endswith(".tar") else None
    shards = shards if shards is not None else list_shards(cfg.train_shards, cfg.s3_endpoint, split)
    counts = counts if counts is not None else shard_counts(shards, cfg.s3_endpoint)
    total = sum(counts)
    if cfg.epoch_samples > total:
        log.warning(
            "data.epoch_samples=%d but the training shards hold %d samples: one pass is the epoch",
            cfg.epoch_samples,
            total,
        )
    plan, skip = resume_plan(
        shards,
        counts,
        position,
        seed=seed,
        epoch=epoch,
        world_size=world_size,
        readers=max(1, cfg.loader_workers),
        micro_batch=micro_batch,
        accumulation=accumulation,
        epoch_samples=cfg.epoch_samples,
        shuffle_window=cfg.shuffle_buffer,
    )
    if plan.steps == 0 and not (position and position.consumed):
        epoch_size = min(total, cfg.epoch_samples or total)
        raise ValueError(
            f"{epoch_size} samples per epoch cannot fill one step of {world_size} ranks x {micro_batch} x "
            f"{accumulation} micro-batches"
        )
    dataloader = DataLoader(
        _TrainStream(plan, skip, rank, cfg, tokenizer),
        batch_size=None,  # the stream batches itself, so batch b comes from worker b % workers
        num_workers=cfg.loader_workers,
        prefetch_factor=2 if cfg.loader_workers > 0 else None,
        persistent_workers=False,
        in_order=True,
    )
    return TrainLoader(dataloader, plan, skip)


# ---------------------------------------------------------------------------------------------- evaluation


class EvalLoader:
    """Every sample of ``shards`` exactly once, in shard order, in batches of ``batch_size``."""

    def __init__(self, shards: list[str], cfg: DataConfig, tokenizer: Any, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shards, self.cfg, self.tokenizer, self.batch_size = shards, cfg, tokenizer, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pending: list[dict[str, Any]] = []
        for url in self.shards:
            for sample in iter_shard(url, self.cfg.s3_endpoint):
                pending.append(decode_sample(sample, self.cfg))
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
