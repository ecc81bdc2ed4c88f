"""ZeRO-3 gradient accumulation with a parameter unused in the first micro-batch (DeepSpeed, 1 real process):
with ``clear_zero3_gradients`` every step applies exactly that step's gradient; without it DeepSpeed adds the
previous step's gradient (the defect that made ZeRO-3 runs diverge from their resumed copies)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmclip_dist.loopback import free_port

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("zero3_worker.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def updates(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("zero3") / "updates.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(WORKER), str(free_port()), str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.mark.timeout(900)
def test_every_step_applies_its_own_gradient(updates: dict) -> None:
    for step, record in enumerate(updates["cleared"]):
        for name, true in record["true"].items():
            torch.testing.assert_close(record["applied"][name], true, msg=f"step {step + 1}, {name}")


@pytest.mark.timeout(900)
def test_deepspeed_alone_reapplies_the_previous_gradient(updates: dict) -> None:
    """If this fails, DeepSpeed fixed the defect and ``train/zero3_grads.py`` can go."""
    first, second = updates["plain"][0], updates["plain"][1]
    torch.testing.assert_close(first["applied"]["b"], first["true"]["b"])
    torch.testing.assert_close(second["applied"]["b"], second["true"]["b"] + first["true"]["b"])
    torch.testing.assert_close(second["applied"]["a"], second["true"]["a"])
