"""Where the exported graph spends its time: ONNX Runtime's own profile, per operator type.

Runs the shipped model's fp32 export (the graph `predict` uses on a CPU, with predict's session
options plus profiling) on a batch of benchmark Training images, and sums the kernel time of
every node by operator type (and lists the costliest nodes). It answers whether anything but
the backbone's convolutions — the guard's distances, layout reorders, the head — is worth
making faster.

    python bench/ort_profile.py [--model M] [--data D] [--batch 32] [--runs 10] \
        [--out bench/results/speed/ort_profile.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from robustness import model_data_args, report_head, write_report

from brainmri.data.cache import decode_images
from brainmri.data.folders import resolve_data_dir, scan_split
from brainmri.data.transforms import normalize_planes
from brainmri.infer.export import cached_export
from brainmri.infer.onnx_runtime import session_options
from brainmri.model.checkpoint import read_metadata, shipped_model_path


def profile_events(onnx_path: Path, pixels: np.ndarray, runs: int) -> list[dict]:
    """ONNX Runtime's profile events for `runs` calls on `pixels` (after one warm-up call)."""
    import onnxruntime as ort

    so = session_options()
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(runs + 1):
            session.run(None, {name: pixels})
        return json.loads(Path(session.end_profiling()).read_text())


def kernel_times(events: list[dict], runs: int) -> tuple[Counter, Counter]:
    """(microseconds per call by operator type, by node), the warm-up call left out."""
    by_op: Counter = Counter()
    by_node: Counter = Counter()
    node_events = [
        e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
    ]
    per_call = len(node_events) // (runs + 1)
    for e in node_events[per_call:]:
        by_op[e["args"]["op_name"]] += e["dur"] / runs
        by_node[e["name"].removesuffix("_kernel_time")] += e["dur"] / runs
    return by_op, by_node


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_data_args(ap)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("bench/results/speed/ort_profile.json"))
    args = ap.parse_args(argv)
    path = args.model or shipped_model_path()
    meta = read_metadata(path)
    train = scan_split(resolve_data_dir(args.data), "Training")
    picks = [train[i].path for i in np.linspace(0, len(train) - 1, args.batch).astype(int)]
    prep = meta["preprocessing"]
    planes = decode_images(picks, int(prep["image_size"]), desc="decode")
    pixels = normalize_planes(planes, prep.get("intensity", "none")).numpy().astype(np.float32)
    by_op, by_node = kernel_times(profile_events(cached_export(path), pixels, args.runs), args.runs)
    total = sum(by_op.values())
    report = {
        **report_head("ort_profile", __file__, argv, torch.device("cpu")),
        "model": str(path),
        "batch": args.batch,
        "runs": args.runs,
        "kernel_ms_per_call": round(total / 1000, 2),
        "images_per_s_from_kernel_time": round(args.batch / (total / 1e6), 1),
        "share_by_op_type": {k: round(v / total, 4) for k, v in by_op.most_common()},
        "costliest_nodes": {k: round(v / total, 4) for k, v in by_node.most_common(15)},
    }
    write_report(args.out, report)
    for k, v in list(report["share_by_op_type"].items())[:8]:
        print(f"{k:24s} {100 * v:5.1f} %")
    print(f"kernel time per call: {report['kernel_ms_per_call']} ms (batch {args.batch})")
    return report


if __name__ == "__main__":
    main()
