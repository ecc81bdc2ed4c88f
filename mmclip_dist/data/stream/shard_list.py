"""Which shard files a shard location means (folder, s3:// prefix, brace pattern, single tar).

Kept free of torch/webdataset so a driver can check its inputs in a second, before anything heavy loads.
"""

from __future__ import annotations

import json

import braceexpand

from mmclip_dist.data.shard_format import MANIFEST, SHARD_NAME
from mmclip_dist.data.storage import open_storage


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
    if storage.exists(MANIFEST):
        # A finished build: read exactly the shards it lists (a stray or half-copied tar in the folder is not data).
        manifest = json.loads(storage.get_bytes(MANIFEST))
        splits = {e["name"]: e["split"] for e in manifest.get("shards", [])}
        absent = [n for n in splits if (split is None or splits[n] == split) and not storage.exists(n)]
        if absent:
            raise FileNotFoundError(
                f"{url}: {MANIFEST} lists {len(absent)} shard(s) that are missing ({', '.join(absent[:3])}); "
                "restore them or rebuild (`mmclip-dist shards verify` checks a folder)"
            )
    else:
        splits = {n: m.group("split") for n in storage.list() if "/" not in n and (m := SHARD_NAME.match(n))}
    selected = [n for n, s in splits.items() if split is None or s == split]
    if not selected:
        found = sorted(set(splits.values()))
        wanted = f"{split}-NNNNNN.tar" if split else "<split>-NNNNNN.tar"
        raise FileNotFoundError(f"no shards named {wanted} under {url} (splits found there: {found or 'none'})")
    return [storage.url_for(n) for n in selected]
