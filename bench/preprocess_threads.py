"""Single-image latency and CPU time with and without `infer.core.torch_threads`, in one process.

The ONNX Runtime path of `Classifier` preprocesses with PyTorch on one intra-op thread
(`torch_threads(1)` around `Classifier.run`). This script predicts Training images one at a time
(`Classifier.predict(path)`, ONNX Runtime fp32), alternating blocks of `--block` images with that
scope on and off (off: PyTorch's preprocessing on the process's own thread count, as before), so
both settings share the machine's slow and fast moments. Reports p50/p95 wall latency and process
CPU time per image for each. Training images only: no test-split run.

    python bench/preprocess_threads.py --out bench/results/speed/preprocess_threads.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from robustness import machine

import brainmri.infer.core as core
from brainmri.data.folders import resolve_data_dir, scan_split


@contextlib.contextmanager
def unscoped(n: int | None):
    """`torch_threads` replaced: PyTorch keeps the process's thread count."""
    yield


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--images", type=int, default=500, help="Training images, evenly spaced")
    ap.add_argument("--block", type=int, default=25)
    ap.add_argument("--out", type=Path, default=Path("bench/results/speed/preprocess_threads.json"))
    args = ap.parse_args(argv)
    samples = scan_split(resolve_data_dir(args.data), "Training")
    step = max(1, len(samples) // args.images)
    paths = [s.path for s in samples[::step][: args.images]]
    clf = core.Classifier(runtime="onnx")
    for p in paths[:20]:  # warm-up
        clf.predict(p)
    modes = {"one_thread": core.torch_threads, "process_threads": unscoped}
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu = dict.fromkeys(modes, 0.0)
    for b, start in enumerate(range(0, len(paths), args.block)):
        order = list(modes) if b % 2 == 0 else list(modes)[::-1]
        for mode in order:
            core.torch_threads = modes[mode]
            for p in paths[start : start + args.block]:
                t0, c0 = time.perf_counter(), time.process_time()
                clf.predict(p)
                wall[mode].append(time.perf_counter() - t0)
                cpu[mode] += time.process_time() - c0
    core.torch_threads = modes["one_thread"]
    result = {
        "benchmark": "preprocess_threads",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "python " + " ".join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(torch.device("cpu")) | {"torch_threads": torch.get_num_threads()},
        "images": len(paths),
        "block": args.block,
        "modes": {
            m: {
                "p50_ms": round(float(np.percentile(wall[m], 50)) * 1e3, 2),
                "p95_ms": round(float(np.percentile(wall[m], 95)) * 1e3, 2),
                "mean_ms": round(float(np.mean(wall[m])) * 1e3, 2),
                "cpu_ms_per_image": round(cpu[m] / len(wall[m]) * 1e3, 2),
            }
            for m in modes
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["modes"], indent=1))
    return result


if __name__ == "__main__":
    main()
