"""The batch-level site check: a batch as a whole against the model's reference median."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brainmri.cli import app
from brainmri.infer.site_check import (
    MIN_IMAGES,
    SHIFT_SHARE,
    binomial_tail,
    reference_median,
    shift_message,
    site_shift,
)
from brainmri.model.checkpoint import read_metadata, shipped_model_path


def test_binomial_tail_is_the_sign_test():
    assert binomial_tail(0, 10) == pytest.approx(1.0)
    assert binomial_tail(10, 10) == pytest.approx(1 / 1024)
    assert binomial_tail(8, 10) == pytest.approx((45 + 10 + 1) / 1024)


def test_too_few_scores_or_no_reference_are_not_judged():
    assert site_shift([2.0] * (MIN_IMAGES - 1), 1.0) is None
    assert site_shift([2.0] * 50, None) is None
    assert site_shift([None, float("nan")] * 30, 1.0) is None  # unscored files do not count


def test_a_batch_like_the_reference_is_quiet_and_a_shifted_one_warns():
    even = site_shift([0.5, 1.5] * 50, 1.0)
    assert even["share"] == 0.5 and not even["shifted"]
    high = site_shift([1.2] * 25, 1.0)
    assert high["share"] == 1.0 and high["p_value"] < 1e-6 and high["shifted"]
    assert "25 images" in shift_message(high)


def test_a_slight_shift_in_a_large_batch_is_not_a_warning():
    """Significant (p tiny) but under SHIFT_SHARE: the effect size keeps it quiet."""
    n_above = int(2000 * (SHIFT_SHARE - 0.1))
    res = site_shift([2.0] * n_above + [0.0] * (2000 - n_above), 1.0)
    assert res["p_value"] < 1e-10 and not res["shifted"]


def test_the_shipped_model_carries_its_reference_median():
    meta = read_metadata(shipped_model_path())
    median = reference_median(meta)
    assert median is not None and 0.0 < median < meta["guard"]["ood_threshold"]


def _predict(folder: Path, tmp_path: Path):
    return CliRunner().invoke(app, ["predict", str(folder), "--runtime", "torch"])


def test_predict_warns_on_another_collection_and_not_on_the_benchmark(
    benchmark_dir: Path, external_dir: Path, tmp_path: Path
):
    bench = tmp_path / "bench"
    bench.mkdir()
    for cls in ("glioma", "meningioma", "notumor", "pituitary"):
        for f in sorted((benchmark_dir / "Training" / cls).iterdir())[100:130:5]:
            shutil.copy(f, bench / f"{cls}_{f.name}")
    other = tmp_path / "other"
    other.mkdir()
    for cls in ("glioma", "meningioma", "notumor"):
        for f in sorted((external_dir / cls).iterdir())[::40][:8]:
            shutil.copy(f, other / f"{cls}_{f.name}")
    quiet = _predict(bench, tmp_path)
    assert quiet.exit_code in (0, 1), quiet.output
    assert "do not look like" not in quiet.output
    loud = _predict(other, tmp_path)
    assert loud.exit_code in (0, 1), loud.output
    assert "warning: these" in loud.output and "do not look like" in loud.output, loud.output[-600:]


def test_predict_warns_on_a_brain_volume_from_a_package(tmp_path: Path):
    """nibabel's example EPI volume: every slice passes the guard, the batch of 24 is flagged
    (docs/RESULTS.md section 16.19). Needs no dataset."""
    from PIL import Image
    from test_guard import _bench

    figure = _bench("readme_figure")
    for i in range(24):
        Image.fromarray(figure.epi_slice(i)).save(tmp_path / f"slice_{i:02d}.png")
    result = _predict(tmp_path, tmp_path)
    assert result.exit_code == 0, result.output[-600:]  # all 24 accepted
    assert "warning: these 24 images" in result.output, result.output[-600:]


def test_the_classifier_api_judges_its_own_records(benchmark_dir: Path):
    from brainmri.infer.core import Classifier

    files = [f for cls in ("glioma", "notumor") for f in
             sorted((benchmark_dir / "Training" / cls).iterdir())[200:212]]  # fmt: skip
    clf = Classifier(runtime="torch")
    records = clf.predict(files)
    scores = [r["ood_score"] for r in records]
    res = clf.site_check(scores)
    assert res is not None and res["n"] == sum(s is not None for s in scores)
    assert not res["shifted"]
    assert clf.site_check(scores[:5]) is None  # too few to judge


def test_evaluate_reports_the_guard_and_the_site_check(external_dir: Path, tmp_path: Path):
    """`evaluate` on a folder of another collection: the site check runs on predict's path and
    says SHIFTED; --no-site-check leaves it out."""
    import json

    from brainmri.evaluate.run import RESULTS_NAME

    data = tmp_path / "site"
    for cls in ("glioma", "meningioma", "notumor"):
        (data / cls).mkdir(parents=True)
        for f in sorted((external_dir / cls).iterdir())[3::25][:8]:
            shutil.copy(f, data / cls / f.name)
    n = sum(1 for _ in data.glob("*/*"))
    common = ["evaluate", "--data", str(data), "--tta", "1", "--no-gallery", "--device", "cpu"]
    out = tmp_path / "out"
    res = CliRunner().invoke(app, [*common, "--out", str(out)])
    assert res.exit_code == 0, res.output[-800:]
    site = json.loads((out / RESULTS_NAME).read_text())["site_check"]
    g = site["guard"]
    assert g["ok"] + g["rejected"] + g["error"] == n and site["scored"] >= MIN_IMAGES
    assert site["judged"] and site["shifted"] and site["share"] >= SHIFT_SHARE
    assert "site check:" in res.output and "SHIFTED" in res.output
    off = tmp_path / "off"
    res = CliRunner().invoke(app, [*common, "--out", str(off), "--no-site-check"])
    assert res.exit_code == 0, res.output[-800:]
    assert json.loads((off / RESULTS_NAME).read_text())["site_check"] is None
    assert "site check:" not in res.output


def test_a_failing_site_check_does_not_lose_the_evaluation(monkeypatch, tmp_path: Path):
    """The extra pass runs after the metrics: if it fails, evaluate reports why and goes on."""
    import brainmri.infer.core as core
    from brainmri.errors import BrainMRIError
    from brainmri.evaluate.site import site_lines, site_report

    def broken(*args, **kwargs):
        raise BrainMRIError("cache folder not writable")

    monkeypatch.setattr(core, "Classifier", broken)
    res = site_report(shipped_model_path(), [tmp_path / "x.jpg"] * 30)
    assert res["error"] == "BrainMRIError: cache folder not writable"
    assert site_lines(res) == ["site check: not run (BrainMRIError: cache folder not writable)"]
