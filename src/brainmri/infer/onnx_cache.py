"""Where the cached fp32 ONNX export of a model file lives, found without importing PyTorch
(making a missing one is infer/export.py's `cached_export`, which needs it)."""

from __future__ import annotations

import os
from pathlib import Path

EXPORT_VERSION = 2
"""Bumped when the graph or its metadata change, so cached exports are rebuilt."""


def cache_dir() -> Path:
    """Where ONNX exports of model files are kept: $BRAINMRI_CACHE, else ~/.cache/brainmri."""
    root = os.environ.get("BRAINMRI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "brainmri"
    )
    return Path(root) / "onnx"


def cached_path(sha: str) -> Path:
    """Where the fp32 export of the model file with this sha256 is (or will be) cached."""
    return cache_dir() / f"{sha[:20]}-v{EXPORT_VERSION}.onnx"
