"""Summarise a ``bench/gpu_run.sh`` run: samples/s per GPU (from the training run's MLflow metrics), peak GPU
memory (nvidia-smi samples taken during training), the MM-CLIP/timm step-time ratio (bench/gpu_smoke.py),
the zero-shot eval; prints them and writes ``<workdir>/results.json``."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mlflow.tracking import MlflowClient


def train_throughput(workdir: Path) -> dict[str, float]:
    """Median samples/s over the steps after the first (warm-up, cuDNN autotuning) of the one training run."""
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gpu-run")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    if len(runs) != 1:
        raise SystemExit(f"expected one MLflow run in {workdir / 'mlflow.db'}, found {len(runs)}")
    history = client.get_metric_history(runs[0].info.run_id, "samples_per_s")
    values = [m.value for m in sorted(history, key=lambda m: m.step)]
    if not values:
        raise SystemExit("the training run logged no samples_per_s")
    steady = values[1:] or values
    wait = [m.value for m in client.get_metric_history(runs[0].info.run_id, "data_wait_fraction")]
    return {
        "steps": len(values),
        "samples_per_s": statistics.median(steady),
        "data_wait_fraction": statistics.median(wait[1:] or wait) if wait else float("nan"),
        "final_loss": client.get_metric_history(runs[0].info.run_id, "loss")[-1].value,
    }


def peak_gpu_memory_gib(workdir: Path) -> dict[str, float]:
    """``{gpu index: peak memory.used GiB}`` from the nvidia-smi samples (absent on a CPU dry run)."""
    path = workdir / "gpu_memory.csv"
    peaks: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[1].isdigit():
                peaks[parts[0]] = max(peaks.get(parts[0], 0.0), int(parts[1]) / 1024)
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--gpus", type=int, required=True, help="0 on a CPU dry run")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--train-seconds", type=float, required=True)
    parser.add_argument("--total-seconds", type=float, required=True)
    args = parser.parse_args()

    train = train_throughput(args.workdir)
    smoke = json.loads((args.workdir / "gpu_smoke.txt").read_text().strip().splitlines()[-1])
    memory = peak_gpu_memory_gib(args.workdir)
    result = {
        "device": smoke["device"],
        "gpus": args.gpus,
        "workers": args.workers,
        "train_steps": train["steps"],
        "train_samples_per_s": train["samples_per_s"],
        "train_samples_per_s_per_worker": train["samples_per_s"] / args.workers,
        "train_data_wait_fraction": train["data_wait_fraction"],
        "train_final_loss": train["final_loss"],
        "peak_gpu_memory_gib": memory,
        "smoke": smoke,
        "mmclip_over_timm_step_time": smoke["mmclip_step_s"] / smoke["timm_step_s"],
        "eval": (args.workdir / "eval.txt").read_text()[-2000:],
        "train_seconds": args.train_seconds,
        "total_seconds": args.total_seconds,
    }
    (args.workdir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    unit = "GPU" if args.gpus else "CPU worker (dry run)"
    print(f"\n== bench/gpu_run.sh results ({result['device']}, {args.workers} worker(s)) ==")
    print(
        f"training: {result['train_samples_per_s_per_worker']:.2f} samples/s per {unit} "
        f"(median of steps 2..{train['steps']}; data wait {train['data_wait_fraction']:.0%})"
    )
    peak = max(memory.values()) if memory else float("nan")
    print(f"peak GPU memory during training: {peak:.1f} GiB" + ("" if memory else " (no GPU)"))
    print(
        f"MM-CLIP / pure timm step time (gpu_smoke, micro-batch {smoke['micro_batch']}): "
        f"{result['mmclip_over_timm_step_time']:.2f}"
    )
    print(f"wall time: training {args.train_seconds:.0f} s, whole run {args.total_seconds:.0f} s")
    print(f"results: {args.workdir / 'results.json'}")


if __name__ == "__main__":
    main()
