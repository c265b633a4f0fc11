"""End-to-end training on a small real subset: artifacts, falling loss, exact resume, refusals.

One smoke run (module fixture) is shared by the artifact and checkpoint tests. The resume test
trains the same tiny recipe twice, once interrupted mid-stage and resumed, and compares the
weights bit for bit.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from brainmri import CLASS_NAMES
from brainmri.cli import app
from brainmri.config import load_recipe
from brainmri.errors import BrainMRIError
from brainmri.model.checkpoint import load_model, preprocessing_of, read_metadata
from brainmri.train import loop, state
from brainmri.train.loop import CSV_FIELDS, train

IDENTITY_AUGMENT = [
    "augment.rotation_deg=0",
    "augment.shift=0",
    "augment.zoom=0",
    "augment.shear=0",
    "augment.hflip=false",
    "augment.brightness=[1, 1]",
]
# Stage 1 (frozen backbone, head only): 4 epochs at a fixed LR (min_lr = lr), no dropout,
# identity augmentation, so the training loss must fall. Stages 2 and 3: the smoke recipe's.
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
        "recipe.yaml", "environment.json", "run.json", "splits/train.txt", "splits/val.txt",
        "splits/split.json", "metrics.csv", "models/stage1_best.safetensors",
        "models/stage2_best.safetensors", "models/stage3_best.safetensors",
        "models/best.safetensors", "models/final.safetensors", "models/class_labels.json",
        "training_curves.png", "last.pt",
    ]:  # fmt: skip
        path = run_dir / rel
        assert path.is_file() and path.stat().st_size > 0, rel
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((run_dir / "models/class_labels.json").read_text()) == list(CLASS_NAMES)
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]


def test_split_is_grouped_recorded_and_disjoint(trained_run, small_benchmark):
    run_dir, recipe, _ = trained_run
    assert load_recipe(run_dir / "recipe.yaml") == recipe
    info = json.loads((run_dir / "run.json").read_text())
    assert Path(info["data"]) == small_benchmark.resolve()
    split = json.loads((run_dir / "splits/split.json").read_text())
    assert split["method"].startswith("StratifiedGroupKFold") and split["near_threshold"] == 0.98
    assert (split["seed"], split["val_fraction"], split["folds"]) == (0, 0.25, 4)
    train_lines = (run_dir / "splits/train.txt").read_text().splitlines()
    val_lines = (run_dir / "splits/val.txt").read_text().splitlines()
    assert (info["n_train"], info["n_val"]) == (len(train_lines), len(val_lines))
    assert len(train_lines) + len(val_lines) <= 48 and not set(train_lines) & set(val_lines)
    assert len({line.split("\t")[1] for line in val_lines}) >= 2
    meta = read_metadata(run_dir / "models/best.safetensors")
    assert meta["info"]["split"]["groups"] == split["groups"]  # recorded in the model file


def test_normalization_comes_from_the_backbone_config_and_is_stored(trained_run):
    from timm.data import resolve_model_data_config

    run_dir, _, result = trained_run
    model, meta = load_model(result.best_path)
    want = resolve_model_data_config(model.backbone)
    mean, std = preprocessing_of(meta)
    assert mean == pytest.approx(want["mean"]) and std == pytest.approx(want["std"])
    assert json.loads((run_dir / "run.json").read_text())["normalization"]["mean"] == list(mean)


def test_files_without_stored_normalization_read_as_imagenet():
    from brainmri.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    assert preprocessing_of({"preprocessing": {"image_size": 192}}) == (
        IMAGENET_MEAN,
        IMAGENET_STD,
    )


def test_metrics_csv_one_row_per_epoch(trained_run):
    run_dir, recipe, result = trained_run
    header, rows = read_rows(run_dir / "metrics.csv")
    assert header == CSV_FIELDS
    assert len(rows) == len(STAGES) == result.epochs_run
    assert [r["stage"] for r in rows] == STAGES
    assert [int(r["stage_epoch"]) for r in rows] == [1, 2, 3, 4, 1, 1]
    assert [float(r["lr"]) for r in rows[:4]] == pytest.approx([0.003] * 4)  # min_lr = lr
    top30 = recipe.train.stages[1]
    assert top30.min_lr <= float(rows[4]["lr"]) < top30.lr  # cosine within the stage


def test_training_loss_falls(trained_run):
    run_dir, _, _ = trained_run
    _, rows = read_rows(run_dir / "metrics.csv")
    losses = [float(r["train_loss"]) for r in rows[:4]]
    assert losses[-1] < losses[0], losses


def test_best_model_is_the_lowest_val_loss_and_calibrated(trained_run):
    run_dir, _, result = trained_run
    model, meta = load_model(result.best_path)
    _, rows = read_rows(run_dir / "metrics.csv")
    best_row = min(rows, key=lambda r: float(r["val_loss"]))
    assert meta["info"]["epoch"] == int(best_row["epoch"])
    assert result.best_val_loss == pytest.approx(float(best_row["val_loss"]), abs=1e-4)
    assert meta["info"]["val_tta_views"] == 2  # the recipe's evaluate.tta is used
    assert 0.05 <= meta["info"]["temperature"] <= 20.0
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 4)


def test_final_model_holds_the_last_weights(trained_run):
    run_dir, _, result = trained_run
    final = load_file(result.final_path)
    saved = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    assert saved["state"]["epoch"] == len(STAGES)
    for k, v in saved["model"].items():
        assert torch.equal(final[k], v), k
    for k, v in result.model.state_dict().items():
        assert torch.equal(final[k], v.cpu()), k


# --- refusals ---------------------------------------------------------------------------
def test_training_into_an_existing_run_is_refused(trained_run, small_benchmark):
    run_dir, recipe, _ = trained_run
    with pytest.raises(BrainMRIError, match="--resume"):
        train(recipe, small_benchmark, run_dir, device="cpu")


def test_resume_refuses_options_it_would_ignore(trained_run):
    run_dir, recipe, _ = trained_run
    with pytest.raises(BrainMRIError, match="recorded recipe"):
        train(recipe, None, run_dir, resume=True)
    res = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "--set", "seed=1"])
    assert res.exit_code == 2 and "does not take --set" in res.output, res.output


def test_train_without_config_says_recipe_and_measured_time(monkeypatch, tmp_path):
    seen = {}

    def stop(recipe, *args, **kwargs):
        seen["recipe"] = recipe
        raise BrainMRIError("stopped before training")

    monkeypatch.setattr(loop, "train", stop)
    res = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "`cpu` recipe" in res.output and "44.5 min on a 2-core CPU" in res.output
    assert seen["recipe"].name == "cpu"


def test_a_failed_run_removes_the_folder_it_created_only(small_benchmark, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(loop, "train_one_epoch", crash)
    recipe = load_recipe("smoke", ["train.max_steps_per_epoch=1"])
    with pytest.raises(RuntimeError):
        train(recipe, small_benchmark, tmp_path / "new", device="cpu")
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(RuntimeError):
        train(recipe, small_benchmark, tmp_path / "mine", device="cpu")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_smoke_on_cleans_output_names_the_exact_settings_that_train_it(small_benchmark, tmp_path):
    """`clean` writes the split of its defaults (val_fraction 0.15, seed 42); the smoke recipe
    keeps its own (0.25, seed 0: 4 folds on the tests' 12 images per class), so `train
    --config smoke` on clean's output is one error line with the exact --set to pass, and
    those settings take clean's split."""
    from brainmri.data.clean import CleanOptions
    from brainmri.train.data import load_split

    cleaned = tmp_path / "cleaned"
    args = ["clean", "--data", str(small_benchmark), "--out", str(cleaned), "--workers", "1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    default = CleanOptions()
    sets = [f"data.val_fraction={default.val_fraction}", f"data.split_seed={default.seed}"]
    run = tmp_path / "run"
    args = ["train", "--config", "smoke", "--data", str(cleaned), "--out", str(run)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"pass --set {sets[0]} --set {sets[1]}," in result.stderr
    assert not run.exists()
    _, val, split = load_split(cleaned, load_recipe("smoke", sets))
    assert split["source"] == "splits/ of the data folder"
    assert (split["val_fraction"], split["seed"]) == (default.val_fraction, default.seed)


# --- exact resume -------------------------------------------------------------------------
class _Killed(BaseException):
    """Stands in for SIGKILL inside the process (not an Exception: nothing may catch it)."""


# dropout and augmentation on (both draw random numbers), warm-up over the first epoch:
# a resumed run that lost any RNG, optimizer or schedule state would drift
RESUME_RECIPE = [
    "train.stages.0.epochs=3",
    "train.stages.0.warmup_epochs=1",
    "train.stages.2.epochs=0",
    "train.max_steps_per_epoch=2",
    "data.max_per_class=4",
]


def test_interrupted_then_resumed_run_equals_the_uninterrupted_one(
    small_benchmark, tmp_path, monkeypatch
):
    recipe = load_recipe("smoke", RESUME_RECIPE)
    full = train(recipe, small_benchmark, tmp_path / "full", device="cpu")
    real_write = state.atomic_write
    calls = {"last": 0}

    def dying_write(path, write):
        if Path(path).name == "last.pt":
            calls["last"] += 1
            if calls["last"] == 3:  # epoch 3 (stage 1, mid-stage): CSV row written, no last.pt
                raise _Killed
        real_write(path, write)

    with monkeypatch.context() as m:
        m.setattr(state, "atomic_write", dying_write)
        with pytest.raises(_Killed):
            train(recipe, small_benchmark, tmp_path / "cut", device="cpu")
    assert len(read_rows(tmp_path / "cut" / "metrics.csv")[1]) == 3
    resumed = train(None, None, tmp_path / "cut", resume=True, device="cpu")
    assert resumed.epochs_run == full.epochs_run == 4
    for name in ("final", "best", "stage1_best"):
        a = load_file(tmp_path / "full" / "models" / f"{name}.safetensors")
        b = load_file(tmp_path / "cut" / "models" / f"{name}.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    rows_full = read_rows(tmp_path / "full" / "metrics.csv")[1]
    rows_cut = read_rows(tmp_path / "cut" / "metrics.csv")[1]
    keys = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
    assert [[r[k] for k in keys] for r in rows_cut] == [[r[k] for k in keys] for r in rows_full]


# --- frozen-stage feature caching -----------------------------------------------------------
def test_cached_frozen_features_train_the_same_head(small_benchmark, tmp_path):
    """With identity augmentation and no dropout, a frozen stage trained on cached features
    follows the same trajectory as one that runs the backbone every step."""
    base = [
        "train.stages.0.epochs=3",
        "train.stages.1.epochs=0",
        "train.stages.2.epochs=0",
        "train.max_steps_per_epoch=2",
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


def test_cluster_balanced_draws_are_recorded_and_weighted(small_benchmark, tmp_path):
    """data.balance=clusters: the split records clusters × classes over every training file,
    and each epoch's order is that many weighted draws (with replacement) instead of a
    permutation; a plain recipe keeps its permutation."""
    from brainmri.train.distributed import Dist

    base = ["train.stages.0.epochs=1", "train.stages.1.epochs=0", "train.stages.2.epochs=0"]
    recipe = load_recipe("smoke", [*base, "data.balance=clusters", "data.balance_clusters=3"])
    ctx = loop.build_context(recipe, small_benchmark, Dist())
    draws = ctx.data.split["draws"]
    table = torch.tensor(draws["clusters_x_classes"])
    assert table.shape == (3, len(CLASS_NAMES)) and int(table.sum()) == len(ctx.data.train)
    assert ctx.draw_weights is not None and len(ctx.draw_weights) == len(ctx.data.train)
    assert float(ctx.draw_weights.std()) > 0  # the clusters are not all balanced already
    order = ctx.epoch_order(0)
    assert len(order) == len(ctx.data.train) and len(set(order.tolist())) < len(order)
    assert torch.equal(order, ctx.epoch_order(0)) and not torch.equal(order, ctx.epoch_order(1))
    plain = loop.build_context(load_recipe("smoke", base), small_benchmark, Dist())
    assert plain.draw_weights is None and "draws" not in plain.data.split
    assert sorted(plain.epoch_order(0).tolist()) == list(range(len(plain.data.train)))
    run = tmp_path / "run"
    train(recipe, small_benchmark, run, device="cpu")
    recorded = json.loads((run / "splits" / "split.json").read_text())["draws"]
    assert recorded["clusters_x_classes"] == draws["clusters_x_classes"]


# --- temperature at a bound -------------------------------------------------------------------
def test_temperature_fit_on_a_bound_is_detected_and_worded():
    from brainmri.train.loss import fit_temperature, temperature_bound, temperature_note

    y = torch.tensor([0, 1, 2, 3] * 4)
    wrong = torch.nn.functional.one_hot((y + 1) % 4, 4).float() * 8  # confidently wrong
    t = fit_temperature(wrong, y)
    assert temperature_bound(t) == "upper"
    assert temperature_note(t) == (
        "20.000 (at the fit's upper bound: validation too small or the model is not trained; "
        "probabilities are not calibrated)"
    )
    timid = torch.nn.functional.one_hot(y, 4).float() * 0.05  # right, barely: T wants < 0.05
    assert temperature_bound(fit_temperature(timid, y)) == "lower"
    mixed = torch.nn.functional.one_hot(y, 4).float() * 4
    mixed[:4] = wrong[:4]  # 3 in 4 right: an interior optimum
    t = fit_temperature(mixed, y)
    assert temperature_bound(t) is None and temperature_note(t) == f"{t:.3f}"


def test_temperature_fit_with_every_validation_image_right_says_it_is_not_informative():
    """Every validation image right: the NLL keeps falling as T shrinks, so the fit stops on the
    lower bound or wherever the NLL underflows to 0; the note says so either way."""
    from brainmri.train.loss import (
        every_one_right,
        fit_temperature,
        temperature_bound,
        temperature_note,
    )

    y = torch.tensor([0, 1, 2, 3] * 4)
    tail = (
        "every validation image classified right, so the temperature is not informative; "
        "probabilities may be over-confident)"
    )
    sure = torch.nn.functional.one_hot(y, 4).float() * 4  # right, by a margin of 4
    t = fit_temperature(sure, y)
    assert every_one_right(sure, y) and temperature_bound(t) is None  # stopped inside
    assert t < 0.2  # where the NLL reached 0, not a calibration
    assert temperature_note(t, every_one_right(sure, y)) == f"{t:.3f} ({tail}"
    timid = torch.nn.functional.one_hot(y, 4).float() * 0.05  # right, barely: on the bound
    t = fit_temperature(timid, y)
    assert temperature_bound(t) == "lower"
    assert (
        temperature_note(t, every_one_right(timid, y)) == f"0.050 (at the fit's lower bound: {tail}"
    )
    mixed = sure.clone()
    mixed[0] = torch.nn.functional.one_hot(torch.tensor(1), 4).float() * 4  # one wrong
    assert not every_one_right(mixed, y)
    assert not every_one_right(sure[:0], y[:0])  # no validation image: nothing to claim


def test_calibration_on_a_bound_says_so_and_records_it(
    trained_run, small_benchmark, tmp_path, monkeypatch, capsys
):
    """A best model that is confidently wrong on validation: the fit runs into its upper bound;
    the console line says so and run.json and the model file record it."""
    import shutil

    from brainmri.train.distributed import Dist
    from brainmri.train.loss import temperature_bound

    run_dir, recipe, _ = trained_run
    recorded = json.loads((run_dir / "run.json").read_text())  # the fixture's own fit
    assert recorded["temperature_at_bound"] is (
        temperature_bound(recorded["temperature"]) is not None
    )
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    ctx = loop.build_context(recipe, small_benchmark, Dist())
    wrong = torch.nn.functional.one_hot((ctx.data.y_val + 1) % 4, 4).float() * 8

    monkeypatch.setattr(loop, "batch_logits", lambda c, m, x, tta=1: wrong.expand(tta, -1, -1))
    capsys.readouterr()
    loop.calibrate(ctx, copy, 1.0)
    out = capsys.readouterr().out
    want = (
        "temperature fitted on validation: 20.000 (at the fit's upper bound: validation too "
        "small or the model is not trained; probabilities are not calibrated)"
    )
    assert want in out
    run = json.loads((copy / "run.json").read_text())
    assert run["temperature"] == pytest.approx(20.0) and run["temperature_at_bound"] is True
    assert run["temperature_all_right"] is False
    assert run["n_val"] == len(ctx.data.y_val)  # the rest of run.json is kept
    info = read_metadata(copy / "models" / "best.safetensors")["info"]
    assert info["temperature_at_bound"] is True and info["temperature_all_right"] is False


def test_calibration_with_every_validation_image_right_says_so_and_records_it(
    trained_run, small_benchmark, tmp_path, monkeypatch, capsys
):
    """A best model that is right on every validation image: the temperature is not
    informative; the console line says so and run.json and the model file record it."""
    import shutil

    from brainmri.train.distributed import Dist

    run_dir, recipe, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    ctx = loop.build_context(recipe, small_benchmark, Dist())
    right = torch.nn.functional.one_hot(ctx.data.y_val, 4).float() * 4

    monkeypatch.setattr(loop, "batch_logits", lambda c, m, x, tta=1: right.expand(tta, -1, -1))
    capsys.readouterr()
    loop.calibrate(ctx, copy, 1.0)
    out = capsys.readouterr().out
    assert (
        "(every validation image classified right, so the temperature is not informative; "
        "probabilities may be over-confident); validation accuracy 1.0000 plain"
    ) in out
    run = json.loads((copy / "run.json").read_text())
    assert run["temperature_all_right"] is True and run["temperature_at_bound"] is False
    info = read_metadata(copy / "models" / "best.safetensors")["info"]
    assert info["temperature_all_right"] is True and info["val_acc_at_best"] == 1.0


# --- interrupt, resume, resume of a finished run ----------------------------------------------
TINY_CLI = [
    "--config", "smoke",
    "--set", "train.stages.0.epochs=2", "--set", "train.stages.1.epochs=0",
    "--set", "train.stages.2.epochs=0", "--set", "train.max_steps_per_epoch=1",
    "--set", "data.max_per_class=4", "--device", "cpu",
]  # fmt: skip


def _interrupt_at_epoch(monkeypatch, n: int) -> None:
    real, calls = loop.train_one_epoch, {"n": 0}

    def epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", epoch)


def test_interrupt_says_how_to_continue_and_resume_says_where(
    small_benchmark, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    cli = ["train", "--data", str(small_benchmark), "--out", str(run), *TINY_CLI]
    with monkeypatch.context() as m:  # before any epoch finished: nothing to continue
        _interrupt_at_epoch(m, 1)
        res = CliRunner().invoke(app, cli)
    assert res.exit_code == 130
    assert "interrupted; no epoch had finished: nothing to resume" in res.output.splitlines()
    assert not run.exists()
    with monkeypatch.context() as m:
        _interrupt_at_epoch(m, 2)
        res = CliRunner().invoke(app, cli)
    assert res.exit_code == 130
    assert f"interrupted; continue with: brainmri train --resume {run}" in res.output.splitlines()
    res = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert res.exit_code == 0, res.output
    assert f"resuming {run} at stage 1/3 'frozen', epoch 2 (1 done)" in res.output
    assert "done in" in res.output and len(read_rows(run / "metrics.csv")[1]) == 2


def test_resume_of_a_finished_run_says_so_and_rewrites_nothing(trained_run, tmp_path):
    import shutil

    run_dir, _, result = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in copy.rglob("*") if p.is_file()}
    res = CliRunner().invoke(app, ["train", "--resume", str(copy)])
    assert res.exit_code == 0, res.output
    assert f"{copy} is already complete ({len(STAGES)} epochs in" in res.output
    assert "nothing resumed" in res.output and "done in" not in res.output
    again = train(None, None, copy, resume=True)
    assert (again.epochs_run, again.best_path) == (len(STAGES), copy / "models/best.safetensors")
    assert again.best_val_loss == pytest.approx(result.best_val_loss)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in copy.rglob("*") if p.is_file()}
    assert after == files
