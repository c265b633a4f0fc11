"""ONNX Runtime backend: an exported graph run on CPU threads sized to this machine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.errors import BrainMRIError


def available_cores() -> int:
    """CPU cores this process may run on (affinity-aware, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None, spin_wait: bool = False):
    """All cores in one op at a time (a CNN gains little from parallel ops), no spin-waiting
    unless asked (`spin_wait`: the threads spin between operators while a call runs and stop
    when it ends; faster one image at a time on an idle machine, slower on a loaded one)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or available_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # Idle workers sleep instead of spin-waiting: the decode threads (and any other process)
    # share the cores; under load this tripled batch-1 speed (bench/ort_threads.py).
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
    if spin_wait:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


class OnnxBackend:
    """Runs `pixels` (N, 1, S, S) float32 through an exported graph; outputs as CPU tensors."""

    name = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None, spin_wait: bool = False):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BrainMRIError("runtime onnx needs onnxruntime (pip install onnxruntime)") from exc
        try:
            self.session = ort.InferenceSession(
                str(path), session_options(threads, spin_wait), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own non-Python-standard types
            raise BrainMRIError(f"not a loadable ONNX model: {path} ({exc})") from exc
        raw = self.session.get_modelmeta().custom_metadata_map.get("brainmri")
        if not raw:
            raise BrainMRIError(f"{path} is an ONNX model but not a brainmri export")
        self.meta: dict = json.loads(raw)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.device = "cpu"

    def __call__(self, pixels: Any) -> dict[str, np.ndarray]:
        """Pixels (N, 1, S, S) in [0, 1], numpy or a CPU tensor -> float32 numpy outputs."""
        if hasattr(pixels, "detach"):
            pixels = pixels.detach().cpu().numpy()
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        out = self.session.run(self.output_names, {"pixels": x})
        return dict(zip(self.output_names, out, strict=True))
