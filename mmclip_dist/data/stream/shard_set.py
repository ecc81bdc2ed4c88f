"""The shards a run reads, resolved once, and the one rule that deals them to ranks and loader workers.

``resolve_shard_set`` lists a folder / S3 prefix / brace pattern and reads the per-shard sample counts from the
shard writer's ``manifest.json`` (one read per folder; else each shard's sidecar; else a scan of the tar headers).
The driver does this once and hands the :class:`ShardSet` (a small picklable / JSON-able value) to every rank,
so ranks never list or count again. :meth:`ShardSet.for_reader` and :func:`share` are the split rule: reader
``rank * readers + role`` reads shards ``reader :: world_size * readers`` and gets the round-robin share of the
rank's batches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mmclip_dist.data.shard_format import MANIFEST, sidecar_name
from mmclip_dist.data.storage import Storage, open_storage, split_url
from mmclip_dist.data.stream.shard_list import list_shards

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSet:
    """Shard URLs (in order), their sample counts, and the S3 endpoint they are read through."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]
    endpoint: str | None = None
    source: str = ""  # what it was resolved from, for messages

    def __post_init__(self) -> None:
        if len(self.urls) != len(self.counts):
            raise ValueError(f"{len(self.urls)} shard URLs but {len(self.counts)} counts")

    def __len__(self) -> int:
        return len(self.urls)

    @property
    def total(self) -> int:
        """Samples in all shards."""
        return sum(self.counts)

    def for_reader(self, *, rank: int, world_size: int, readers: int, role: int, split_by_node: bool) -> ShardSet:
        """The shards of loader worker ``role`` of ``rank`` (all of them when not split by node)."""
        if not split_by_node:
            return self
        step = world_size * readers
        start = rank * readers + role
        return ShardSet(self.urls[start::step], self.counts[start::step], self.endpoint, self.source)

    def check_split(self, world_size: int, readers: int) -> None:
        """Split by node, every rank x loader worker needs a shard of its own."""
        if len(self) < world_size * readers:
            raise ValueError(
                f"{len(self)} training shard(s) at {self.source!r} but world_size x data.loader_workers = "
                f"{world_size} x {readers} = {world_size * readers} readers each need their own shard; "
                "write smaller shards (shards.shard_max_samples), use fewer loader workers, "
                "or set data.split_by_node=false"
            )

    def to_json(self) -> dict[str, Any]:
        return {"urls": list(self.urls), "counts": list(self.counts), "endpoint": self.endpoint, "source": self.source}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardSet:
        return cls(tuple(data["urls"]), tuple(int(c) for c in data["counts"]), data.get("endpoint"), data["source"])


def share(total: int, parts: int, index: int) -> int:
    """Items ``index`` gets when ``total`` are dealt round-robin to ``parts`` (index < total % parts get one more)."""
    return max(0, (total - index + parts - 1) // parts)


def _manifest_counts(storage: Storage) -> dict[str, int]:
    """``{shard name: samples}`` from the shard writer's ``manifest.json``; empty when there is none."""
    if not storage.exists(MANIFEST):
        return {}
    manifest = json.loads(storage.get_bytes(MANIFEST))
    return {entry["name"]: int(entry["samples"]) for entry in manifest.get("shards", [])}


def shard_counts(shards: Sequence[str], endpoint: str | None = None) -> list[int]:
    """Samples in each of ``shards``, from the shard writer's records: ``manifest.json`` (one read per folder),
    else each shard's sidecar ``{split}-NNNNNN.json``, else by reading the tar headers (nothing decoded)."""
    from mmclip_dist.data.stream.loader import iter_shard  # the loader imports this module

    counts = []
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
            count = 0
            try:
                for _ in iter_shard(url, endpoint):
                    count += 1
            except Exception as err:  # noqa: BLE001 - a corrupt tar counts what is readable; the loader skips the rest
                # the reader logs and counts it when it gets there
                log.info("%s is unreadable after %d samples (%s: %s)", url, count, type(err).__name__, err)
        counts.append(count)
    return counts


def count_samples(shards: Sequence[str], endpoint: str | None = None) -> int:
    """Samples in ``shards`` (see :func:`shard_counts`)."""
    return sum(shard_counts(shards, endpoint))


def resolve_shard_set(url: str, endpoint: str | None = None, split: str | None = None) -> ShardSet:
    """List and count the shards at ``url`` (folder / S3 prefix filtered by ``split``, brace pattern, ``.tar``)."""
    urls = list_shards(url, endpoint, split)
    return ShardSet(tuple(urls), tuple(shard_counts(urls, endpoint)), endpoint, url)
