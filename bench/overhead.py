"""Framework overhead: Ray Train + DeepSpeed ZeRO-1 step time vs plain torch DDP (gloo), same model and batch.

Both sides run 2 CPU workers (1 thread each), the same ``MMCLIP`` built from ``launch/configs/debug.yaml``,
the same synthetic micro-batch per rank (``model.debug.random_batch``), the same ``MMCLIPLoss`` (features
all-gathered with autograd), AdamW, gradient clipping and an lr schedule. Each side times ``--steps``
steady-state steps after ``--warmup`` (start-up, allocator warm-up and DeepSpeed's first-step set-up excluded);
DDP runs before and after DeepSpeed (the load of a shared machine drifts); the ratio of the DeepSpeed median
to the mean of the two DDP medians is the overhead (goal: <= 1.15).

Then the loader: samples/s one rank's train loader delivers (``bench/loader_throughput.py``'s shards and timer,
same image size) from a local folder and, with ``--s3``, from a local SeaweedFS, next to the samples/s one
rank's train step consumes.

    .venv/bin/python bench/overhead.py [--size 256 160 --micro-batch 4 --steps 12 --warmup 4 --s3]
"""

from __future__ import annotations

import os

# Ray must keep every server on 127.0.0.1 (mmclip_dist.train.ray_env); set before anything imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from mmclip_dist.config import Config, DataConfig, load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def bench_config(text_encoder: Path, args: argparse.Namespace) -> Config:
    return load_config(
        REPO / "launch/configs/debug.yaml",
        [
            f"model.text_encoder={text_encoder}",
            f"model.backbone={args.backbone}",
            f"data.image_size={list(args.size)}",
            "train.num_workers=2",
            f"train.micro_batch={args.micro_batch}",
            f"train.global_batch={2 * args.micro_batch}",
            "train.zero_stage=1",
            "train.warmup_steps=2",
            f"train.max_steps={args.warmup + args.steps}",
        ],
    )


def _setup(cfg: Config, rank: int) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Model (same init on every rank), loss and this rank's fixed batch."""
    from mmclip_devtools.toy_models import random_batch
    from mmclip_dist.losses import MMCLIPLoss
    from mmclip_dist.model import MMCLIP
    from mmclip_dist.model.tokenizer import load_tokenizer

    torch.set_num_threads(1)
    torch.manual_seed(cfg.train.seed)
    model = MMCLIP.from_config(cfg.model, cfg.data)
    vocab = len(load_tokenizer(cfg.model))
    batch = random_batch(
        cfg.train.micro_batch, tuple(cfg.data.image_size), cfg.data.max_rois, cfg.data.max_text_len, vocab, seed=rank
    )
    return model, MMCLIPLoss(cfg.loss), batch


def _timed(step: Any, warmup: int, steps: int) -> list[float]:
    times = []
    for index in range(warmup + steps):
        start = time.perf_counter()
        step()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


def deepspeed_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: the production DeepSpeed engine (``build_deepspeed_config``), fixed batch."""
    import deepspeed
    import ray.train

    from mmclip_dist.train.deepspeed_config import build_deepspeed_config

    cfg = Config.model_validate(config["config"])
    rank = ray.train.get_context().get_world_rank()
    model, loss_fn, batch = _setup(cfg, rank)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=build_deepspeed_config(cfg.train, 2),
        dist_init_required=False,
    )

    def step() -> None:
        loss = loss_fn(engine(batch), engine.module)["loss"]
        engine.backward(loss)
        engine.step()

    times = _timed(step, config["warmup"], config["steps"])
    if rank == 0:  # (Ray Train V2 keeps no metrics of reports without a checkpoint)
        Path(config["out"]).write_text(json.dumps({"median_step_s": statistics.median(times)}))


def ddp_worker(rank: int, config: dict[str, Any], port: int, out: Path) -> None:
    """torch.multiprocessing worker: DistributedDataParallel over gloo, same model, batch and optimizer."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    cfg = Config.model_validate(config["config"])
    model, loss_fn, batch = _setup(cfg, rank)
    ddp = DistributedDataParallel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / cfg.train.warmup_steps))

    def step() -> None:
        loss = loss_fn(ddp(batch), model)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

    times = _timed(step, config["warmup"], config["steps"])
    if rank == 0:
        out.write_text(json.dumps({"median_step_s": statistics.median(times)}))
    dist.destroy_process_group()


def run_ddp(config: dict[str, Any], work: Path) -> float:
    import torch.multiprocessing as mp

    from mmclip_dist.loopback import free_port

    out = work / "ddp.json"
    mp.spawn(ddp_worker, args=(config, free_port(), out), nprocs=2, join=True)
    return float(json.loads(out.read_text())["median_step_s"])


