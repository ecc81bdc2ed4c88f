"""What ``mmclip-dist eval`` does: load a model, score a task on the shards, print, log to MLflow.

``evaluate(cfg, model_ref, shards)`` runs one protocol (``eval.mode``: zeroshot | linear | finetune)
for one task (``eval.task``) on the pretrained model and, for linear / fine-tune, on the baselines
(``eval.baselines``: random init, ImageNet init) through the same code. Test metrics come from the
shards' ``data.eval_split``; probes and fine-tunes train on ``data.train_split`` (validation patients
carved from it). ``log_result`` writes metrics, params, the label source and figures (ROC, confusion
matrices, global + RoI similarity matrices of the first test batch) to a new run of the eval
experiment, or to an existing run (``log_to``).

MLflow metric keys: ``<mode>/<task>/<method>/<metric>``, e.g. ``linear/malignancy/mmclip/breast_roc_auc``;
methods are ``mmclip``, ``random_init`` and ``imagenet_init``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from mmclip_dist.config import Config, DataConfig, dump_config
from mmclip_dist.eval.scoring import Predictions, breast_predictions, make_predictions, score, summary_names
from mmclip_dist.eval.tasks import Task, describe_source, get_task

log = logging.getLogger(__name__)

MODEL_METHOD = "mmclip"
BASELINE_METHODS = {"random": "random_init", "imagenet": "imagenet_init"}
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


# ---------------------------------------------------------------------------------------------- model


def resolve_model(ref: str, tracking_uri: str) -> Path:
    """A model folder: ``ref`` itself, or the ``model`` artifact of an MLflow run (``runs:/<id>/model``
    or a bare 32-hex run id) downloaded from ``tracking_uri``."""
    path = Path(ref)
    if path.is_dir():
        return path
    if _RUN_ID.match(ref):
        ref = f"runs:/{ref}/model"
    if ref.startswith(("runs:/", "models:/")):
        import mlflow

        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, tracking_uri=tracking_uri))
        except Exception as err:  # noqa: BLE001 - MLflow raises several types; the message is what matters
            raise FileNotFoundError(f"cannot download model {ref!r} from MLflow at {tracking_uri}: {err}") from err
    raise FileNotFoundError(
        f"model {ref!r} is neither a folder (MMCLIP.save_pretrained), runs:/<run_id>/model, nor an MLflow run id"
    )


def load_model(ref: str, tracking_uri: str) -> tuple[Any, Any, Path]:
    """``(MMCLIP in eval mode, its tokenizer, the model folder)``."""
    from transformers import AutoTokenizer

    from mmclip_dist.model import MMCLIP

    folder = resolve_model(ref, tracking_uri)
    model = MMCLIP.from_pretrained(folder).eval()
    return model, AutoTokenizer.from_pretrained(model.tokenizer_source), folder


def eval_data_config(data: DataConfig, model: Any) -> DataConfig:
    """``data`` with the model's own input geometry (image size, RoIs, text length) when the export records it."""
    out = data.model_copy(deep=True)
    trained = getattr(model, "data_cfg", None)
    if trained is not None:
        for name in ("image_size", "max_rois", "max_text_len"):
            if getattr(out, name) != getattr(trained, name):
                log.info(
                    "data.%s=%s from the model export (config said %s)",
                    name,
                    getattr(trained, name),
                    getattr(out, name),
                )
            setattr(out, name, getattr(trained, name))
    return out


# ---------------------------------------------------------------------------------------------- result


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


# ---------------------------------------------------------------------------------------------- protocols


def _zeroshot(task: Task, cfg: Config, model: Any, tokenizer: Any, data: DataConfig, test: Iterable[dict[str, Any]]):
    from mmclip_dist.data.shard_format import VIEWS
    from mmclip_dist.eval.zeroshot import task_prompts, zero_shot_view_probs

    # Prompt wording follows the pretraining reports (VinDr's "BI-RADS proxy" pathology line), not the test set.
    prompts = [task_prompts(task.name, v) for v in VIEWS]
    metas: list[dict[str, Any]] = []
    keys, probs = zero_shot_view_probs(
        model,
        tokenizer,
        test,
        prompts,
        data.max_text_len,
        cfg.eval.use_masks,
        on_batch=lambda b: metas.extend(b["meta"]),
    )
    details = {"prompts_per_class": {c: len(p) for c, p in prompts[0].items()}}
    return {MODEL_METHOD: (metas, keys, probs)}, {MODEL_METHOD: details}


