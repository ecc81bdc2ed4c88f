"""The per-worker training function that Ray Train runs on every rank.

Read it top to bottom: build → restore → for each step: fetch micro-batches, feature-cache step
(forward all, loss over the global batch, replay + backward), log, checkpoint → export.
``train.step_callback`` names an optional per-step callback (``train/callbacks.py``), e.g. fault-injection tests.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import ray.train
import torch
import torch.distributed as dist

from mmclip_dist.config import Config, secret_env_names
from mmclip_dist.data.stream.loader import DataSkipError
from mmclip_dist.data.stream.shard_set import ShardSet
from mmclip_dist.losses.distributed import mean_across_ranks
from mmclip_dist.tracking import RunLogger
from mmclip_dist.train.callbacks import load_step_callback
from mmclip_dist.train.data_health import DATA_ERROR_KEY, SkipBudget
from mmclip_dist.train.state import TrainState, restore, save_and_report
from mmclip_dist.train.step_batches import step_stream
from mmclip_dist.train.zero3_grads import clear_zero3_gradients


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point: ``loop_config`` = ``trainer.train_loop_config`` (Config dump, MLflow run, shard set)."""
    import deepspeed  # after Ray has set DS_ACCELERATOR in this worker's environment

    from mmclip_dist.losses import MMCLIPLoss
    from mmclip_dist.losses.feature_cache import FeatureCache
    from mmclip_dist.model import MMCLIP
    from mmclip_dist.model.tokenizer import load_tokenizer
    from mmclip_dist.train.deepspeed_config import build_deepspeed_config, optimizer_param_groups
    from mmclip_dist.train.export import export_model

    if os.environ.get("MMCLIP_VERBOSE", "") in ("", "0"):
        # "No CUDA runtime is found" (torch's JIT build of DeepSpeed's CPU op) and DeepSpeed's accelerator
        # notices are noise on a CPU machine; --verbose keeps them.
        for name in ("torch.utils.cpp_extension", "DeepSpeed"):
            logging.getLogger(name).setLevel(logging.ERROR)

    cfg = Config.model_validate(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.train.seed)  # same init everywhere; DeepSpeed also broadcasts rank 0's weights
    model = MMCLIP.from_config(cfg.model, cfg.data)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=optimizer_param_groups(model),
        config=build_deepspeed_config(cfg.train, world),
        dist_init_required=False,
    )
    restored = restore(engine, rank)  # also restores this rank's RNG, so dropout continues exactly
    if restored is None:
        torch.manual_seed(cfg.train.seed * 1000 + rank)  # ranks must not share dropout masks
    state = restored or TrainState(mlflow_run_id=loop_config["mlflow_run_id"])
    logger = RunLogger(loop_config["tracking_uri"], state.mlflow_run_id, enabled=rank == 0)
    tokenizer = load_tokenizer(cfg.model)
    shard_set = ShardSet.from_json(loop_config["train_shards"])  # resolved on the driver: no listing here
    steps = step_stream(cfg, tokenizer, rank, world, state.epoch, state.batches_in_epoch, shard_set)
    cache = FeatureCache(MMCLIPLoss(cfg.loss), engine.module)
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    device = engine.device
    callback = load_step_callback(cfg.train.step_callback, rank, state.step)
    skip_budget = SkipBudget(cfg, device)

    def backward_and_step(surrogate: torch.Tensor) -> None:
        # The cache hands us gradients of the *global* loss, so DeepSpeed must not divide by GAS again;
        # step() after every micro-batch keeps DeepSpeed's accumulation boundary bookkeeping right.
        engine.backward(surrogate, scale_wrt_gas=False)
        engine.step()

    while state.step < cfg.train.max_steps:
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            # The DataLoader draws a seed from the global RNG per epoch; kept out of it, the dropout
            # stream depends only on the step, so a resumed run draws the masks an uninterrupted one does.
            try:
                batch = next(steps)
            except DataSkipError:  # this rank's shards are all unreadable: stop with the others, below
                batch = None
        stop_reason = skip_budget.update(batch.micro_batches if batch else None, reader_failed=batch is None)
        if stop_reason is not None:
            # Every rank leaves together; the driver reads the tag and fails the run (an exception here would
            # make Ray Train retry on the same data).
            logger.log_metrics({"data/skipped_samples": float(skip_budget.total)}, step=state.step)
            logger.set_tag(DATA_ERROR_KEY, stop_reason)
            break
        fetched = time.perf_counter()
        assert batch is not None  # a reader failure stopped the loop above
        micro_batches = [_to_device(mb, device, dtype) for mb in batch.micro_batches]
        if cfg.train.zero_stage == 3:
            clear_zero3_gradients(engine)  # else last step's gradients leak into this one (zero3_grads.py)
        terms = cache.step(micro_batches, forward=engine, backward=backward_and_step)
        done = time.perf_counter()
        state.step += 1
        state.epoch, state.batches_in_epoch = batch.epoch, batch.batches_in_epoch
        state.samples_seen += cfg.train.global_batch
        metrics = mean_across_ranks(terms) | {
            "lr": engine.get_lr()[0],
            "samples_per_s": cfg.train.global_batch / (done - started),
            "data_wait_fraction": (fetched - started) / (done - started),
            "epoch": float(state.epoch),
            "data/skipped_samples": float(skip_budget.total),
        }
        if state.step % cfg.train.log_every == 0 or state.step == cfg.train.max_steps:
            logger.log_metrics(metrics, step=state.step)
        every = cfg.train.checkpoint_every
        if (every and state.step % every == 0) or state.step == cfg.train.max_steps:
            save_and_report(engine, state, metrics, rank)
        if callback is not None and callback.after_step(state.step):
            break  # ended after this checkpoint, like a preemption: no export
    else:
        export_model(engine, cfg, rank, logger)
    logger.close()
    engine.destroy()  # ZeRO-3 aborts at interpreter exit without this
    dist.barrier()


# Only these follow the training precision; boxes stay fp32 (RoIAlign runs in fp32 on exact pixel
# coordinates, docs/model.md), box validity, ids and labels keep their integer/bool types.
PRECISION_KEYS = ("images", "masks")


def _to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Move tensors to ``device``; images and masks are cast to the training ``dtype``, nothing else is."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if key in PRECISION_KEYS:
                value = value.to(dtype)
        out[key] = value
    return out


def worker_env(use_gpu: bool) -> dict[str, str]:
    """Environment every training worker needs, set before DeepSpeed is imported there."""
    env = {"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    secret = set(secret_env_names())
    if os.environ.get("MMCLIP_VERBOSE", "") in ("", "0"):
        # Third-party deprecation notices and CUDA probes on a CPU machine bury the progress lines; --verbose
        # (MMCLIP_VERBOSE=1) keeps them.
        env["PYTHONWARNINGS"] = "ignore"
    for name, value in os.environ.items():
        # The project's own variables (MMCLIP_*: callback settings) follow the driver to every worker; credentials
        # (the id salt) do not: a worker's runtime_env is shown by Ray's dashboard and state API.
        if (name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME") or name.startswith("MMCLIP_")) and (
            name not in secret
        ):
            env[name] = value
    return env
