"""Preflight checks: everything a training or evaluation job needs, tried in seconds before it starts.

Each ``check_*`` function is importable on its own (train/eval call them to fail fast) and returns a
:class:`CheckResult` (name, ok, message, fix) instead of raising; :func:`run_preflight` runs them all in
order and ``mmclip-dist preflight`` prints the table. Nothing here starts a training run, writes to MLflow
or leaves files behind (the storage probe deletes what it wrote).
"""

from __future__ import annotations

import resource
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from mmclip_dist.config import Config, accumulation_steps, load_config

# The report a blank probe sample carries when no shard could be read (the device check still runs).
_PROBE_REPORT = "Projection Position: LCC\nBreast Density: B.\nNo suspicious finding."


@dataclass
class CheckResult:
    """One check: ``ok`` with what was found in ``message``, or the failure and the ``fix`` for it."""

    name: str
    ok: bool
    message: str
    fix: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False  # not run because a check it depends on failed (that one carries the line)

    def line(self) -> str:
        """The one line a failure prints: what failed and how to fix it."""
        return f"preflight FAILED [{self.name}]: {self.message}" + (f" -- fix: {self.fix}" if self.fix else "")


def _timed(name: str, fix: str, fn: Callable[[], tuple[str, dict[str, Any]]], subject: str = "") -> CheckResult:
    """Run ``fn() -> (message, details)``; any exception becomes a failed result carrying ``fix``, its
    message prefixed with ``subject`` (the URI / path checked) when the error may not name it."""
    started = time.perf_counter()
    try:
        message, details = fn()
        return CheckResult(name, True, message, "", time.perf_counter() - started, details)
    except Exception as err:  # noqa: BLE001 - a check reports every failure as a result, never raises
        text = " ".join(f"{type(err).__name__}: {err}".split())
        if subject and subject not in text:
            text = f"{subject}: {text}"
        return CheckResult(name, False, text[:400], fix, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------- checks


def check_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> tuple[CheckResult, Config | None]:
    """The YAML file and overrides form a valid config tree (typos in keys, batch arithmetic)."""
    holder: dict[str, Config] = {}

    def run() -> tuple[str, dict[str, Any]]:
        cfg = load_config(path, overrides)
        holder["cfg"] = cfg
        t = cfg.train
        accum = accumulation_steps(t.global_batch, t.num_workers, t.micro_batch)
        return (
            f"{path or 'defaults'}: {t.num_workers} workers x micro-batch {t.micro_batch} x {accum} accumulation "
            f"= global batch {t.global_batch}, {t.precision}, ZeRO-{t.zero_stage}",
            {"accumulation": accum},
        )

    result = _timed("config", "correct the key/value named above in the YAML file or the override", run)
    return result, holder.get("cfg")


def check_shards(cfg: Config) -> CheckResult:
    """Training shards are listable, their sample count comes from the manifest, the first sample decodes."""
    from mmclip_dist.data.stream.loader import count_samples, decode_sample, iter_shard, list_shards

    def run() -> tuple[str, dict[str, Any]]:
        data = cfg.data
        shards = list_shards(data.train_shards, data.s3_endpoint, split=data.train_split)
        samples = count_samples(shards, data.s3_endpoint)
        first = next(iter_shard(shards[0], data.s3_endpoint), None)
        if first is None:
            raise ValueError(f"{shards[0]} holds no sample")
        decoded = decode_sample(first, data)
        need = cfg.train.num_workers * max(data.loader_workers, 1)
        if data.split_by_node and len(shards) < need:
            raise ValueError(
                f"{len(shards)} shards under {data.train_shards}, but split_by_node needs >= workers x loader "
                f"workers = {need}"
            )
        return (
            f"{len(shards)} '{data.train_split}' shards, {samples} samples; first sample {decoded['key']} decodes "
            f"({sum(int(v.sum()) for v in decoded['box_valid'])} boxes)",
            {"shards": len(shards), "samples": samples, "sample": decoded},
        )

    return _timed(
        "shards",
        "build them (mmclip-dist shards build) or point data.train_shards at the folder / s3:// prefix holding "
        "{split}-NNNNNN.tar (data.s3_endpoint and S3 credentials for s3://)",
        run,
        cfg.data.train_shards,
    )


def check_text_encoder(cfg: Config) -> CheckResult:
    """Tokenizer and text encoder load from what is on disk (HF_HUB_OFFLINE=1 on cluster workers)."""

    def run() -> tuple[str, dict[str, Any]]:
        from transformers import AutoConfig

        from mmclip_dist.model.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
        config = AutoConfig.from_pretrained(cfg.model.text_encoder)
        ids = tokenizer(_PROBE_REPORT)["input_ids"]
        return (
            f"{cfg.model.text_encoder}: {config.model_type}, hidden {config.hidden_size}, vocab {len(tokenizer)}; "
            f"probe report = {len(ids)} tokens (max_text_len {cfg.data.max_text_len})",
            {},
        )

    return _timed(
        "text encoder",
        "set model.text_encoder (and model.tokenizer) to a local folder, or pre-download the hub model into "
        "HF_HOME (huggingface-cli download NAME) on every node",
        run,
        cfg.model.text_encoder,
    )


def check_storage(cfg: Config) -> CheckResult:
    """``train.storage_path`` (local folder or s3://) accepts a write, a read back and a delete."""
    from mmclip_dist.data.storage import RetryPolicy, open_storage

    def run() -> tuple[str, dict[str, Any]]:
        storage = open_storage(cfg.train.storage_path, cfg.train.storage_endpoint)
        if hasattr(storage, "retry"):
            # Training rides out a 3-minute S3 outage; a preflight reports an unreachable endpoint quickly.
            storage.retry = RetryPolicy(deadline_s=15.0)
        name = f".preflight-{uuid.uuid4().hex}"
        payload = b"mmclip-dist preflight probe"
        storage.put_bytes(payload, name)
        try:
            if storage.get_bytes(name) != payload:
                raise OSError(f"{storage.url_for(name)}: read back different bytes")
        finally:
            storage.delete(name)
        return f"{cfg.train.storage_path}: write, read back and delete ok", {}

    return _timed(
        "storage",
        "make train.storage_path writable (local: permissions / mount; s3://: bucket, credentials, "
        "train.storage_endpoint)",
        run,
        cfg.train.storage_path,
    )


def check_mlflow(cfg: Config, timeout_s: float = 5.0) -> CheckResult:
    """The tracking server answers (http/https: its /health endpoint; sqlite/file: the store opens)."""
    from mmclip_dist.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.tracking)

    def run() -> tuple[str, dict[str, Any]]:
        if uri.startswith(("http://", "https://")):
            import requests

            reply = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
            reply.raise_for_status()
            return f"{uri}: server answers ({reply.status_code})", {}
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).search_experiments(max_results=1)
        return f"{uri}: store opens", {}

    return _timed(
        "mlflow",
        "start the MLflow server or set tracking.tracking_uri / MLFLOW_TRACKING_URI to a reachable one",
        run,
        uri,
    )