def _encoders(cfg: Config, model: Any, log_fn: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, str]]:
    from mmclip_dist.eval.encoders import BaselineUnavailable, baseline_encoder, encoder_from_mmclip

    encoders = {MODEL_METHOD: encoder_from_mmclip(model)}
    skipped: dict[str, str] = {}
    for which in cfg.eval.baselines:
        method = BASELINE_METHODS[which]
        try:
            encoders[method] = baseline_encoder(model.cfg, which, cfg.eval.seed, cfg.eval.imagenet_weights)
        except BaselineUnavailable as err:
            skipped[method] = str(err)
            log_fn(str(err))
    return encoders, skipped


def _linear(task: Task, cfg: Config, encoders: dict[str, Any], train: Iterable, test: Iterable, log_fn):
    from mmclip_dist.eval.encoders import extract_features
    from mmclip_dist.eval.probe import fit_linear_probe, predict_linear_probe

    log_fn(f"extracting {cfg.eval.features} features of the train split ({', '.join(encoders)})")
    train_feats = extract_features(encoders, train, cfg.eval.features, cfg.eval.use_masks)
    log_fn("extracting features of the test split")
    test_feats = extract_features(encoders, test, cfg.eval.features, cfg.eval.use_masks)
    outputs, details = {}, {}
    for method in encoders:
        fit = fit_linear_probe(task, train_feats[method], cfg.eval)
        probs = predict_linear_probe(fit, test_feats[method].features, len(task.classes))
        test = test_feats[method]
        outputs[method] = (test.metas, test.keys, probs)
        details[method] = {
            "C": fit.c, "val_scores": {str(c): s for c, s in fit.val_scores.items()},
            "train_breasts": fit.n_train, "val_breasts": fit.n_val, "feature_dim": int(test.features.shape[-1]),
        }  # fmt: skip
        log_fn(f"{method}: probe C={fit.c} (validation scores {details[method]['val_scores']})")
    return outputs, details


def _finetune(task: Task, cfg: Config, encoders: dict[str, Any], train: Iterable, test: Iterable, log_fn):
    from mmclip_dist.eval.probe import cache_views, finetune, predict_finetuned

    train_cache = cache_views(train, cfg.eval.finetune_max_gib)
    test_cache = cache_views(test, cfg.eval.finetune_max_gib)
    outputs, details = {}, {}
    for method, encoder in encoders.items():
        log_fn(f"fine-tuning {method} ({cfg.eval.finetune_epochs} epochs, lr {cfg.eval.finetune_lr})")
        fit = finetune(
            task, encoder, train_cache, cfg.eval, cfg.eval.use_masks, log_fn=lambda m, p=method: log_fn(f"{p}: {m}")
        )
        probs = predict_finetuned(fit.model, test_cache, cfg.eval.batch_size, cfg.eval.use_masks)
        outputs[method] = (test_cache.metas, test_cache.keys, probs)
        details[method] = {
            "best_epoch": fit.best_epoch + 1,
            "val_scores": fit.val_scores,
            "train_losses": fit.train_losses,
        }
    return outputs, details


def evaluate(
    cfg: Config, model_ref: str, shards: str | None = None, *, log_fn: Callable[[str], None] = print,
    figures: bool = True,
) -> EvalResult:  # fmt: skip
    """Score ``cfg.eval.task`` with ``cfg.eval.mode`` on the test split of ``shards`` (default ``data.eval_shards``)."""
    from mmclip_dist.data.stream.loader import eval_shard_set, make_eval_loader, resolve_shard_set
    from mmclip_dist.tracking import resolve_tracking_uri

    started = time.perf_counter()
    task = get_task(cfg.eval.task)
    mode = cfg.eval.mode
    model, tokenizer, folder = load_model(model_ref, resolve_tracking_uri(cfg.tracking))
    data = eval_data_config(cfg.data, model)
    url = shards or cfg.data.eval_shards
    if not url:
        raise ValueError("no shards to evaluate on: pass --shards or set data.eval_shards")
    test_shards = eval_shard_set(data, url)  # listed once, here; the loaders only read
    test = make_eval_loader(test_shards, data, tokenizer, cfg.eval.batch_size)
    log_fn(
        f"model {folder}; task {task.name} ({task.description}); mode {mode}; {len(test_shards)} test shard(s) at {url}"
    )

    skipped: dict[str, str] = {}
    if mode == "zeroshot":
        if cfg.eval.baselines:
            skipped = {
                BASELINE_METHODS[b]: "zero-shot needs the text encoder: baselines apply to linear / finetune"
                for b in cfg.eval.baselines
            }
        outputs, details = _zeroshot(task, cfg, model, tokenizer, data, test)
    else:
        train_url = cfg.data.train_shards or url
        train_shards = resolve_shard_set(train_url, data.s3_endpoint, data.train_split)
        shared = sorted(set(train_shards.urls) & set(test_shards.urls))
        if shared:  # e.g. one brace pattern given for both: the probe would be fitted on the test breasts
            raise ValueError(
                f"train and test shards overlap ({shared[:3]}...): give a folder holding both splits "
                "or set data.train_shards to the training shards"
            )
        train = make_eval_loader(train_shards, data, tokenizer, cfg.eval.batch_size)
        encoders, skipped = _encoders(cfg, model, log_fn)
        protocol = _linear if mode == "linear" else _finetune
        outputs, details = protocol(task, cfg, encoders, train, test, log_fn)

    methods: dict[str, Predictions] = {}
    label_source = "none"
    for method, (metas, keys, probs) in outputs.items():
        pred = make_predictions(task, metas, keys, probs)
        score(task, pred, cfg.eval.bootstrap, cfg.eval.seed)
        methods[method] = pred
        label_source = task.label_source(metas)
    result = EvalResult(task, mode, label_source, methods, skipped, details)
    if figures:
        result.figures = make_figures(result, model, next(iter(test)))
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------------------------- figures


