"""What one file from the command line costs: `brainmri predict FILE` as a new process, and the
imports it pays for before the first image.

Each command runs `--repeats` times as a fresh process, the commands taking turns (after one
warm-up run each, so the ONNX export is cached and the files are in the page cache); wall
seconds are reported, median and range, and the peak resident memory when GNU time
(/usr/bin/time) is installed:

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

GNU_TIME = Path("/usr/bin/time")


def timed_child(cmd: list[str]) -> tuple[float, float | None]:
    """(wall seconds, peak RSS in MiB or None) of one child process run to completion (exit
    code 0 or 1: predict's "some files refused" is a result, not a failure)."""
    wrap = [str(GNU_TIME), "-f", "%M"] if GNU_TIME.exists() else []
    t = time.perf_counter()
    done = subprocess.run([*wrap, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {done.returncode}")
    last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] if wrap else []
    return wall, (int(last[0]) / 1024 if last and last[0].isdigit() else None)


def measure(commands: dict[str, list[str]], repeats: int) -> dict[str, dict]:
    """Median and range of each command's wall seconds, the commands taking turns."""
    for cmd in commands.values():
        timed_child(cmd)  # warm-up: export cache, page cache
    runs: dict[str, list[tuple[float, float | None]]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, cmd in commands.items():
            runs[name].append(timed_child(cmd))
    out = {}
    for name, rs in runs.items():
        wall, rss = [w for w, _ in rs], [m for _, m in rs if m is not None]
        out[name] = {
            "command": " ".join(commands[name]),
            "wall_s_median": round(float(np.median(wall)), 2),
            "wall_s_range": [round(min(wall), 2), round(max(wall), 2)],
            "peak_rss_mib_median": round(float(np.median(rss)), 1) if rss else None,
        }
    return out


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
