"""Ablation launcher (paper Table 3): pretrain loss variants, evaluate each, compare them side by side.

Variants differ only in the loss weights of Eq. 10 (every other setting is the given config):

| variant | overrides | paper row |
| --- | --- | --- |
| ``clip`` | ``loss.roi_weight=0``, ``loss.cross_view_weight=0`` | global CLIP only |
| ``clip+roi`` | ``loss.cross_view_weight=0`` | + RoI CLIP |
| ``full`` | (none) | + cross-view = MM-CLIP |

Each variant is one training run (``train.run_name`` = ``<run_name>-ablation-<variant>``); its
evaluations (``eval.mode`` per requested mode, on ``eval.task``) are logged into that same MLflow run,
so ``mmclip-dist compare`` shows the loss weights that differ next to the downstream metrics. The
random-init baseline is evaluated once (with the first variant) for reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from mmclip_dist.config import Config, EvalMode, apply_override

LOSS_TERMS = ("loss", "loss_global", "loss_roi", "loss_cross_view")
HEADLINE = ("breast_roc_auc", "breast_balanced_accuracy", "image_roc_auc")
MODES: tuple[EvalMode, ...] = get_args(EvalMode)


@dataclass(frozen=True)
class Variant:
    """One pretraining variant: a name and the config overrides that define it."""

    name: str
    overrides: tuple[str, ...]
    description: str

    @property
    def slug(self) -> str:
        """The name as it may appear in run names and paths (``clip+roi`` -> ``clip-roi``)."""
        return re.sub(r"[^A-Za-z0-9_-]+", "-", self.name)


VARIANTS: tuple[Variant, ...] = (
    Variant("clip", ("loss.roi_weight=0", "loss.cross_view_weight=0"), "global CLIP only"),
    Variant("clip+roi", ("loss.cross_view_weight=0",), "global + RoI CLIP"),
    Variant("full", (), "global + RoI CLIP + cross-view (MM-CLIP)"),
)


def select_variants(names: Sequence[str] | None = None) -> list[Variant]:
    """The variants called ``names`` (all by default), in the table's order; unknown names are an error."""
    if not names:
        return list(VARIANTS)
    known = {v.name: v for v in VARIANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {unknown}; known: {list(known)}")
    return [v for v in VARIANTS if v.name in names]


def plan_ablation(cfg: Config, variants: Sequence[Variant] = VARIANTS) -> list[tuple[Variant, Config]]:
    """One config per variant: its loss overrides, its own run name and export folder."""
    plans = []
    for variant in variants:
        tree = cfg.model_dump(mode="json")
        run_name = f"{cfg.train.run_name}-ablation-{variant.slug}"
        # Each variant needs its own export: a shared folder would be overwritten by the next variant.
        export = f"{cfg.train.export_dir.rstrip('/')}/{variant.slug}" if cfg.train.export_dir else ""
        for override in (*variant.overrides, f"train.run_name={run_name}", f"train.export_dir={export}"):
            apply_override(tree, override)
        plans.append((variant, Config.model_validate(tree)))
    return plans


def comparison_metrics(task: str, modes: Sequence[str]) -> list[str]:
    """The metrics of the final table: headline eval metrics of every mode and method, then the losses."""
    names = []
    for mode in modes:
        # Zero-shot needs the text tower, so only the pretrained model has zero-shot numbers.
        methods = ("mmclip",) if mode == "zeroshot" else ("mmclip", "random_init")
        names += [f"{mode}/{task}/{method}/{name}" for method in methods for name in HEADLINE]
    return names + list(LOSS_TERMS)


@dataclass
class VariantRun:
    """A trained variant: its MLflow run and exported model."""

    variant: Variant
    run_id: str
    model_ref: str
    evals: dict[str, Any] = field(default_factory=dict)  # mode -> EvalResult


@dataclass
class AblationResult:
    runs: list[VariantRun]
    comparison: Any  # mmclip_dist.eval.compare.Comparison
    tracking_uri: str


def _default_train(cfg: Config) -> tuple[str, str]:
    from mmclip_dist.train.trainer import run_training

    result = run_training(cfg)
    # A local export loads directly; an s3:// one is fetched from the run's "model" artifact instead.
    model_ref = result.export_dir if Path(result.export_dir).is_dir() else result.mlflow_run_id
    return result.mlflow_run_id, model_ref


def _default_eval(cfg: Config, model_ref: str, run_id: str, log_fn: Callable[[str], None]) -> Any:
    from mmclip_dist.eval.result_mlflow import log_result
    from mmclip_dist.eval.result_table import print_result
    from mmclip_dist.eval.runner import evaluate

    result = evaluate(cfg, model_ref, cfg.data.eval_shards, log_fn=log_fn)
    print_result(result)
    log_result(result, cfg, model_ref, cfg.data.eval_shards, log_to=run_id)
    return result


def run_ablation(
    cfg: Config,
    modes: Sequence[str] = ("linear", "zeroshot"),
    variants: Sequence[Variant] = VARIANTS,
    *,
    train_fn: Callable[[Config], tuple[str, str]] = _default_train,
    eval_fn: Callable[[Config, str, str, Callable[[str], None]], Any] = _default_eval,
    log_fn: Callable[[str], None] = print,
) -> AblationResult:
    """Train every variant, evaluate it in every mode, and compare the runs.

    ``train_fn(cfg) -> (mlflow run id, model reference)`` and ``eval_fn(cfg, model_ref, run_id, log_fn)``
    default to the real trainer and ``mmclip_dist.eval.runner``; they are parameters so the launcher's
    bookkeeping can be tested without training.
    """
    from mlflow.tracking import MlflowClient

    from mmclip_dist.eval.compare import compare_runs, fetch_runs
    from mmclip_dist.tracking import resolve_tracking_uri

    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"ablation modes {list(modes)}: each must be one of {list(MODES)}")
    checked = [next(m for m in MODES if m == name) for name in modes]  # the same names, typed
    runs: list[VariantRun] = []
    for index, (variant, vcfg) in enumerate(plan_ablation(cfg, variants)):
        log_fn(
            f"[ablation {index + 1}/{len(variants)}] {variant.name} ({variant.description}): "
            f"{' '.join(variant.overrides) or 'no overrides'}"
        )
        run_id, model_ref = train_fn(vcfg)
        run = VariantRun(variant, run_id, model_ref)
        for mode in checked:
            ecfg = vcfg.model_copy(deep=True)
            ecfg.eval.mode = mode
            # Baselines do not depend on the pretraining variant: score them once, with the first one.
            ecfg.eval.baselines = list(cfg.eval.baselines) if index == 0 and mode != "zeroshot" else []
            run.evals[mode] = eval_fn(ecfg, model_ref, run_id, log_fn)
        runs.append(run)
    uri = resolve_tracking_uri(cfg.tracking)
    client = MlflowClient(uri)
    mlflow_runs = fetch_runs(client, [r.run_id for r in runs])
    comparison = compare_runs(mlflow_runs, comparison_metrics(cfg.eval.task, modes))
    return AblationResult(runs, comparison, uri)