def make_figures(result: EvalResult, model: Any, batch: dict[str, Any]) -> dict[str, bytes]:
    """ROC curves (binary tasks), a confusion matrix per method, and the similarity matrices of ``batch``."""
    from mmclip_dist.eval.plots import confusion_matrix_png, roc_curve_png, similarity_matrix_png
    from mmclip_dist.eval.similarity import similarity_matrices

    task = result.task
    figs: dict[str, bytes] = {}
    if task.binary:
        figs["roc_breast.png"] = roc_curve_png(
            {m: (p.labels, p.breast_probs[:, 1]) for m, p in result.methods.items()},
            title=f"{task.name}: per breast ({result.mode})",
        )
        figs["roc_image.png"] = roc_curve_png(
            {m: (np.repeat(p.labels, 2), p.probs[..., 1].reshape(-1)) for m, p in result.methods.items()},
            title=f"{task.name}: per image ({result.mode})",
        )
    for method, pred in result.methods.items():
        figs[f"confusion_{method}.png"] = confusion_matrix_png(
            pred.labels, breast_predictions(pred), task.classes, title=f"{task.name} per breast: {method}"
        )
    for name, matrix in similarity_matrices(model, batch).items():
        kind, view = name.split("_")
        title = f"{'global' if kind == 'global' else 'RoI'} image-text similarity ({view.upper()})"
        figs[f"similarity_{name}.png"] = similarity_matrix_png(matrix, title)
    return figs


# ---------------------------------------------------------------------------------------------- output


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


def log_result(result: EvalResult, cfg: Config, model_ref: str, shards: str | None, log_to: str | None = None) -> str:
    """Log metrics, label source, details and figures to MLflow; returns the run id.

    ``log_to``: an existing run (e.g. the training run of the model); otherwise a new run in
    ``eval.experiment`` (default ``<tracking.experiment>-eval``) carrying the config as params.
    """
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from mmclip_dist.eval.plots import log_figures_to_mlflow
    from mmclip_dist.tracking import loggable_params, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.tracking)
    client = MlflowClient(uri)
    prefix = f"{result.mode}/{result.task.name}"
    if log_to:
        try:
            client.get_run(log_to)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"--log-to {log_to!r}: no such MLflow run at {uri} ({err})") from err
        run_id, created = log_to, False
    else:
        name = cfg.eval.experiment or f"{cfg.tracking.experiment}-eval"
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        run = client.create_run(experiment_id, run_name=f"eval-{result.task.name}-{result.mode}")
        run_id, created = run.info.run_id, True
        params = {**loggable_params(cfg), "eval.model": model_ref, "eval.shards": shards or cfg.data.eval_shards}
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow caps params per batch call
            client.log_batch(run_id, params=items[start : start + 100])
        client.log_text(run_id, dump_config(cfg), "eval_config.yaml")
    client.set_tag(run_id, f"{prefix}/label_source", result.label_source)
    client.set_tag(run_id, f"{prefix}/model", model_ref)
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in result.mlflow_metrics().items()]
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start : start + 500])
    summary = {
        "task": result.task.name, "mode": result.mode, "label_source": result.label_source,
        "label_source_text": describe_source(result.label_source), "skipped": result.skipped,
        "details": result.details, "metrics": {m: p.metrics for m, p in result.methods.items()},
    }  # fmt: skip
    client.log_text(run_id, json.dumps(summary, indent=1, default=float), f"eval/{prefix}/result.json")
    if result.figures:
        log_figures_to_mlflow(result.figures, run_id, artifact_dir=f"eval/{prefix}", tracking_uri=uri)
    if created:
        client.set_terminated(run_id)
    mlflow.set_tracking_uri(uri)  # later mlflow.* calls in this process talk to the same store
    result.run_id = run_id
    return run_id
