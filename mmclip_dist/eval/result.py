"""What one evaluation produced: the task, the protocol, each method's predictions and scores.

MLflow metric keys: ``<mode>/<task>/<method>/<metric>``, e.g. ``linear/malignancy/mmclip/breast_roc_auc``;
methods are ``mmclip``, ``random_init`` and ``imagenet_init``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mmclip_dist.eval.scoring import Predictions
from mmclip_dist.eval.tasks import Task

MODEL_METHOD = "mmclip"
BASELINE_METHODS = {"random": "random_init", "imagenet": "imagenet_init"}


@dataclass
class EvalResult:
    """Everything one ``evaluate`` call produced."""

    task: Task
    mode: str
    label_source: str
    methods: dict[str, Predictions]
    skipped: dict[str, str] = field(default_factory=dict)  # method -> why it was not run
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> chosen hyper-parameters
    figures: dict[str, bytes] = field(default_factory=dict)
    seconds: float = 0.0
    run_id: str | None = None

    def metric_key(self, method: str, name: str) -> str:
        return f"{self.mode}/{self.task.name}/{method}/{name}"

    def mlflow_metrics(self) -> dict[str, float]:
        """Every finite metric of every method under its MLflow key."""
        return {
            self.metric_key(method, name): float(value)
            for method, pred in self.methods.items()
            for name, value in pred.metrics.items()
            if value is not None and math.isfinite(value)
        }
