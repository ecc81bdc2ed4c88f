"""Per-step callbacks of the training loop, named in the config rather than imported by it.

``train.step_callback: "package.module:Class"`` makes every worker build ``Class(rank=..., start_step=...)``
after restoring and call ``after_step(step)`` after each optimizer step (and its checkpoint); a callback that
also has ``on_batch(step, keys)`` is given the sample keys this rank trained on in the step, before its checkpoint. Fault-injection
tests use it to pace and end runs (``mmclip_devtools.fault_hooks``); profilers or custom stop rules can too,
without the training loop knowing about them.
"""

from __future__ import annotations

import importlib
from typing import Protocol


class StepCallback(Protocol):
    def after_step(self, step: int) -> bool:
        """Called on every rank after ``step``'s checkpoint; True ends the job here, without the export."""
        ...


def load_step_callback(spec: str | None, rank: int, start_step: int) -> StepCallback | None:
    """Build the callback ``spec`` ("module:Class") names for this worker; None when no callback is set."""
    if not spec:
        return None
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"train.step_callback={spec!r}: expected 'package.module:Class'")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(rank=rank, start_step=start_step)
