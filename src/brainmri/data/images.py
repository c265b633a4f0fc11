"""Decode any supported image the same way: one grayscale plane, uint8.

MRI slices are grayscale; the benchmark mixes RGB-mode and L-mode files by source collection
(and so by class), so every image is reduced to luminance before anything else sees it and the
model cannot learn the file mode. Models get that plane repeated to 3 channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import cv2
import numpy as np
from PIL import Image, ImageOps

from brainmri.errors import BrainMRIError

GREY_MODES = ("L", "LA", "1")


def load_gray(path: str | Path | IO[bytes]) -> np.ndarray:
    """Decode an image to an HxW uint8 luminance array (EXIF orientation applied)."""
    return load_gray_chroma(path, chroma=False)[0]


def load_gray_chroma(path: str | Path | IO[bytes], chroma: bool = True) -> tuple[np.ndarray, float]:
    """One decode -> (HxW uint8 luminance, `colour_difference` of the same pixels, 0 for grey
    files or when not asked): the input guard needs both, and a second decode cost it ~1 ms."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / max(hi - lo, 1.0) * 255.0
                return arr.astype(np.uint8), 0.0
            diff = colour_difference(im) if chroma else 0.0
            return np.asarray(im.convert("L"), dtype=np.uint8).copy(), diff
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BrainMRIError(f"cannot read image {path}: {exc}") from exc


def colour_difference(im: Image.Image, side: int = 128) -> float:
    """Mean |R-G|, |G-B|, |R-B| in grey levels over an area-averaged thumbnail of at most
    `side` px (0 for grey-level modes): how far a decoded picture is from grey."""
    if im.mode in GREY_MODES or im.mode.startswith("I"):
        return 0.0
    rgb = np.asarray(im.convert("RGB"))
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    a = rgb.astype(np.int16)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    return float((np.abs(r - g) + np.abs(g - b) + np.abs(r - b)).mean() / 3)


def resize_square(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxW plane to size x size (bilinear, antialiased when shrinking)."""
    if gray.shape == (size, size):
        return gray
    im = Image.fromarray(gray)
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def to_rgb(gray: np.ndarray) -> np.ndarray:
    """HxW -> HxWx3 by repetition."""
    return np.repeat(gray[:, :, None], 3, axis=2)
