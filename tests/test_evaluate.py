"""The command line: help texts, `evaluate` end to end, one-line user errors.

The model here is an untrained one saved with save_model (random init, no training needed);
evaluate on the trained smoke model lives in test_train.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

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
    assert result.exit_code == 1, result.output
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


def test_evaluate_cli_writes_results(untrained_model, synthetic_dataset, tmp_path):
    out = tmp_path / "out"
    res = invoke_evaluate(
        untrained_model,
        synthetic_dataset,
        "--out",
        str(out),
        "--tta",
        "2",
        "--batch-size",
        "8",
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    data = json.loads((out / RESULTS_NAME).read_text())
    assert data["n_test"] == 12  # 3 synthetic images per class
    assert data["tta_views"] == ["original", "hflip"]
    for variant in ("plain", "tta"):
        assert sum(map(sum, data[variant]["full"]["confusion_matrix"])) == 12
    assert (out / "confusion_matrix.png").is_file()


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
