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

from brainmri.data.quality import DEFAULT_MAX_PIXELS, check_image_bytes, check_plane, raise_for
from brainmri.errors import BrainMRIError
from brainmri.infer.dicom import dicom_plane, is_dicom

CROP_MODES = ("auto", "on", "off")
CropMode = Literal["auto", "on", "off"]

FRAME_LEVEL = 20
"""Grey level (after a 5x5 blur) at or under which a pixel belongs to a black frame."""
FRAME_SHARE = 0.01
"""A row/column is content when more than this share of its pixels is above FRAME_LEVEL."""
WIDE_FRAME = 0.5
"""auto: crop when the content box spans less than this share of the width or the height.
(Benchmark Training images: 37 of 5,708 under 0.5; a 224-px image in a 512-px frame: <= 0.44.)"""
CROP_MARGIN = 0.06
"""Margin kept around the content box on each side, as a share of the box's own size (chosen on
96 framed validation images among 0, 0.03, 0.06, 0.1, 0.15: 88, 90, 93, 91, 91 right)."""


def load_plane(data: bytes, name: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """File bytes -> HxW uint8 luminance plane; RejectedInput / BrainMRIError when refused."""
    if is_dicom(data, name):
        plane = dicom_plane(data, max_pixels)
        failed = check_plane(plane)
        if failed is not None:
            raise_for(failed)
        return plane
    return check_image_bytes(data, max_pixels)


def content_box(gray: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), end-exclusive, of the rows and columns that are not black frame."""
    mask = cv2.GaussianBlur(gray, (5, 5), 0) > FRAME_LEVEL
    h, w = gray.shape
    cols = np.flatnonzero(mask.sum(axis=0) > FRAME_SHARE * h)
    rows = np.flatnonzero(mask.sum(axis=1) > FRAME_SHARE * w)
    if cols.size == 0 or rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def has_wide_frame(gray: np.ndarray) -> bool:
    """True when a black frame leaves the content under WIDE_FRAME of the width or height."""
    box = content_box(gray)
    if box is None:
        return False
    x0, y0, x1, y1 = box
    h, w = gray.shape
    return (x1 - x0) < WIDE_FRAME * w or (y1 - y0) < WIDE_FRAME * h


def frame_crop(gray: np.ndarray, margin: float = CROP_MARGIN) -> np.ndarray:
    """The plane cut to its content box plus `margin` (clipped to the image); a view."""
    box = content_box(gray)
    if box is None:
        return gray
    x0, y0, x1, y1 = box
    h, w = gray.shape
    dx, dy = int(round(margin * (x1 - x0))), int(round(margin * (y1 - y0)))
    return gray[max(0, y0 - dy) : min(h, y1 + dy), max(0, x0 - dx) : min(w, x1 + dx)]


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
