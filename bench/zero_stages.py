"""ZeRO stages 1/2/3 on the debug model: step time and per-rank peak RSS of real 2-rank training runs.

Each stage runs ``mmclip-dist train`` on launch/configs/debug.yaml (mobilenetv3_small_100, 192x120, 2 CPU
workers, micro-batch 16, global batch 32) for ``--steps`` steps on the same freshly built synthetic shards
(fewer patients than the debug run: only throughput is measured). Step time is the median over steps after
the first; peak RSS is each worker process's ``ru_maxrss`` at the end (model, optimizer shard, activations,
DeepSpeed buffers, data loader). Prints a markdown table.

    python bench/zero_stages.py [--steps 6] [--precision fp32|bf16] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmclip_devtools.step_probes import PROBE_CALLBACK, PROBE_DIR_ENV  # noqa: E402
from mmclip_dist.config import dump_config, load_config  # noqa: E402

DEBUG = REPO / "launch" / "configs" / "debug.yaml"


def build_data(work: Path, patients: int) -> list[str]:
    from mmclip_dist.data.build.builder import build_shards
    from mmclip_dist.data.stream.loader import list_shards
    from mmclip_dist.data.synthetic import generate_vindr_dataset
    from mmclip_dist.model.tokenizer import build_text_encoder_folder, train_wordpiece_tokenizer
    from mmclip_dist.workflows.debug_run import training_reports

    cfg = load_config(
        DEBUG,
        [
            f"synthetic.num_patients={patients}",
            f"shards.input={work / 'vindr'}",
            f"shards.output={work / 'shards'}",
            "shards.salt=zero-stages-bench-salt",  # synthetic data: no PHI, but the salt rule still holds
            "shards.shard_max_samples=16",
        ],
    )
    generate_vindr_dataset(Path(cfg.shards.input), cfg.synthetic)
    build_shards(cfg.shards, progress=False)
    shards = [Path(p) for p in list_shards(cfg.shards.output, split="train")]
    text = work / "text_encoder"
    tok = train_wordpiece_tokenizer(training_reports(shards), text, vocab_size=cfg.synthetic.text_vocab)
    syn = cfg.synthetic
    build_text_encoder_folder(
        text, tok, hidden_size=syn.text_hidden, layers=syn.text_layers, heads=syn.text_hidden // 32
    )
    return [
        f"data.train_shards={work / 'shards'}",
        f"data.eval_shards={work / 'shards'}",
        f"model.text_encoder={text}",
    ]


def run_stage(work: Path, stage: int, steps: int, precision: str, data: list[str]) -> dict:
    run = work / f"zero{stage}"
    probes = run / "probes"
    cfg = load_config(
        DEBUG,
        [
            *data,
            f"train.zero_stage={stage}",
            f"train.precision={precision}",
            f"train.max_steps={steps}",
            "train.checkpoint_every=0",
            f"train.storage_path={run / 'runs'}",
            "train.export_dir=",
            f"train.run_name=zero{stage}",
            f"train.step_callback={PROBE_CALLBACK}",
            f"tracking.tracking_uri=sqlite:///{run / 'mlflow.db'}",
        ],
    )
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(dump_config(cfg))
    started = time.perf_counter()
    with (run / "train.log").open("wb") as log:
        done = subprocess.run(
            [sys.executable, "-m", "mmclip_dist.cli.main", "train", "--config", str(run / "config.yaml")],
            cwd=run,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO), PROBE_DIR_ENV: str(probes)},
        )
    if done.returncode != 0:
        raise SystemExit(f"ZeRO-{stage} run failed; see {run / 'train.log'}")
    ranks = [json.loads((probes / f"rank{r}.json").read_text()) for r in range(cfg.train.num_workers)]
    ends = ranks[0]["step_ends"]
    step_s = statistics.median([b - a for a, b in zip(ends[1:], ends[2:])] or [ends[-1] - ends[0]])
    return {
        "stage": stage,
        "step_s": step_s,
        "peak_rss_gib": [r["peak_rss_bytes"] / 2**30 for r in ranks],
        "wall_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--patients", type=int, default=64)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="zero-bench-"))
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = build_data(work, args.patients)
    rows = [run_stage(work, stage, args.steps, args.precision, data) for stage in (1, 2, 3)]
    print(f"\ndebug model, 2 CPU ranks, {args.precision}, {args.steps} steps per stage (median step time after step 1)")
    print("| ZeRO stage | step time (s) | peak RSS rank 0 (GiB) | peak RSS rank 1 (GiB) | run wall time (s) |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        r0, r1 = row["peak_rss_gib"]
        print(f"| {row['stage']} | {row['step_s']:.2f} | {r0:.2f} | {r1:.2f} | {row['wall_s']:.0f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
