"""Would OpenVINO run the exported graph faster than ONNX Runtime on this CPU? (model only)

OpenVINO is not a dependency of brainmri: run this in a scratch environment with
`pip install openvino onnxruntime numpy`. Both runtimes read the same exported file
(`brainmri export`), on 2 threads (ONNX Runtime as `infer/onnx_runtime.py` sets it up, OpenVINO
with its latency hint); the script prints the largest output difference, then images/s at batch
1 and 32 in three alternating rounds on random pixels (speed does not depend on them).

    python bench/openvino_compare.py model.onnx
"""

from __future__ import annotations

import sys
import time

import numpy as np


def rate(fn, batch: int, n: int, size: int) -> float:
    x = np.random.rand(batch, 1, size, size).astype(np.float32)
    fn(x)
    fn(x)
    t0 = time.perf_counter()
    for _ in range(n):
        fn(x)
    return batch * n / (time.perf_counter() - t0)


def main(path: str) -> None:
    import onnxruntime as ort
    import openvino as ov

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    size = int(session.get_inputs()[0].shape[-1])
    compiled = ov.Core().compile_model(
        path, "CPU", {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY"}
    )
    x = np.random.rand(4, 1, size, size).astype(np.float32)
    by_ort, by_ov = session.run(None, {"pixels": x}), compiled({"pixels": x})
    for i, out in enumerate(compiled.outputs):
        print(out.get_any_name(), "max |difference|", float(np.abs(by_ov[out] - by_ort[i]).max()))
    for round_ in range(3):
        for batch, n in ((1, 200), (32, 10)):
            a = rate(lambda v: session.run(None, {"pixels": v}), batch, n, size)
            b = rate(lambda v: compiled({"pixels": v}), batch, n, size)
            print(f"round {round_} batch {batch}: onnxruntime {a:.1f}, openvino {b:.1f} img/s")


if __name__ == "__main__":
    main(sys.argv[1])
