"""``bench/gpu_run.sh --cpu-dry-run``: the whole one-command GPU flow (data, shards, text encoder, preflight,
bf16 training on a local Ray cluster, eval, timm comparison, results file), tiny and on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_cpu_dry_run_writes_the_results_file(tmp_path: Path) -> None:
    work = tmp_path / "gpu-run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        ["bash", "bench/gpu_run.sh", "--cpu-dry-run", "--workdir", str(work)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=850,
        env={**env, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads((work / "results.json").read_text())
    assert result["gpus"] == 0 and result["workers"] == 2 and result["train_steps"] == 2
    assert result["train_samples_per_s_per_worker"] > 0 and result["train_final_loss"] > 0
    assert result["smoke"]["backbone"] == "test_efficientnet" and result["mmclip_over_timm_step_time"] > 0
    assert "preflight ok" in (work / "preflight.txt").read_text()
    assert (work / "model" / "config.json").is_file(), "training exported the model"
    assert "MM-CLIP / pure timm step time" in done.stdout and "samples/s per CPU worker" in done.stdout
