"""The command line's building blocks: one-line usage errors, help listing arguments by their
metavars, and the options with fixed choices (cli.py keeps one thin function per subcommand)."""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from brainmri import CLASS_NAMES

try:  # typer carries its own copy of click since 0.2x
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer, on click itself
    from click.exceptions import UsageError  # type: ignore[no-redef]

EXIT_USER_ERROR = 2
"""Exit code of a command that could not run (a bad option, model, input or output: one
`error:` line), as for typer's own option checks; predict and explain exit 1 when they ran but
some file was not ok, so a script can tell the two apart."""


def usage_line(exc: Exception) -> str:
    """An option/argument error of the command line (typer's own checks) as one line: a value
    outside a fixed set of choices reads `--crop must be one of auto, on, off, got 'x'`, as
    the commands' own checks read; others keep typer's wording."""
    param = getattr(exc, "param", None)
    message = str(getattr(exc, "message", exc)).replace("Value error, ", "")
    found = re.fullmatch(r"(?P<got>.+) is not one of (?P<choices>.+?)\.?", message)
    if param is not None and getattr(param, "opts", None) and found:
        choices = ", ".join(re.findall(r"'([^']*)'", found["choices"]))
        return f"{max(param.opts, key=len)} must be one of {choices}, got {found['got']}"
    format_message = getattr(exc, "format_message", None)
    text = format_message() if callable(format_message) else str(exc)
    return " ".join(text.replace("Value error, ", "").split())


class Group(TyperGroup):
    """The `brainmri` group: a command-line usage error (unknown option, bad choice, value out
    of range, missing argument) is one `error:` line on stderr and exit code EXIT_USER_ERROR,
    like every other error a user can cause (not click's usage block)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            typer.echo(f"error: {usage_line(exc)}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None


class Command(TyperCommand):
    """A subcommand whose help lists each argument by its metavar (`FILES...`), without
    typer's type tag (`<list[Path]>`); options show their own metavars."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                name = param.metavar or (param.name or "").upper()
                args.append((name + ("..." if param.nargs != 1 else ""), record[1]))
            else:
                opts.append(record)
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def choices(kind: type[Enum]) -> str:
    """The metavar of a fixed-choice option: its values, as `[auto|on|off]`."""
    return "[" + "|".join(str(c.value) for c in kind) + "]"


class CropMode(str, Enum):
    """predict/explain --crop (infer.inputs.CROP_MODES)."""

    auto = "auto"
    on = "on"
    off = "off"


class Runtime(str, Enum):
    """predict --runtime (infer.core.RUNTIMES)."""

    auto = "auto"
    onnx = "onnx"
    torch = "torch"


class ExplainMethod(str, Enum):
    """explain --method (infer.gradcam.METHODS)."""

    gradcam = "gradcam"
    occlusion = "occlusion"


class DuplicatePolicy(str, Enum):
    """clean --policy (data.clean.POLICIES)."""

    keep_one = "keep-one"
    drop_from_train = "drop-from-train"
    report = "report"


ClassName = Enum("ClassName", [(c, c) for c in CLASS_NAMES], type=str)  # type: ignore[misc]
"""explain --class: one of the fixed class names written beside every model."""
