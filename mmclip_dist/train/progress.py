"""Training progress on the driver's console: one line per logged step, read back from the MLflow run.

Rank 0 logs ``loss`` and ``samples_per_s`` every ``train.log_every`` steps; the driver has nothing else to
show while ``trainer.fit()`` blocks, so a thread polls the run and prints what is new:
``step 4/20  loss 3.2145  5.1 samples/s  ETA 1m12s``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def format_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(step: int, total: int, loss: float, samples_per_s: float, eta_s: float | None) -> str:
    eta = format_eta(eta_s) if eta_s is not None else "?"
    return f"step {step}/{total}  loss {loss:.4f}  {samples_per_s:.1f} samples/s  ETA {eta}"


class ProgressReporter:
    """Polls ``loss`` / ``samples_per_s`` of an MLflow run every ``interval_s`` and hands new steps to ``emit``."""

    def __init__(
        self, tracking_uri: str, run_id: str, total_steps: int, emit: Callable[[str], None], interval_s: float = 2.0
    ) -> None:
        self.tracking_uri, self.run_id, self.total = tracking_uri, run_id, total_steps
        self.emit, self.interval_s = emit, interval_s
        self.last_step = 0
        self._client: Any = None
        self._first: tuple[int, float] | None = None  # (step, log time) of the first step seen: ETA baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmclip-progress", daemon=True)

    def __enter__(self) -> ProgressReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()  # the last steps, logged just before fit() returned

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - progress is a convenience; a busy sqlite file must not end training
                continue

    def poll(self) -> None:
        from mmclip_dist.tracking import MlflowClient

        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        client = self._client
        losses = {m.step: m for m in client.get_metric_history(self.run_id, "loss")}
        speeds = {m.step: m.value for m in client.get_metric_history(self.run_id, "samples_per_s")}
        for step in sorted(s for s in losses if s > self.last_step):
            # ETA from the logging timestamps (checkpoints and data waits included), not the poll times: several
            # steps may arrive in one poll.
            stamp = losses[step].timestamp / 1000.0
            if self._first is None:
                self._first = (step, stamp)
            first_step, first_stamp = self._first
            per_step = (stamp - first_stamp) / (step - first_step) if step > first_step else None
            eta = (self.total - step) * per_step if per_step is not None else None
            self.emit(progress_line(step, self.total, losses[step].value, speeds.get(step, float("nan")), eta))
            self.last_step = step
