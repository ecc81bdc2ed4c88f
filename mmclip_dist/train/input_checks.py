"""Checks a driver runs on its inputs before it starts Ray workers or an MLflow run.

Each check costs at most a few seconds (listings, a TCP connect, a cache lookup) and raises
:class:`~mmclip_dist.errors.UserError` naming the input and the fix. Without them a shard folder with no
shards, a hub-only text encoder on an offline machine or a closed MLflow port surfaced minutes later,
inside Ray's retries, as pages of worker tracebacks.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from mmclip_dist.config import Config, ModelConfig
from mmclip_dist.errors import UserError

CONNECT_TIMEOUT_S = 3.0


def check_shards(url: str, endpoint: str | None, split: str | None, what: str) -> list[str]:
    """The shard URLs of ``url`` (folder, s3:// prefix, brace pattern or .tar); UserError when there are none."""
    from mmclip_dist.data.stream.shard_list import list_shards

    if not url:
        raise UserError(
            f"{what} is empty: set it to a shard folder or s3:// prefix (built by `mmclip-dist shards build`)"
        )
    if url.startswith("s3://"):
        check_reachable(endpoint or os.environ.get("AWS_ENDPOINT_URL", ""), f"the S3 endpoint of {what}")
    split = split if "{" not in url and not url.endswith(".tar") else None
    try:
        shards = list_shards(url, endpoint, split)
    except FileNotFoundError as err:
        raise UserError(f"{what}={url!r}: {err}; build shards there with `mmclip-dist shards build`") from err
    missing = [s for s in shards if "://" not in s and not Path(s).is_file()]
    if missing:
        raise UserError(f"{what}={url!r}: {len(missing)} shard(s) do not exist (first: {missing[0]})")
    return shards


def check_text_encoder(model: ModelConfig) -> None:
    """The text encoder and tokenizer load without a download when the hub is off (HF_HUB_OFFLINE=1)."""
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ) not in (
        "",
        "0",
    )
    for field, name in (("model.text_encoder", model.text_encoder), ("model.tokenizer", model.tokenizer)):
        if not name:
            continue
        path = Path(name).expanduser()
        if path.exists():
            if not (path / "config.json").is_file() and field == "model.text_encoder":
                raise UserError(f"{field}={name!r}: folder has no config.json (not a saved Hugging Face model)")
            continue
        if name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise UserError(f"{field}={name!r}: no such folder")
        if offline and not _in_hf_cache(name):
            raise UserError(
                f"{field}={name!r} is neither a local folder nor in the Hugging Face cache, and the hub is off "
                "(HF_HUB_OFFLINE=1): download it where there is internet (`huggingface-cli download "
                f"{name}`, then copy HF_HOME) or point {field} at a local folder"
            )


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def check_writable(location: str, endpoint: str | None, what: str) -> None:
    """A local folder can be created and written (an s3:// location: its endpoint answers)."""
    if not location:
        return
    if location.startswith("s3://"):
        check_reachable(endpoint or os.environ.get("AWS_ENDPOINT_URL", ""), f"the S3 endpoint of {what}")
        return
    folder = Path(location).expanduser()
    # Probe the nearest folder that exists: creating the target here would leave, e.g., an empty export
    # folder behind for a run that never exports.
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is not a folder")
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".mmclip-write-check-"):
            pass
    except OSError as err:
        raise UserError(f"{what}={location!r} is not writable ({err.strerror or err}); choose another folder") from err


def check_tracking(uri: str) -> None:
    """An MLflow server answers (http/https), or the folder of a sqlite / file store is writable."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        check_reachable(uri, "the MLflow tracking server (tracking.tracking_uri / MLFLOW_TRACKING_URI)")
    elif parsed.scheme == "sqlite":
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        if path and path != ":memory:":
            check_writable(str(Path(path).expanduser().parent or "."), None, "the folder of the MLflow sqlite file")
    elif parsed.scheme in ("", "file"):
        check_writable(parsed.path or uri, None, "the MLflow file store")


def check_reachable(url: str, what: str) -> None:
    """TCP connect to the host:port of ``url`` within ``CONNECT_TIMEOUT_S``; nothing to check without a url."""
    if not url:
        return
    parsed = urlparse(url if "://" in url else f"tcp://{url}")
    port = parsed.port or {"https": 443, "http": 80}.get(parsed.scheme)
    if not parsed.hostname or not port:
        return
    try:
        with socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        reason = "connection refused" if isinstance(err, ConnectionRefusedError) else (err.strerror or str(err))
        raise UserError(f"cannot reach {what} at {parsed.hostname}:{port} ({reason}); is it running?") from err


def check_train_inputs(cfg: Config) -> None:
    """Everything ``train`` needs from outside, before Ray or MLflow are touched."""
    check_ray_address()
    check_shards(cfg.data.train_shards, cfg.data.s3_endpoint, cfg.data.train_split, "data.train_shards")
    check_text_encoder(cfg.model)
    check_writable(cfg.train.storage_path, cfg.train.storage_endpoint, "train.storage_path")
    check_writable(cfg.train.export_dir, cfg.train.storage_endpoint, "train.export_dir")
    from mmclip_dist.tracking import resolve_tracking_uri

    check_tracking(resolve_tracking_uri(cfg.tracking))


def check_ray_address() -> None:
    """RAY_ADDRESS (when set to host:port) answers; ``ray.init`` would otherwise wait a minute and then fail."""
    address = os.environ.get("RAY_ADDRESS", "")
    if address and address != "auto":
        check_reachable(address.replace("ray://", "tcp://"), "the Ray cluster (RAY_ADDRESS)")
