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
    precision_recall_fscore_support,
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


def _ovr_auc(labels: np.ndarray, scores: np.ndarray, k: int) -> float | None:
    """One-vs-rest ROC AUC of class k; None when class k is all or none of the labels."""
    positive = labels == k
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive.astype(np.int64), scores))


def compute_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    n_bins: int = 15,
) -> dict:
    """All evaluation metrics for one set of predictions, as a JSON-serializable dict.

    Keys: n, accuracy, errors, per_class {name: precision, recall, f1, accuracy (one-vs-rest
    (TP+TN)/N), auc (one-vs-rest; None if undefined), support}, macro_precision, macro_recall,
    macro_f1, macro_auc (mean over classes with a defined AUC; None if none), log_loss, ece,
    confusion_matrix (rows true, cols predicted), classification_report (sklearn text).
    """
    class_names = [str(c) for c in class_names]
    c = len(class_names)
    probs, labels = check_probs_labels(probs, labels, n_classes=c)
    n = int(labels.shape[0])
    class_ids = list(range(c))
    preds = probs.argmax(axis=1)

    cm = confusion_matrix(labels, preds, labels=class_ids)
    correct = int(np.trace(cm))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=class_ids, zero_division=0
    )

    per_class: dict[str, dict] = {}
    aucs: list[float] = []
    for k, name in enumerate(class_names):
        tp = int(cm[k, k])
        fp = int(cm[:, k].sum()) - tp
        fn = int(cm[k, :].sum()) - tp
        tn = n - tp - fp - fn
        auc = _ovr_auc(labels, probs[:, k], k)
        if auc is not None:
            aucs.append(auc)
        per_class[name] = {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "accuracy": (tp + tn) / n,
            "auc": auc,
            "support": int(support[k]),
        }

    clipped = np.clip(probs, _PROB_EPS, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    report = classification_report(
        labels,
        preds,
        labels=class_ids,
        target_names=class_names,
        digits=4,
        zero_division=0,
    )
    return {
        "n": n,
        "accuracy": correct / n,
        "errors": n - correct,
        "per_class": per_class,
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "macro_f1": float(np.mean(f1)),
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "log_loss": float(log_loss(labels, clipped, labels=class_ids)),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "confusion_matrix": cm.astype(int).tolist(),
        "classification_report": report,
    }


def _fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_metrics_table(metrics: dict, title: str) -> str:
    """A short aligned text table of a `compute_metrics` result, for printing."""
    summary = [
        ("samples", str(metrics["n"])),
        ("accuracy", _fmt(metrics["accuracy"])),
        ("errors", str(metrics["errors"])),
        ("macro F1", _fmt(metrics["macro_f1"])),
        ("macro AUC", _fmt(metrics["macro_auc"])),
        ("ECE", _fmt(metrics["ece"])),
        ("log-loss", _fmt(metrics["log_loss"])),
    ]
    key_w = max(len(k) for k, _ in summary)
    lines = [title, "=" * max(len(title), 1)]
    lines += [f"{k:<{key_w}}  {v}" for k, v in summary]

    per_class = metrics["per_class"]
    name_w = max([len("class")] + [len(name) for name in per_class])
    cols = ("precision", "recall", "f1", "auc", "support")
    header = f"{'class':<{name_w}}" + "".join(f"  {c:>9}" for c in cols)
    lines += ["", header, "-" * len(header)]
    for name, row in per_class.items():
        cells = [_fmt(row[c]) for c in cols[:-1]] + [str(row["support"])]
        lines.append(f"{name:<{name_w}}" + "".join(f"  {v:>9}" for v in cells))
    return "\n".join(lines)
