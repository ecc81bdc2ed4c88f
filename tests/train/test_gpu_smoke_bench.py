"""``bench/gpu_smoke.py``: its config snapshot matches the production YAML, and its CPU dry run works with
and without pydantic (the GPU machine may only have torch, timm and transformers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmclip_devtools.bench_scripts import load_bench_script

REPO = Path(__file__).resolve().parents[2]


gpu_smoke = load_bench_script("gpu_smoke")
SNAPSHOT, snapshot_config = gpu_smoke.SNAPSHOT, gpu_smoke.snapshot_config


def test_snapshot_equals_the_resolved_production_config() -> None:
    assert json.loads(SNAPSHOT.read_text()) == snapshot_config(), (
        "bench/gpu_smoke_config.json is stale: regenerate it with snapshot_config() (see its docstring)"
    )


@pytest.mark.integration
@pytest.mark.timeout(240)
@pytest.mark.parametrize("hide_pydantic", [False, True])
def test_cpu_dry_run_reports_both_throughputs(hide_pydantic: bool) -> None:
    hide = "sys.modules['pydantic'] = None; " if hide_pydantic else ""
    script = (
        f"import runpy, sys; {hide}sys.argv = ['gpu_smoke.py', '--cpu-dry-run']; "
        "runpy.run_path('bench/gpu_smoke.py', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=220,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backbone"] == "test_efficientnet" and result["image_size"] == [64, 48]
    assert result["mmclip_step_s"] > 0 and result["timm_step_s"] > 0
    assert ("using the snapshot" in done.stdout) is hide_pydantic
