"""WebDataset shards → collated training / evaluation batches (the "Batch" contract in docs/architecture.md).

Training stream, per rank: ``make_train_loader`` gives each of the rank's DataLoader workers its own subset of
the run's ``ShardSet`` (resolved once on the driver; split by node, then by worker), resamples shards from that
subset with an RNG seeded by (seed, epoch, rank, worker), shuffles raw samples in a buffer, and cuts batches of
``micro_batch``. Every rank yields exactly ``epoch_samples // (world_size * micro_batch)`` batches per epoch: ranks that disagreed would leave one rank
waiting forever in a collective op. Shuffling happens on the raw tar bytes and decoding afterwards, so
``skip_batches`` (resume) only reads tar members and skips pixel decoding and tokenisation.

Evaluation stream: shards in order, each sample exactly once, last partial batch kept.

Per batch, ``decode_batch`` allocates the batch tensors once (in shared memory inside a DataLoader worker, so
handing them to the trainer copies nothing) and decodes every sample's pixels straight into its row: at
760x480 the per-breast cost is the pixel decode itself, not temporaries and copies (docs/benchmarks.md).

Shards are read through ``storage.open_url``: on S3 a dropped connection resumes from its byte offset.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys

from mmclip_dist.config import DataConfig
from mmclip_dist.data.codecs import decode_file, decode_pixels, payload_shape
from mmclip_dist.data.shard_format import VIEWS, image_files, mask_files
from mmclip_dist.data.storage import open_url
from mmclip_dist.data.stream.shard_set import ShardSet, count_samples, list_shards, resolve_shard_set, share
from mmclip_dist.data.stream.tar_reader import tar_members

__all__ = ["ShardSet", "count_samples", "list_shards", "resolve_shard_set"]  # re-exported: listing lives there

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- shards


def iter_shard(url: str, endpoint: str | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard: ``{"__key__", "__url__", "cc.u16.zst": bytes, ...}`` (nothing decoded)."""
    with open_url(url, endpoint) as stream:
        files = ({**f, "__url__": url} for f in tar_members(stream, url))
        yield from group_by_keys(files)


# ---------------------------------------------------------------------------------------------- decoding


def _member(sample: dict[str, Any], names: tuple[str, ...]) -> str | None:
    """The first of ``names`` the sample has (a field's name differs between shard schema versions)."""
    return next((name for name in names if name in sample), None)


def _decode_pixels(sample: dict[str, Any], name: str, where: str) -> np.ndarray:
    """A member's pixels; a payload decodes into this process's reusable buffer of its size (valid until the
    next call), which saves a fresh allocation and its page faults per image."""
    data = sample[name]
    try:
        if name.endswith(".png"):
            array = decode_file(name, data)
        else:
            h, w, dtype = payload_shape(data)
            array = decode_pixels(data, _reusable((h, w), dtype))
    except ValueError as err:
        raise ValueError(f"{where} {name}: {err}") from err
    if array.ndim != 2:
        raise ValueError(f"{where} {name}: expected a single-channel image, got shape {array.shape}")
    return array


_BUFFERS: dict[tuple[tuple[int, int], np.dtype], np.ndarray] = {}


