"""Metrics on hand-made probabilities whose right answers are worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from brainmri import CLASS_NAMES
from brainmri.evaluate.bootstrap import (
    bootstrap_intervals,
    resample_counts,
    weighted_auc,
    wilson_interval,
)
from brainmri.evaluate.metrics import (
    compute_metrics,
    expected_calibration_error,
    reliability_bins,
    tumour_operating_point,
)
from brainmri.evaluate.report import format_block, interval_text, proportion_text


def _probs_for(preds, n_classes: int, top: float) -> np.ndarray:
    """`top` on the predicted class, the rest spread evenly over the other classes."""
    probs = np.full((len(preds), n_classes), (1.0 - top) / (n_classes - 1))
    probs[np.arange(len(preds)), preds] = top
    return probs


# 10 samples, 2 errors: sample 2 (true glioma) -> meningioma, sample 6 (true notumor) -> pituitary.
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
PREDS = np.array([0, 0, 1, 1, 1, 1, 2, 3, 3, 3])


def test_perfect_classifier():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    m = compute_metrics(_probs_for(labels, 4, 0.7), labels, CLASS_NAMES)
    assert m["n"] == 8
    assert m["accuracy"] == 1.0
    assert m["errors"] == 0
    assert m["confusion_matrix"] == [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 2]]
    assert m["macro_auc"] == 1.0
    assert m["macro_f1"] == 1.0
    for name in CLASS_NAMES:
        row = m["per_class"][name]
        assert row == {
            "precision": 1.0,
            "recall": 1.0,
            "f1": 1.0,
            "accuracy": 1.0,
            "auc": 1.0,
            "support": 2,
        }
    # Every sample has confidence 0.7 and is right: ECE = |1 - 0.7|; log-loss = -ln 0.7.
    assert m["ece"] == pytest.approx(0.3)
    assert m["log_loss"] == pytest.approx(-math.log(0.7))


def test_two_errors_exact_confusion_and_per_class():
    m = compute_metrics(_probs_for(PREDS, 4, 0.8), LABELS, CLASS_NAMES)
    assert m["confusion_matrix"] == [
        [2, 1, 0, 0],
        [0, 3, 0, 0],
        [0, 0, 1, 1],
        [0, 0, 0, 2],
    ]
    assert sum(map(sum, m["confusion_matrix"])) == m["n"] == 10
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["errors"] == 2
    pc = m["per_class"]
    recall = [pc[c]["recall"] for c in CLASS_NAMES]
    precision = [pc[c]["precision"] for c in CLASS_NAMES]
    support = [pc[c]["support"] for c in CLASS_NAMES]
    assert recall == pytest.approx([2 / 3, 1.0, 1 / 2, 1.0])
    assert precision == pytest.approx([1.0, 3 / 4, 1.0, 2 / 3])
    assert support == [3, 3, 2, 2]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall, strict=True)]
    assert [pc[c]["f1"] for c in CLASS_NAMES] == pytest.approx(f1)
    assert m["macro_recall"] == pytest.approx(np.mean(recall))
    assert m["macro_precision"] == pytest.approx(np.mean(precision))
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    # Confidence 0.8 everywhere and 8/10 right: perfectly calibrated.
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)
    # Log-loss: 8 samples put 0.8 on the truth, 2 put 0.2/3 on it.
    assert m["log_loss"] == pytest.approx(-(8 * math.log(0.8) + 2 * math.log(0.2 / 3)) / 10)


def test_one_vs_rest_accuracy_formula():
    m = compute_metrics(_probs_for(PREDS, 4, 0.8), LABELS, CLASS_NAMES)
    cm = np.array(m["confusion_matrix"])
    n = cm.sum()
    for k, name in enumerate(CLASS_NAMES):
        tp = cm[k, k]
        fp = cm[:, k].sum() - tp
        fn = cm[k, :].sum() - tp
        tn = n - tp - fp - fn
        assert m["per_class"][name]["accuracy"] == pytest.approx((tp + tn) / n)
    # By hand: glioma TP2 FP0 FN1 TN7, meningioma TP3 FP1 FN0 TN6, notumor TP1 FP0 FN1 TN8,
    # pituitary TP2 FP1 FN0 TN7: all 9/10.
    assert [m["per_class"][c]["accuracy"] for c in CLASS_NAMES] == pytest.approx([0.9] * 4)


def test_binary_auc_by_hand():
    labels = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.9])
    probs = np.stack([1 - p1, p1], axis=1)
    m = compute_metrics(probs, labels, ["neg", "pos"])
    # Positive/negative pairs ranked correctly: (0.4>0.1), (0.9>0.1), (0.9>0.6); not (0.4>0.6).
    assert m["per_class"]["pos"]["auc"] == pytest.approx(0.75)
    assert m["per_class"]["neg"]["auc"] == pytest.approx(0.75)
    assert m["macro_auc"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.5)  # preds [0, 1, 0, 1]


def test_absent_class_is_left_out_of_macro_and_its_predictions_are_errors():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 3])  # pituitary is predicted once but never true
    probs = _probs_for(preds, 4, 0.9)
    probs[0, 0] = 0.95  # break ties so the AUCs are not all trivial
    probs[0, 1:] = 0.05 / 3
    m = compute_metrics(probs, labels, CLASS_NAMES)
    assert m["classes_present"] == ["glioma", "meningioma", "notumor"]
    assert m["predicted_absent"] == {"pituitary": 1}
    assert m["errors"] == 2 and m["accuracy"] == pytest.approx(4 / 6)
    pit = m["per_class"]["pituitary"]
    assert pit["auc"] is None and pit["recall"] is None and pit["f1"] is None
    assert pit["support"] == 0
    assert pit["precision"] == 0.0  # predicted once, wrong
    recall = [m["per_class"][c]["recall"] for c in CLASS_NAMES[:3]]
    assert recall == pytest.approx([1 / 2, 1.0, 1 / 2])
    assert m["macro_recall"] == pytest.approx(np.mean(recall))  # over the 3 present classes
    defined = [m["per_class"][c]["auc"] for c in CLASS_NAMES[:3]]
    assert all(a is not None for a in defined)
    assert m["macro_auc"] == pytest.approx(np.mean(defined))
    assert sum(map(sum, m["confusion_matrix"])) == 6
    assert m["confusion_matrix"][3] == [0, 0, 0, 0]
    assert m["confusion_matrix"][2] == [0, 0, 1, 1]
    assert "pituitary" not in m["classification_report"]


def test_tumour_operating_point_by_hand():
    # notumor = 2. Tumour images: 0,0,1,1,3,3 -> called tumour unless predicted 2.
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 3, 3])
    preds = np.array([0, 2, 3, 1, 2, 2, 0, 3, 3])
    op = tumour_operating_point(preds, labels, CLASS_NAMES)
    assert (op["tp"], op["fn"], op["tn"], op["fp"]) == (5, 1, 2, 1)
    assert op["sensitivity"] == pytest.approx(5 / 6)
    assert op["specificity"] == pytest.approx(2 / 3)
    assert op["auc"] is None  # no probabilities given
    assert tumour_operating_point(preds, labels, ["a", "b", "c", "d"]) is None
    m = compute_metrics(_probs_for(preds, 4, 0.7), labels, CLASS_NAMES)
    assert m["tumour_vs_notumor"]["sensitivity"] == pytest.approx(5 / 6)
    assert 0.0 <= m["tumour_vs_notumor"]["auc"] <= 1.0


def test_ece_overconfident_by_hand():
    # Two samples at confidence 0.95 (one right), two at 0.65 (both right), 10 bins:
    # ECE = 0.5 * |0.5 - 0.95| + 0.5 * |1.0 - 0.65| = 0.225 + 0.175 = 0.4.
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.65, 0.35]])
    labels = np.array([0, 1, 1, 0])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.4)
    bins = reliability_bins(probs, labels, n_bins=10)
    assert len(bins["bin_edges"]) == 11
    assert bins["count"] == [0, 0, 0, 0, 0, 0, 2, 0, 0, 2]
    assert bins["accuracy"][9] == pytest.approx(0.5)
    assert bins["confidence"][9] == pytest.approx(0.95)
    assert bins["accuracy"][6] == pytest.approx(1.0)
    assert bins["confidence"][6] == pytest.approx(0.65)
    assert bins["accuracy"][0] is None and bins["confidence"][0] is None


def test_ece_all_in_one_bin_and_confidence_one():
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = np.array([0, 1, 1])
    bins = reliability_bins(probs, labels, n_bins=15)
    assert bins["count"][-1] == 3 and sum(bins["count"]) == 3
    assert expected_calibration_error(probs, labels, n_bins=15) == pytest.approx(1 / 3)
    # Log-loss stays finite although the true class got probability 0.
    m = compute_metrics(probs, labels, ["a", "b"])
    assert math.isfinite(m["log_loss"]) and m["log_loss"] > 5


def test_result_is_json_serializable_and_report_present():
    m = compute_metrics(_probs_for(PREDS, 4, 0.8), LABELS, CLASS_NAMES)
    again = json.loads(json.dumps(m))
    assert again["confusion_matrix"] == m["confusion_matrix"]
    report = m["classification_report"]
    assert isinstance(report, str)
    for name in CLASS_NAMES:
        assert name in report
    assert "0.6667" in report  # glioma recall, 4 digits


def test_weighted_auc_equals_sklearn_with_sample_weights():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    scores = np.round(rng.random(200), 2)  # many ties
    positive = rng.random(200) < 0.3
    w = resample_counts(200, 6, seed=1)
    assert (w.sum(axis=1) == 200).all()
    got = weighted_auc(scores, positive, w)
    want = [roc_auc_score(positive, scores, sample_weight=row) for row in w]
    assert got == pytest.approx(want, abs=1e-12)
    assert np.isnan(weighted_auc(scores, np.zeros(200, bool), w)).all()


def test_wilson_interval_by_hand():
    # 405/405 at 95 %: lower bound n / (n + z^2) with z = 1.95996.
    lo, hi = wilson_interval(405, 405)
    assert lo == pytest.approx(405 / (405 + 1.959964**2), abs=1e-6)
    assert hi == pytest.approx(1.0)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 0) is None


def _noisy(n_per_class=(60, 60, 80, 60), seed=0, strength=2.5):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), n_per_class)
    logits = rng.normal(size=(len(labels), 4)) + strength * np.eye(4)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, labels


def test_bootstrap_intervals_bracket_the_point_estimates_and_are_seeded():
    probs, labels = _noisy()
    m = compute_metrics(probs, labels, CLASS_NAMES)
    ci = bootstrap_intervals(probs, labels, CLASS_NAMES, n_resamples=2000, seed=0)
    assert ci["n_resamples"] == 2000 and ci["seed"] == 0
    acc = ci["accuracy"]
    assert acc["value"] == pytest.approx(m["accuracy"])
    assert acc["ci"][0] < m["accuracy"] < acc["ci"][1]
    # A binomial proportion's bootstrap interval is close to the Wilson one at this n.
    assert acc["ci"][0] == pytest.approx(acc["wilson"][0], abs=0.02)
    for name in CLASS_NAMES:
        r = ci["recall"][name]
        assert r["value"] == pytest.approx(m["per_class"][name]["recall"])
        assert r["ci"][0] <= r["value"] <= r["ci"][1]
    auc = ci["macro_auc"]
    assert auc["value"] == pytest.approx(m["macro_auc"])
    assert auc["ci"][0] < auc["value"] < auc["ci"][1] <= 1.0
    assert ci["sensitivity"]["value"] == pytest.approx(m["tumour_vs_notumor"]["sensitivity"])
    assert ci["specificity"]["n"] == 80
    again = bootstrap_intervals(probs, labels, CLASS_NAMES, n_resamples=2000, seed=0)
    assert again == ci
    other = bootstrap_intervals(probs, labels, CLASS_NAMES, n_resamples=2000, seed=1)
    assert other["macro_auc"]["ci"] != ci["macro_auc"]["ci"]


def test_bootstrap_width_shrinks_with_more_images():
    small = bootstrap_intervals(*_noisy((20, 20, 20, 20)), CLASS_NAMES, n_resamples=2000)
    large = bootstrap_intervals(*_noisy((200, 200, 200, 200)), CLASS_NAMES, n_resamples=2000)
    width = lambda c: c["accuracy"]["ci"][1] - c["accuracy"]["ci"][0]  # noqa: E731
    assert width(large) < 0.6 * width(small)


def test_bootstrap_absent_class_and_perfect_proportions():
    probs, labels = _noisy((50, 50, 50, 0), strength=8.0)
    ci = bootstrap_intervals(probs, labels, CLASS_NAMES, n_resamples=500)
    assert set(ci["recall"]) == {"glioma", "meningioma", "notumor"}
    spec = ci["specificity"]
    if spec["k"] == spec["n"]:  # perfect: bootstrap collapses, Wilson does not
        assert spec["ci"] == [1.0, 1.0]
        assert spec["wilson"][0] < 1.0
        assert interval_text(spec).endswith("*")
    with pytest.raises(ValueError):
        bootstrap_intervals(probs, labels, CLASS_NAMES, n_resamples=0)


def test_report_block_shows_intervals_and_confusion_matrix():
    probs, labels = _noisy()
    m = compute_metrics(probs, labels, CLASS_NAMES)
    ci = bootstrap_intervals(probs, labels, CLASS_NAMES, n_resamples=300)
    text = format_block("all images", m, ci, list(CLASS_NAMES))
    assert text.splitlines()[0] == "all images"
    assert proportion_text(ci["accuracy"]) in text
    assert "tumour sensitivity" in text and "confusion matrix" in text
    rows = [ln for ln in text.splitlines() if ln[:1].isalpha() and ln.split()[0] in CLASS_NAMES]
    assert len(rows) == 8  # 4 per-class rows + 4 confusion rows
    cm_rows = rows[4:]
    for k, row in enumerate(cm_rows):
        assert [int(v) for v in row.split()[1:]] == m["confusion_matrix"][k]


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="zero samples"):
        compute_metrics(np.zeros((0, 4)), np.zeros(0, dtype=int), CLASS_NAMES)
    with pytest.raises(ValueError):
        compute_metrics(np.full((3, 3), 1 / 3), np.array([0, 1, 2]), CLASS_NAMES)
    with pytest.raises(ValueError):
        compute_metrics(np.full((3, 4), 0.25), np.array([0, 1]), CLASS_NAMES)
    with pytest.raises(ValueError):
        compute_metrics(np.full((2, 4), 0.25), np.array([0, 4]), CLASS_NAMES)
    with pytest.raises(ValueError):
        expected_calibration_error(np.full((2, 2), 0.5), np.array([0, 1]), n_bins=0)


def test_intervals_from_confusion_match_the_predictions():
    from brainmri.evaluate.bootstrap import intervals_from_confusion

    probs, labels = _noisy()
    m = compute_metrics(probs, labels, CLASS_NAMES)
    direct = bootstrap_intervals(probs, labels, CLASS_NAMES, n_resamples=2000)
    from_cm = intervals_from_confusion(m["confusion_matrix"], CLASS_NAMES, n_resamples=2000)
    assert from_cm["macro_auc"] is None
    assert from_cm["accuracy"]["k"] == direct["accuracy"]["k"]
    assert from_cm["accuracy"]["wilson"] == direct["accuracy"]["wilson"]
    # Same distribution, other image order: the interval ends agree to within a step or two.
    assert from_cm["accuracy"]["ci"] == pytest.approx(direct["accuracy"]["ci"], abs=0.02)
    for name in CLASS_NAMES:
        assert from_cm["recall"][name]["value"] == direct["recall"][name]["value"]
    assert from_cm["specificity"]["n"] == direct["specificity"]["n"]
