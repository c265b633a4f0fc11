"""Classification metrics from predicted probabilities: numpy in, plain JSON-ready python out.

Everything here is computed from `probs` (N, C) and integer `labels` (N,) with scikit-learn,
so the numbers match what anyone else would get from the same predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    classification_report,
    confusion_matrix,
    log_loss,
    roc_auc_score,
)

_PROB_EPS = 1e-15


def check_probs_labels(
    probs, labels, n_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert: probs to float64 (N, C), labels to int64 (N,) in [0, C)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2:
        raise ValueError(f"probs must be a 2-D array (N, C), got shape {probs.shape}")
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array (N,), got shape {labels.shape}")
    if probs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"probs has {probs.shape[0]} rows but labels has {labels.shape[0]} entries"
        )
    if probs.shape[0] == 0:
        raise ValueError("cannot compute metrics on zero samples (N=0): nothing was evaluated")
    if n_classes is not None and probs.shape[1] != n_classes:
        raise ValueError(f"probs has {probs.shape[1]} columns but there are {n_classes} classes")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs contains NaN or infinite values")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    c = probs.shape[1]
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels must lie in [0, {c - 1}], got [{labels.min()}, {labels.max()}]")
    return probs, labels


def reliability_bins(probs, labels, n_bins: int = 15) -> dict:
    """Top-1 confidence vs accuracy in `n_bins` equal-width bins over [0, 1].

    Bins are (lo, hi] (the first one [0, hi]). Returns plain lists: `bin_edges` (n_bins + 1),
    and per bin `accuracy`, `confidence` (means; None for an empty bin) and `count`.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    probs, labels = check_probs_labels(probs, labels)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)
    accuracy: list[float | None] = []
    confidence: list[float | None] = []
    count: list[int] = []
    for b in range(n_bins):
        mask = idx == b
        n = int(mask.sum())
        count.append(n)
        accuracy.append(float(correct[mask].mean()) if n else None)
        confidence.append(float(conf[mask].mean()) if n else None)
    return {
        "bin_edges": [float(e) for e in edges],
        "accuracy": accuracy,
        "confidence": confidence,
        "count": count,
    }


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """ECE: sum over bins of (bin count / N) * |accuracy - mean confidence|, top-1 confidence."""
    bins = reliability_bins(probs, labels, n_bins)
    total = sum(bins["count"])
    ece = 0.0
    for acc, conf, n in zip(bins["accuracy"], bins["confidence"], bins["count"], strict=True):
        if n:
            ece += n / total * abs(acc - conf)
    return float(ece)


def ovr_auc(labels: np.ndarray, scores: np.ndarray, k: int) -> float | None:
    """One-vs-rest ROC AUC of class k; None when class k is all or none of the labels."""
    positive = labels == k
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive.astype(np.int64), scores))


NEGATIVE_CLASS = "notumor"


def tumour_operating_point(
    preds: np.ndarray, labels: np.ndarray, class_names: Sequence[str], probs=None
) -> dict | None:
    """Tumour (any tumour class) vs no tumour at the argmax decision.

    Sensitivity = tumour images predicted as any tumour class; specificity = notumor images
    predicted notumor. `auc` ranks 1 - p(notumor) (None without both kinds of image). None when
    the classes have no "notumor".
    """
    names = list(class_names)
    if NEGATIVE_CLASS not in names:
        return None
    neg = names.index(NEGATIVE_CLASS)
    positive = labels != neg
    called = preds != neg
    tp, fn = int((positive & called).sum()), int((positive & ~called).sum())
    tn, fp = int((~positive & ~called).sum()), int((~positive & called).sum())
    auc = None
    if probs is not None and positive.any() and not positive.all():
        auc = float(roc_auc_score(positive.astype(np.int64), 1.0 - probs[:, neg]))
    return {
        "positive": [n for n in names if n != NEGATIVE_CLASS],
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "fp": fp,
        "auc": auc,
    }


def compute_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    n_bins: int = 15,
) -> dict:
    """All evaluation metrics for one set of predictions, as a JSON-serializable dict.

    Keys: n, accuracy, errors, classes_present (classes with at least one true sample),
    predicted_absent {class: count} (predictions into classes with no true sample: all errors),
    per_class {name: precision, recall, f1, accuracy (one-vs-rest (TP+TN)/N), auc (one-vs-rest),
    support} — recall, f1 and auc are None for an absent class, precision None when it is never
    predicted either —, macro_precision/recall/f1/auc (means over the classes present),
    tumour_vs_notumor (see tumour_operating_point), log_loss, ece, confusion_matrix (rows true,
    cols predicted, every class), classification_report (sklearn text, classes present).
    """
    class_names = [str(c) for c in class_names]
    c = len(class_names)
    probs, labels = check_probs_labels(probs, labels, n_classes=c)
    n = int(labels.shape[0])
    class_ids = list(range(c))
    preds = probs.argmax(axis=1)

    cm = confusion_matrix(labels, preds, labels=class_ids)
    correct = int(np.trace(cm))
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    present = [k for k in class_ids if support[k] > 0]

    per_class: dict[str, dict] = {}
    for k, name in enumerate(class_names):
        tp = int(cm[k, k])
        fp = int(predicted[k]) - tp
        fn = int(support[k]) - tp
        tn = n - tp - fp - fn
        precision = tp / predicted[k] if predicted[k] else (0.0 if support[k] else None)
        recall = tp / support[k] if support[k] else None
        f1 = None
        if recall is not None:
            f1 = 2 * tp / (2 * tp + fp + fn)
        per_class[name] = {
            "precision": None if precision is None else float(precision),
            "recall": None if recall is None else float(recall),
            "f1": f1,
            "accuracy": (tp + tn) / n,
            "auc": ovr_auc(labels, probs[:, k], k),
            "support": int(support[k]),
        }

    def macro(key: str) -> float | None:
        values = [per_class[class_names[k]][key] for k in present]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    clipped = np.clip(probs, _PROB_EPS, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    report = classification_report(
        labels,
        preds,
        labels=present,
        target_names=[class_names[k] for k in present],
        digits=4,
        zero_division=0,
    )
    return {
        "n": n,
        "accuracy": correct / n,
        "errors": n - correct,
        "classes_present": [class_names[k] for k in present],
        "predicted_absent": {
            class_names[k]: int(predicted[k])
            for k in class_ids
            if not support[k] and predicted[k]
        },
        "per_class": per_class,
        "macro_precision": macro("precision"),
        "macro_recall": macro("recall"),
        "macro_f1": macro("f1"),
        "macro_auc": macro("auc"),
        "tumour_vs_notumor": tumour_operating_point(preds, labels, class_names, probs),
        "log_loss": float(log_loss(labels, clipped, labels=class_ids)),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "confusion_matrix": cm.astype(int).tolist(),
        "classification_report": report,
    }
