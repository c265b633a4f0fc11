"""The command line's help and its option checks: metavars that read, fixed choices listed and
enforced before any work, a usage error as one `error:` line with exit code 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from brainmri import CLASS_NAMES
from brainmri.cli import (
    EXIT_USER_ERROR,
    ClassName,
    CropMode,
    DuplicatePolicy,
    ExplainMethod,
    Runtime,
    app,
)

COMMANDS = sorted(get_command(app).commands)  # type: ignore[attr-defined]

# typer's own type tags: <str>, <int>, <int range>, <path>, <list[Path]>, <auto|on|off>, ...
TYPE_TAG = re.compile(
    r"<(?:str|int|float|bool|path|file|directory|Path|uuid|datetime|text"
    r"|list\[[^>]*\]|(?:int|float) range|[\w-]+(?:\|[\w-]+)+)>"
)


def help_of(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_checked():
    assert set(COMMANDS) == {"adapt", "clean", "ensemble", "evaluate", "explain", "export",
                             "predict", "serve", "train"}  # fmt: skip


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_shows_metavars_not_type_tags(command: str):
    shown = help_of(*([command] if command else []))
    assert not TYPE_TAG.findall(shown), TYPE_TAG.findall(shown)
    # every option that takes a value names it (a flag takes none)
    rows = shown.partition("\nOptions:\n")[2].splitlines()
    options = [line.split()[0:3] for line in rows if line.startswith("  -")]
    assert options, shown
    for words in options:
        names = [w.rstrip(",") for w in words if w.startswith("-")]
        if any(n in ("--help", "--version", "--force") or "/" in words for n in names):
            continue
        metavar = words[len(names)] if len(words) > len(names) else ""
        assert metavar and not metavar.startswith("-"), (command, words)


@pytest.mark.parametrize(
    "command, shown",
    [
        ("predict", ["FILES...", "-m, --model MODEL", "--tta N", "--crop [auto|on|off]",
                     "--json FILE", "--runtime [auto|onnx|torch]", "--device DEVICE",
                     "--batch-size N", "--min-confidence P"]),
        ("explain", ["FILES...", "--out DIR", "--crop [auto|on|off]",
                     "--method [gradcam|occlusion]",
                     "--class [glioma|meningioma|notumor|pituitary]"]),
        ("clean", ["--data DIR", "--out DIR", "--policy [keep-one|drop-from-train|report]",
                   "--val-fraction FRACTION", "--seed N"]),
        ("train", ["-c, --config RECIPE", "--set KEY=VALUE", "--resume DIR"]),
        ("ensemble", ["RUNS...", "--out DIR"]),
        ("evaluate", ["-m, --model MODEL", "--tta N", "--leak-free FILE"]),
        ("adapt", ["--data DIR", "--replay DIR", "-c, --config SETTINGS", "--set KEY=VALUE"]),
        ("export", ["-o, --out FILE", "--data DIR"]),
        ("serve", ["--host ADDRESS", "--port PORT", "--max-body-mb MIB", "--threads N"]),
    ],
)  # fmt: skip
def test_help_names_what_each_value_is(command: str, shown: list[str]):
    text = help_of(command)
    for piece in shown:
        assert piece in text, (command, piece)
    assert f"Usage: brainmri {command} [OPTIONS]" in text


def test_choices_are_the_values_the_modules_accept():
    from brainmri.data.clean import POLICIES
    from brainmri.infer.core import RUNTIMES
    from brainmri.infer.gradcam import METHODS
    from brainmri.infer.inputs import CROP_MODES

    def values(kind):
        return tuple(c.value for c in kind)

    assert values(CropMode) == CROP_MODES and values(Runtime) == RUNTIMES
    assert values(ExplainMethod) == tuple(METHODS) and values(DuplicatePolicy) == POLICIES
    assert values(ClassName) == CLASS_NAMES


@pytest.mark.parametrize(
    "args, line",
    [
        (["predict", "scan.png", "--crop", "maybe"],
         "error: --crop must be one of auto, on, off, got 'maybe'"),
        (["predict", "scan.png", "--crop", "OFF"],  # case-sensitive
         "error: --crop must be one of auto, on, off, got 'OFF'"),
        (["explain", "scan.png", "--out", "maps", "--crop", "x"],
         "error: --crop must be one of auto, on, off, got 'x'"),
        (["predict", "scan.png", "--runtime", "tensorflow"],
         "error: --runtime must be one of auto, onnx, torch, got 'tensorflow'"),
        (["explain", "scan.png", "--out", "maps", "--method", "lime"],
         "error: --method must be one of gradcam, occlusion, got 'lime'"),
        (["explain", "scan.png", "--out", "maps", "--class", "tumour"],
         "error: --class must be one of glioma, meningioma, notumor, pituitary, got 'tumour'"),
        (["clean", "--policy", "nonsense"],
         "error: --policy must be one of keep-one, drop-from-train, report, got 'nonsense'"),
        (["predict", "scan.png", "--tta", "9"],
         "error: Invalid value for '--tta': Input should be less than or equal to 5"),
        (["predict"], "error: Missing argument 'FILES'."),
        (["predict", "scan.png", "--bogus"], "error: No such option: --bogus"),
    ],
)  # fmt: skip
def test_a_bad_value_is_one_line_and_exit_2_before_any_work(
    tmp_path: Path, monkeypatch, args: list[str], line: str
):
    """Refused by the option parser: nothing is read (the input does not even exist) and
    nothing is written."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_USER_ERROR == 2
    assert result.stderr.strip().splitlines() == [line], result.stderr
    assert result.stdout == "" and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


def test_a_good_choice_reaches_the_command_as_its_value(tmp_path: Path, monkeypatch):
    """The chosen value (not the Enum member) is what the command works with: here the crop
    mode and runtime pass the parser and the command stops at the missing input."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["predict", str(tmp_path), "--crop", "off", "--runtime", "onnx"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: no image files found in the given inputs"
