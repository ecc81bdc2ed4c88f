"""Compare MLflow runs: the params that differ, the final metric values, and metric curves.

Works with any tracking URI ``MlflowClient`` accepts: a local store (``sqlite:///mlflow.db``) or a
tracking server (``http://host:5000``). ``mmclip-dist compare`` (``mmclip_dist/cli/compare.py``) is
the command-line front end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mmclip_dist.eval.plots import History, loss_curves_png

MISSING = "—"  # shown where a run lacks a param or metric


@dataclass(frozen=True)
class Comparison:
    """What ``mmclip-dist compare`` prints: one column per run."""

    labels: list[str]
    params: dict[str, list[str | None]]  # only params whose value differs between runs
    metrics: dict[str, list[float | None]]  # final (latest-step) value of each metric


def fetch_runs(client: MlflowClient, run_ids: Sequence[str] = (), experiment: str | None = None) -> list[Run]:
    """The runs named by id, or every run of ``experiment`` (oldest first); errors name what is missing."""
    if bool(run_ids) == bool(experiment):
        raise ValueError("give either run ids or an experiment name (not both)")
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise ValueError(f"no MLflow experiment named {experiment!r} (experiments: {names})")
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)
        if not runs:
            raise ValueError(f"experiment {experiment!r} has no runs")
        return list(runs)
    listed: list[Run] = []
    for run_id in run_ids:
        try:
            listed.append(client.get_run(run_id))
        except MlflowException as err:
            raise ValueError(f"run {run_id!r} not found: {err.message}") from err
    return listed


def run_label(run: Run) -> str:
    """``<run name> (<first 8 hex of the id>)``: names repeat across restarts, ids are unreadable."""
    name = run.info.run_name or "run"
    return f"{name} ({run.info.run_id[:8]})"


def compare_runs(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> Comparison:
    """Params that differ between ``runs`` (a param missing from some run counts as differing) and
    the final value of ``metrics`` (default: every metric any run logged)."""
    if not runs:
        raise ValueError("no runs to compare")
    all_params = sorted({key for run in runs for key in run.data.params})
    params = {}
    for key in all_params:
        values = [run.data.params.get(key) for run in runs]
        if len(set(values)) > 1:
            params[key] = values
    names = list(metrics) if metrics else sorted({key for run in runs for key in run.data.metrics})
    # run.data.metrics holds the latest value of each metric (highest step, then latest timestamp).
    finals = {name: [run.data.metrics.get(name) for run in runs] for name in names}
    return Comparison([run_label(run) for run in runs], params, finals)


def metric_histories(client: MlflowClient, runs: Sequence[Run], metrics: Sequence[str]) -> History:
    """``{run label: {metric: [(step, value), ...]}}`` for plotting."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run in runs:
        hist = {}
        for name in metrics:
            points = client.get_metric_history(run.info.run_id, name)
            if points:
                hist[name] = sorted((m.step, m.value) for m in points)
        out[run_label(run)] = hist
    return out


def _fmt_metric(value: float | None) -> str:
    return MISSING if value is None else f"{value:.6g}"


def comparison_table(comp: Comparison) -> Table:
    """A rich table: params that differ, then final metrics; one column per run."""
    table = Table(title=f"{len(comp.labels)} runs", show_lines=False)
    table.add_column("", style="bold", no_wrap=True)
    for label in comp.labels:
        table.add_column(Text(label), no_wrap=True)
    table.add_row("[italic]params that differ[/italic]", *([""] * len(comp.labels)))
    if not comp.params:
        table.add_row("  (none)", *([""] * len(comp.labels)))
    for key, values in comp.params.items():
        # Text(): a value such as "[adamw]" must print as is, not be parsed as rich markup
        table.add_row(Text(f"  {key}"), *[Text(MISSING if v is None else v) for v in values])
    table.add_section()
    table.add_row("[italic]final metrics[/italic]", *([""] * len(comp.labels)))
    for key, mvalues in comp.metrics.items():
        table.add_row(Text(f"  {key}"), *[Text(_fmt_metric(v)) for v in mvalues])
    return table


def print_comparison(comp: Comparison, console: Console | None = None) -> None:
    # Wide enough that no cell is wrapped or cut: the table is often piped to a file or a log.
    width = (
        4
        + max(len(k) for k in [*comp.params, *comp.metrics, "params that differ"])
        + sum(
            3 + max([len(label), 12, *(len(v or "") for vals in comp.params.values() for v in vals)])
            for label in comp.labels
        )
    )
    (console or Console(width=max(width, 80))).print(comparison_table(comp))


def plot_histories(client: MlflowClient, runs: Sequence[Run], metrics: Sequence[str], path: Path | str) -> Path:
    """Overlay each metric's history of every run in one PNG (one panel per metric)."""
    hist = metric_histories(client, runs, metrics)
    present = [m for m in metrics if any(m in h for h in hist.values())]
    if not present:
        raise ValueError(f"none of the metrics {list(metrics)} has a history in these runs")
    loss_curves_png(hist, path, metrics=present)
    return Path(path)
