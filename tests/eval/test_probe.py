"""Linear probe and fine-tune protocols on tiny hand-built data (no shards, no pretrained model)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mmclip_dist.config import EvalConfig, ModelConfig
from mmclip_dist.eval.encoders import BaselineUnavailable, ViewFeatures, baseline_encoder, extract_features
from mmclip_dist.eval.probe import (
    ViewCache,
    cache_views,
    class_weights,
    finetune,
    fit_linear_probe,
    patient_split,
    predict_finetuned,
    predict_linear_probe,
    selection_score,
)
from mmclip_dist.eval.tasks import get_task

TINY = ModelConfig(backbone="test_resnet", embed_dim=8, roi_match_dim=8, roi_match_heads=2, roi_output_size=2)


def metas(labels, density=None):
    # two breasts per patient: breasts 2k and 2k+1 share patient k
    return [
        {"patient_id": f"p{i // 2}", "breast_id": f"b{i}", "label": {"malignant": int(y), "source": "pathology"},
         "density": (density[i] if density else "B"), "dataset": "cbis", "views": {}}
        for i, y in enumerate(labels)
    ]  # fmt: skip


def test_patient_split_keeps_patients_whole_and_is_seeded():
    patients = [f"p{i // 2}" for i in range(20)]  # 10 patients x 2 breasts
    val = patient_split(patients, 0.3, seed=1)
    assert val.sum() == 6  # round(0.3 * 10) = 3 patients, 2 breasts each
    for i in range(0, 20, 2):
        assert val[i] == val[i + 1], "a patient's breasts must land on the same side"
    assert (patient_split(patients, 0.3, seed=1) == val).all()
    assert (patient_split(patients, 0.3, seed=2) != val).any()
    assert patient_split(patients, 0.0).sum() == 0
    assert patient_split(patients, 0.01).sum() == 2  # a positive fraction holds out at least one patient
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        patient_split(patients, 1.0)
    with pytest.raises(ValueError, match="cannot hold out 1 of 1 patients"):
        patient_split(["p0", "p0"], 0.5)


def test_class_weights_are_sklearn_balanced_with_absent_classes_zero():
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1), 0.0])


def test_selection_score_auc_for_binary_balanced_accuracy_for_multiclass():
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.45, 0.55]])
    # P(1): positives .7, .4 vs negatives .2, .55 -> .7 wins both, .4 beats .2 only: 3 / 4
    assert selection_score(get_task("malignancy"), np.array([0, 1, 1, 0]), probs) == pytest.approx(0.75)
    assert np.isnan(selection_score(get_task("malignancy"), np.array([1, 1, 1, 1]), probs))
    p4 = np.eye(4)[[0, 1, 1, 3]]
    # recalls: A 1, B 1, C 0 (predicted B), D 1 -> 0.75
    assert selection_score(get_task("density"), np.array([0, 1, 2, 3]), p4) == pytest.approx(0.75)


def test_linear_probe_learns_a_separable_feature_and_maps_absent_classes():
    rng = np.random.default_rng(0)
    n = 60
    y = np.arange(n) % 2
    # feature 0 carries the label (+-1 plus noise), features 1-4 are noise; both views alike
    feats = rng.normal(size=(n, 2, 5))
    feats[:, :, 0] += np.where(y == 1, 2.0, -2.0)[:, None]
    train = ViewFeatures(feats[:40], [f"k{i}" for i in range(40)], metas(y[:40]))
    fit = fit_linear_probe(get_task("malignancy"), train, EvalConfig(probe_c=[0.01, 1.0], val_fraction=0.25))
    assert set(fit.val_scores) == {0.01, 1.0} and fit.c in (0.01, 1.0)
    assert fit.n_val == 10 and fit.n_train == 30  # 5 of 20 patients held out
    probs = predict_linear_probe(fit, feats[40:], 2)
    assert probs.shape == (20, 2, 2) and np.allclose(probs.sum(-1), 1.0)
    assert roc_auc_score(y[40:], probs[:, :, 1].mean(1)) > 0.95

    # density with class C never seen in training: its probability column is exactly 0
    dens = ["A", "B", "D"] * 14
    y3 = np.array([0, 1, 3] * 14)
    f3 = rng.normal(size=(42, 2, 3)) * 0.1
    f3[np.arange(42), :, np.minimum(y3, 2)] += 3.0
    fit3 = fit_linear_probe(get_task("density"), ViewFeatures(f3, [str(i) for i in range(42)], metas(y3, dens)),
                            EvalConfig(probe_c=[1.0], val_fraction=0.2))  # fmt: skip
    p3 = predict_linear_probe(fit3, f3, 4)
    assert (p3[..., 2] == 0).all() and (p3.argmax(-1) == y3[:, None]).mean() > 0.95


def test_linear_probe_refuses_one_class_training_data():
    train = ViewFeatures(np.zeros((6, 2, 3)), list("abcdef"), metas([0] * 6))
    with pytest.raises(ValueError, match="need two classes"):
        fit_linear_probe(get_task("malignancy"), train, EvalConfig())


def test_imagenet_baseline_without_weights_is_skipped_with_a_reason():
    with pytest.raises(BaselineUnavailable, match="eval.imagenet_weights is empty"):
        baseline_encoder(TINY, "imagenet")
    with pytest.raises(BaselineUnavailable, match="cannot load test_resnet weights"):
        baseline_encoder(TINY, "imagenet", weights="/nonexistent/weights.pth")


def _bright_dark_batches(n: int, seed: int, bs: int = 8):
    """Malignant breasts have a bright square inside the lesion mask, benign ones a dark one."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    images = torch.rand(n, 2, 1, 32, 32, generator=g) * 0.2
    masks = torch.zeros(n, 2, 1, 32, 32)
    masks[..., 8:20, 8:20] = 1
    images = images + masks * (0.2 + 0.7 * y.view(n, 1, 1, 1, 1).float())
    m = metas(y.tolist())
    return [
        {"images": images[s : s + bs], "masks": masks[s : s + bs], "keys": [x["breast_id"] for x in m[s : s + bs]],
         "meta": m[s : s + bs]}
        for s in range(0, n, bs)
    ]  # fmt: skip


