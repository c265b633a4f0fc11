"""`brainmri predict` with the shipped model on real test images: labels, errors, JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from brainmri import CLASS_NAMES
from brainmri.cli import app
from brainmri.data.cache import decode_images
from brainmri.infer.core import load_for_inference
from brainmri.infer.predict import expand_inputs, predict_files, prepare
from brainmri.model.checkpoint import shipped_model_path


@pytest.fixture(scope="module")
def shipped():
    return load_for_inference(shipped_model_path(), "cpu")


def _test_images(root: Path, per_class: int) -> list[tuple[Path, str]]:
    return [
        (p, c) for c in CLASS_NAMES for p in sorted((root / "Testing" / c).iterdir())[:per_class]
    ]


def test_predict_classifies_real_test_images(small_benchmark: Path, shipped):
    items = _test_images(small_benchmark, 12)
    results = predict_files(shipped, [p for p, _ in items], tta=1)
    correct = sum(r.label == c for r, (_, c) in zip(results, items, strict=True))
    assert correct >= 45  # of 48; the shipped model scores > 99 % on the full split
    for r in results:
        assert r.error is None
        assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        assert r.probability == max(r.probabilities.values())


def test_predict_matches_the_evaluation_path(small_benchmark: Path, shipped):
    paths = [p for p, _ in _test_images(small_benchmark, 3)]
    results = predict_files(shipped, paths, tta=2)
    want = shipped.probs(decode_images(paths, shipped.image_size, workers=1), tta=2)
    got = torch.tensor([[r.probabilities[c] for c in CLASS_NAMES] for r in results])
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)


def test_predict_command_reports_bad_files_and_goes_on(small_benchmark: Path, tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = [p for p, _ in _test_images(small_benchmark, 1)]
    for p in good:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    missing = tmp_path / "missing.png"
    out = tmp_path / "pred.json"
    result = CliRunner().invoke(
        app, ["predict", str(folder), str(missing), "--tta", "1", "--json", str(out)]
    )
    assert result.exit_code == 1
    assert "broken.jpg" in result.output and "no such file" in result.output
    records = json.loads(out.read_text())
    assert len(records) == len(good) + 2
    ok = [r for r in records if r["error"] is None]
    assert len(ok) == len(good)
    assert {Path(r["path"]).name for r in ok} == {p.name for p in good}
    assert all(r["label"] in CLASS_NAMES for r in ok)


def test_predict_rejects_inputs_with_no_images(tmp_path: Path):
    result = CliRunner().invoke(app, ["predict", str(tmp_path)])
    assert result.exit_code == 1
    assert "no image files" in result.output


def test_crop_option_crops_a_framed_scan(small_benchmark: Path, tmp_path: Path, shipped):
    from PIL import Image

    src = _test_images(small_benchmark, 1)[0][0]
    framed = Image.new("L", (448, 448))
    framed.paste(Image.open(src).convert("L"), (112, 112))
    path = tmp_path / "framed.png"
    framed.save(path)
    plain = prepare(path, 64)
    cropped = prepare(path, 64, crop=True)
    assert plain[:8].max() == 0  # the black frame survives without cropping
    assert cropped.mean() > plain.mean() * 2  # the brain fills the cropped input
    assert predict_files(shipped, [path], crop=True)[0].error is None


def test_expand_inputs_walks_folders_in_order(tmp_path: Path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.png", "b/1.JPG", "a.jpeg", "skip.txt"):
        (tmp_path / name).write_bytes(b"")
    got = [p.relative_to(tmp_path).as_posix() for p in expand_inputs([tmp_path])]
    assert got == ["a.jpeg", "b/1.JPG", "b/2.png"]
