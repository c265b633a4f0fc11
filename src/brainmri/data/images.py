"""Decode any supported image the same way: one grayscale plane, uint8.

MRI slices are grayscale; the benchmark mixes RGB-mode and L-mode files by source collection
(and so by class), so every image is reduced to luminance before anything else sees it and the
model cannot learn the file mode. Models get that plane repeated to 3 channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from brainmri.errors import BrainMRIError


def load_gray(path: str | Path) -> np.ndarray:
    """Decode an image to an HxW uint8 luminance array (EXIF orientation applied)."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / max(hi - lo, 1.0) * 255.0
                return arr.astype(np.uint8)
            return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BrainMRIError(f"cannot read image {path}: {exc}") from exc


def resize_square(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxW plane to size x size (bilinear, antialiased when shrinking)."""
    if gray.shape == (size, size):
        return gray
    im = Image.fromarray(gray)
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def to_rgb(gray: np.ndarray) -> np.ndarray:
    """HxW -> HxWx3 by repetition."""
    return np.repeat(gray[:, :, None], 3, axis=2)
