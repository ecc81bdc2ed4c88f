"""Work-around for stale gradients in DeepSpeed ZeRO-3 gradient accumulation (DeepSpeed 0.19).

ZeRO-3 keeps each rank's reduced gradient partitions in one flat buffer
(``DeepSpeedZeroOptimizer_Stage3.grad_partitions_flat_buffer``) that it allocates zeroed once and never clears:
``partition_grads`` *copies* a parameter's gradient into it in the first backward of an accumulation window
(``micro_step_id == 0``) and *adds* to it in later ones. A parameter that gets no gradient in the window's first
backward therefore adds its new gradient to the previous window's, and one that gets none in the whole window
is stepped again with the previous window's gradient. The feature cache (``losses/feature_cache.py``) hits this
every step: the logit scales and the RoI matcher only receive gradients in the last micro-batch's backward. A run
resumed from a checkpoint starts with a fresh (zero) buffer, which is why ZeRO-3 resume diverged from an
uninterrupted run; the uninterrupted run was the wrong one. Stages 1 and 2 keep gradients differently and are
not affected.
"""

from __future__ import annotations

from typing import Any

import torch


def clear_zero3_gradients(engine: Any) -> None:
    """Zero ZeRO-3's gradient partitions before the first backward of an accumulation window.

    Call it on every rank, for ZeRO-3 only, at the start of every optimizer step (it costs one memset of this
    rank's gradient partition). Raises if the DeepSpeed in use no longer has the buffer (the work-around must then
    be re-checked, not silently skipped).
    """
    buffer = getattr(engine.optimizer, "grad_partitions_flat_buffer", None)
    if not isinstance(buffer, torch.Tensor):
        raise RuntimeError(
            f"{type(engine.optimizer).__name__} has no tensor 'grad_partitions_flat_buffer': this DeepSpeed version "
            "keeps ZeRO-3 gradients differently; re-check mmclip_dist/train/zero3_grads.py against it"
        )
    buffer.zero_()
