"""Inference speed and agreement of the runtimes, side by side in one run.

For one model file (the shipped one by default) and the official test split:
  1. model-only throughput (img/s) at batch 1 and 32: PyTorch eager (channels_last,
     inference_mode) vs ONNX Runtime fp32 vs ONNX Runtime int8, in interleaved rounds (the
     best round is reported: other processes share the CPU);
  2. single-image latency in-process, `Classifier.predict(path)` (read, decode, resize, model),
     p50/p95 over the first images of the split;
  3. end to end, streaming `Classifier.stream` over every test image (decode in the thread
     pool included): img/s, process CPU time per image, accuracy, and agreement with the
     PyTorch runtime (same classes, max |Δprob|), for ONNX fp32 and int8 (and fp32 with
     spin-waiting threads, `onnx_fp32_spin`, when asked).
The int8 graph is quantized with ONNX Runtime static quantization calibrated on 128 Training
images (never test images). Running this is a test-split evaluation: it selects nothing.

    python bench/inference.py --out bench/results/inference.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brainmri import CLASS_NAMES
from brainmri.data.dedupe import file_sha256
from brainmri.data.folders import resolve_data_dir, scan_split
from brainmri.infer.core import Classifier
from brainmri.infer.export import calibration_pixels, export_onnx
from brainmri.model.checkpoint import read_metadata, shipped_model_path
from brainmri.platform_info import cpu_capability, cpu_model


def rate(fn, batch: int, seconds: float) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += batch
    return n / (time.perf_counter() - t0)


def model_only(runtimes: dict[str, Classifier], size: int, rounds: int, seconds: float) -> dict:
    """Best-of-rounds img/s of each runtime's backend at batch 1 and 32 (interleaved)."""
    out: dict = {name: {"batch1": [], "batch32": []} for name in runtimes}
    for _ in range(rounds):
        for name, clf in runtimes.items():
            for batch in (1, 32):
                x = torch.rand(batch, 1, size, size)
                run = clf.backend
                out[name][f"batch{batch}"].append(rate(lambda r=run, x=x: r(x), batch, seconds))
    return {
        name: {k: {"best": max(v), "median": float(np.median(v)), "rounds": v}
               for k, v in per.items()}
        for name, per in out.items()
    }  # fmt: skip


def latency(clf: Classifier, paths: list[Path], n: int) -> dict:
    clf.predict(str(paths[0]))
    ms = []
    for p in paths[:n]:
        t0 = time.perf_counter()
        clf.predict(str(p))
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "mean_ms": float(np.mean(ms))}  # fmt: skip