def _probe_batch(cfg: Config, sample: dict[str, Any] | None) -> dict[str, Any]:
    """``train.micro_batch`` copies of ``sample`` (a decoded shard sample), collated like the loader does;
    a blank sample with one box when no shard could be read."""
    import numpy as np

    from mmclip_dist.data.stream.loader import collate_samples
    from mmclip_dist.model.tokenizer import load_tokenizer

    if sample is None:
        h, w = cfg.data.image_size
        r = cfg.data.max_rois
        boxes = np.zeros((2, r, 4), np.float32)
        boxes[:, 0] = [w / 4, h / 4, w / 2, h / 2]
        valid = np.zeros((2, r), bool)
        valid[:, 0] = True
        zeros = np.zeros((2, 1, h, w), np.float32)
        sample = dict(key="probe", images=zeros, masks=zeros, boxes=boxes, box_valid=valid, label=-1, meta={})
        sample["reports"] = [_PROBE_REPORT, _PROBE_REPORT]
    samples = [{**sample, "key": f"{sample['key']}-{i}"} for i in range(cfg.train.micro_batch)]
    return collate_samples(samples, cfg.data, load_tokenizer(cfg.model))


def _peak_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def global_batch_extra_bytes(cfg: Config, bytes_per_value: int = 4) -> int:
    """Memory the global contrastive batch adds on one rank on top of one micro-batch's step (estimate).

    The feature cache keeps the rank's features of every micro-batch (embeddings, RoI and token features,
    both views) plus their gradients, all-gathers every rank's (no grad kept for remote rows beyond the
    loss), and the loss materialises ``[n_rank, N]`` logits per view and direction (global CLIP unless
    chunked) and one RoI-matching chunk ``n_rank x chunk x heads x R x L`` per view (attention + softmax).
    """
    t, m, d = cfg.train, cfg.model, cfg.data
    n_rank = t.global_batch // t.num_workers
    n_all = t.global_batch
    views = 2
    per_sample = views * (m.embed_dim * 2 + d.max_rois * m.roi_match_dim + d.max_text_len * m.roi_match_dim)
    features = (n_rank * 2 + n_all) * per_sample  # cached + their grads, gathered copy
    logits_cols = n_all if cfg.loss.clip_chunk_size <= 0 else cfg.loss.clip_chunk_size
    clip_logits = views * 2 * 2 * n_rank * logits_cols  # two directions, value + grad
    chunk = min(cfg.loss.roi_chunk_size, n_all)
    roi_chunk = 3 * n_rank * chunk * m.roi_match_heads * d.max_rois * d.max_text_len
    roi_scores = views * 2 * 2 * n_rank * n_all
    return (features + clip_logits + roi_chunk + roi_scores) * bytes_per_value