def _reusable(shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    # One per (shape, dtype) and process: a DataLoader worker is one process decoding one image at a time.
    key = (shape, dtype)
    if key not in _BUFFERS:
        _BUFFERS[key] = np.empty(shape, dtype)
    return _BUFFERS[key]


def _boxes_of(view: dict[str, Any], what: str) -> np.ndarray:
    boxes = np.asarray(view.get("boxes") or [], dtype=np.float32)
    if boxes.size == 0:
        return np.zeros((0, 4), np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what}: boxes must be a list of [x1, y1, x2, y2], got shape {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{what}: boxes contain NaN or infinity")
    return boxes


def masks_from_boxes(boxes: np.ndarray, height: int, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """[H, W] mask, 1 on every pixel a box overlaps: columns floor(x1)..ceil(x2)-1, same for rows (uint8, or
    drawn into ``out``, which must be all zeros)."""
    mask = np.zeros((height, width), np.uint8) if out is None else out
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


_SAMPLE_ARRAYS = ("images", "masks", "boxes", "box_valid")
_ZEROED = ("masks", "boxes", "box_valid")  # drawn into zeros (a sample writes every pixel of its images)


def _sample_shapes(cfg: DataConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    height, width = cfg.image_size
    views = len(VIEWS)
    return {
        "images": ((views, 1, height, width), torch.float32),
        "masks": ((views, 1, height, width), torch.float32),
        "boxes": ((views, cfg.max_rois, 4), torch.float32),
        "box_valid": ((views, cfg.max_rois), torch.bool),
    }


def decode_sample(sample: dict[str, Any], cfg: DataConfig, out: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Tar members of one breast → ``images``/``masks`` float32 [2, 1, H, W], ``boxes`` float32 [2, R, 4],
    ``box_valid`` bool [2, R], ``reports`` [cc, mlo], ``label``, ``key`` and the parsed ``meta`` JSON.

    ``out`` (zero-filled arrays of those shapes, e.g. one row of a fresh batch) receives the arrays instead of
    new ones: the pixels are written once, where the batch needs them, and a mask drawn from boxes touches
    only the boxes' memory (fresh zeroed pages cost nothing until written)."""
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
    if out is None:
        out = {name: _batch_tensor(shape, dtype).numpy() for name, (shape, dtype) in _sample_shapes(cfg).items()}
    images, masks, boxes_out, valid = (out[name] for name in _SAMPLE_ARRAYS)
    reports: list[str] = []
    for v, name in enumerate(VIEWS):
        view = meta.get("views", {}).get(name)
        image_name = _member(sample, image_files(name))
        if view is None or image_name is None:
            raise ValueError(
                f"{where}: view {name!r} missing (need one of {list(image_files(name))} and json views.{name})"
            )
        raw = _decode_pixels(sample, image_name, where)
        # Scale by the stored dtype's full range so 16-bit intensities keep their resolution.
        if raw.dtype == np.uint16:
            scale = np.float32(65535)
        elif raw.dtype == np.uint8:
            scale = np.float32(255)
        else:
            raise ValueError(f"{where} {image_name}: unsupported pixel type {raw.dtype}")
        stored_h, stored_w = raw.shape
        boxes = _boxes_of(view, f"{where} views.{name}")
        if (stored_h, stored_w) != (height, width):
            image = np.clip(_resize(raw / scale, (height, width), nearest=False), 0.0, 1.0)
            images[v, 0] = image
            boxes = boxes * np.array([width / stored_w, height / stored_h] * 2, np.float32)
        else:
            np.divide(raw, scale, out=images[v, 0])  # the same float32 values as astype + divide, no temporaries
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # zero-area boxes carry no region
        boxes = boxes[keep]

        mask_name = _member(sample, mask_files(name))
        if mask_name is not None:
            stored = _decode_pixels(sample, mask_name, where)
            if stored.shape != (stored_h, stored_w):
                raise ValueError(f"{where}: {mask_name} is {stored.shape}, {image_name} is {(stored_h, stored_w)}")
            if stored.shape != (height, width):
                masks[v, 0] = _resize((stored > 0).astype(np.float32), (height, width), nearest=True)
            else:
                np.greater(stored, 0, out=masks[v, 0])
        else:
            masks_from_boxes(boxes, height, width, out=masks[v, 0])

        n = min(len(boxes), rois)
        boxes_out[v, :n] = boxes[:n]
        valid[v, :n] = True
        report = view.get("report")
        if not isinstance(report, str):
            raise ValueError(f"{where}: views.{name}.report missing or not a string")
        reports.append(report)
    label = meta.get("label", {}).get("malignant", -1)
    return {
        "key": key,
        **out,
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


def _tokenise(samples: list[dict[str, Any]], cfg: DataConfig, tokenizer: Any) -> dict[str, torch.Tensor]:
    """Both views' reports of every sample in one tokenizer call → ``input_ids`` / ``attention_mask`` [B, 2, L]."""
    texts = [report for sample in samples for report in sample["reports"]]  # [cc0, mlo0, cc1, mlo1, ...]
    tokens = tokenizer(texts, padding="max_length", truncation=True, max_length=cfg.max_text_len, return_tensors="np")
    shape = (len(samples), len(VIEWS), -1)
    return {
        "input_ids": torch.from_numpy(tokens["input_ids"].astype(np.int64, copy=False)).view(shape),
        "attention_mask": torch.from_numpy(tokens["attention_mask"].astype(np.int64, copy=False)).view(shape),
    }


def _batch_fields(samples: list[dict[str, Any]], cfg: DataConfig, tokenizer: Any) -> dict[str, Any]:
    return {
        **_tokenise(samples, cfg, tokenizer),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
        "keys": [s["key"] for s in samples],
        # Parsed shard json of each breast (density, birads, box_labels, patient_id, ...): downstream
        # tasks read their labels from it (mmclip_dist.eval.tasks); the model ignores it.
        "meta": [s["meta"] for s in samples],
    }


def collate_samples(samples: list[dict[str, Any]], cfg: DataConfig, tokenizer: Any) -> dict[str, Any]:
    """Decoded samples → the batch dict (tensors stacked, both views' reports tokenised in one call)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    stacked = {name: torch.from_numpy(np.stack([s[name] for s in samples])) for name in _SAMPLE_ARRAYS}
    return {**stacked, **_batch_fields(samples, cfg, tokenizer)}


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled tensor whose pages are mapped lazily (calloc'd / fresh shared memory, not a memset)."""
    if get_worker_info() is None:
        return torch.from_numpy(np.zeros(shape, torch.empty(0, dtype=dtype).numpy().dtype))
    # In a DataLoader worker, allocate the batch in shared memory (as default_collate does): sending it to
    # the trainer process then costs no copy. New shared memory is zero-filled (ftruncate).
    template = torch.empty(0, dtype=dtype)
    storage = template._typed_storage()._new_shared(math.prod(shape), device=template.device)
    return template.new(storage).view(shape)


def decode_batch(
    raw: list[dict[str, Any]],
    cfg: DataConfig,
    tokenizer: Any,
    *,
    skips: SkipCounter | None = None,
    refill: Callable[[], dict[str, Any]] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any] | None:
    """Raw samples → the batch dict; same result as ``collate_samples([decode_sample(s) ...])``, but each
    sample's pixels are decoded straight into its row of the batch tensors.

    With ``skips``, a sample that cannot be decoded is counted there instead of raising, and its row goes to
    the next sample: ``refill()`` (training) supplies one so the batch stays full; without it the batch is
    shorter (evaluation), or None when nothing in it could be decoded. ``tensors``: the batch tensors to
    fill (``_sample_shapes`` with ``len(raw)`` rows; masks, boxes and box_valid zero), else new ones.
    """
    if not raw:
        raise ValueError("cannot collate an empty list of samples")
    if tensors is None:
        tensors = {
            name: _batch_tensor((len(raw), *shape), dtype) for name, (shape, dtype) in _sample_shapes(cfg).items()
        }
    rows = [{name: tensor[i].numpy() for name, tensor in tensors.items()} for i in range(len(raw))]
    todo = list(raw)
    samples: list[dict[str, Any]] = []
    while todo:
        sample = todo.pop(0)
        try:
            samples.append(decode_sample(sample, cfg, out=rows[len(samples)]))
        except Exception as err:
            if skips is None:
                raise
            skips.skip(str(sample.get("__url__", "?")), f"sample {sample.get('__key__', '?')}", err)
            for name in _ZEROED:  # what the failed sample drew before failing; its images get overwritten
                rows[len(samples)][name].fill(0)
            if refill is not None:
                todo.append(refill())
    if not samples:
        return None
    if len(samples) < len(raw):
        tensors = {name: tensor[: len(samples)] for name, tensor in tensors.items()}
    return {**tensors, **_batch_fields(samples, cfg, tokenizer)}


# ---------------------------------------------------------------------------------------------- training


_SLOT = "_buffer_slot"  # batch key from a loader worker to TrainLoader: (worker, slot) of its pooled tensors
# Per worker, the most slots it fills: 2 batches prefetched, the trainer's current and previous one, one it
# has just dropped but not yet reported; more held (gradient accumulation) fall back to fresh memory.
_SLOTS = 6


class _BatchPool:
    """Shared-memory batch tensors that DataLoader workers reuse once the trainer has dropped a batch.

    Each batch in fresh shared memory costs a page fault per 4 KB on first write (~2 ms per 760x480 breast,
    as much as decoding it). ``in_use[worker, slot]`` (shared memory) is set by the worker when it fills a
    slot and cleared by ``TrainLoader`` in the trainer process once no tensor of that batch, nor any view of
    one, is alive there (``StorageWeakRef``). A worker with no free slot allocates a fresh batch, as without
    the pool: the trainer may hold batches as long as it likes.
    """

    def __init__(self, workers: int) -> None:
        self.in_use = torch.zeros((max(1, workers), _SLOTS), dtype=torch.uint8).share_memory_()
        self._tensors: dict[int, dict[str, torch.Tensor]] = {}  # this worker process's slots
        self._held: list[tuple[int, int, list[StorageWeakRef]]] = []  # trainer side: batches not yet dropped

    # worker side
    def acquire(self, worker: int, cfg: DataConfig, rows: int) -> tuple[int | None, dict[str, torch.Tensor] | None]:
        """A free slot's tensors for a batch of ``rows`` (masks, boxes, box_valid zeroed), or (None, None)."""
        flags = self.in_use[worker].numpy()
        for slot in range(_SLOTS):
            if flags[slot]:
                continue
            tensors = self._tensors.get(slot)
            if tensors is None or tensors["images"].shape[0] != rows:
                shapes = _sample_shapes(cfg).items()
                tensors = self._tensors[slot] = {n: _batch_tensor((rows, *shape), dt) for n, (shape, dt) in shapes}
            else:
                for name in _ZEROED:
                    tensors[name].zero_()
            flags[slot] = 1
            return slot, tensors
        return None, None

    # trainer side
    def track(self, batch: dict[str, Any]) -> None:
        """Free the slots of batches the trainer has dropped since; watch ``batch``'s (its slot key removed)."""
        still = []
        for worker, slot, refs in self._held:
            if all(ref.expired() for ref in refs):
                self.in_use[worker, slot] = 0
            else:
                still.append((worker, slot, refs))
        self._held = still
        where = batch.pop(_SLOT, None)
        if where is not None:
            refs = [StorageWeakRef(batch[name].untyped_storage()) for name in _SAMPLE_ARRAYS]
            self._held.append((where[0], where[1], refs))


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

    def __init__(self, shard_set: ShardSet, cfg: DataConfig, tokenizer: Any, plan: _RankPlan) -> None:
        self.shard_set = shard_set
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.rank, self.world_size = plan.rank, plan.world_size
        self.micro_batch, self.seed, self.epoch = plan.micro_batch, plan.seed, plan.epoch
        self.num_batches, self.skip_batches = plan.num_batches, plan.skip_batches
        self.readers = max(1, cfg.loader_workers)
        self.pool: _BatchPool | None = None  # set by TrainLoader for each pass with worker processes

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.readers:
            raise RuntimeError(f"DataLoader has {info.num_workers} workers, stream was planned for {self.readers}")
        # The DataLoader takes the rank's k-th remaining batch from worker k % readers. Batch b of the full
        # epoch belongs to reader "role" b % readers, so after skipping s batches worker w plays role
        # (w + s) % readers: the full-epoch stream and a resumed one then agree batch for batch.
        role = (worker + self.skip_batches) % self.readers
        shards = self.shard_set.for_reader(
            rank=self.rank, world_size=self.world_size, readers=self.readers, role=role,
            split_by_node=self.cfg.split_by_node,
        )  # fmt: skip
        # A string seed goes through SHA-512 in random.seed: stable across processes and Python runs.
        rng = random.Random(f"mmclip-train:{self.seed}:{self.epoch}:{self.rank}:{role}")
        mine = share(self.num_batches, self.readers, role)
        skip = min(mine, share(self.skip_batches, self.readers, role))
        if skip == mine:
            return
        skips = SkipCounter()
        samples = _shuffle(_resampled(list(shards.urls), rng, shards.endpoint, skips), self.cfg.shuffle_buffer, rng)
        for index in range(mine):
            raw = [next(samples) for _ in range(self.micro_batch)]
            if index < skip:
                continue  # consumed but not decoded: resuming costs tar reads only
            slot, tensors = (None, None) if self.pool is None else self.pool.acquire(worker, self.cfg, len(raw))
            # A sample that cannot be decoded is skipped (counted) and replaced by the stream's next one.
            batch = decode_batch(
                raw, self.cfg, self.tokenizer, skips=skips, refill=lambda: next(samples), tensors=tensors
            )
            assert batch is not None  # refilled: always full
            if slot is not None:
                batch[_SLOT] = (worker, slot)
            batch["skipped_samples"] = skips.take()  # summed over ranks and logged by the training loop
            yield batch


class TrainLoader:
    """Iterable of one rank's batches for one epoch; ``len()`` is the batches still to come."""

    def __init__(
        self, dataloader: DataLoader, num_batches: int, skip_batches: int, stream: _TrainStream | None = None
    ) -> None:
        self.dataloader = dataloader
        self.num_batches = num_batches
        self.skip_batches = min(skip_batches, num_batches)
        self.stream = stream

    def __len__(self) -> int:
        return self.num_batches - self.skip_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        produced = 0
        pool = None
        if self.stream is not None and self.dataloader.num_workers > 0:
            # A pool per pass, made before the pass forks its workers: workers of an abandoned earlier pass keep
            # theirs, so they can never refill a batch this pass hands out, nor this pass one that one did.
            pool = self.stream.pool = _BatchPool(self.dataloader.num_workers)
        for batch in self.dataloader:
            produced += 1
            if pool is not None:
                pool.track(batch)
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
    shard_set: ShardSet | None = None,
) -> TrainLoader:
    """This rank's batches of one epoch; every rank gets the same number. ``shard_set``: the training shards
    resolved once on the driver (``train_shard_set``); without it they are listed and counted here."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    shard_set = shard_set if shard_set is not None else train_shard_set(cfg)
    readers = max(1, cfg.loader_workers)
    if cfg.split_by_node:
        shard_set.check_split(world_size, readers)
    total = cfg.epoch_samples or shard_set.total
    num_batches = total // (world_size * micro_batch)
    if num_batches == 0:
        raise ValueError(
            f"{total} samples per epoch cannot fill one batch of {micro_batch} on each of {world_size} ranks"
        )
    plan = _RankPlan(rank, world_size, micro_batch, seed, epoch, num_batches, min(skip_batches, num_batches))
    dataset = _TrainStream(shard_set, cfg, tokenizer, plan)
    dataloader = DataLoader(
        dataset,
        batch_size=None,  # the stream batches itself, so batch b comes from worker b % workers
        num_workers=cfg.loader_workers,
        prefetch_factor=2 if cfg.loader_workers > 0 else None,
        persistent_workers=False,
        in_order=True,
    )
    return TrainLoader(dataloader, num_batches, skip_batches, dataset)


# ---------------------------------------------------------------------------------------------- evaluation


class EvalLoader:
    """Every sample of ``shards`` exactly once, in shard order, in batches of ``batch_size``."""

    def __init__(
        self, shards: list[str], cfg: DataConfig, tokenizer: Any, batch_size: int, endpoint: str | None = None
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shards, self.cfg, self.tokenizer, self.batch_size = shards, cfg, tokenizer, batch_size
        self.endpoint = endpoint or cfg.s3_endpoint

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pending: list[dict[str, Any]] = []
        self.skips = SkipCounter()  # what this pass could not read or decode (logged once per shard)
        for url in self.shards:
            for sample in tolerant_shard(url, self.endpoint, self.skips):
                pending.append(sample)
                if len(pending) == self.batch_size:
                    batch = decode_batch(pending, self.cfg, self.tokenizer, skips=self.skips)
                    if batch is not None:
                        yield batch
                    pending = []
        if pending:
            batch = decode_batch(pending, self.cfg, self.tokenizer, skips=self.skips)
            if batch is not None:
                yield batch


def make_eval_loader(
    url_or_shards: str | Sequence[str] | ShardSet, cfg: DataConfig, tokenizer: Any, batch_size: int
) -> Iterable[dict[str, Any]]:
    """Deterministic single pass; a folder / S3 prefix is read for ``cfg.eval_split`` shards."""
    if isinstance(url_or_shards, ShardSet):
        return EvalLoader(list(url_or_shards.urls), cfg, tokenizer, batch_size, url_or_shards.endpoint)
    if isinstance(url_or_shards, str):
        shards = list_shards(url_or_shards, cfg.s3_endpoint, cfg.eval_split)
    else:
        shards = list(url_or_shards)
    return EvalLoader(shards, cfg, tokenizer, batch_size)


def train_shard_set(cfg: DataConfig) -> ShardSet:
    """``data.train_shards`` listed and counted (the driver calls this once per run)."""
    return resolve_shard_set(cfg.train_shards, cfg.s3_endpoint, cfg.train_split)


def eval_shard_set(cfg: DataConfig, url: str | None = None) -> ShardSet:
    """``url`` (default ``data.eval_shards``) listed and counted for ``data.eval_split``."""
    return resolve_shard_set(url or cfg.eval_shards, cfg.s3_endpoint, cfg.eval_split)
