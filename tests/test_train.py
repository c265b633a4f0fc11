"""End-to-end training on a small real subset: artifacts, falling loss, resume, and evaluate.

One smoke run (module-scoped fixture, ~30 s on 2 cores) is shared by the artifact, checkpoint
and evaluate tests. The resume tests run their own tiny runs.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from brainmri import CLASS_NAMES
from brainmri.config import load_recipe
from brainmri.errors import BrainMRIError
from brainmri.evaluate.run import RESULTS_NAME, evaluate
from brainmri.model.checkpoint import load_model
from brainmri.train import loop
from brainmri.train.loop import CSV_FIELDS, train

REPO = Path(__file__).resolve().parents[1]

IDENTITY_AUGMENT = [
    "augment.rotation_deg=0",
    "augment.shift=0",
    "augment.zoom=0",
    "augment.shear=0",
    "augment.hflip=false",
    "augment.brightness=[1, 1]",
]
# Stage 1 (frozen backbone, head only): 4 epochs at a fixed LR, no dropout, identity
# augmentation, so the training loss must fall. Stages 2 and 3 keep the smoke recipe (1 epoch).
SMOKE_OVERRIDES = [
    "train.stages.0.epochs=4",
    "train.stages.0.lr=0.003",
    "train.stages.0.min_lr=0.003",
    "model.dropout=0",
    "model.head_dropout=0",
    *IDENTITY_AUGMENT,
]
STAGES = ["frozen"] * 4 + ["top30", "full"]


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def tmp_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def trained_run(small_benchmark: Path, tmp_path_factory) -> tuple[Path, object, object]:
    recipe = load_recipe("smoke", SMOKE_OVERRIDES)
    run_dir = tmp_path_factory.mktemp("train") / "run"
    result = train(recipe, small_benchmark, run_dir, device="cpu")
    return run_dir, recipe, result


# --- artifacts --------------------------------------------------------------------------
def test_run_dir_holds_every_artifact(trained_run):
    run_dir, _, _ = trained_run
    for rel in [
        "recipe.yaml",
        "environment.json",
        "run.json",
        "splits/train.txt",
        "splits/val.txt",
        "metrics.csv",
        "models/stage1_best.safetensors",
        "models/stage2_best.safetensors",
        "models/stage3_best.safetensors",
        "models/best.safetensors",
        "models/final.safetensors",
        "models/class_labels.json",
        "training_curves.png",
        "last.pt",
    ]:
        path = run_dir / rel
        assert path.is_file() and path.stat().st_size > 0, rel
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run_dir / "models/class_labels.json").read_text()) == list(CLASS_NAMES)
    assert not tmp_files(run_dir)


def test_recipe_environment_and_splits_written(trained_run, small_benchmark):
    run_dir, recipe, _ = trained_run
    assert load_recipe(run_dir / "recipe.yaml") == recipe
    assert (
        yaml.safe_load((run_dir / "recipe.yaml").read_text())["train"]["stages"][0]["epochs"] == 4
    )
    env = json.loads((run_dir / "environment.json").read_text())
    for key in ("torch", "timm", "python", "device", "cpu_count"):
        assert key in env, key
    assert env["device"] == "cpu"
    info = json.loads((run_dir / "run.json").read_text())
    assert Path(info["data"]) == small_benchmark.resolve()
    train_lines = (run_dir / "splits/train.txt").read_text().splitlines()
    val_lines = (run_dir / "splits/val.txt").read_text().splitlines()
    # 12 Training images per class: val_fraction 0.25 -> 3 val, 9 train capped at max_per_class 8
    assert (info["n_train"], info["n_val"]) == (len(train_lines), len(val_lines)) == (32, 12)
    assert info["train_counts"] == [8, 8, 8, 8]
    assert not set(train_lines) & set(val_lines)
    for line in train_lines + val_lines:
        rel, cls = line.split("\t")
        assert (small_benchmark / rel).is_file()
        assert rel.startswith(f"Training/{cls}/")


def test_metrics_csv_one_row_per_epoch(trained_run):
    run_dir, _, result = trained_run
    header, rows = read_rows(run_dir / "metrics.csv")
    assert header == CSV_FIELDS
    assert len(rows) == len(STAGES) == result.epochs_run
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(STAGES) + 1))
    assert [r["stage"] for r in rows] == STAGES
    assert [int(r["stage_epoch"]) for r in rows] == [1, 2, 3, 4, 1, 1]
    assert [float(r["lr"]) for r in rows[:4]] == pytest.approx([0.003] * 4)  # fixed LR
    assert float(rows[4]["lr"]) == pytest.approx(1e-3)
    for r in rows:
        for key in ("train_loss", "val_loss"):
            assert 0 < float(r[key]) < 20
        for key in ("train_acc", "val_acc"):
            assert 0 <= float(r[key]) <= 1


def test_training_loss_falls(trained_run):
    run_dir, _, _ = trained_run
    _, rows = read_rows(run_dir / "metrics.csv")
    losses = [float(r["train_loss"]) for r in rows[:4]]
    assert losses[-1] < losses[0], losses
    assert float(rows[3]["train_acc"]) > float(rows[0]["train_acc"])


def test_tensorboard_has_a_point_per_epoch(trained_run):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run_dir, _, _ = trained_run
    acc = ea_mod.EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("loss/train")]
    assert steps == list(range(1, len(STAGES) + 1))
    assert {"loss/val", "acc/train", "acc/val", "lr"} <= set(acc.Tags()["scalars"])


def test_best_model_loads_with_temperature(trained_run):
    run_dir, recipe, result = trained_run
    assert result.best_path == run_dir / "models" / "best.safetensors"
    model, meta = load_model(result.best_path)
    assert not model.training
    assert meta["class_names"] == list(CLASS_NAMES)
    info = meta["info"]
    assert 0.05 <= info["temperature"] <= 5.0
    _, rows = read_rows(run_dir / "metrics.csv")
    # best = the lowest val_loss over all stages (monitor: val_loss)
    best_val = min(float(r["val_loss"]) for r in rows)
    assert info["val_loss"] == pytest.approx(best_val, abs=1e-4)
    assert result.best_val_loss == pytest.approx(best_val, abs=1e-4)
    assert meta["preprocessing"]["image_size"] == recipe.data.image_size == 64
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 4)


def test_final_model_and_last_state(trained_run):
    run_dir, _, result = trained_run
    _, meta = load_model(result.final_path)
    assert meta["info"]["epoch"] == len(STAGES)
    saved = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    assert saved["state"]["epoch"] == len(STAGES)
    assert set(saved["model"]) == set(load_model(result.final_path)[0].state_dict())


def test_training_into_an_existing_run_is_refused(trained_run, small_benchmark):
    run_dir, recipe, _ = trained_run
    with pytest.raises(BrainMRIError, match="--resume"):
        train(recipe, small_benchmark, run_dir, device="cpu")


def test_resume_needs_last_state(tmp_path):
    with pytest.raises(BrainMRIError, match="nothing to resume"):
        train(None, Path(), tmp_path / "empty", resume=True, device="cpu")
    with pytest.raises(BrainMRIError, match="recipe"):
        train(None, Path(), tmp_path / "empty", device="cpu")


# --- evaluate on the trained model ----------------------------------------------------------
def _check_confusion(block: dict, n: int) -> None:
    cm = block["confusion_matrix"]
    assert len(cm) == len(CLASS_NAMES) and all(len(row) == len(CLASS_NAMES) for row in cm)
    assert sum(map(sum, cm)) == n


def test_evaluate_writes_consistent_json_and_plots(trained_run, small_benchmark, tmp_path):
    _, _, result = trained_run
    out = tmp_path / "results"
    res = evaluate(result.best_path, small_benchmark, out, tta=2, batch_size=16, device="cpu")
    data = json.loads((out / RESULTS_NAME).read_text())
    n_test = 12 * len(CLASS_NAMES)
    assert data["n_test"] == n_test
    assert data["tta_views"] == ["original", "hflip"]
    assert data["headline"] == "tta"
    assert data["temperature"] == pytest.approx(
        load_model(result.best_path)[1]["info"]["temperature"]
    )
    assert 0 <= data["n_leak_free"] <= n_test
    for variant in ("plain", "tta"):
        _check_confusion(data[variant]["full"], n_test)
        if data["n_leak_free"]:
            _check_confusion(data[variant]["leak_free"], data["n_leak_free"])
        else:
            assert data[variant]["leak_free"] is None
        wrong = n_test - sum(data[variant]["full"]["confusion_matrix"][i][i] for i in range(4))
        assert len(data[variant]["errors"]) == wrong
    assert res["n_test"] == n_test
    for name in ("confusion_matrix.png", "roc_curves.png", "reliability.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name


def test_evaluate_plain_with_a_leak_free_list(trained_run, small_benchmark, tmp_path):
    _, _, result = trained_run
    test_files = sorted((small_benchmark / "Testing").glob("*/*"))[:10]
    listing = tmp_path / "leak_free_test.txt"
    listing.write_text(
        "".join(
            f"{p.relative_to(small_benchmark).as_posix()}\t{p.parent.name}\n" for p in test_files
        )
    )
    out = tmp_path / "plain"

    def plain_eval(leak_free_file: Path) -> None:
        evaluate(
            result.best_path,
            small_benchmark,
            out,
            tta=1,
            device="cpu",
            leak_free_file=leak_free_file,
            plots=False,
        )

    plain_eval(listing)
    data = json.loads((out / RESULTS_NAME).read_text())
    assert "tta" not in data and "tta_views" not in data
    assert data["headline"] == "plain"
    assert data["n_leak_free"] == 10
    assert data["leak_free_source"] == str(listing)
    _check_confusion(data["plain"]["full"], data["n_test"])
    _check_confusion(data["plain"]["leak_free"], 10)
    assert not (out / "confusion_matrix.png").exists()
    with pytest.raises(BrainMRIError, match="leak-free list not found"):
        plain_eval(tmp_path / "nope.txt")


# --- resume -------------------------------------------------------------------------------
def _wait_for_first_epoch(proc: subprocess.Popen, run_dir: Path, log: Path, timeout: float = 240):
    """Poll until metrics.csv has an epoch row and last.pt exists (epoch 1 fully saved)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        csv_path = run_dir / "metrics.csv"
        if csv_path.is_file() and (run_dir / "last.pt").is_file() and read_rows(csv_path)[1]:
            return
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no epoch finished in {timeout} s:\n{log.read_text()[-3000:]}")


