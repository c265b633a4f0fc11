"""What one file from the command line costs: `brainmri predict FILE` as a new process, and the
imports it pays for before the first image.

Each command runs `--repeats` times as a fresh process, the commands taking turns (after one
warm-up run each, so the ONNX export is cached and the files are in the page cache); wall
seconds are reported, median and range:

- `brainmri predict FILE --no-progress` (FILE: the first Training image of the benchmark);
- `python -c "import torch"`;
- `python -c "import numpy, onnxruntime, PIL.Image, cv2, pydicom"`: what the ONNX path needs
  besides PyTorch.

    python bench/startup.py [--data D] [--repeats 7] [--out bench/results/speed/startup.json]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from robustness import report_head, write_report

from brainmri.data.folders import resolve_data_dir, scan_split


def timed_child(cmd: list[str]) -> float:
    """Wall seconds of one child process run to completion (exit code 0 or 1: predict's
    "some files refused" is a result, not a failure)."""
    t = time.perf_counter()
    code = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    if code not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {code}")
    return time.perf_counter() - t


def measure(commands: dict[str, list[str]], repeats: int) -> dict[str, dict]:
    """Median and range of each command's wall seconds, the commands taking turns."""
    for cmd in commands.values():
        timed_child(cmd)  # warm-up: export cache, page cache
    wall: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, cmd in commands.items():
            wall[name].append(timed_child(cmd))
    return {
        name: {
            "command": " ".join(commands[name]),
            "wall_s_median": round(float(np.median(w)), 2),
            "wall_s_range": [round(min(w), 2), round(max(w), 2)],
        }
        for name, w in wall.items()
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("bench/results/speed/startup.json"))
    args = ap.parse_args(argv)
    image = scan_split(resolve_data_dir(args.data), "Training")[0].path
    cli = str(Path(sys.executable).with_name("brainmri"))
    commands = {
        "predict_one_file": [cli, "predict", str(image), "--no-progress"],
        "import_torch": [sys.executable, "-c", "import torch"],
        "import_onnx_path_without_torch": [
            sys.executable, "-c", "import numpy, onnxruntime, PIL.Image, cv2, pydicom"
        ],  # fmt: skip
    }
    report = {
        **report_head("startup", __file__, argv, torch.device("cpu")),
        "repeats": args.repeats,
        **measure(commands, args.repeats),
    }
    write_report(args.out, report)
    for name in commands:
        print(name, report[name])
    return report


if __name__ == "__main__":
    main()