def stream(
    clf: Classifier, paths: list[Path], labels: list[int], repeats: int = 1
) -> tuple[dict, np.ndarray]:
    """End to end over `paths`, `repeats` passes (img/s of each; the median is the figure).
    Probabilities (N, C) of the first pass, NaN rows for files not classified (status not ok)."""
    rates, cpu_ms, passes = [], [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        passes.append(list(clf.stream(paths)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rates.append(len(paths) / wall)
        cpu_ms.append(cpu / len(paths) * 1e3)
    recs = passes[0]
    probs = np.array([[(r.get("probabilities") or {}).get(c, np.nan) if r["status"] == "ok"
                       else np.nan for c in clf.class_names] for r in recs])  # fmt: skip
    ok = np.isfinite(probs).all(axis=1)
    correct = int(((probs.argmax(1) == np.array(labels)) & ok).sum())
    return {"images": len(paths), "img_per_s": float(np.median(rates)), "img_per_s_passes": rates,
            "cpu_ms_per_img": float(np.median(cpu_ms)), "ok": int(ok.sum()),
            "correct": correct, "accuracy": correct / len(paths),
            "accuracy_of_accepted": correct / max(1, int(ok.sum()))}, probs  # fmt: skip


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Two runs' probabilities (NaN rows: not classified): how many files got the same outcome
    (both refused, or both classified into the same class), max |Δprob| where both classified."""
    ok_a, ok_b = np.isfinite(a).all(1), np.isfinite(b).all(1)
    both = ok_a & ok_b
    same = (~ok_a & ~ok_b) | (both & (a.argmax(1) == b.argmax(1)))
    return {"same_outcome": int(same.sum()), "classified_by_both": int(both.sum()),
            "max_abs_dprob": float(np.abs(a[both] - b[both]).max()) if both.any() else None}


def machine_info(threads: int, load_start: tuple[float, float, float]) -> dict:
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_capability": cpu_capability(),
        "cores": len(os.sched_getaffinity(0)),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--latency-n", type=int, default=200)
    ap.add_argument("--e2e-repeats", type=int, default=3, help="end-to-end passes (median)")
    ap.add_argument("--threads", type=int, default=None, help="ORT/torch threads (default: cores)")
    ap.add_argument(
        "--torch-threads", type=int, default=None,
        help="PyTorch intra-op threads when they should differ from --threads (ONNX runs use "
        "PyTorch only for preprocessing)",
    )  # fmt: skip
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "brainmri-onnx")
    ap.add_argument(
        "--runtimes",
        type=lambda v: v.split(","),
        default=["torch_eager", "onnx_fp32", "onnx_int8"],
        help="comma-separated subset of torch_eager,onnx_fp32,onnx_int8,onnx_fp32_spin "
        "(fp32 with Classifier(spin_wait=True))",
    )
    ap.add_argument("--split", default="Testing", choices=["Testing", "Training"],
                    help="images to stream (Training: a speed check that is no test-split run)")
    ap.add_argument("--limit", type=int, default=None, help="N images evenly spaced over the split")
    ap.add_argument("--out", type=Path, default=Path("bench/results/inference.json"))
    args = ap.parse_args()

    model = args.model or shipped_model_path()
    data = resolve_data_dir(args.data)
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(args.torch_threads or threads)
    test = scan_split(data, args.split)
    if args.limit:
        test = [test[i] for i in np.linspace(0, len(test) - 1, args.limit).astype(int)]
    paths, labels = [s.path for s in test], [s.label for s in test]
    load_start = os.getloadavg()
    model_sha = file_sha256(model)  # before the run: the file could be replaced during it

    args.work.mkdir(parents=True, exist_ok=True)
    fp32, int8 = args.work / "model_fp32.onnx", args.work / "model_int8.onnx"
    export_s: dict = {}
    if {"onnx_fp32", "onnx_int8", "onnx_fp32_spin"} & set(args.runtimes):
        t0 = time.perf_counter()
        export_onnx(model, fp32)
        export_s["fp32"] = time.perf_counter() - t0
    if "onnx_int8" in args.runtimes:
        t0 = time.perf_counter()
        calibration = calibration_pixels(data, read_metadata(model))
        export_onnx(model, int8, int8=True, calibration=calibration)
        export_s["int8_with_calibration"] = time.perf_counter() - t0

    makers = {
        "torch_eager": lambda: Classifier(model, "torch", "cpu"),
        "onnx_fp32": lambda: Classifier(fp32, "onnx", threads=threads),
        "onnx_int8": lambda: Classifier(int8, "onnx", threads=threads),
        "onnx_fp32_spin": lambda: Classifier(fp32, "onnx", threads=threads, spin_wait=True),
    }
    runtimes = {name: makers[name]() for name in args.runtimes}
    size = next(iter(runtimes.values())).image_size
    speed = model_only(runtimes, size, args.rounds, args.seconds)
    lat = {name: latency(clf, paths, args.latency_n) for name, clf in runtimes.items()}
    e2e, probs = {}, {}
    for name, clf in runtimes.items():
        e2e[name], probs[name] = stream(clf, paths, labels, args.e2e_repeats)
    ref = probs.get("torch_eager")
    for name in ("onnx_fp32", "onnx_int8", "onnx_fp32_spin"):
        if name in probs and ref is not None:
            e2e[name]["vs_torch"] = agreement(probs[name], ref)
    if "onnx_int8" in e2e and "onnx_fp32" in e2e:
        e2e["onnx_int8"]["correct_minus_fp32"] = (
            e2e["onnx_int8"]["correct"] - e2e["onnx_fp32"]["correct"]
        )
        e2e["onnx_int8"]["vs_fp32"] = agreement(probs["onnx_int8"], probs["onnx_fp32"])

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    result = {
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "commit": commit,
        "machine": machine_info(threads, load_start),
        "model": str(model),
        "model_sha256": model_sha,
        "classes": list(CLASS_NAMES),
        "export_s": export_s,
        "onnx_mb": {p.stem: p.stat().st_size / 2**20 for p in (fp32, int8) if p.exists()},
        "model_only_img_per_s": speed,
        "latency_single_image": lat,
        "split": args.split,
        "end_to_end_test_split": e2e,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("export_s", "latency_single_image",
                                             "end_to_end_test_split")}, indent=1))  # fmt: skip
    for name, per in speed.items():
        b1, b32 = per["batch1"]["best"], per["batch32"]["best"]
        print(f"{name:12s} batch1 {b1:7.1f}  batch32 {b32:7.1f}")


if __name__ == "__main__":
    main()
