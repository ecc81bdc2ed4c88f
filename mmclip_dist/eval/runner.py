"""What ``mmclip-dist eval`` does: load a model and score a task on the shards (the orchestration).

``evaluate(cfg, model_ref, shards)`` runs one protocol (``eval.mode``: zeroshot | linear | finetune)
for one task (``eval.task``) on the pretrained model and, for linear / fine-tune, on the baselines
(``eval.baselines``: random init, ImageNet init) through the same code. Test metrics come from the
shards' ``data.eval_split``; probes and fine-tunes train on ``data.train_split`` (validation patients
carved from it). The result (``eval/result.py``) is printed by ``eval/result_table.py``, its figures
drawn by ``eval/plots.make_figures`` and logged to MLflow by ``eval/result_mlflow.py``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mmclip_dist.config import Config, DataConfig, redact_text
from mmclip_dist.eval.result import BASELINE_METHODS, MODEL_METHOD, EvalResult
from mmclip_dist.eval.scoring import Predictions, make_predictions, score
from mmclip_dist.eval.tasks import Task, get_task

log = logging.getLogger(__name__)

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
        feats = test_feats[method]
        outputs[method] = (feats.metas, feats.keys, probs)
        details[method] = {
            "C": fit.c, "val_scores": {str(c): s for c, s in fit.val_scores.items()},
            "train_breasts": fit.n_train, "val_breasts": fit.n_val, "feature_dim": int(feats.features.shape[-1]),
        }  # fmt: skip
        log_fn(f"{method}: probe C={fit.c} (validation scores {details[method]['val_scores']})")
    return outputs, details


def _prefixed(log_fn: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda message: log_fn(prefix + message)


def _finetune(task: Task, cfg: Config, encoders: dict[str, Any], train: Iterable, test: Iterable, log_fn):
    from mmclip_dist.eval.probe import cache_views, finetune, predict_finetuned

    train_cache = cache_views(train, cfg.eval.finetune_max_gib)
    test_cache = cache_views(test, cfg.eval.finetune_max_gib)
    outputs, details = {}, {}
    for method, encoder in encoders.items():
        log_fn(f"fine-tuning {method} ({cfg.eval.finetune_epochs} epochs, lr {cfg.eval.finetune_lr})")
        fit = finetune(
            task, encoder, train_cache, cfg.eval, cfg.eval.use_masks, log_fn=_prefixed(log_fn, f"{method}: ")
        )
        probs = predict_finetuned(fit.model, test_cache, cfg.eval.batch_size, cfg.eval.use_masks)
        outputs[method] = (test_cache.metas, test_cache.keys, probs)
        details[method] = {
            "best_epoch": fit.best_epoch + 1,
            "val_scores": fit.val_scores,
            "train_losses": fit.train_losses,
        }
    return outputs, details


def _redacting(log_fn: Callable[[str], None], cfg: Config) -> Callable[[str], None]:
    """``log_fn`` with the config's credentials (and any URL userinfo) removed from every line."""
    return lambda message: log_fn(redact_text(message, cfg))


def evaluate(
    cfg: Config, model_ref: str, shards: str | None = None, *, log_fn: Callable[[str], None] = print,
    figures: bool = True,
) -> EvalResult:  # fmt: skip
    """Score ``cfg.eval.task`` with ``cfg.eval.mode`` on the test split of ``shards`` (default ``data.eval_shards``)."""
    from mmclip_dist.data.stream.loader import eval_shard_set, make_eval_loader, resolve_shard_set
    from mmclip_dist.tracking import resolve_tracking_uri

    log_fn = _redacting(log_fn, cfg)

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
        from mmclip_dist.eval.plots import make_figures

        result.figures = make_figures(result, model, next(iter(test)))
    result.seconds = time.perf_counter() - started
    return result
