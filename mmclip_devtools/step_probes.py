"""Benchmark probes run as the training loop's ``train.step_callback`` (like the fault hooks, off unless set).

``MMCLIP_BENCH_PROBE_DIR``: after each step every worker writes ``<dir>/rank<r>.json`` with its step, the
wall time and the process's peak RSS (``ru_maxrss``), so a bench can report per-rank memory of real runs.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

PROBE_DIR_ENV = "MMCLIP_BENCH_PROBE_DIR"
PROBE_CALLBACK = "mmclip_devtools.step_probes:PeakMemoryProbe"


class PeakMemoryProbe:
    """Records this rank's peak RSS and step times; never ends the job."""

    def __init__(self, rank: int, start_step: int) -> None:
        folder = os.environ.get(PROBE_DIR_ENV)
        self.path = Path(folder) / f"rank{rank}.json" if folder else None
        self.times: list[float] = [time.time()]

    def after_step(self, step: int) -> bool:
        self.times.append(time.time())
        if self.path is not None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"step": step, "peak_rss_bytes": peak, "step_ends": self.times}))
        return False
