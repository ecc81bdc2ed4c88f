"""Console output of an eval result: header (task, test-set size, label source) and the metrics table."""

from __future__ import annotations

import math

import numpy as np
from rich.console import Console
from rich.table import Table

from mmclip_dist.eval.result import EvalResult
from mmclip_dist.eval.scoring import summary_names
from mmclip_dist.eval.tasks import describe_source


def _cell(metrics: dict[str, float], name: str) -> str:
    value = metrics.get(name)
    if value is None or not math.isfinite(value):
        return "—"
    text = f"{value:.3f}"
    if f"{name}_ci_low" in metrics:
        text += f" [{metrics[f'{name}_ci_low']:.3f}, {metrics[f'{name}_ci_high']:.3f}]"
    return text


def result_header(result: EvalResult) -> str:
    """Task, protocol, test-set size per class and the label source, as printed above the table."""
    task = result.task
    first = next(iter(result.methods.values()))
    counts = np.bincount(first.labels, minlength=len(task.classes))
    return (
        f"{task.name} ({task.description}), {result.mode}: {len(first.labels)} test breasts "
        f"({', '.join(f'{c} {n}' for c, n in zip(task.classes, counts))})\n"
        f"label source: {describe_source(result.label_source)}"
    )


def result_table(result: EvalResult) -> Table:
    """Headline metrics (rows) x methods (columns), 95% CIs in brackets."""
    table = Table()
    table.add_column("metric", no_wrap=True)
    for method in result.methods:
        table.add_column(method, no_wrap=True)
    for name in summary_names(result.task):
        table.add_row(name, *[_cell(p.metrics, name) for p in result.methods.values()])
    return table


def print_result(result: EvalResult, console: Console | None = None) -> None:
    console = console or Console(width=200)
    console.print(result_header(result), highlight=False)
    console.print(result_table(result))
    for method, reason in result.skipped.items():
        console.print(f"[yellow]{method}: {reason}[/yellow]")
    for method, details in result.details.items():
        chosen = {k: v for k, v in details.items() if k in ("C", "best_epoch", "prompts_per_class")}
        if chosen:
            console.print(f"{method}: {chosen}", highlight=False)
