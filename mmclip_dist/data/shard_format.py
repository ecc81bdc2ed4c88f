"""The shard format, shared by the builder that writes shards and the loader that reads them.

One sample = one breast. Its files are ``<view>.u16.zst`` (uint16 image), optional ``<view>_mask.u8.zst`` (uint8
lesion mask) and ``json`` (metadata, ``SCHEMA_VERSION``); docs/architecture.md gives the schema. The extension
names the codec (``data/codecs.py``); schema 1 shards stored ``<view>.png`` / ``<view>_mask.png`` and are still
read. An
output folder (or S3 prefix) holds ``<split>-NNNNNN.tar`` shards, one ``<split>-NNNNNN.json`` sidecar per
shard, ``rejects.jsonl`` and ``manifest.json`` (written last: its presence means the build finished).
"""

from __future__ import annotations

import re

VIEWS = ("cc", "mlo")  # the order of the view axis of every [B, 2, ...] batch field
SCHEMA_VERSION = 2  # 2: pixels as .u16.zst / .u8.zst payloads; 1: 16-bit / 8-bit PNG
IMAGE_EXT = "u16.zst"
MASK_EXT = "u8.zst"
LEGACY_EXT = "png"  # schema 1
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def sidecar_name(shard: str) -> str:
    return shard[: -len(".tar")] + ".json"


def tail_name(split: str) -> str:
    """Rejects that came after a split's last shard."""
    return f"{split}-tail.json"


def image_file(view: str, ext: str = IMAGE_EXT) -> str:
    return f"{view}.{ext}"


def mask_file(view: str, ext: str = MASK_EXT) -> str:
    return f"{view}_mask.{ext}"


def image_files(view: str) -> tuple[str, ...]:
    """Names a view's image may have, newest format first (a reader takes the first present)."""
    return image_file(view), image_file(view, LEGACY_EXT)


def mask_files(view: str) -> tuple[str, ...]:
    return mask_file(view), mask_file(view, LEGACY_EXT)
