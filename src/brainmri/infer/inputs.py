"""Turn one uploaded or given file into the plane the model reads, or refuse it with a reason.

`load_plane` decodes JPEG/PNG/... (the quarantine rules of `clean`, data/quality.py) and DICOM
(infer/dicom.py) to one uint8 luminance plane. `auto_crop` removes a wide black frame: the
benchmark images were cropped to the brain before training, so a raw scan with the head in the
middle of a large black field would otherwise reach the model with the brain at a third of the
size it was trained on.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from brainmri.data.quality import (
    DEFAULT_MAX_PIXELS,
    check_image_bytes_colour,
    check_plane,
    raise_for,
)
from brainmri.errors import BrainMRIError, RejectedInput
from brainmri.infer.dicom import dicom_plane, is_dicom

CROP_MODES = ("auto", "on", "off")
CropMode = Literal["auto", "on", "off"]

FRAME_LEVEL = 20
"""Grey level (after a 5x5 blur) at or under which a pixel belongs to a black frame."""
FRAME_SHARE = 0.01
"""A row/column is content when more than this share of its pixels is above FRAME_LEVEL."""
WIDE_FRAME = 0.5
"""auto: crop when the content box spans less than this share of both the width and the height.
(A 224-px image in a 512-px frame: <= 0.44 on both axes. Benchmark Training images: 37 of 5,708
are under 0.5 on one axis, none on both, so auto leaves them as they are; docs/RESULTS.md
§16.15.)"""
CROP_MARGIN = 0.10
"""Margin kept around the content box on each side, as a share of the box's own size. Chosen for
the shipped model on its 816 validation images framed centred and off-centre (margins 0, 0.03,
0.06, 0.1, 0.15: 1,566, 1,604, 1,612, 1,616, 1,616 of 1,632 right; docs/RESULTS.md §16.12)."""


MAX_CHROMA = 5.0
"""Colour difference (data/images.colour_difference: mean |R-G|, |G-B|, |R-B| in grey levels,
128 px thumbnail) above which a file is a colour picture. Benchmark Training (all 5,708): at
most 2.6 (RGB-mode files are grey); sample photos 17-67, an ultrasound 7.8."""
MAX_BACKGROUND = 60.0
"""Median grey level of the outer 6 % ring above which there is no dark background around the
head. Benchmark Training: at most 50 (99.9th percentile 42); a document page: 255."""
MAX_GRAIN = 0.42
"""Mean |x - Gaussian blur(x, 1 px)| / (std + 1) at 128 px above which an image is noise or
text. Benchmark Training: at most 0.40 (99.9th percentile 0.36); noise >= 0.60, text ~0.44."""


def scan_statistics(plane: np.ndarray) -> dict[str, float]:
    """Background level (median of the outer ring) and grain of a uint8 plane (see above)."""
    g = cv2.resize(plane, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32)
    b = max(2, int(0.06 * 128))
    ring = np.concatenate([g[:b].ravel(), g[-b:].ravel(), g[:, :b].ravel(), g[:, -b:].ravel()])
    grain = float(np.abs(g - cv2.GaussianBlur(g, (0, 0), 1.0)).mean() / (g.std() + 1.0))
    return {"background": float(np.median(ring)), "grain": grain}


def check_scan_statistics(plane: np.ndarray) -> None:
    """Refuse planes that cannot be an MR slice: no dark background, or noise/text grain."""
    st = scan_statistics(plane)
    if st["background"] > MAX_BACKGROUND:
        raise RejectedInput(
            f"not a brain MRI (no dark background: border level {st['background']:.0f} > "
            f"{MAX_BACKGROUND:.0f})",
            code="background",
        )
    if st["grain"] > MAX_GRAIN:
        raise RejectedInput(
            f"not a brain MRI (noise or text: grain {st['grain']:.2f} > {MAX_GRAIN})",
            code="grain",
        )


def load_plane(data: bytes, name: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """File bytes -> HxW uint8 luminance plane; RejectedInput / BrainMRIError when refused
    (clean's quality rules, DICOM rules, a colour picture, no dark background, noise/text)."""
    if is_dicom(data, name):
        plane = dicom_plane(data, max_pixels)
        failed = check_plane(plane)
        if failed is not None:
            raise_for(failed)
    else:
        plane, c = check_image_bytes_colour(data, max_pixels)
        if c > MAX_CHROMA:
            raise RejectedInput(
                f"not a brain MRI (colour picture: chroma {c:.1f} > {MAX_CHROMA:.0f})",
                code="colour",
            )
    check_scan_statistics(plane)
    return plane


def content_box(gray: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), end-exclusive, of the rows and columns that are not black frame."""
    mask = cv2.GaussianBlur(gray, (5, 5), 0) > FRAME_LEVEL
    h, w = gray.shape
    cols = np.flatnonzero(mask.sum(axis=0) > FRAME_SHARE * h)
    rows = np.flatnonzero(mask.sum(axis=1) > FRAME_SHARE * w)
    if cols.size == 0 or rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def content_spans(gray: np.ndarray) -> tuple[float, float]:
    """(width share, height share) of the content box; (1, 1) when there is no content."""
    box = content_box(gray)
    if box is None:
        return 1.0, 1.0
    x0, y0, x1, y1 = box
    h, w = gray.shape
    return (x1 - x0) / w, (y1 - y0) / h


def has_wide_frame(gray: np.ndarray) -> bool:
    """True when a black frame leaves the content under WIDE_FRAME of the width and of the
    height (a slice narrow on one axis only is an already-cropped image, not a framed one)."""
    return max(content_spans(gray)) < WIDE_FRAME


def box_crop(
    gray: np.ndarray, box: tuple[int, int, int, int], margin: float = CROP_MARGIN
) -> np.ndarray:
    """The plane cut to `box` (x0, y0, x1, y1) plus `margin` of the box's own size on each
    side (clipped to the image); a view."""
    x0, y0, x1, y1 = box
    h, w = gray.shape
    dx, dy = int(round(margin * (x1 - x0))), int(round(margin * (y1 - y0)))
    return gray[max(0, y0 - dy) : min(h, y1 + dy), max(0, x0 - dx) : min(w, x1 + dx)]


def frame_crop(gray: np.ndarray, margin: float = CROP_MARGIN) -> np.ndarray:
    """The plane cut to its content box plus `margin` (clipped to the image); a view."""
    box = content_box(gray)
    return gray if box is None else box_crop(gray, box, margin)


def auto_crop(gray: np.ndarray, mode: str = "auto") -> tuple[np.ndarray, bool]:
    """(plane, whether it was cropped). on: always crop to the content; off: never;
    auto: only when has_wide_frame (already-cropped images are left as they are)."""
    if mode not in CROP_MODES:
        raise BrainMRIError(f"unknown crop mode {mode!r} (choose one of {', '.join(CROP_MODES)})")
    if mode == "off" or (mode == "auto" and not has_wide_frame(gray)):
        return gray, False
    out = frame_crop(gray)
    cropped = out.shape != gray.shape
    return (np.ascontiguousarray(out) if cropped else gray), cropped
