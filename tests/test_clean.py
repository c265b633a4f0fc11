"""`clean`: quarantine of bad files, duplicate policies, outputs, determinism, CLI."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_subset, synthetic_brain
from PIL import Image
from typer.testing import CliRunner

from brainmri import CLASS_NAMES
from brainmri.cli import app
from brainmri.data.clean import CleanOptions, format_summary, run_clean
from brainmri.data.dedupe import stack_vectors, thumbnail_vector
from brainmri.data.folders import Sample, read_file_list, stratified_split
from brainmri.errors import BrainMRIError

SPLITS = ("Training", "Testing")


def distinct_brain(k: int, size: int = 128) -> np.ndarray:
    """Synthetic slices that are not near copies of each other (checked in the tests)."""
    rng = np.random.default_rng(1000 + k)
    off = (int(rng.integers(-20, 21)), int(rng.integers(-20, 21)))
    img = synthetic_brain(size, 0.18 + 0.03 * (k % 5), seed=k, offset=off)
    y, x = rng.integers(size // 4, 3 * size // 4, 2)
    img[y - 8 : y + 8, x - 8 : x + 8] = 255
    return img


def save(path: Path, arr: np.ndarray, quality: int = 95) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=quality)  # quality: JPEG only, PNG ignores it
    return path


def near_copy(src: Path, dst: Path) -> Path:
    """Re-encoded at JPEG quality 70 and resized: not byte-identical, the same picture."""
    with Image.open(src) as im:
        im.convert("L").resize((150, 150), Image.Resampling.BICUBIC).save(dst, quality=70)
    return dst


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def outputs(out: Path) -> dict[str, bytes]:
    """Every file clean wrote except the report (which holds timings)."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "clean_report.json"
    }


def strip_timing(report: dict) -> dict:
    r = json.loads(json.dumps(report))
    r.pop("timings")
    r["options"].pop("workers")
    return r


def check_counts_add_up(report: dict) -> None:
    c = report["counts"]
    for split in SPLITS:
        for name in (*CLASS_NAMES, "total"):
            assert (
                c["before"][split][name]
                == c["quarantined"][split][name]
                + c["dropped"][split][name]
                + c["after"][split][name]
            ), (split, name)
    assert sum(c["quarantined"][s]["total"] for s in SPLITS) == len(report["quarantined"])
    assert sum(c["dropped"][s]["total"] for s in SPLITS) == len(report["dropped"])


def check_written_images(out: Path, report: dict, size: int = 224) -> None:
    written = sorted(p for s in SPLITS for p in (out / s).rglob("*") if p.is_file())
    assert len(written) == sum(report["counts"]["after"][s]["total"] for s in SPLITS)
    for p in written:
        assert p.suffix == ".jpg"
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (size, size)


# ------------------------------------------------------------------ bad files


EXPECTED_BAD = {
    "Training/glioma/zero.jpg": "zero-byte",
    "Training/glioma/truncated.jpg": "truncated",
    "Training/glioma/text.jpg": "not-an-image",
    "Training/glioma/sixteen.png": "16-bit",
    "Training/glioma/cmyk.jpg": "cmyk",
    "Training/glioma/anim.gif": "animated",
    "Training/glioma/tiny.png": "tiny",
    "Training/glioma/huge.png": "over-pixel-limit",
    "Testing/meningioma/blank.png": "blank",
}


