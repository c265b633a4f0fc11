"""Each plot writes a real, non-trivial PNG."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainmri import CLASS_NAMES
from brainmri.errors import BrainMRIError
from brainmri.evaluate.metrics import compute_metrics
from brainmri.evaluate.plots import (
    plot_confusion_matrix,
    plot_error_gallery,
    plot_reliability,
    plot_roc_curves,
    plot_training_curves,
)
from brainmri.train.loop import CSV_FIELDS

HEADER = CSV_FIELDS  # the header train/loop.py writes


def _assert_png(path: Path, min_side: int = 200) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
    with Image.open(path) as img:
        w, h = img.size
        assert w >= min_side and h >= min_side
        assert len(np.unique(np.asarray(img.convert("L")))) > 2  # something was drawn


@pytest.fixture
def preds():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    logits = rng.normal(size=(40, 4)) + 2.0 * np.eye(4)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, labels


def test_confusion_matrix_png(tmp_path, preds):
    probs, labels = preds
    cm = compute_metrics(probs, labels, CLASS_NAMES)["confusion_matrix"]
    out = plot_confusion_matrix(cm, CLASS_NAMES, tmp_path / "sub" / "cm.png")
    assert out == tmp_path / "sub" / "cm.png"
    _assert_png(out)
    # A class with no true samples (zero row) and a numpy input also work.
    cm2 = np.array([[3, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 1, 4]])
    _assert_png(plot_confusion_matrix(cm2, CLASS_NAMES, tmp_path / "cm2.png", title="t"))
    with pytest.raises(ValueError):
        plot_confusion_matrix(cm2[:3, :3], CLASS_NAMES, tmp_path / "bad.png")


def test_confusion_matrix_rows_of_present_classes_only(tmp_path):
    cm = np.array([[5, 1, 0, 1], [0, 4, 0, 0], [0, 0, 6, 0], [0, 0, 0, 0]])
    out = plot_confusion_matrix(cm, CLASS_NAMES, tmp_path / "cm3.png", rows=[0, 1, 2])
    _assert_png(out)
    with Image.open(out) as img:  # three rows drawn: wider than tall
        assert img.size[0] > img.size[1]


def test_roc_png(tmp_path, preds):
    probs, labels = preds
    _assert_png(plot_roc_curves(probs, labels, CLASS_NAMES, tmp_path / "roc.png"))
    # A class absent from the labels gets no curve.
    keep = labels != 3
    _assert_png(plot_roc_curves(probs[keep], labels[keep], CLASS_NAMES, tmp_path / "roc2.png"))


def test_roc_near_perfect_has_a_log_fpr_panel(tmp_path):
    import matplotlib.pyplot as plt

    labels = np.repeat(np.arange(4), 50)
    probs = np.full((200, 4), 0.01)
    probs[np.arange(200), labels] = 0.97
    probs[0] = [0.4, 0.5, 0.05, 0.05]  # one error: AUC just below 1
    saved = {}
    original = plt.close

    def keep(fig=None):
        saved["fig"] = fig
        return original(fig)

    plt.close = keep
    try:
        _assert_png(plot_roc_curves(probs, labels, CLASS_NAMES, tmp_path / "roc3.png"))
    finally:
        plt.close = original
    axes = saved["fig"].axes
    assert len(axes) == 2
    assert axes[0].get_xscale() == "linear" and axes[1].get_xscale() == "log"
    lo, hi = axes[1].get_xlim()
    assert 0 < lo < 1 / 150 and hi == pytest.approx(1.0)


def test_error_gallery_pages_and_empty(tmp_path, monkeypatch):
    import brainmri.evaluate.plots as plots

    monkeypatch.setattr(plots, "GALLERY_PAGE", 6)
    rng = np.random.default_rng(0)
    n = plots.GALLERY_PAGE + 3
    images = (rng.random((n, 32, 32)) * 255).astype(np.uint8)
    conf = rng.random(n)
    paths = plot_error_gallery(
        images, ["glioma"] * n, ["meningioma"] * n, conf, [f"f{i}.jpg" for i in range(n)],
        tmp_path / "mis.png", leak_free=[i % 2 == 0 for i in range(n)],
    )  # fmt: skip
    assert [p.name for p in paths] == ["mis.png", "mis_2.png"]
    for p in paths:
        _assert_png(p)
    empty = plot_error_gallery(images[:0], [], [], [], [], tmp_path / "none.png")
    assert [p.name for p in empty] == ["none.png"]
    _assert_png(empty[0], min_side=100)


def test_reliability_png(tmp_path, preds):
    probs, labels = preds
    _assert_png(plot_reliability(probs, labels, tmp_path / "rel.png", n_bins=10))


def _write_csv(path: Path, rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    return path


def test_training_curves_two_stages(tmp_path):
    rows = []
    for epoch in range(1, 7):
        stage, stage_epoch = ("head", epoch) if epoch <= 2 else ("finetune", epoch - 2)
        lr = 1e-3 if stage == "head" else 3e-4 * 0.7 ** (stage_epoch - 1)
        rows.append(
            [
                stage,
                epoch,
                stage_epoch,
                lr,
                1.2 / epoch,
                0.5 + 0.07 * epoch,
                1.1 / epoch,
                0.55 + 0.06 * epoch,
                12.5,
                80.0,
            ]
        )
    csv_path = _write_csv(tmp_path / "metrics.csv", rows)
    _assert_png(plot_training_curves(csv_path, tmp_path / "curves.png"))


def test_training_curves_single_epoch_single_stage(tmp_path):
    csv_path = _write_csv(
        tmp_path / "m.csv", [["train", 1, 1, 0.001, 0.9, 0.6, 0.8, 0.65, 3.0, 100.0]]
    )
    _assert_png(plot_training_curves(csv_path, tmp_path / "one.png"))


def test_training_curves_without_lr_or_val(tmp_path):
    rows = [["train", e, e, "", 1.0 / e, 0.5, "", "", 1.0, 10.0] for e in (1, 2, 3)]
    csv_path = _write_csv(tmp_path / "m.csv", rows)
    _assert_png(plot_training_curves(csv_path, tmp_path / "nolr.png"))


def test_training_curves_bad_csv(tmp_path):
    with pytest.raises(BrainMRIError):
        plot_training_curves(tmp_path / "missing.csv", tmp_path / "x.png")
    empty = _write_csv(tmp_path / "empty.csv", [])
    with pytest.raises(BrainMRIError, match="no epochs"):
        plot_training_curves(empty, tmp_path / "x.png")
