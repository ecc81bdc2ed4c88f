"""The training loop's test hooks: stop-after-step, per-step pacing, the event log and its reader."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mmclip_devtools.fault_hooks import HOOK_ENVS, PID_DIR_ENV, STEP_SLEEP_ENV, STOP_AFTER_ENV, StepHooks, read_events
from mmclip_dist.train.loop import worker_env


@pytest.fixture(autouse=True)
def _no_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HOOK_ENVS:
        monkeypatch.delenv(name, raising=False)


def test_hooks_are_inert_without_their_variables() -> None:
    hooks = StepHooks(rank=0, start_step=0)
    assert hooks.log_path is None and hooks.sleep_s == 0 and hooks.stop_after is None
    assert not any(hooks.after_step(step) for step in range(1, 50))


def test_stop_after_step_ends_the_job_at_that_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STOP_AFTER_ENV, "3")
    hooks = StepHooks(rank=1, start_step=0)
    assert [hooks.after_step(step) for step in (1, 2, 3)] == [False, False, True]
    # A job resumed past the stop step stops right after its first step.
    assert StepHooks(rank=1, start_step=5).after_step(6) is True


def test_step_sleep_paces_each_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STEP_SLEEP_ENV, "0.2")
    hooks = StepHooks(rank=0, start_step=0)
    start = time.perf_counter()
    hooks.after_step(1)
    assert time.perf_counter() - start >= 0.2


def test_read_events_skips_a_line_still_being_written(tmp_path: Path) -> None:
    done = {"event": "step", "rank": 0, "pid": 7, "step": 2, "time": 1.0, "node_id": "n"}
    (tmp_path / "rank0.jsonl").write_text(json.dumps(done) + "\n" + '{"event": "st')
    assert read_events(tmp_path, 0) == [done]
    assert read_events(tmp_path, 1) == []


def test_worker_env_forwards_only_the_hook_variables_that_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PID_DIR_ENV, "/tmp/pids")
    env = worker_env(use_gpu=False)
    assert env[PID_DIR_ENV] == "/tmp/pids" and env["DS_ACCELERATOR"] == "cpu"
    assert STOP_AFTER_ENV not in env and STEP_SLEEP_ENV not in env


def test_to_device_casts_only_images_and_masks() -> None:
    import torch

    from mmclip_dist.train.loop import _to_device

    batch = {
        "images": torch.rand(1, 2, 1, 4, 4),
        "masks": torch.zeros(1, 2, 1, 4, 4),
        "boxes": torch.tensor([[[[1.0, 2.0, 701.0, 3.0]]] * 2]),
        "box_valid": torch.ones(1, 2, 1, dtype=torch.bool),
        "input_ids": torch.ones(1, 2, 3, dtype=torch.long),
        "keys": ["k"],
    }
    out = _to_device(batch, torch.device("cpu"), torch.bfloat16)
    assert out["images"].dtype == out["masks"].dtype == torch.bfloat16
    assert out["boxes"].dtype == torch.float32 and float(out["boxes"][0, 0, 0, 2]) == 701.0  # bf16 would say 700
    assert out["box_valid"].dtype == torch.bool and out["input_ids"].dtype == torch.long and out["keys"] == ["k"]