def test_resume_after_sigkill(small_benchmark, tmp_path):
    from typer.testing import CliRunner

    from brainmri.cli import app

    run_dir = tmp_path / "run"
    log = tmp_path / "train.log"
    # smoke: frozen 2 epochs, top30 1, full 1 = 4 epochs; killed during epoch 2 (mid-stage)
    cmd = [
        sys.executable,
        "-m",
        "brainmri",
        "train",
        "--config",
        "smoke",
        "--data",
        str(small_benchmark),
        "--out",
        str(run_dir),
        "--device",
        "cpu",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        _wait_for_first_epoch(proc, run_dir, log)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    _, rows = read_rows(run_dir / "metrics.csv")
    saved = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    assert saved["state"]["epoch"] == len(rows) >= 1  # last.pt agrees with the CSV

    res = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    header, rows = read_rows(run_dir / "metrics.csv")
    assert header == CSV_FIELDS
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [r["stage"] for r in rows] == ["frozen", "frozen", "top30", "full"]
    assert [int(r["stage_epoch"]) for r in rows] == [1, 2, 1, 1]
    saved = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    assert saved["state"]["epoch"] == 4
    for name in ("best", "final", "stage1_best", "stage2_best", "stage3_best"):
        load_model(run_dir / "models" / f"{name}.safetensors")
    assert "temperature" in load_model(run_dir / "models/best.safetensors")[1]["info"]
    assert (run_dir / "training_curves.png").is_file()
    assert not tmp_files(run_dir), tmp_files(run_dir)


class _Killed(BaseException):
    """Stands in for SIGKILL inside the process (not an Exception: nothing may catch it)."""


def test_resume_after_kill_between_csv_row_and_checkpoint(small_benchmark, tmp_path, monkeypatch):
    """A kill after an epoch's CSV row is appended but before last.pt is replaced.

    On resume that epoch runs again; its row must not appear twice in metrics.csv.
    """
    recipe = load_recipe(
        "smoke",
        [
            "train.stages=[{name: only, trainable_fraction: 0.0, epochs: 3, lr: 0.003}]",
            "train.max_steps_per_epoch=1",
            "model.weights=none",
        ],
    )
    run_dir = tmp_path / "run"
    real_write = loop.atomic_write
    calls = {"last": 0}

    def dying_write(path, write):
        if Path(path).name == "last.pt":
            calls["last"] += 1
            if calls["last"] == 2:  # epoch 2: row written, checkpoint not yet
                raise _Killed
        real_write(path, write)

    with monkeypatch.context() as m:
        m.setattr(loop, "atomic_write", dying_write)
        with pytest.raises(_Killed):
            train(recipe, small_benchmark, run_dir, device="cpu")
    assert len(read_rows(run_dir / "metrics.csv")[1]) == 2
    train(None, Path(), run_dir, resume=True, device="cpu")
    _, rows = read_rows(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


# --- frozen-stage feature caching -----------------------------------------------------------
def test_cached_frozen_features_train_the_same_head(small_benchmark, tmp_path):
    """With identity augmentation and no dropout, a frozen stage trained on cached features
    follows the same trajectory as one that runs the backbone every step."""
    base = [
        "train.stages.0.epochs=3",
        "train.stages.1.epochs=0",
        "train.stages.2.epochs=0",
        "model.dropout=0",
        "model.head_dropout=0",
        *IDENTITY_AUGMENT,
    ]
    rows = {}
    for cached in (False, True):
        recipe = load_recipe("smoke", [*base, f"train.cache_frozen_features={cached}"])
        train(recipe, small_benchmark, tmp_path / str(cached), device="cpu")
        rows[cached] = read_rows(tmp_path / str(cached) / "metrics.csv")[1]
    assert len(rows[True]) == len(rows[False]) == 3
    for a, b in zip(rows[False], rows[True], strict=True):
        for key in ("train_loss", "val_loss", "val_acc"):
            assert float(b[key]) == pytest.approx(float(a[key]), abs=2e-3), key
