"""Metrics on hand-made probabilities whose right answers are worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from brainmri import CLASS_NAMES
from brainmri.evaluate.metrics import (
    compute_metrics,
    expected_calibration_error,
    format_metrics_table,
    reliability_bins,
)


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


def test_missing_class_gives_none_auc_and_zero_scores():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 3])  # pituitary is predicted once but never true
    probs = _probs_for(preds, 4, 0.9)
    probs[0, 0] = 0.95  # break ties so the AUCs are not all trivial
    probs[0, 1:] = 0.05 / 3
    m = compute_metrics(probs, labels, CLASS_NAMES)
    pit = m["per_class"]["pituitary"]
    assert pit["auc"] is None
    assert pit["support"] == 0
    assert pit["precision"] == 0.0 and pit["recall"] == 0.0 and pit["f1"] == 0.0
    defined = [m["per_class"][c]["auc"] for c in CLASS_NAMES[:3]]
    assert all(a is not None for a in defined)
    assert m["macro_auc"] == pytest.approx(np.mean(defined))
    assert sum(map(sum, m["confusion_matrix"])) == 6
    assert m["confusion_matrix"][3] == [0, 0, 0, 0]
    assert m["confusion_matrix"][2] == [0, 0, 1, 1]


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


def test_format_metrics_table():
    m = compute_metrics(_probs_for(PREDS, 4, 0.8), LABELS, CLASS_NAMES)
    text = format_metrics_table(m, "test split")
    assert text.splitlines()[0] == "test split"
    assert "0.8000" in text  # accuracy
    for name in CLASS_NAMES:
        assert name in text
    rows = [line for line in text.splitlines() if line.split() and line.split()[0] in CLASS_NAMES]
    assert len(rows) == 4
    assert len({len(r) for r in rows}) == 1  # aligned columns

    m["per_class"]["glioma"]["auc"] = None
    m["macro_auc"] = None
    assert "n/a" in format_metrics_table(m, "x")


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
