"""The cached fp32 ONNX export of a model file, found without importing PyTorch; only a missing
export is made (infer/export.py, which needs PyTorch)."""

from __future__ import annotations

import os
from pathlib import Path

EXPORT_VERSION = 1
"""Bumped when the graph or its metadata change, so cached exports are rebuilt."""


def cache_dir() -> Path:
    """Where ONNX exports of model files are kept: $BRAINMRI_CACHE, else ~/.cache/brainmri."""
    root = os.environ.get("BRAINMRI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "brainmri"
    )
    return Path(root) / "onnx"


def cached_export(model_path: str | Path, sha: str | None = None) -> Path:
    """The fp32 ONNX export of a model file, made once and reused (keyed by its sha256)."""
    from brainmri.data.dedupe import file_sha256

    sha = sha or file_sha256(model_path)
    path = cache_dir() / f"{sha[:20]}-v{EXPORT_VERSION}.onnx"
    if not path.is_file():
        from brainmri.infer.export import export_onnx

        export_onnx(model_path, path)
    return path
