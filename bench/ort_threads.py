"""ONNX Runtime session settings on this machine: threads and spin-waiting, model only.

Interleaved rounds of 3 s per setting (img/s at batch 1 and 32) on an fp32 export of the
shipped model; the machine's load average is recorded, since spin-waiting threads matter most
when other processes share the cores.

    python bench/ort_threads.py --out bench/results/ort_threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from brainmri.infer.export import cached_export
from brainmri.infer.onnx_runtime import session_options
from brainmri.model.checkpoint import shipped_model_path

SETTINGS = [
    ("2 threads, spinning", 2, "1"),
    ("2 threads, no spinning", 2, "0"),
    ("1 thread", 1, "0"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/ort_threads.json"))
    args = ap.parse_args()
    import onnxruntime as ort

    os.environ.setdefault("BRAINMRI_CACHE", str(Path(tempfile.gettempdir()) / "brainmri-cache"))
    path = cached_export(shipped_model_path())
    res: dict = {}
    load = [os.getloadavg()]
    for _ in range(args.rounds):
        for name, threads, spin in SETTINGS:
            so = session_options(threads)
            so.add_session_config_entry("session.intra_op.allow_spinning", spin)
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            for b in (1, 32):
                x = np.random.rand(b, 1, 192, 192).astype(np.float32)
                sess.run(None, {"pixels": x})
                t, n = time.perf_counter(), 0
                while time.perf_counter() - t < 3:
                    sess.run(None, {"pixels": x})
                    n += b
                res.setdefault(name, {}).setdefault(f"batch{b}", []).append(
                    n / (time.perf_counter() - t)
                )
    load.append(os.getloadavg())
    out = {"command": "python bench/ort_threads.py", "date": time.strftime("%Y-%m-%d"),
           "loadavg": load, "img_per_s": res}  # fmt: skip
    args.out.write_text(json.dumps(out, indent=1))
    for name, per in res.items():
        print(name, {k: [round(v, 1) for v in vals] for k, vals in per.items()})


if __name__ == "__main__":
    main()