@pytest.fixture
def dataset_with_bad_files(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    k = 0
    for split in SPLITS:
        for cls in CLASS_NAMES:
            for j in range(2):
                save(root / split / cls / f"good_{j}.jpg", distinct_brain(k))
                k += 1
    g = root / "Training" / "glioma"
    (g / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(distinct_brain(50)).save(buf, "JPEG", quality=90)
    (g / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (g / "text.jpg").write_text("this is not an image\n")
    Image.fromarray(distinct_brain(51).astype(np.uint16) * 256).save(g / "sixteen.png")
    Image.fromarray(distinct_brain(52)).convert("CMYK").save(g / "cmyk.jpg")
    frames = [Image.fromarray(distinct_brain(60 + i, 64)) for i in range(3)]
    frames[0].save(g / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    save(g / "tiny.png", distinct_brain(53, 64)[:16, :16].copy() + 100)
    save(g / "huge.png", distinct_brain(54, 300))  # 90,000 px > max_pixels=50,000 below
    save(root / "Testing" / "meningioma" / "blank.png", np.zeros((100, 100), np.uint8))
    # readable, but no brain to crop: kept, full image, counted as a crop fallback
    dark = np.random.default_rng(7).integers(0, 12, (128, 128)).astype(np.uint8)
    save(root / "Training" / "notumor" / "dark.png", dark)
    return root


def test_bad_files_are_quarantined_and_the_batch_goes_on(dataset_with_bad_files, tmp_path):
    raw = dataset_with_bad_files
    with Image.open(raw / "Training/glioma/sixteen.png") as im:
        assert im.mode.startswith("I")  # the fixture really is 16-bit
    before = snapshot(raw)
    out = tmp_path / "out"
    opts = CleanOptions(max_pixels=50_000, workers=1, progress=False)
    report = run_clean(raw, out, opts)

    assert {q["path"]: q["reason"] for q in report["quarantined"]} == EXPECTED_BAD
    assert all(q["detail"] for q in report["quarantined"])
    assert report["dropped"] == []  # the good images are all distinct
    for rel in EXPECTED_BAD:  # a copy for inspection, never anything back into the input
        split, cls, name = rel.split("/")
        assert (out / "quarantine" / split / cls / name).read_bytes() == (raw / rel).read_bytes()
        assert not (out / split / cls / (Path(name).stem + ".jpg")).exists()
    for split in SPLITS:
        for cls in CLASS_NAMES:
            for j in range(2):
                assert (out / split / cls / f"good_{j}.jpg").is_file()
    assert (out / "Training/notumor/dark.jpg").is_file()
    assert report["crop"]["fallback_count"] == 1
    assert report["crop"]["fallbacks"][0]["path"] == "Training/notumor/dark.png"
    check_counts_add_up(report)
    check_written_images(out, report)
    assert report["counts"]["after"]["Training"]["total"] == 9
    assert report["counts"]["after"]["Testing"]["total"] == 8
    assert snapshot(raw) == before
    summary = format_summary(report)
    assert "quarantined" in summary and "zero-byte 1" in summary and "crop fallbacks" in summary


# ------------------------------------------------------------------ duplicate policies


@pytest.fixture(scope="module")
def dataset_with_copies(tmp_path_factory) -> Path:
    """Exact, near, cross-split and conflicting-label copies (see test_policy_keep_one)."""
    root = tmp_path_factory.mktemp("dups") / "raw"
    tr, te = root / "Training", root / "Testing"
    imgs = {
        name: distinct_brain(k)
        for k, name in enumerate(
            ["g0", "g1", "g2", "g3", "m0", "n0", "n1", "p0", "p1", "tg1", "tm0", "tp0"]
        )
    }
    assert (
        stack_vectors(thumbnail_vector(v) for v in imgs.values())
        @ stack_vectors(thumbnail_vector(v) for v in imgs.values()).T
        - np.eye(len(imgs))
    ).max() < 0.99
    for name in ("g0", "g1", "g2", "g3"):
        save(tr / "glioma" / f"{name}.jpg", imgs[name])
    shutil.copyfile(tr / "glioma/g0.jpg", tr / "glioma/g0_copy.jpg")
    near_copy(tr / "glioma/g1.jpg", tr / "glioma/g1_near.jpg")
    save(tr / "meningioma/m0.jpg", imgs["m0"])
    shutil.copyfile(tr / "glioma/g3.jpg", tr / "meningioma/m_conf.jpg")  # same file, other label
    save(tr / "notumor/n0.jpg", imgs["n0"])
    save(tr / "notumor/n1.jpg", imgs["n1"])
    save(tr / "pituitary/p0.jpg", imgs["p0"])
    save(tr / "pituitary/p1.jpg", imgs["p1"])
    (te / "glioma").mkdir(parents=True)
    shutil.copyfile(tr / "glioma/g2.jpg", te / "glioma/tg0.jpg")  # exact leak
    save(te / "glioma/tg1.jpg", imgs["tg1"])
    save(te / "meningioma/tm0.jpg", imgs["tm0"])
    near_copy(te / "meningioma/tm0.jpg", te / "meningioma/tm0_near.jpg")  # dup within Testing
    (te / "notumor").mkdir(parents=True)
    near_copy(tr / "notumor/n1.jpg", te / "notumor/tn0.jpg")  # near leak
    save(te / "pituitary/tp0.jpg", imgs["tp0"])
    return root


def run(raw: Path, out: Path, **kw) -> dict:
    # a few images only: half of them as validation (2 folds) so that the grouped split fits
    return run_clean(
        raw, out, CleanOptions(workers=1, progress=False, **({"val_fraction": 0.5} | kw))
    )


def test_policy_keep_one(dataset_with_copies, tmp_path):
    out = tmp_path / "out"
    report = run(dataset_with_copies, out, policy="keep-one")
    dropped = {d["path"]: (d["reason"], d["kind"]) for d in report["dropped"]}
    assert dropped == {
        "Training/glioma/g0_copy.jpg": ("duplicate", "exact"),
        "Training/glioma/g1_near.jpg": ("duplicate", "near"),
        "Training/glioma/g2.jpg": ("leak", "exact"),
        "Training/glioma/g3.jpg": ("conflicting-labels", "group"),
        "Training/meningioma/m_conf.jpg": ("conflicting-labels", "group"),
        "Training/notumor/n1.jpg": ("leak", "near"),
        "Testing/meningioma/tm0_near.jpg": ("duplicate", "near"),
    }
    for path in dropped:  # written in the pass, removed once the policy decided
        assert not (out / path).exists()
    assert [g["files"] for g in report["exact_groups"]] == [
        ["Training/glioma/g0.jpg", "Training/glioma/g0_copy.jpg"],
        ["Training/glioma/g2.jpg", "Testing/glioma/tg0.jpg"],
        ["Training/glioma/g3.jpg", "Training/meningioma/m_conf.jpg"],
    ]
    assert sorted(sorted(g["files"]) for g in report["near_groups"]) == [
        ["Testing/meningioma/tm0.jpg", "Testing/meningioma/tm0_near.jpg"],
        ["Testing/notumor/tn0.jpg", "Training/notumor/n1.jpg"],
        ["Training/glioma/g1.jpg", "Training/glioma/g1_near.jpg"],
    ]
    assert [(p["test"], p["train"], p["kind"]) for p in report["leak_pairs"]] == [
        ("Testing/glioma/tg0.jpg", "Training/glioma/g2.jpg", "exact"),
        ("Testing/notumor/tn0.jpg", "Training/notumor/n1.jpg", "near"),
    ]
    assert report["leak_pairs"][1]["correlation"] > 0.995
    assert [g["classes"] for g in report["conflicting_label_groups"]] == [["glioma", "meningioma"]]
    assert report["stats"]["exact_groups_cross_split"] == 1
    lf = read_file_list(out / "leak_free_test.txt", out, "Testing")
    assert [s.path.relative_to(out).as_posix() for s in lf] == [
        "Testing/glioma/tg1.jpg",
        "Testing/meningioma/tm0.jpg",
        "Testing/pituitary/tp0.jpg",
    ]
    assert report["leak_free_test"]["count"] == 3
    train = read_file_list(out / "splits/train.txt", out) + read_file_list(
        out / "splits/val.txt", out
    )
    assert sorted(s.path.name for s in train) == sorted(
        ["g0.jpg", "g1.jpg", "m0.jpg", "n0.jpg", "p0.jpg", "p1.jpg"]
    )
    check_counts_add_up(report)
    check_written_images(out, report)


def test_policy_drop_from_train_and_report(dataset_with_copies, tmp_path):
    rep = run(dataset_with_copies, tmp_path / "a", policy="drop-from-train")
    assert {d["path"]: d["reason"] for d in rep["dropped"]} == {
        "Training/glioma/g2.jpg": "leak",
        "Training/notumor/n1.jpg": "leak",
    }
    lf_names = [
        line.split("\t")[0] for line in (tmp_path / "a/leak_free_test.txt").read_text().splitlines()
    ]
    assert lf_names == [
        "Testing/glioma/tg1.jpg",
        "Testing/meningioma/tm0.jpg",
        "Testing/meningioma/tm0_near.jpg",
        "Testing/pituitary/tp0.jpg",
    ]
    rep = run(dataset_with_copies, tmp_path / "b", policy="report")
    assert rep["dropped"] == []
    # nothing dropped, so the split itself must keep copies together: every exact or near
    # group of Training lies on one side (a per-image split would separate some)
    side = {
        line.split("\t")[0]: name
        for name in ("train", "val")
        for line in (tmp_path / "b" / "splits" / f"{name}.txt").read_text().splitlines()
    }
    assert len(side) == 12 and rep["splits"]["near_threshold"] == 0.98
    for group in rep["exact_groups"] + rep["near_groups"]:
        train_files = [f for f in group["files"] if f.startswith("Training/")]
        assert len({side[f] for f in train_files}) <= 1, group["files"]
    assert json.loads((tmp_path / "b" / "splits" / "split.json").read_text())["folds"] == 2
    assert len(rep["leak_pairs"]) == 2 and len(rep["exact_groups"]) == 3
    assert rep["leak_free_test"]["count"] == 4
    check_counts_add_up(rep)
    check_written_images(tmp_path / "b", rep)


def test_invalid_options_and_paths(dataset_with_copies, tmp_path):
    with pytest.raises(BrainMRIError, match="policy"):
        CleanOptions(policy="keep-all")
    with pytest.raises(BrainMRIError):
        CleanOptions(workers=0)
    for fraction in (0.0, 0.7):  # train needs a validation split; at most half of Training
        with pytest.raises(BrainMRIError, match="val_fraction"):
            CleanOptions(val_fraction=fraction)
    raw = dataset_with_copies
    before = snapshot(raw)
    for bad_out in (raw, raw / "cleaned", raw / "Training" / "x"):
        with pytest.raises(BrainMRIError, match="inside"):
            run(raw, bad_out)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BrainMRIError, match="not empty"):
        run(raw, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    with pytest.raises(BrainMRIError, match="Training"):
        run(tmp_path / "empty", tmp_path / "o")
    with pytest.raises(BrainMRIError, match="not found"):
        run(tmp_path / "missing", tmp_path / "o")
    assert snapshot(raw) == before


# ------------------------------------------------------------------ split


def test_stratified_split_is_stratified_and_seeded():
    counts = (1321, 1339, 1591, 1457)
    samples = [
        Sample(Path(f"Training/{cls}/{i:04d}.jpg"), label, "Training")
        for label, cls in enumerate(CLASS_NAMES)
        for i in range(counts[label])
    ]
    train, val = stratified_split(samples, 0.15, seed=42)
    assert len(train) + len(val) == len(samples)
    assert not {s.path for s in train} & {s.path for s in val}
    for label, n in enumerate(counts):
        n_val = sum(1 for s in val if s.label == label)
        assert abs(n_val - 0.15 * n) <= 1, (CLASS_NAMES[label], n_val)
    again = stratified_split(list(reversed(samples)), 0.15, seed=42)[1]
    assert [s.path for s in again] == [s.path for s in val]  # same seed, same split
    other = stratified_split(samples, 0.15, seed=7)[1]
    assert {s.path for s in other} != {s.path for s in val}


# ------------------------------------------------------------------ real data


def test_clean_raw_subset_is_deterministic_and_leaves_input_alone(raw_dir, tmp_path):
    raw = copy_subset(raw_dir, tmp_path / "raw", 10, splits=("Training",))
    before = snapshot(raw)
    out = tmp_path / "out"
    r1 = run_clean(raw, out, CleanOptions(workers=2, progress=False))
    assert r1["counts"]["before"]["Training"]["total"] == 40
    assert r1["quarantined"] == []
    check_counts_add_up(r1)
    check_written_images(out, r1)
    assert r1["crop"]["fallback_count"] == 0
    sizes = {p.stem: Image.open(p).size for p in raw.rglob("*.jpg")}
    assert len(set(sizes.values())) > 1  # really raw: mixed sizes in, 224x224 out
    tr = (out / "splits/train.txt").read_text().splitlines()
    va = (out / "splits/val.txt").read_text().splitlines()
    assert len(tr) + len(va) == r1["counts"]["after"]["Training"]["total"]
    assert (out / "leak_free_test.txt").read_text() == ""  # no Testing split here
    first = outputs(out)
    (out / "Training/glioma/stale.jpg").write_bytes(b"left over")
    r2 = run_clean(raw, out, CleanOptions(workers=1, progress=False))  # same OUT, 1 worker
    assert outputs(out) == first  # byte-identical, stale file gone
    # replaced: the earlier outputs (less the marker, plus the report) and the stale file
    assert r2.pop("replaced_files") == len(first) + 1 and r1.pop("replaced_files") == 0
    assert strip_timing(r2) == strip_timing(r1)
    assert snapshot(raw) == before


def test_clean_benchmark_subset(small_benchmark, tmp_path):
    before = snapshot(small_benchmark)
    out = tmp_path / "out"
    report = run(small_benchmark, out)
    assert report["counts"]["before"]["Testing"]["total"] == 48
    check_counts_add_up(report)
    check_written_images(out, report)
    # file names (stems) line up with the input
    for split in SPLITS:
        for cls in CLASS_NAMES:
            ins = {p.stem for p in (small_benchmark / split / cls).iterdir()}
            outs = {p.stem for p in (out / split / cls).iterdir()}
            assert outs <= ins and len(outs) == report["counts"]["after"][split][cls]
    lf = read_file_list(out / "leak_free_test.txt", out, "Testing")
    assert len(lf) == report["leak_free_test"]["count"]
    assert all(s.path.is_file() for s in lf)
    saved = json.loads((out / "clean_report.json").read_text())
    assert saved["stats"] == report["stats"] and saved["input"] == str(small_benchmark.resolve())
    assert saved["timings"]["images_per_s"] > 0
    assert snapshot(small_benchmark) == before


def test_cli_clean(small_benchmark, tmp_path):
    out = tmp_path / "cli_out"
    result = CliRunner().invoke(app, ["clean", "--data", str(small_benchmark), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "leak-free test" in result.stdout and "Testing   total" in result.stdout
    report = json.loads((out / "clean_report.json").read_text())
    assert report["counts"]["before"]["Training"]["total"] == 48
    assert (out / "splits/train.txt").is_file() and (out / "leak_free_test.txt").is_file()
    assert "replaced" not in result.stdout and report["replaced_files"] == 0
    # A second run into the same folder rebuilds it and says how many files it replaced,
    # a file the user put inside the rebuilt folders included; other files stay.
    written = sum(1 for f in out.rglob("*") if f.is_file()) - 1  # less the marker
    (out / "Training" / "glioma" / "mine.jpg").write_bytes(b"x")
    (out / "notes.txt").write_text("kept")
    again = CliRunner().invoke(app, ["clean", "--data", str(small_benchmark), "--out", str(out)])
    assert again.exit_code == 0, again.output
    line = next(x for x in again.stdout.splitlines() if x.startswith("replaced "))
    assert line.split()[1:3] == [str(written + 1), "files"], line
    assert not (out / "Training" / "glioma" / "mine.jpg").exists()
    assert (out / "notes.txt").read_text() == "kept"


@pytest.mark.parametrize("bad", ["missing", "empty", "policy"])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, small_benchmark, bad):
    (tmp_path / "empty").mkdir()
    data = {"missing": tmp_path / "nope", "empty": tmp_path / "empty"}.get(bad, small_benchmark)
    args = ["clean", "--data", str(data), "--out", str(tmp_path / "o")]
    if bad == "policy":
        args += ["--policy", "nonsense"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
