"""`brainmri predict` with the shipped model on real test images: records, errors, JSON/CSV."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brainmri import CLASS_NAMES, Classifier
from brainmri.cli import app
from brainmri.errors import BrainMRIError
from brainmri.infer.onnx_cache import cached_path
from brainmri.infer.predict import RecordWriter, check_outputs, expand_inputs


def _test_images(root: Path, per_class: int) -> list[Path]:
    return [p for c in CLASS_NAMES for p in sorted((root / "Testing" / c).iterdir())[:per_class]]


@pytest.fixture
def folder(small_benchmark: Path, tmp_path: Path) -> Path:
    """Two good images per class, an unreadable .jpg, a broken link and a text file."""
    folder = tmp_path / "in"
    folder.mkdir()
    for p in _test_images(small_benchmark, 2):
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    return folder


def test_predict_streams_records_to_json_and_csv(folder: Path, tmp_path: Path, onnx_cache):
    missing = tmp_path / "missing.png"
    out_json, out_csv = tmp_path / "pred.json", tmp_path / "pred.csv"
    args = ["predict", str(folder), str(missing), "--json", str(out_json), "--csv", str(out_csv)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1  # some files were not ok
    assert "broken.jpg" in result.output and "no such file" in result.output
    assert "broken symbolic link" in result.output
    records = json.loads(out_json.read_text())
    assert len(records) == 8 + 3
    ok = [r for r in records if r["status"] == "ok"]
    summary = f"11 files: {len(ok)} ok, {8 - len(ok)} rejected, 3 error; records in {out_json}"
    assert summary in result.output
    assert len(ok) >= 7  # the input guard may refuse one benchmark image (it accepts ~99 %)
    for r in ok:  # file names start with the true class
        assert r["label"] == Path(r["path"]).name.split("_")[0]
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["probability"] == max(r["probabilities"].values())
    for r in records:
        assert r["runtime"] == "onnx" and r["tta"] == 1 and r["crop"] == "auto"
        assert len(r["model_sha256"]) == 64
    bad = [r for r in records if r["status"] != "ok"]
    assert all(r["reason"] and r["label"] is None for r in bad)
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["path"] for r in rows] == [r["path"] for r in records]
    assert [r["label"] or None for r in rows] == [r["label"] for r in records]
    assert [r["status"] for r in rows] == [r["status"] for r in records]


def test_predict_refuses_to_overwrite_outputs(folder: Path, tmp_path: Path, onnx_cache):
    out = tmp_path / "pred.csv"
    out.write_text("keep me")
    result = CliRunner().invoke(app, ["predict", str(folder), "--csv", str(out)])
    assert result.exit_code == 2 and "--force" in result.output
    assert out.read_text() == "keep me"
    good = next(folder.glob("glioma_*"))
    args = ["predict", str(good), "--csv", str(out), "--force", "--runtime", "torch", "--tta", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    row = next(csv.DictReader(out.open()))
    assert (row["label"], row["runtime"], row["tta"]) == ("glioma", "torch", "2")


def test_min_confidence_rejects_exactly_the_uncertain(folder: Path, tmp_path: Path, onnx_cache):
    plain, marked = tmp_path / "plain.json", tmp_path / "marked.json"
    CliRunner().invoke(app, ["predict", str(folder), "--json", str(plain)])
    before = {r["path"]: r for r in json.loads(plain.read_text())}
    probs = sorted(r["probability"] for r in before.values() if r["status"] == "ok")
    cut = (probs[len(probs) // 2 - 1] + probs[len(probs) // 2]) / 2  # about half fall under it
    args = ["predict", str(folder), "--json", str(marked), "--min-confidence", str(cut)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    after = json.loads(marked.read_text())
    assert all(r["min_confidence"] == pytest.approx(cut) for r in after)
    uncertain = {r["path"] for r in after if (r["reason"] or "").startswith("uncertain")}
    want = {p for p, r in before.items() if r["status"] == "ok" and r["probability"] < cut}
    assert uncertain == want and 0 < len(want) < len(probs)
    for r in after:
        if r["path"] in uncertain:  # refused, but what the model said is kept
            was = before[r["path"]]
            assert r["status"] == "rejected" and r["label"] is None
            assert r["probabilities"] == was["probabilities"]
            assert r["reason"].startswith("uncertain (top probability ")
            assert r["reason"].endswith(f"< {cut:g}, for {was['label']})")
        else:  # everything else exactly as without the option
            assert (r["status"], r["label"]) == (
                before[r["path"]]["status"],
                before[r["path"]]["label"],
            )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--runtime", "tensorflow"],
            "--runtime must be one of auto, onnx, torch, got 'tensorflow'",
        ),
        (["--device", "tpu"], "unknown device"),
        (["--crop", "maybe"], "--crop must be one of auto, on, off, got 'maybe'"),
        (["--min-confidence", "1.5"], "--min-confidence must be between 0 and 1"),
    ],
)
def test_bad_choices_are_one_line_errors(folder: Path, args: list[str], message: str):
    result = CliRunner().invoke(app, ["predict", str(folder), *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_cuda_without_a_gpu_is_one_line(folder: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = CliRunner().invoke(app, ["predict", str(folder), "--device", "cuda"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: device 'cuda': no CUDA GPU is available here (use cpu)"


def test_predict_rejects_inputs_with_no_images(tmp_path: Path):
    result = CliRunner().invoke(app, ["predict", str(tmp_path)])
    assert result.exit_code == 2
    assert "no image files" in result.output


def test_expand_inputs_walks_folders_in_order(tmp_path: Path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.png", "b/1.JPG", "a.jpeg", "c.dcm", "skip.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d.png").symlink_to(tmp_path / "missing.png")
    got = [p.relative_to(tmp_path).as_posix() for p in expand_inputs([tmp_path])]
    assert got == ["a.jpeg", "b/1.JPG", "b/2.png", "c.dcm", "d.png"]


def _one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(app, ["predict", *args])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_output_problems_are_one_line_before_any_work(tmp_path: Path, monkeypatch):
    """Every --json/--csv problem is reported before the model is loaded (an empty input
    folder would otherwise say "no image files"), as one line."""
    monkeypatch.setattr(
        "brainmri.infer.core.Classifier.__init__", lambda *a, **k: pytest.fail("model loaded")
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = {
        "/proc/brainmri-test.csv": "cannot write /proc/brainmri-test.csv",
        str(tmp_path / "a_file" / "out.csv"): "a_file is not a folder",
        str(empty): "is a folder, not a file",
    }
    for out, message in cases.items():
        if out.startswith("/proc") and not Path("/proc").is_dir():
            continue
        assert message in _one_line_error([str(empty), "--csv", out])
        assert message in _one_line_error([str(empty), "--csv", out, "--force"])
    same = str(tmp_path / "same")
    assert "same file" in _one_line_error([str(empty), "--json", same, "--csv", same])


def test_an_output_that_is_an_input_is_refused_even_with_force(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(
        "brainmri.infer.core.Classifier.__init__", lambda *a, **k: pytest.fail("model loaded")
    )
    scans = tmp_path / "scans"
    scans.mkdir()
    scan = scans / "a.jpg"
    scan.write_bytes(b"the input's bytes")
    for args in (["--csv", str(scan)], ["--json", str(scan), "--force"]):
        assert "is one of the inputs" in _one_line_error([str(scans), *args])
    assert scan.read_bytes() == b"the input's bytes"


def test_a_folder_is_named_as_a_folder_first(tmp_path: Path):
    with pytest.raises(BrainMRIError, match="is a folder, not a file"):
        check_outputs([None, tmp_path], force=False)  # not "exists; use --force"


def test_checking_outputs_leaves_no_trace(tmp_path: Path):
    new, nested = tmp_path / "new.json", tmp_path / "a" / "b" / "out.csv"
    old = tmp_path / "old.csv"
    old.write_text("keep me")
    check_outputs([new, nested], force=False)
    check_outputs([old], force=True)
    assert not new.exists() and not (tmp_path / "a").exists()
    assert old.read_text() == "keep me"


def test_record_writer_open_failure_is_a_user_error(tmp_path: Path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(BrainMRIError, match="cannot write"):
        RecordWriter(tmp_path / "ok.json", tmp_path / "a_file" / "x.csv", list(CLASS_NAMES))


@pytest.mark.parametrize("tta", ["0", "6", "-1"])
def test_cli_tta_out_of_range_is_a_usage_error(folder: Path, tta: str):
    result = CliRunner().invoke(app, ["predict", str(folder), "--tta", tta])
    assert result.exit_code == 2 and "--tta" in result.output


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch, onnx_cache) -> list[Path]:
    """An empty $BRAINMRI_CACHE whose export is a copy of the session's (the export itself is
    test_export's): returns the list of exports made."""
    src = cached_path(Classifier(runtime="onnx").sha256)  # made once per session
    made: list[Path] = []

    def copy_export(model_path: Path, sha: str | None = None) -> Path:
        dst = cached_path(sha or "")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        made.append(dst)
        return dst

    monkeypatch.setenv("BRAINMRI_CACHE", str(tmp_path / "fresh-cache"))
    monkeypatch.setattr("brainmri.infer.export.cached_export", copy_export)
    return made


def test_first_predict_says_it_exports_once(folder: Path, fresh_cache: list[Path]):
    good = str(next(folder.glob("glioma_*")))
    first = CliRunner().invoke(app, ["predict", good])
    assert first.exit_code == 0, first.output
    assert first.stderr.count("exporting the model to ONNX once (cached in ") == 1
    assert str(fresh_cache[0].parent) in first.stderr and "glioma" in first.stdout
    again = CliRunner().invoke(app, ["predict", good])
    assert again.exit_code == 0 and "exporting" not in again.output
    assert len(fresh_cache) == 1


def test_classifier_export_notice_goes_to_callback_or_log(fresh_cache: list[Path], caplog):
    said: list[str] = []
    with caplog.at_level(logging.INFO, logger="brainmri.infer"):
        Classifier(runtime="onnx", notice=said.append)
        assert len(said) == 1 and said[0].startswith("exporting the model to ONNX once")
        assert not caplog.records  # the callback, not the log
        fresh_cache[0].unlink()
        Classifier(runtime="onnx")
        assert [r.getMessage() for r in caplog.records] == said
        Classifier(runtime="onnx", notice=said.append)  # cached now: nothing said
    assert len(said) == 1 and len(fresh_cache) == 2
