"""The command line: help texts, `evaluate` end to end, one-line user errors.

The model here is an untrained one saved with save_model (random init, no training needed);
evaluate on the trained smoke model lives in test_train.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from brainmri import CLASS_NAMES
from brainmri.cli import app
from brainmri.config import load_recipe
from brainmri.evaluate.run import RESULTS_NAME
from brainmri.model.checkpoint import save_model
from brainmri.model.classifier import TumorClassifier

WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200", "NO_COLOR": "1"}


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env=WIDE)


def invoke_evaluate(model: Path, data: Path, *args: str):
    """`brainmri evaluate --model MODEL --data DATA ARGS...`"""
    return invoke("evaluate", "--model", str(model), "--data", str(data), *args)


def stderr_of(result) -> str:
    try:
        return result.stderr
    except ValueError:  # older click: stderr mixed into output
        return result.output


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    err = stderr_of(result).strip()
    assert err.startswith("error: "), err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory) -> Path:
    recipe = load_recipe("smoke", ["model.weights=none", "model.dense_units=8"])
    model = TumorClassifier(recipe.model).eval()
    path = tmp_path_factory.mktemp("model") / "models" / "best.safetensors"
    return save_model(path, model, recipe, {"stage": "untrained", "temperature": 1.0})


COMMANDS = sorted(typer.main.get_command(app).commands)


def test_top_level_help_lists_subcommands():
    res = invoke("--help")
    assert res.exit_code == 0, res.output
    assert {"clean", "train", "evaluate"} <= set(COMMANDS)
    for name in COMMANDS:
        assert name in res.output


def test_help_reads_on_an_80_column_terminal():
    """Paragraphs are rewrapped to the terminal and an option's help stays in one wide column
    (a boxed table once left it about 20 characters wide, one or two words a line)."""
    res = CliRunner().invoke(app, ["predict", "--help"], terminal_width=80)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any("Test-time augmentation views averaged (1 =" in line for line in lines)
    assert any(line.strip().startswith("Files are streamed (decoded a bounded") for line in lines)


def test_no_arguments_shows_help():
    res = invoke()
    assert "train" in res.output and "evaluate" in res.output


@pytest.mark.parametrize("name", COMMANDS)
def test_subcommand_help_mentions_every_option(name):
    res = invoke(name, "--help")
    assert res.exit_code == 0, res.output
    command = typer.main.get_command(app).commands[name]
    options = [p for p in command.params if getattr(p, "param_type_name", "") == "option"]
    assert options
    for opt in options:
        assert any(o in res.output for o in opt.opts), f"{name}: {opt.opts} missing from help"


def test_module_entry_point_runs():
    res = subprocess.run(
        [sys.executable, "-m", "brainmri", "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "evaluate" in res.stdout


def test_train_unknown_recipe_is_one_line_error(tmp_path):
    res = invoke("train", "--config", "nonexistent", "--out", str(tmp_path / "run"))
    assert_one_line_error(res, "recipe not found", "nonexistent")
    assert not (tmp_path / "run").exists()


def test_train_bad_override_is_one_line_error(tmp_path):
    res = invoke(
        "train", "--config", "smoke", "--set", "train.bogus=1", "--out", str(tmp_path / "run")
    )
    assert_one_line_error(res, "train.bogus")


def test_train_resume_without_state_is_one_line_error(tmp_path):
    res = invoke("train", "--resume", str(tmp_path))
    assert_one_line_error(res, "nothing to resume")


def test_version():
    from brainmri import __version__

    res = invoke("--version")
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"brainmri {__version__}"


def test_evaluate_cli_writes_results(untrained_model, synthetic_dataset, tmp_path):
    out = tmp_path / "out"
    args = ("--out", str(out), "--tta", "2", "--batch-size", "8", "--device", "cpu")
    res = invoke_evaluate(untrained_model, synthetic_dataset, *args)
    assert res.exit_code == 0, res.output
    data = json.loads((out / RESULTS_NAME).read_text())
    assert data["n_test"] == 12  # 3 synthetic images per class
    assert data["tta_views"] == ["original", "hflip"]
    assert data["layout"].startswith("Kaggle layout")
    for variant in ("plain", "tta"):
        assert sum(map(sum, data[variant]["full"]["confusion_matrix"])) == 12
        ci = data[variant]["intervals"]["full"]
        assert ci["n_resamples"] >= 2000 and ci["seed"] == 0
        lo, hi = ci["accuracy"]["ci"]
        assert lo <= data[variant]["full"]["accuracy"] <= hi
        assert set(ci["recall"]) == set(CLASS_NAMES)
        assert ci["sensitivity"]["n"] == 9 and ci["specificity"]["n"] == 3
    assert data["model_sha256"] == hashlib.sha256(untrained_model.read_bytes()).hexdigest()
    assert "no input-guard reference" in data["site_check"]["skipped"]  # no extra pass
    assert "site check: skipped (the model file has no input-guard reference" in res.stdout
    for name in ("confusion_matrix.png", "roc_curves.png", "reliability.png"):
        assert (out / name).is_file(), name
    if data["tta"]["errors"]:
        assert (out / "misclassified.png").is_file()
    # The console: what was run on what, one block per subset, no sklearn report.
    lines = res.stdout.splitlines()
    assert lines[0].startswith("model ") and str(untrained_model) in lines[0]
    assert lines[1].startswith("data ") and lines[2].startswith("n ")
    assert res.stdout.count("confusion matrix (rows true") == 1 + (
        data["n_leak_free"] not in (None, 0, data["n_test"])
    )
    assert "support" not in res.stdout  # the scikit-learn text report is gone
    assert res.stdout.count("site check") == 1  # the one line saying it was skipped

    # A second run into the same folder refuses, names the files and leaves them as they were.
    before = (out / RESULTS_NAME).read_bytes()
    again = invoke_evaluate(untrained_model, synthetic_dataset, *args)
    assert_one_line_error(again, "--force", RESULTS_NAME)
    assert (out / RESULTS_NAME).read_bytes() == before
    forced = invoke_evaluate(untrained_model, synthetic_dataset, *args, "--force", "--no-gallery")
    assert forced.exit_code == 0, forced.output


def _biased_model(untrained_model: Path, tmp_path: Path, k: int) -> Path:
    """The untrained model with its last bias pushed so that it always predicts class k."""
    import torch

    from brainmri.model.checkpoint import load_model

    model, meta = load_model(untrained_model)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias[k] += 50.0
    recipe = load_recipe("smoke", ["model.weights=none", "model.dense_units=8"])
    return save_model(tmp_path / "biased.safetensors", model, recipe, meta["info"])


def test_evaluate_plain_class_folder_with_a_subset_of_classes(
    untrained_model, synthetic_dataset, tmp_path
):
    plain = tmp_path / "plain"
    for cls in ("glioma", "meningioma", "notumor"):
        shutil.copytree(synthetic_dataset / "Testing" / cls, plain / cls)
    (plain / "SHA256SUMS").write_text("not a folder: ignored\n")
    model = _biased_model(untrained_model, tmp_path, CLASS_NAMES.index("pituitary"))
    out = tmp_path / "out"
    res = invoke_evaluate(model, plain, "--out", str(out), "--tta", "1", "--device", "cpu")
    assert res.exit_code == 0, res.output
    data = json.loads((out / RESULTS_NAME).read_text())
    assert data["layout"] == "plain <class>/ folder"
    assert data["classes_present"] == ["glioma", "meningioma", "notumor"]
    assert data["n_test"] == 9 and data["n_leak_free"] is None
    full = data["plain"]["full"]
    assert full["accuracy"] == 0.0 and full["errors"] == 9
    assert full["predicted_absent"] == {"pituitary": 9}
    assert full["confusion_matrix"][3] == [0, 0, 0, 0]
    assert [row[3] for row in full["confusion_matrix"][:3]] == [3, 3, 3]
    assert set(data["plain"]["intervals"]["full"]["recall"]) == set(data["classes_present"])
    assert full["per_class"]["pituitary"]["recall"] is None
    assert "pituitary 9" in res.stdout  # predictions into the absent class are shown
    assert "leak-free subset," not in res.stdout
    assert len(list(out.glob("misclassified*.png"))) == 1


def test_evaluate_a_testing_folder_finds_training_beside_it(
    untrained_model, synthetic_dataset, tmp_path
):
    out = tmp_path / "out"
    res = invoke_evaluate(
        untrained_model, synthetic_dataset / "Testing", "--out", str(out), "--tta", "1",
        "--device", "cpu", "--no-gallery",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads((out / RESULTS_NAME).read_text())
    assert data["layout"] == "Testing/ folder" and data["n_test"] == 12
    assert data["leak_free_source"] == "computed on the fly (exact + near)"
    assert not (out / "misclassified.png").exists()


def test_evaluate_folder_without_class_folders_is_one_line_error(untrained_model, tmp_path):
    (tmp_path / "odd" / "scans").mkdir(parents=True)
    res = invoke_evaluate(untrained_model, tmp_path / "odd", "--out", str(tmp_path / "o"))
    assert_one_line_error(res, "no Testing/<class>/ or <class>/")


def test_evaluate_cli_default_out_is_beside_the_run(untrained_model, synthetic_dataset):
    run_dir = untrained_model.parent.parent
    (run_dir / "recipe.yaml").write_text("name: marker\n")
    res = invoke_evaluate(untrained_model, synthetic_dataset, "--tta", "1", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert (run_dir / "results" / RESULTS_NAME).is_file()


def test_evaluate_missing_model_is_one_line_error(synthetic_dataset, tmp_path):
    res = invoke_evaluate(
        tmp_path / "nope.safetensors", synthetic_dataset, "--out", str(tmp_path / "o")
    )
    assert_one_line_error(res, "model file not found")
    assert not (tmp_path / "o").exists()


def test_evaluate_non_model_file_is_one_line_error(synthetic_dataset, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    res = invoke_evaluate(junk, synthetic_dataset, "--out", str(tmp_path / "o"))
    assert_one_line_error(res, "junk.safetensors")


def test_evaluate_missing_data_is_one_line_error(untrained_model, tmp_path):
    res = invoke_evaluate(untrained_model, tmp_path / "none", "--out", str(tmp_path / "o"))
    assert_one_line_error(res, "data folder not found")


def test_evaluate_data_without_testing_split_is_one_line_error(untrained_model, tmp_path):
    (tmp_path / "empty" / "Training").mkdir(parents=True)
    res = invoke_evaluate(untrained_model, tmp_path / "empty", "--out", str(tmp_path / "o"))
    assert_one_line_error(res, "no Testing")


def test_evaluate_tta_out_of_range_is_rejected(untrained_model, synthetic_dataset, tmp_path):
    res = invoke_evaluate(
        untrained_model, synthetic_dataset, "--tta", "9", "--out", str(tmp_path / "o")
    )
    assert res.exit_code != 0
    assert not (tmp_path / "o").exists()


def test_evaluate_leak_free_subset_gets_its_own_block_and_plots(
    untrained_model, synthetic_dataset, tmp_path
):
    files = sorted((synthetic_dataset / "Testing").glob("*/*.jpg"))[::2]  # 6 of the 12
    listing = tmp_path / "leak_free_test.txt"
    lines = [f"Testing/{p.parent.name}/{p.name}\t{p.parent.name}\n" for p in files]
    listing.write_text("".join(lines))
    out = tmp_path / "out"
    res = invoke_evaluate(
        untrained_model, synthetic_dataset, "--out", str(out), "--tta", "1", "--device", "cpu",
        "--leak-free", str(listing), "--no-gallery",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads((out / RESULTS_NAME).read_text())
    assert data["n_leak_free"] == 6
    assert data["plain"]["intervals"]["leak_free"]["accuracy"]["n"] == 6
    assert "leak-free subset, 6 images" in res.stdout
    assert res.stdout.count("confusion matrix (rows true") == 2
    for name in ("confusion_matrix.png", "roc_curves.png", "reliability.png"):
        assert (out / name).is_file() and (out / f"leak_free_{name}").is_file(), name