def check_device_step(cfg: Config, sample: dict[str, Any] | None = None) -> CheckResult:
    """The model builds on the configured device and precision and runs one forward + backward of the full
    loss at ``train.micro_batch``; reports the step's peak memory and an estimate for the global batch."""

    def run() -> tuple[str, dict[str, Any]]:
        import torch

        from mmclip_dist.losses import MMCLIPLoss
        from mmclip_dist.model import MMCLIP

        if cfg.train.use_gpu and not torch.cuda.is_available():
            raise RuntimeError("train.use_gpu is true but no CUDA device is visible")
        device = torch.device("cuda") if cfg.train.use_gpu else torch.device("cpu")
        dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
        batch = _probe_batch(cfg, sample)
        torch.manual_seed(cfg.train.seed)
        built = time.perf_counter()
        # bf16 weights and buffers, as DeepSpeed's bf16 mode (train/deepspeed_config.py) runs them.
        model = MMCLIP.from_config(cfg.model, cfg.data).to(device=device, dtype=dtype).train()
        build_s = time.perf_counter() - built
        for key, value in list(batch.items()):
            if isinstance(value, torch.Tensor):
                batch[key] = value.to(device).to(dtype) if key in ("images", "masks") else value.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        else:
            before = _peak_rss_bytes()
        started = time.perf_counter()
        terms = MMCLIPLoss(cfg.loss)(model(batch), model)
        terms["loss"].backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated(device)
            what = f"peak GPU memory {peak / 2**30:.2f} GiB"
        else:
            peak = _peak_rss_bytes()
            what = f"peak RSS {peak / 2**30:.2f} GiB (+{max(peak - before, 0) / 2**20:.0f} MiB in the step)"
        step_s = time.perf_counter() - started
        loss = float(terms["loss"].detach())
        if not torch.isfinite(terms["loss"]):
            raise FloatingPointError(f"the loss of the probe step is {loss}")
        params = sum(p.numel() for p in model.parameters())
        # Adam's moments and fp32 master weights: 12 bytes per parameter, divided over ranks from ZeRO-1 on.
        optim = params * 12 // (cfg.train.num_workers if cfg.train.zero_stage >= 1 else 1)
        estimate = peak + global_batch_extra_bytes(cfg) + optim
        return (
            f"{device.type} {cfg.train.precision}: {cfg.model.backbone} {params / 1e6:.1f}M params built in "
            f"{build_s:.1f}s; forward+backward of {cfg.train.micro_batch} breasts {step_s:.2f}s, loss {loss:.3f}; "
            f"{what}; estimate at global batch {cfg.train.global_batch} with optimizer state "
            f"{estimate / 2**30:.2f} GiB per rank",
            {"peak_bytes": peak, "estimate_bytes": estimate, "step_s": step_s, "loss": loss},
        )

    return _timed(
        "device step",
        "out of memory: lower train.micro_batch (the global batch is kept by accumulation) or data.image_size; "
        "weights not found offline: model.backbone_weights ('' or a local file); else check train.use_gpu and "
        "train.precision",
        run,
    )


