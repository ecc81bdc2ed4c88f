"""Hand-computed checks of the evaluation metrics (see docs/evaluation.md for the definitions)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mmclip_dist.eval.metrics import (
    aggregate_per_breast,
    binary_metrics,
    bootstrap_ci,
    encode_classes,
    multiclass_metrics,
    prediction_id,
    probabilistic_f1,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
    youden_threshold,
)

# 5 negatives, 5 positives; one negative ties with two positives at 0.6, which puts a diagonal segment
# on the ROC curve. Operating points (fpr, tpr) by descending threshold:
#   inf (0, 0)  0.9 (0, .2)  0.8 (0, .4)  0.6 (.2, .8)  0.4 (.4, .8)  0.35 (.4, 1)  0.3 (.6, 1) ...
Y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
S = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.35, 0.6, 0.6, 0.8, 0.9])


def test_binary_metrics_hand_computed():
    m = binary_metrics(Y, S)
    # AUC: positive 0.9 and 0.8 beat all 5 negatives (10), each 0.6 beats 4 and ties 1 (2 x 4.5),
    # 0.35 beats 3: (10 + 9 + 3) / 25.
    assert m["roc_auc"] == pytest.approx(22 / 25)
    # threshold 0.5: TP = 4 (0.6, 0.6, 0.8, 0.9), FP = 1 (0.6), TN = 4, FN = 1
    assert m["threshold"] == 0.5
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["sensitivity"] == pytest.approx(0.8)
    assert m["specificity"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx(0.8)
    # fpr 0.1 lies halfway along the diagonal (0, .4) -> (.2, .8): tpr 0.6
    assert m["sens_at_90_spec"] == pytest.approx(0.6)
    # tpr 0.8 is reached at fpr .2 and .4 (a horizontal run): the best is fpr .2 -> specificity .8
    assert m["spec_at_80_sens"] == pytest.approx(0.8)
    assert (m["n"], m["n_pos"]) == (10.0, 5.0)


def test_roc_operating_points_interpolate():
    # tpr 0.7 on the diagonal (0, .4) -> (.2, .8) is at fpr 0.15
    assert specificity_at_sensitivity(Y, S, 0.7) == pytest.approx(0.85)
    # fpr 0.3 lies on the horizontal run (.2, .8) -> (.4, .8)
    assert sensitivity_at_specificity(Y, S, 0.7) == pytest.approx(0.8)
    # fpr 0.4 is a vertical run (.4, .8) -> (.4, 1): take the best, 1.0
    assert sensitivity_at_specificity(Y, S, 0.6) == pytest.approx(1.0)


def test_custom_threshold_and_youden():
    # J = tpr - fpr: 0.2, 0.4, 0.6 (thr 0.6), 0.4, 0.6 (thr 0.35), ... -> first maximum is 0.6
    assert youden_threshold(Y, S) == pytest.approx(0.6)
    m = binary_metrics(Y, S, threshold=0.35)
    # >= 0.35: all 5 positives, negatives 0.4 and 0.6 -> sens 1, spec 0.6
    assert m["sensitivity"] == pytest.approx(1.0)
    assert m["specificity"] == pytest.approx(0.6)
    assert m["balanced_accuracy"] == pytest.approx(0.8)
    assert m["accuracy"] == pytest.approx(0.8)


def test_binary_metrics_bad_input_names_the_entry():
    with pytest.raises(ValueError, match=r"y_true\[2\] = -1.*unknown"):
        binary_metrics([0, 1, -1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="both classes"):
        binary_metrics([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"y_score\[1\] = nan"):
        binary_metrics([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="3 entries"):
        binary_metrics([0, 1, 1], [0.1, 0.2])


def test_probabilistic_f1_hand_computed():
    y = [1, 0, 1, 0]
    p = [0.8, 0.4, 0.2, 0.2]
    # pTP = 1.0, pFP = 0.6 -> precision 0.625, recall 1.0 / 2 = 0.5
    assert probabilistic_f1(y, p) == pytest.approx(2 * 0.625 * 0.5 / (0.625 + 0.5))  # 5/9
    assert probabilistic_f1(y, p) == pytest.approx(5 / 9)
    assert probabilistic_f1(y, p, beta=2) == pytest.approx(5 * 0.625 * 0.5 / (4 * 0.625 + 0.5))
    # probabilities are clipped to [0, 1]: 1.7 counts as 1, -3 as 0 -> pTP 1, pFP 0.4: P 1/1.4, R 0.5
    assert probabilistic_f1([1, 1, 0, 0], [1.7, -3.0, 0.4, -1.0]) == pytest.approx(
        2 * (1 / 1.4) * 0.5 / (1 / 1.4 + 0.5)
    )
    assert probabilistic_f1([1, 0], [0.0, 0.0]) == 0.0
    assert probabilistic_f1([1, 0, 1], [1.0, 0.0, 1.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive"):
        probabilistic_f1([0, 0], [0.3, 0.1])


def test_aggregate_per_breast_mean_and_max():
    ids = [prediction_id(2, "l"), "1_L", "1_R", "1_L", "1_R"]
    scores = [0.9, 0.2, 0.1, 0.6, 0.3]
    labels = [0, 1, 0, 1, 0]
    out_ids, mean, lab = aggregate_per_breast(ids, scores, labels, how="mean")
    assert out_ids.tolist() == ["1_L", "1_R", "2_L"]
    assert mean == pytest.approx([0.4, 0.2, 0.9])
    assert lab.tolist() == [1, 0, 0]
    _, mx, _ = aggregate_per_breast(ids, scores, labels, how="max")
    assert mx == pytest.approx([0.6, 0.3, 0.9])


def test_aggregate_per_breast_rejects_inconsistent_labels():
    with pytest.raises(ValueError, match=r"breast '1_L': image 2 has label 0 but image 0 has 1"):
        aggregate_per_breast(["1_L", "1_R", "1_L"], [0.1, 0.2, 0.3], [1, 0, 0])
    with pytest.raises(ValueError, match="laterality"):
        prediction_id(3, "X")


def test_bootstrap_ci_constant_when_every_valid_resample_agrees():
    # the only resamples containing both classes are {0, 1} in some multiplicity: AUC is always 1
    point, lo, hi = bootstrap_ci(roc_auc_score, [0, 1], [0.2, 0.8], n=50, seed=3)
    assert (point, lo, hi) == (1.0, 1.0, 1.0)


def test_bootstrap_ci_skips_one_class_resamples_and_scores_exactly_n():
    y = np.array([1] + [0] * 11)  # one positive: ~1/3 of plain resamples miss it
    s = np.linspace(0, 1, 12)
    calls = []

    def auc(yt, ys):
        calls.append(len(yt))
        return roc_auc_score(yt, ys)  # raises on a one-class resample

    point, lo, hi = bootstrap_ci(auc, y, s, n=200, seed=0)
    assert len(calls) == 201  # the point estimate + exactly n valid resamples
    assert point == pytest.approx(0.0)
    assert lo <= point <= hi


def test_bootstrap_ci_is_seeded_and_brackets_the_point():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = y * 0.5 + rng.random(200)
    a = bootstrap_ci(roc_auc_score, y, s, n=200, seed=7)
    b = bootstrap_ci(roc_auc_score, y, s, n=200, seed=7)
    c = bootstrap_ci(roc_auc_score, y, s, n=200, seed=8)
    assert a == b and a != c
    point, lo, hi = a
    assert lo < point < hi
    wide = bootstrap_ci(roc_auc_score, y, s, n=200, seed=7, alpha=0.5)
    assert lo < wide[1] < wide[2] < hi  # a 50% interval sits inside the 95% one


def test_bootstrap_ci_resamples_whole_groups():
    # 4 breasts x 2 images; the score encodes the breast, so a resample must contain every breast's
    # images in equal numbers (whole groups only)
    groups = np.repeat(["a", "b", "c", "d"], 2)
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    s = np.repeat([0.0, 1.0, 2.0, 3.0], 2)

    def check(yt, ys):
        _, counts = np.unique(ys, return_counts=True)
        assert (counts % 2 == 0).all()
        assert len(yt) == 8
        return float(ys.mean())

    bootstrap_ci(check, y, s, n=100, seed=0, groups=groups)
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci(check, y, s, n=10, groups=groups[:3])


def test_multiclass_metrics_hand_computed():
    y = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3])
    p = np.array(
        [
            [0.7, 0.1, 0.1, 0.1],  # 0 ok
            [0.2, 0.5, 0.2, 0.1],  # 0 -> 1
            [0.1, 0.6, 0.2, 0.1],  # 1 ok
            [0.1, 0.7, 0.1, 0.1],  # 1 ok
            [0.1, 0.8, 0.05, 0.05],  # 1 ok
            [0.1, 0.1, 0.6, 0.2],  # 2 ok
            [0.1, 0.1, 0.3, 0.5],  # 2 -> 3
            [0.1, 0.1, 0.1, 0.7],  # 3 ok
            [0.45, 0.1, 0.1, 0.35],  # 3 -> 0
        ]
    )
    m = multiclass_metrics(y, p, class_names=["A", "B", "C", "D"])
    assert m["accuracy"] == pytest.approx(6 / 9)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5 + 0.5) / 4)
    # column A: positives 0.7 (beats all 7 negatives) and 0.2 (loses only to 0.45) -> 13/14
    assert m["auc_A"] == pytest.approx(13 / 14)
    assert m["auc_B"] == pytest.approx(1.0)
    assert m["auc_C"] == pytest.approx(1.0)
    # column D: 0.7 beats all; 0.35 loses to 0.5 only -> 13/14
    assert m["auc_D"] == pytest.approx(13 / 14)
    assert m["macro_auc"] == pytest.approx(27 / 28)
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))


def test_multiclass_absent_class_and_errors():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.4, 0.2, 0.4]])
    m = multiclass_metrics(y, p)
    assert np.isnan(m["auc_2"])
    assert m["auc_0"] == pytest.approx(1.0)
    # column 1: positive 0.6 beats both negatives (0.1, 0.3); 0.2 beats 0.1 only -> 3/4
    assert m["auc_1"] == pytest.approx(0.75)
    assert m["macro_auc"] == pytest.approx(0.875)  # class 2 has no sample: left out of the mean
    with pytest.raises(ValueError, match=r"y_true\[1\] = 3"):
        multiclass_metrics([0, 3], np.ones((2, 3)) / 3)
    assert encode_classes(["B", "D", "A"]).tolist() == [1, 3, 0]
    with pytest.raises(ValueError, match="label 1: 'E'"):
        encode_classes(["A", "E"])


def test_bootstrap_ci_with_multiclass_scores():
    y = np.array([0, 1, 2, 0, 1, 2])
    p = np.eye(3)[y] * 0.8 + 0.1  # argmax always right
    point, lo, hi = bootstrap_ci(lambda yt, ps: multiclass_metrics(yt, ps)["accuracy"], y, p, n=30)
    assert (point, lo, hi) == (1.0, 1.0, 1.0)
