"""How fast `predict` could stream on this CPU at most: the graph's arithmetic against the peak.

1. Multiply-accumulates per image of the shipped model's exported graph (every Conv, MatMul and
   Gemm node, from ONNX shape inference: the backbone, the head and the guard's distances).
2. The CPU's measured fp32 peak: the best of `--repeats` 2048 x 2048 matrix products in numpy,
   PyTorch and ONNX Runtime, on all cores and on one. The peak is the larger of the fastest
   all-core rate and the cores times the fastest one-core rate (the most generous reading, so
   that the bound below is an upper bound).
3. CPU time per image of everything `predict` does before the graph (read, decode, the input
   guard's checks, auto crop, resize, intensity normalization), one image at a time on one
   thread, over Training images evenly spaced through the folder (no test image).
4. The graph's measured rate at batch 32 (ONNX Runtime with `predict`'s session options).

From these: the end-to-end rate the cores could give if the convolutions ran at the matrix
product's peak (every core busy, graph and decoding both counted in core-seconds), the share of
the peak the 200 img/s goal needs, and the share the graph reaches.

    python bench/compute_bound.py [--model M] [--data D] [--images 300] \
        [--out bench/results/speed/compute_bound.json]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from robustness import model_data_args, report_head, write_report

from brainmri.data.folders import resolve_data_dir, scan_split
from brainmri.data.transforms import normalize_planes
from brainmri.errors import BrainMRIError
from brainmri.infer.export import cached_export
from brainmri.infer.onnx_runtime import available_cores, session_options
from brainmri.infer.records import prepare_bytes, read_input
from brainmri.model.checkpoint import read_metadata, shipped_model_path

GOAL = 200.0
"""Issue 8's end-to-end goal, images per second on 2 cores."""


def graph_macs(onnx_path: Path) -> dict[str, float]:
    """Multiply-accumulates per image by operator type (batch dimension set to 1)."""
    import onnx
    from onnx import shape_inference

    g = shape_inference.infer_shapes(onnx.load(str(onnx_path))).graph
    shapes = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else 1 for d in v.type.tensor_type.shape.dim
        ]
        for v in [*g.value_info, *g.output, *g.input]
    }
    shapes |= {i.name: list(i.dims) for i in g.initializer}
    macs: Counter = Counter()
    for n in g.node:
        if n.op_type == "Conv":
            w, out = shapes[n.input[1]], shapes[n.output[0]]
            macs["Conv"] += int(np.prod(out)) * int(np.prod(w[1:]))
        elif n.op_type in ("MatMul", "Gemm"):
            a, out = shapes[n.input[0]], shapes[n.output[0]]
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            macs[n.op_type] += int(np.prod(out)) * (a[-2] if trans_a else a[-1])
    return dict(macs)


def best_gflops(fn, flop: float, repeats: int) -> float:
    fn()
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = max(best, flop / (time.perf_counter() - t) / 1e9)
    return best


def matmul_peak(threads: int, repeats: int, n: int = 2048) -> dict[str, float]:
    """fp32 GFLOP/s of an n x n matrix product per library, on `threads` threads."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from threadpoolctl import threadpool_limits

    a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
    flop = 2.0 * n**3
    torch.set_num_threads(threads)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    spec = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ABC"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])], "mm", spec[:2], spec[2:]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), session_options(threads))
    with threadpool_limits(threads):  # numpy's BLAS keeps its own thread count
        numpy_rate = best_gflops(lambda: a @ b, flop, repeats)
    return {
        "numpy": round(numpy_rate, 1),
        "torch": round(best_gflops(lambda: ta @ tb, flop, repeats), 1),
        "onnxruntime": round(
            best_gflops(lambda: sess.run(None, {"A": a, "B": b}), flop, repeats), 1
        ),
    }


def prep_seconds(paths: list[Path], size: int, intensity: str) -> tuple[float, int]:
    """Median CPU seconds per image of predict's work before the graph; images refused by the
    guard are left out (their count is returned)."""
    torch.set_num_threads(1)
    times, refused = [], 0
    for p in paths:
        t = time.process_time()
        try:
            plane, _ = prepare_bytes(read_input(p), str(p), size, "auto")
        except BrainMRIError:
            refused += 1
            continue
        normalize_planes(torch.from_numpy(plane.copy())[None, None], intensity)
        times.append(time.process_time() - t)
    return float(np.median(times)), refused


def graph_rate(onnx_path: Path, size: int, seconds: float = 5.0) -> float:
    """Images per second of the graph alone at batch 32, predict's session options."""
    import onnxruntime as ort

    sess = ort.InferenceSession(
        str(onnx_path), session_options(), providers=["CPUExecutionProvider"]
    )
    x = np.random.rand(32, 1, size, size).astype(np.float32)
    sess.run(None, {"pixels": x})
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        sess.run(None, {"pixels": x})
        n += 32
    return n / (time.perf_counter() - t)


def bounds(macs: float, peak: float, prep_s: float, cores: int, graph_ips: float) -> dict:
    """The rates and shares of the module doc (peak in GFLOP/s on all cores)."""
    flop = 2.0 * macs
    graph_core_s = flop / (peak * 1e9 / cores)  # core-seconds per image at the peak
    budget = cores / GOAL  # core-seconds per image the goal allows
    return {
        "graph_alone_at_peak_img_per_s": round(peak * 1e9 / flop, 1),
        "end_to_end_at_peak_img_per_s": round(cores / (graph_core_s + prep_s), 1),
        "share_of_peak_the_goal_needs": round(graph_core_s / (budget - prep_s), 3)
        if budget > prep_s
        else None,
        "share_of_peak_the_graph_reaches": round(graph_ips * flop / (peak * 1e9), 3),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_data_args(ap)
    ap.add_argument("--images", type=int, default=300, help="Training images for step 3")
    ap.add_argument("--repeats", type=int, default=20, help="matrix products per library")
    ap.add_argument("--out", type=Path, default=Path("bench/results/speed/compute_bound.json"))
    args = ap.parse_args(argv)
    path = args.model or shipped_model_path()
    prep = read_metadata(path)["preprocessing"]
    size, intensity = int(prep["image_size"]), prep.get("intensity", "none")
    onnx_path = cached_export(path)
    cores = available_cores()
    macs = graph_macs(onnx_path)
    peaks = matmul_peak(cores, args.repeats)
    one_core = matmul_peak(1, args.repeats)
    train = scan_split(resolve_data_dir(args.data), "Training")
    picks = [train[i].path for i in np.linspace(0, len(train) - 1, args.images).astype(int)]
    prep_s, refused = prep_seconds(picks, size, intensity)
    graph_ips = graph_rate(onnx_path, size)
    peak = max(max(peaks.values()), cores * max(one_core.values()))
    report = {
        **report_head("compute_bound", __file__, argv, torch.device("cpu")),
        "model": str(path),
        "cores": cores,
        "macs_per_image_by_op": macs,
        "gflop_per_image": round(2.0 * sum(macs.values()) / 1e9, 4),
        "matmul_gflops_all_cores": peaks,
        "matmul_gflops_one_core": one_core,
        "peak_gflops": round(peak, 1),
        "prep_cpu_ms_per_image_median": round(1000 * prep_s, 2),
        "prep_images": len(picks) - refused,
        "graph_img_per_s_batch32": round(graph_ips, 1),
        **bounds(sum(macs.values()), peak, prep_s, cores, graph_ips),
    }
    write_report(args.out, report)
    for k, v in report.items():
        if k not in ("benchmark", "date", "command", "machine"):
            print(f"{k}: {v}")
    return report


if __name__ == "__main__":
    main()