def test_finetune_learns_keeps_best_epoch_and_predicts_per_view():
    torch.manual_seed(0)
    encoder = baseline_encoder(TINY, "random", seed=0)
    train = cache_views(_bright_dark_batches(32, seed=0), max_gib=1.0)
    assert train.images.dtype == torch.float16 and train.masks.dtype == torch.uint8 and len(train.keys) == 32
    cfg = EvalConfig(finetune_epochs=2, finetune_lr=3e-3, batch_size=8, val_fraction=0.25)
    lines: list[str] = []
    fit = finetune(get_task("malignancy"), encoder, train, cfg, log_fn=lines.append)
    assert len(fit.val_scores) == 2 and len(fit.train_losses) == 2 and len(lines) == 2
    assert fit.best_epoch == int(np.nanargmax(fit.val_scores))
    test = cache_views(_bright_dark_batches(16, seed=1), max_gib=1.0)
    probs = predict_finetuned(fit.model, test, batch_size=8)
    assert probs.shape == (16, 2, 2) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
    y = np.arange(16) % 2
    assert roc_auc_score(y, probs[:, :, 1].mean(1)) > 0.9
    # the random-init encoder features are the same architecture the probe uses
    feats = extract_features({"random": baseline_encoder(TINY, "random")}, _bright_dark_batches(8, seed=2))
    assert feats["random"].features.shape == (8, 2, encoder.channels)


def test_cache_views_refuses_to_exceed_its_memory_limit():
    with pytest.raises(MemoryError, match="finetune_max_gib"):
        cache_views(_bright_dark_batches(16, seed=0), max_gib=1e-6)
    assert isinstance(cache_views(_bright_dark_batches(8, seed=0), 1.0), ViewCache)


def test_roi_features_pool_the_box_embeddings_and_carry_the_lesion():
    torch.manual_seed(0)
    batches = _bright_dark_batches(48, seed=3)
    for batch in batches:
        n = len(batch["keys"])
        batch["boxes"] = torch.tensor([8.0, 8.0, 20.0, 20.0]).expand(n, 2, 2, 4).clone()
        batch["box_valid"] = torch.tensor([True, False]).expand(n, 2, 2).clone()
    batches[0]["box_valid"][0, 1] = False  # one view without any annotated box
    cfg = TINY.model_copy(update={"roi_levels": [8, 16, 32], "roi_pooling": "flatten"})
    feats = extract_features({"random": baseline_encoder(cfg, "random")}, batches, "roi")["random"]
    assert feats.features.shape == (48, 2, cfg.roi_match_dim)
    assert np.all(feats.features[0, 1] == 0) and np.abs(feats.features[0, 0]).sum() > 0
    with pytest.raises(ValueError, match="needs the views' boxes"):
        baseline_encoder(cfg, "random")(batches[0]["images"][:, 0], batches[0]["masks"][:, 0], "roi")
    y = np.arange(48) % 2
    train = ViewFeatures(feats.features[:32], feats.keys[:32], feats.metas[:32])
    fit = fit_linear_probe(get_task("malignancy"), train, EvalConfig(probe_c=[0.1, 1.0], val_fraction=0.25))
    probs = predict_linear_probe(fit, feats.features[32:], 2)
    assert roc_auc_score(y[32:], probs[:, :, 1].mean(1)) > 0.9
