"""Evaluation and training plots, saved as PNG files (Agg backend, no display needed).

Each function draws one figure, saves it at 120 dpi, closes it and returns the path.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from brainmri.errors import BrainMRIError  # noqa: E402
from brainmri.evaluate.metrics import (  # noqa: E402
    check_probs_labels,
    expected_calibration_error,
    reliability_bins,
)

DPI = 120


def _save(fig, path: Path, dpi: int = DPI) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_confusion_matrix(
    cm: list[list[int]] | np.ndarray,
    class_names: Sequence[str],
    path: Path,
    title: str = "Confusion matrix",
    rows: Sequence[int] | None = None,
) -> Path:
    """Counts and row-percent (one decimal) in each cell; colour is the row fraction.

    `rows` limits the true-class rows to those indices (classes present in the data); every
    predicted class stays a column, so predictions into an absent class are visible.
    """
    counts = np.asarray(cm, dtype=np.int64)
    c = len(class_names)
    if counts.shape != (c, c):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {c} classes")
    rows = list(range(c)) if rows is None else list(rows)
    counts = counts[rows]
    row_sums = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)

    size = max(4.0, 1.2 * c + 2.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.85 * max(len(rows), 2) / c + 0.6))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    for i in range(len(rows)):
        for j in range(c):
            ax.text(
                j,
                i,
                f"{counts[i, j]}\n{100 * norm[i, j]:.1f} %",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    columns = [n if k in rows else f"{n}\n(no image)" for k, n in enumerate(class_names)]
    ax.set_xticks(range(c), labels=columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels=[class_names[k] for k in rows])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} (n={int(counts.sum())})", fontsize=10)
    return _save(fig, path)


def _roc_points(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    fpr, tpr, _ = roc_curve(positive, scores)
    return fpr, tpr, float(roc_auc_score(positive, scores))


def plot_roc_curves(
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    title: str = "ROC (one-vs-rest)",
) -> Path:
    """One-vs-rest ROC per class: linear axes (left) and log false-positive axis (right).

    Near AUC 1 every curve hugs the top-left corner on linear axes; the right panel spreads
    the false-positive rate over decades (FPR 0 drawn at half of 1/negatives, marked) and
    zooms the true-positive axis to where the curves are.
    """
    probs, labels = check_probs_labels(probs, labels, n_classes=len(class_names))
    fig, (ax, ax_log) = plt.subplots(1, 2, figsize=(11, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="chance")
    floor, tpr_low = 1.0, 1.0
    for k, name in enumerate(class_names):
        positive = (labels == k).astype(np.int64)
        if positive.all() or not positive.any():
            continue  # no curve for a class with no image (or only that class)
        fpr, tpr, auc = _roc_points(positive, probs[:, k])
        colour = f"C{k}"
        ax.plot(fpr, tpr, linewidth=1.5, color=colour, label=f"{name} (AUC={auc:.5f})")
        zero = 0.5 / int((positive == 0).sum())
        floor = min(floor, zero)
        shown = np.maximum(fpr, zero)
        ax_log.plot(shown, tpr, linewidth=1.5, color=colour)
        tpr_low = min(tpr_low, float(tpr[np.searchsorted(fpr, 0.0, side="right") - 1]))
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)

    ax_log.set_xscale("log")
    ax_log.set_xlim(floor * 0.8, 1.0)
    y_lo = max(0.0, np.floor((tpr_low - 0.02) * 20) / 20)
    ax_log.set_ylim(y_lo, 1.0 + (1.0 - y_lo) * 0.02)
    ax_log.axvline(floor, color="grey", linestyle=":", linewidth=1)
    ax_log.annotate("FPR = 0", xy=(floor, y_lo), xytext=(3, 4), textcoords="offset points",
                    fontsize=7, color="grey")  # fmt: skip
    ax_log.set_xlabel("false positive rate (log scale)")
    ax_log.set_ylabel("true positive rate")
    ax_log.set_title("zoom: log false-positive axis", fontsize=10)
    ax_log.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(
    probs: np.ndarray,
    labels: np.ndarray,
    path: Path,
    n_bins: int = 15,
    title: str = "Reliability diagram",
) -> Path:
    """Accuracy vs top-1 confidence per bin, the identity line, ECE in the title, counts below.

    Counts are on a log axis: with an accurate model almost every image sits in the top bin.
    """
    bins = reliability_bins(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    edges = np.asarray(bins["bin_edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    count = np.asarray(bins["count"])
    filled = count > 0
    acc = np.array([a if a is not None else 0.0 for a in bins["accuracy"]])
    conf = np.array([c if c is not None else 0.0 for c in bins["confidence"]])

    fig, (ax, ax_hist) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.bar(centers[filled], acc[filled], width=width * 0.9, color="tab:blue",
           edgecolor="black", linewidth=0.5, label="accuracy in bin")  # fmt: skip
    ax.scatter(conf[filled], acc[filled], s=14, color="tab:red", zorder=3,
               label="accuracy at the bin's mean confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE={100 * ece:.2f} %, n={int(count.sum())}, {n_bins} bins",
                 fontsize=10)  # fmt: skip
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)

    ax_hist.bar(centers[filled], count[filled], width=width * 0.9, color="tab:grey",
                edgecolor="black", lw=0.5)  # fmt: skip
    for x, n in zip(centers[filled], count[filled], strict=True):
        ax_hist.annotate(str(n), xy=(x, n), xytext=(0, 1), textcoords="offset points",
                         ha="center", va="bottom", fontsize=6)  # fmt: skip
    ax_hist.set_yscale("log")
    ax_hist.set_ylim(0.7, max(2.0, count.max() * 4))
    ax_hist.set_xlim(0, 1)
    ax_hist.set_xlabel("confidence (top-1 probability)")
    ax_hist.set_ylabel("images (log)")
    return _save(fig, path)


def _shorten(text: str, width: int = 30) -> str:
    """Keep a tile caption inside its tile: the start and the end of a long file name."""
    if len(text) <= width:
        return text
    keep = (width - 1) // 2
    return text[:keep] + "…" + text[-keep:]


GALLERY_PAGE = 60  # tiles per PNG
GALLERY_COLS = 6


def plot_error_gallery(
    images: np.ndarray,
    true: Sequence[str],
    pred: Sequence[str],
    confidence: Sequence[float],
    captions: Sequence[str],
    path: Path,
    title: str = "Misclassified images",
    leak_free: Sequence[bool] | None = None,
) -> list[Path]:
    """Every misclassified image (N, H, W uint8) with true -> predicted class and probability.

    Most confident errors first. Up to GALLERY_PAGE tiles per PNG: `path`, then
    `<stem>_2.png`, ... for more. With `leak_free`, tiles of test images that have a copy in
    Training are marked. No error: one PNG saying so.
    """
    path = Path(path)
    n = len(images)
    order = np.argsort(-np.asarray(confidence, dtype=np.float64), kind="stable")
    pages = [order[i : i + GALLERY_PAGE] for i in range(0, n, GALLERY_PAGE)] or [order]
    written = []
    for p, page in enumerate(pages):
        rows = max(1, math.ceil(len(page) / GALLERY_COLS))
        cols = GALLERY_COLS if n else 1
        height = 2.7 * rows + 1.3
        fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, height), squeeze=False)
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 1.2 / height,
                            wspace=0.05, hspace=0.3)  # fmt: skip
        for ax in axes.ravel():
            ax.axis("off")
        for ax, i in zip(axes.ravel(), page, strict=False):
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
            mark = ""
            if leak_free is not None and not leak_free[i]:
                mark = " [copy in Training]"
            ax.set_title(f"{true[i]} → {pred[i]}\np = {confidence[i]:.3f}{mark}\n"
                         f"{_shorten(captions[i])}",
                         fontsize=7)  # fmt: skip
        if not n:
            axes[0, 0].text(0.5, 0.5, "no misclassified image", ha="center", va="center")
        page_note = f" — page {p + 1}/{len(pages)}" if len(pages) > 1 else ""
        fig.suptitle(f"{title}{page_note}\n(true → predicted, predicted-class probability)",
                     fontsize=10, y=1 - 0.15 / height, va="top")  # fmt: skip
        out = path if p == 0 else path.with_name(f"{path.stem}_{p + 1}{path.suffix}")
        written.append(_save(fig, out, dpi=90))
    return written


_CURVE_COLUMNS = ("stage", "epoch", "train_loss", "train_acc", "val_loss", "val_acc")


def _to_float(value: str | None) -> float:
    if value is None or value.strip() == "":
        return math.nan
    try:
        return float(value)
    except ValueError:
        return math.nan


def _read_curves(metrics_csv: Path) -> dict[str, list]:
    metrics_csv = Path(metrics_csv)
    if not metrics_csv.is_file():
        raise BrainMRIError(f"metrics CSV not found: {metrics_csv}")
    with metrics_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _CURVE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise BrainMRIError(f"{metrics_csv}: missing columns {', '.join(missing)}")
        rows = list(reader)
    if not rows:
        raise BrainMRIError(f"{metrics_csv}: no epochs recorded yet")
    data: dict[str, list] = {"stage": [r["stage"] for r in rows]}
    for col in ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc"):
        data[col] = [_to_float(r.get(col)) for r in rows]
    return data


def _stage_spans(stages: list[str], epochs: list[float]) -> list[tuple[str, float, float]]:
    """(name, first epoch, last epoch) for each consecutive run of the same stage."""
    spans: list[tuple[str, float, float]] = []
    for stage, epoch in zip(stages, epochs, strict=True):
        if spans and spans[-1][0] == stage:
            spans[-1] = (stage, spans[-1][1], epoch)
        else:
            spans.append((stage, epoch, epoch))
    return spans


def plot_training_curves(metrics_csv: Path, path: Path) -> Path:
    """Loss, accuracy and (if recorded) learning rate per global epoch, stages marked."""
    data = _read_curves(metrics_csv)
    epochs = np.asarray(data["epoch"])
    lr = np.asarray(data["lr"])
    has_lr = bool(np.any(np.isfinite(lr) & (lr > 0)))
    spans = _stage_spans(data["stage"], list(epochs))

    n_panels = 3 if has_lr else 2
    fig, axes = plt.subplots(n_panels, 1, figsize=(7, 2.6 * n_panels), sharex=True)
    panels = [
        (axes[0], "loss", ("train_loss", "val_loss")),
        (axes[1], "accuracy", ("train_acc", "val_acc")),
    ]
    for ax, ylabel, cols in panels:
        for col in cols:
            y = np.asarray(data[col])
            if np.any(np.isfinite(y)):
                ax.plot(epochs, y, marker="o", markersize=3, label=col.replace("_", " "))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    if has_lr:
        ax_lr = axes[2]
        ok = np.isfinite(lr) & (lr > 0)
        ax_lr.plot(epochs[ok], lr[ok], marker="o", markersize=3, color="tab:green")
        ax_lr.set_yscale("log")
        ax_lr.set_ylabel("learning rate")
        ax_lr.grid(alpha=0.3, which="both")

    # Stage boundaries halfway between the last epoch of one stage and the first of the next.
    for prev, nxt in zip(spans[:-1], spans[1:], strict=True):
        x = (prev[2] + nxt[1]) / 2
        for ax in axes:
            ax.axvline(x, linestyle="--", color="black", linewidth=0.8, alpha=0.6)
    for name, first, last in spans:
        axes[0].annotate(
            name,
            xy=((first + last) / 2, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
            annotation_clip=False,
        )

    lo, hi = float(np.nanmin(epochs)), float(np.nanmax(epochs))
    pad = 0.5 if hi - lo < 2 else 0.02 * (hi - lo) + 0.25
    axes[-1].set_xlim(lo - pad, hi + pad)
    axes[-1].set_xlabel("epoch")
    if hi - lo < 10:
        axes[-1].set_xticks(sorted(set(epochs[np.isfinite(epochs)].tolist())))
    else:
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_title("Training curves", pad=16)
    fig.tight_layout()
    return _save(fig, path)
