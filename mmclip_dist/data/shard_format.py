"""The shard format, shared by the builder that writes shards and the loader that reads them.

One sample = one breast. Its files are ``<view>.png`` (uint16 image), optional ``<view>_mask.png`` (uint8
lesion mask) and ``json`` (metadata, ``SCHEMA_VERSION``); docs/architecture.md gives the schema. An
output folder (or S3 prefix) holds ``<split>-NNNNNN.tar`` shards, one ``<split>-NNNNNN.json`` sidecar per
shard, ``rejects.jsonl`` and ``manifest.json`` (written last: its presence means the build finished).
"""

from __future__ import annotations

import re

VIEWS = ("cc", "mlo")  # the order of the view axis of every [B, 2, ...] batch field
SCHEMA_VERSION = 1
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


def image_file(view: str) -> str:
    return f"{view}.png"


def mask_file(view: str) -> str:
    return f"{view}_mask.png"
