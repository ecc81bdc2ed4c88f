"""Fault-injection hooks of the training loop (``train.step_callback``), each off unless its env variable is set.

Fault-tolerance tests need to see and steer real workers from outside Ray:

* ``MMCLIP_TEST_PID_DIR``: every worker appends one JSON line per event to ``<dir>/rank<r>.jsonl``:
  ``{"event": "start"|"step", "rank", "pid", "node_id", "step", "time"}`` ("start" carries the step the
  worker resumed from), so a test can SIGKILL a worker by PID and check which node each rank ran on.
  With it, ``<dir>/keys_rank<r>.jsonl`` gets ``{"step", "rank", "world_size", "pid", "time", "keys"}`` per step:
  the samples the rank trained on (``read_step_keys`` keeps, per step, the run of it that counted).
* ``MMCLIP_TEST_STEP_SLEEP``: seconds to sleep after each step, so a test can act while a run is mid-way.
* ``MMCLIP_TEST_STOP_AFTER_STEP``: end the job after this step's checkpoint, without the export, as if it
  were preempted; ``--resume`` then continues it with the same ``train.max_steps`` (same lr schedule).

Tests enable them with ``train.step_callback=mmclip_devtools.fault_hooks:StepHooks`` (``STEP_CALLBACK``); the
trainer forwards every ``MMCLIP_*`` variable to the workers (``loop.worker_env``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

PID_DIR_ENV = "MMCLIP_TEST_PID_DIR"
STEP_SLEEP_ENV = "MMCLIP_TEST_STEP_SLEEP"
STOP_AFTER_ENV = "MMCLIP_TEST_STOP_AFTER_STEP"
HOOK_ENVS = (PID_DIR_ENV, STEP_SLEEP_ENV, STOP_AFTER_ENV)
STEP_CALLBACK = "mmclip_devtools.fault_hooks:StepHooks"


class StepHooks:
    """The hooks of one worker, read from its environment once."""

    def __init__(self, rank: int, start_step: int) -> None:
        self.rank = rank
        pid_dir = os.environ.get(PID_DIR_ENV)
        self.log_path = Path(pid_dir) / f"rank{rank}.jsonl" if pid_dir else None
        self.sleep_s = float(os.environ.get(STEP_SLEEP_ENV) or 0)
        stop = os.environ.get(STOP_AFTER_ENV)
        self.stop_after = int(stop) if stop else None
        self._record("start", start_step)

    def on_batch(self, step: int, keys: list[str]) -> None:
        """Record the sample keys this rank trained on in ``step`` (before the step's checkpoint)."""
        if self.log_path is None:
            return
        import ray.train

        world = ray.train.get_context().get_world_size()
        line = {
            "step": step,
            "rank": self.rank,
            "world_size": world,
            "pid": os.getpid(),
            "time": time.time(),
            "keys": keys,
        }
        with (self.log_path.parent / f"keys_rank{self.rank}.jsonl").open("a") as handle:
            handle.write(json.dumps(line) + "\n")

    def after_step(self, step: int) -> bool:
        """Record and pace the step; True when the job must end here."""
        self._record("step", step)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return self.stop_after is not None and step >= self.stop_after

    def _record(self, event: str, step: int) -> None:
        if self.log_path is None:
            return
        import ray

        line = {
            "event": event,
            "rank": self.rank,
            "pid": os.getpid(),
            "step": step,
            "time": time.time(),
            "node_id": ray.get_runtime_context().get_node_id(),
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as handle:  # one short write per line: readers never see half a line
            handle.write(json.dumps(line) + "\n")


def read_events(pid_dir: str | Path, rank: int) -> list[dict]:
    """The events a rank has recorded so far (complete lines only)."""
    path = Path(pid_dir) / f"rank{rank}.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n")]


def read_step_keys(pid_dir: str | Path) -> dict[int, dict]:
    """``{step: {"world_size", "keys", "runs"}}`` from every rank's key log: per step, the keys of its last run
    (a step re-done after a restore was first run by workers that died before its checkpoint); ``runs`` counts
    how often the step was run."""
    entries = [
        json.loads(line)
        for path in sorted(Path(pid_dir).glob("keys_rank*.jsonl"))
        for line in path.read_text().splitlines(keepends=True)
        if line.endswith("\n")
    ]
    out: dict[int, dict] = {}
    for step in sorted({e["step"] for e in entries}):
        ran = sorted((e for e in entries if e["step"] == step), key=lambda e: e["time"])
        world = ran[-1]["world_size"]
        last = ran[-world:]  # the final run of the step: one entry per rank of that worker group
        if sorted(e["rank"] for e in last) != list(range(world)):
            raise AssertionError(f"step {step}: its last run is not one entry per rank: {last}")
        out[step] = {"world_size": world, "keys": [k for e in last for k in e["keys"]], "runs": len(ran) / world}
    return out