def run_ray_deepspeed(config: dict[str, Any], work: Path) -> float:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from mmclip_dist.train.loop import worker_env
    from mmclip_dist.train.ray_env import init_local_ray

    out = work / "deepspeed.json"
    init_local_ray(num_cpus=2)
    try:
        trainer = TorchTrainer(
            deepspeed_worker,
            train_loop_config={**config, "out": str(out)},
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(
                name="overhead", storage_path=str(work / "ray"), worker_runtime_env={"env_vars": worker_env(False)}
            ),
        )
        trainer.fit()
        return float(json.loads(out.read_text())["median_step_s"])
    finally:
        ray.shutdown()


def loader_rates(cfg: Config, micro_batch: int, batches: int, use_s3: bool, work: Path) -> dict[str, float]:
    """Samples/s of one rank's train loader (1 loader worker), local folder and optionally SeaweedFS."""
    from loader_throughput import REPORT, time_loader, write_shards

    from mmclip_devtools.s3_server import LocalS3Server
    from mmclip_dist.data.storage import open_storage
    from mmclip_dist.data.stream.shard_set import resolve_shard_set
    from mmclip_dist.model.tokenizer import train_wordpiece_tokenizer

    shards = work / "shards"
    write_shards(shards, "zstd", batches * micro_batch, 2 * micro_batch, tuple(cfg.data.image_size))
    tokenizer = train_wordpiece_tokenizer([REPORT] * 4, vocab_size=200)
    data = cfg.data.model_copy(update={"loader_workers": 1, "shuffle_buffer": 2 * micro_batch, "split_by_node": False})

    def rate(data: DataConfig) -> float:
        return time_loader(data, resolve_shard_set(data.train_shards, data.s3_endpoint, "train"), tokenizer,
                           micro_batch)[0]  # fmt: skip

    rates = {"local": rate(data.model_copy(update={"train_shards": str(shards)}))}
    if use_s3:
        with LocalS3Server(work / "s3", bucket="bench") as server:
            os.environ.update(server.env())
            storage = open_storage("s3://bench/shards", server.endpoint)
            for path in sorted(shards.iterdir()):
                storage.put_file(path, path.name)
            s3_data = data.model_copy(update={"train_shards": "s3://bench/shards", "s3_endpoint": server.endpoint})
            rates["s3"] = rate(s3_data)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(256, 160), help="image height width")
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--loader-batches", type=int, default=8)
    parser.add_argument("--s3", action="store_true", help="also time the loader against a local SeaweedFS")
    args = parser.parse_args()

    from mmclip_devtools.toy_models import build_debug_text_encoder

    with tempfile.TemporaryDirectory(prefix="overhead-bench-") as tmp:
        work = Path(tmp)
        # The debug pipeline's text encoder size (pipeline.py): 2-layer BERT, hidden 128.
        text_encoder = build_debug_text_encoder(work / "text_encoder", hidden_size=128, layers=2, heads=4)
        cfg = bench_config(text_encoder, args)
        config = {"config": cfg.model_dump(mode="json"), "warmup": args.warmup, "steps": args.steps}
        # DDP before and after: the machine's load drifts, the mean of the two brackets the DeepSpeed run.
        ddp_runs = [run_ddp(config, work)]
        deepspeed = run_ray_deepspeed(config, work)
        ddp_runs.append(run_ddp(config, work))
        ddp = statistics.mean(ddp_runs)
        consumed = cfg.train.micro_batch / deepspeed  # samples/s one rank's train step takes in
        rates = loader_rates(cfg, args.micro_batch, args.loader_batches, args.s3, work)

    print(
        f"\n{args.backbone} {args.size[0]}x{args.size[1]}, micro-batch {args.micro_batch}/rank, 2 CPU workers, "
        f"median of {args.steps} steps after {args.warmup} warm-up"
    )
    print(f"torch DDP (gloo)            {ddp:8.3f} s/step   (runs before/after: {ddp_runs[0]:.3f} / {ddp_runs[1]:.3f})")
    print(f"Ray Train + DeepSpeed ZeRO-1 {deepspeed:7.3f} s/step   ratio {deepspeed / ddp:.3f} (goal <= 1.15)")
    print(f"train step consumes         {consumed:8.1f} samples/s per rank")
    for name, rate in rates.items():
        print(f"loader ({name:5s}, 1 worker)  {rate:8.1f} samples/s per rank   {rate / consumed:.1f}x consumption")
    print(
        json.dumps(
            {
                "ddp_step_s": ddp,
                "ddp_runs_s": ddp_runs,
                "ray_deepspeed_step_s": deepspeed,
                "ratio": deepspeed / ddp,
                "consumed_samples_per_s": consumed,
                "loader_samples_per_s": rates,
            }
        )
    )


if __name__ == "__main__":
    main()
