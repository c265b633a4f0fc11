"""Per-image intensity normalization of uint8 planes in numpy, without PyTorch.

The arithmetic of `data.transforms.normalize_intensity` on ``planes / 255`` (the percentiles as
``torch.quantile`` gives them) to the bit, read from each image's 256-bin histogram and applied
as a 256-entry table per image. `data.transforms.normalize_planes` uses it for CPU tensors, and
the ONNX Runtime path of `Classifier` uses it directly, so that classifying a file on the CPU
needs no PyTorch import (docs/RESULTS.md §17.14–17.15).
"""

from __future__ import annotations

import numpy as np

from brainmri.errors import BrainMRIError

INTENSITY_MODES = ("none", "percentile")
PCT_LO, PCT_HI = 0.005, 0.995


def uint8_percentiles(u8: np.ndarray) -> np.ndarray:
    """(2, B) float32: the 0.5th and 99.5th percentiles of uint8 images ``(B, ...)`` as
    ``torch.quantile`` gives them on ``u8 / 255``: ranks in float64, the two order statistics
    around each rank, and torch's float32 ``lerp`` (``a + w (b - a)`` below a weight of 0.5,
    ``b - (b - a)(1 - w)`` from it, each rounded once)."""
    b = u8.shape[0]
    flat = u8.reshape(b, -1)
    n = flat.shape[1]
    if b:
        cum = np.stack([np.bincount(r, minlength=256) for r in flat]).cumsum(1)
    else:
        cum = np.zeros((0, 256), np.int64)
    ranks = np.array([PCT_LO, PCT_HI], dtype=np.float32).astype(np.float64) * (n - 1)
    below, above = np.floor(ranks), np.ceil(ranks)

    def order_stat(k: np.ndarray) -> np.ndarray:  # (2,) ranks -> (2, B): smallest v, cum[v] > k
        idx = np.array([[np.searchsorted(c, kk, side="right") for c in cum] for kk in k])
        return idx.reshape(2, b).astype(np.float32) / np.float32(255.0)

    lo, hi = order_stat(below), order_stat(above)
    w = (ranks - below).astype(np.float32).reshape(2, 1)
    d = (hi - lo).astype(np.float64)  # the difference rounded to float32 first, as torch does
    low_w = lo.astype(np.float64) + w.astype(np.float64) * d
    high_w = hi.astype(np.float64) - d * (np.float32(1.0) - w).astype(np.float64)
    return np.where(w < 0.5, low_w, high_w).astype(np.float32)


def normalize_planes(planes: np.ndarray, mode: str = "none") -> np.ndarray:
    """uint8 planes ``(B, C, H, W)`` -> float32 [0, 1], intensity-normalized (module doc)."""
    if mode == "none":
        return planes.astype(np.float32) / np.float32(255.0)
    if mode != "percentile":
        raise BrainMRIError(f"unknown intensity mode {mode!r} (one of {INTENSITY_MODES})")
    b = planes.shape[0]
    q = uint8_percentiles(planes)
    levels = np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0)
    lo = q[0].reshape(-1, 1)
    span = np.maximum(q[1] - q[0], np.float32(1e-3)).reshape(-1, 1)
    table = np.clip((levels - lo) / span, np.float32(0.0), np.float32(1.0))
    index = planes.reshape(b, -1).astype(np.intp)
    return np.take_along_axis(table, index, 1).reshape(planes.shape)