def check_device_step_on_workers(cfg: Config, sample: dict[str, Any] | None = None) -> list[CheckResult]:
    """:func:`check_device_step` inside ``train.num_workers`` Ray tasks shaped like the training workers
    (same CPUs and GPU per worker, same worker environment) on the connected cluster."""
    import ray

    from mmclip_dist.train.loop import worker_env

    task = ray.remote(num_cpus=cfg.train.cpus_per_worker, num_gpus=1 if cfg.train.use_gpu else 0)(
        _worker_device_step
    ).options(runtime_env={"env_vars": worker_env(cfg.train.use_gpu)})
    dumped = cfg.model_dump(mode="json")
    started = time.perf_counter()
    try:
        replies = ray.get([task.remote(dumped, sample, i) for i in range(cfg.train.num_workers)], timeout=600)
    except Exception as err:  # noqa: BLE001
        return [
            CheckResult(
                "device step (workers)",
                False,
                " ".join(f"{type(err).__name__}: {err}".split())[:400],
                "the cluster cannot place train.num_workers workers of train.cpus_per_worker CPUs (and 1 GPU "
                "with train.use_gpu): add nodes or lower them",
                time.perf_counter() - started,
            )
        ]
    return [CheckResult(**reply) for reply in replies]


def _worker_device_step(dumped: dict[str, Any], sample: dict[str, Any] | None, index: int) -> dict[str, Any]:
    import ray

    result = check_device_step(Config.model_validate(dumped), sample)
    node = ray.get_runtime_context().get_node_id()[:8]
    result.name = f"device step (worker {index}, node {node})"
    return asdict(result)


# ---------------------------------------------------------------------------------------------- all checks


def run_preflight(
    path: str | None, overrides: list[str] | tuple[str, ...] = (), on_workers: bool = False
) -> list[CheckResult]:
    """Every check in order; the device step runs here, or in each Ray worker with ``on_workers``."""
    config_result, cfg = check_config(path, overrides)
    if cfg is None:
        return [config_result]
    results = [config_result]
    shards = check_shards(cfg)
    sample = shards.details.pop("sample", None)
    text = check_text_encoder(cfg)
    results += [shards, text, check_storage(cfg), check_mlflow(cfg)]
    if not text.ok:
        results.append(CheckResult("device step", False, "skipped: the text encoder does not load", skipped=True))
    elif on_workers:
        results += check_device_step_on_workers(cfg, sample)
    else:
        results.append(check_device_step(cfg, sample))
    return results


def failures(results: list[CheckResult]) -> list[CheckResult]:
    """The results that failed (skipped ones are not failures of their own)."""
    return [r for r in results if not r.ok and not r.skipped]


def format_table(results: list[CheckResult]) -> str:
    """The results as an aligned text table (check, status, seconds, what was found)."""
    width = max(len(r.name) for r in results)
    rows = [f"{'check':<{width}}  status  seconds  result", "-" * (width + 30)]
    for r in results:
        status = "ok" if r.ok else "skip" if r.skipped else "FAILED"
        rows.append(f"{r.name:<{width}}  {status:<6}  {r.seconds:7.1f}  {r.message}")
    return "\n".join(rows)
