"""Task definitions read from shard metadata (hand-written samples), and the per-task scoring on known values."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mmclip_dist.eval.scoring import make_predictions, score
from mmclip_dist.eval.tasks import TASKS, describe_source, get_task


def meta(dataset="vindr", malignant=1, source="birads_proxy", density="B", birads=4, cc=(), mlo=(), patient="p1"):
    return {
        "dataset": dataset, "patient_id": patient, "breast_id": f"{patient}-b", "density": density, "birads": birads,
        "label": {"malignant": malignant, "source": source},
        "views": {"cc": {"box_labels": list(cc)}, "mlo": {"box_labels": list(mlo)}},
    }  # fmt: skip


SAMPLES = [
    meta(cc=["Mass"], mlo=["Mass"]),  # mass only
    meta(malignant=0, birads=2, density="A", cc=["Suspicious Calcification"]),  # calcification on CC only
    meta(malignant=-1, birads=0, density="D", mlo=["Mass, Suspicious Calcification"]),  # VinDr joins categories
    meta(malignant=0, birads=1, density="C"),  # VinDr breast without findings: both absent
    meta(dataset="cbis", source="pathology", birads=6, density=None, cc=["Calcification"]),  # CBIS spelling
    meta(dataset="rsna", source="pathology", malignant=0, birads=None, density="B"),  # RSNA: no finding boxes
    meta(dataset="generic", malignant=0, birads=3, density="E"),  # generic without boxes: unannotated
    meta(dataset="generic", malignant=1, birads=5, cc=["mass"]),
]


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("malignancy", [1, 0, -1, 0, 1, 0, 0, 1]),
        ("mass", [1, 0, 1, 0, 0, -1, -1, 1]),
        ("calcification", [0, 1, 1, 0, 1, -1, -1, 0]),
        # density A-D -> 0-3; missing (None) and out-of-vocabulary ("E") are unknown
        ("density", [1, 0, 3, 2, -1, 1, -1, 1]),
        # groups 1 | 2-3 | 4-5; BI-RADS 0 (incomplete), 6 (known cancer) and missing are unknown
        ("birads", [2, 1, -1, 0, -1, -1, 1, 2]),
    ],
)
def test_task_labels_from_shard_metadata(task, expected):
    assert get_task(task).labels(SAMPLES).tolist() == expected


def test_label_sources_name_where_known_labels_come_from():
    malignancy = get_task("malignancy")
    assert malignancy.label_source(SAMPLES[:4]) == "birads_proxy"  # sample 2 is unknown and does not count
    assert malignancy.label_source(SAMPLES) == "birads_proxy+pathology"
    assert malignancy.label_source([SAMPLES[2]]) == "none"
    assert get_task("mass").label_source(SAMPLES) == "annotation"
    assert get_task("density").label_source(SAMPLES) == "radiologist"
    assert describe_source("birads_proxy+pathology") == (
        "BI-RADS proxy (radiologist suspicion, not pathology) + pathology (biopsy-proven)"
    )
    assert [TASKS[t].binary for t in TASKS] == [True, True, True, False, False]


def test_unknown_task_is_an_error_listing_the_tasks():
    with pytest.raises(ValueError, match=r"unknown task 'cancer'.*'birads'.*'malignancy'"):
        get_task("cancer")


def test_binary_scoring_per_image_and_per_breast_hand_computed():
    # 4 breasts of 3 patients; P(malignant) per view (CC, MLO) and the breast mean:
    #   b0 y=1 (.9, .7) -> .8   b1 y=0 (.6, .2) -> .4   b2 y=1 (.3, .5) -> .4   b3 y=0 (.1, .1) -> .1
    # plus one breast with an unknown label, which must be dropped.
    metas = [meta(patient="a"), meta(patient="a", malignant=0), meta(patient="b"), meta(patient="c", malignant=0),
             meta(patient="d", malignant=-1)]  # fmt: skip
    p1 = np.array([[0.9, 0.7], [0.6, 0.2], [0.3, 0.5], [0.1, 0.1], [0.5, 0.5]])
    probs = np.stack([1 - p1, p1], axis=-1)
    pred = make_predictions(get_task("malignancy"), metas, ["k0", "k1", "k2", "k3", "k4"], probs)
    assert pred.keys == ["k0", "k1", "k2", "k3"] and pred.patient_ids == ["a", "a", "b", "c"]
    m = score(get_task("malignancy"), pred, bootstrap=50)
    # breast AUC: positives .8, .4 vs negatives .4, .1 -> pairs (.8>.4, .8>.1, .4=.4 -> 1/2, .4>.1) = 3.5 / 4
    assert m["breast_roc_auc"] == pytest.approx(0.875)
    # threshold 0.5: breasts predicted [1, 0, 0, 0] -> accuracy 3/4, sensitivity 1/2, specificity 1
    assert m["breast_accuracy"] == pytest.approx(0.75)
    assert m["breast_balanced_accuracy"] == pytest.approx(0.75)
    # images: positives .9 .7 .3 .5, negatives .6 .2 .1 .1 -> wins: 4 + 4 + 3 + 3 = 14 of 16 (.3 loses to .6)
    assert m["image_roc_auc"] == pytest.approx(14 / 16)
    assert m["image_accuracy"] == pytest.approx(6 / 8)  # predicted 1: .9 .7 .6 .5 -> 3 of 4 right each side
    # pF1 per breast: pTP = .8 + .4, pFP = .4 + .1; precision 1.2 / 1.7, recall 1.2 / 2
    precision, recall = 1.2 / 1.7, 0.6
    assert m["breast_pf1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert m["breast_n"] == 4 and m["image_n"] == 8
    assert m["breast_roc_auc_ci_low"] <= m["breast_roc_auc"] <= m["breast_roc_auc_ci_high"]
    assert m["breast_roc_auc"] == pytest.approx(roc_auc_score([1, 0, 1, 0], [0.8, 0.4, 0.4, 0.1]))


def test_multiclass_scoring_and_refusals():
    metas = [meta(density=d, patient=f"p{i}") for i, d in enumerate("ABCDA")]
    probs = np.zeros((5, 2, 4))
    # breast means: argmax A, B, D, D, A -> accuracy 4/5; per-class recall A 1, B 1, C 0, D 1 -> balanced .75
    for i, (c, other) in enumerate([(0, 1), (1, 2), (3, 2), (3, 0), (0, 3)]):
        probs[i, 0, c], probs[i, 0, other] = 0.7, 0.3
        probs[i, 1, c], probs[i, 1, other] = 0.5, 0.5
    pred = make_predictions(get_task("density"), metas, list("abcde"), probs)
    m = score(get_task("density"), pred, bootstrap=20)
    assert m["breast_accuracy"] == pytest.approx(0.8)
    assert m["breast_balanced_accuracy"] == pytest.approx(0.75)
    # MLO views tie 0.5 / 0.5 and argmax takes the lower class: A, B, C (right, unlike CC), A (wrong), A
    assert m["image_accuracy"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match=r"expected \(5, 2, 2\)"):
        make_predictions(get_task("mass"), metas, list("abcde"), probs)
    only_benign = make_predictions(get_task("malignancy"), [meta(malignant=0)], ["x"], np.full((1, 2, 2), 0.5))
    with pytest.raises(ValueError, match="only class"):
        score(get_task("malignancy"), only_benign, bootstrap=10)
    with pytest.raises(ValueError, match="none of the 1 test breasts"):
        make_predictions(get_task("malignancy"), [meta(malignant=-1)], ["x"], np.full((1, 2, 2), 0.5))
