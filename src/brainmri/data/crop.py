"""Crop an MRI slice to the brain: blur, threshold, largest external contour, box + margin.

The threshold is Otsu's on the slightly blurred plane, never below a low floor, so a dark
frame with sensor noise does not count as "brain". A small opening removes specks and thin
text or ruler marks that touch nothing. When nothing plausible is found (blank or almost blank
image, or a largest region under `min_area` of the image) the full image is kept and the result
says so, so the report can count those fallbacks.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_THRESHOLD = 10
"""Floor of the threshold (grey levels): below it a pixel is background, whatever Otsu says."""
MIN_AREA = 0.01
"""Smallest brain region accepted, as a share of the image area."""


@dataclass(frozen=True)
class CropBox:
    """Box (x0, y0, x1, y1), end-exclusive, in pixels of the input; fallback=True: full image."""

    x0: int
    y0: int
    x1: int
    y1: int
    fallback: bool = False
    reason: str = ""

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


def brain_box(gray: np.ndarray, margin: float = 0.02, min_area: float = MIN_AREA) -> CropBox:
    """Bounding box of the largest bright region of a uint8 HxW plane, widened by margin.

    margin is a fraction of the box's own width/height added on each side (clipped to the
    image). Falls back to the full image (fallback=True, with a reason) when no region is found.
    """
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale plane, got shape {gray.shape}")
    h, w = gray.shape
    full = CropBox(0, 0, w, h)
    if h < 3 or w < 3:
        return CropBox(0, 0, w, h, True, "image too small to crop")
    if int(gray.max()) - int(gray.min()) < MIN_THRESHOLD:
        return CropBox(0, 0, w, h, True, "no contrast (blank or flat image)")
    blur = cv2.GaussianBlur(gray, (5, 5), 0)
    otsu, _ = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thresh = max(float(otsu), float(MIN_THRESHOLD))
    mask = (blur > thresh).astype(np.uint8)
    if not mask.any():
        return CropBox(0, 0, w, h, True, "no pixel above threshold (blank or dark image)")
    k = max(3, (min(h, w) // 100) | 1)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return CropBox(0, 0, w, h, True, "no region left after opening")
    # largest by filled area; ties broken by position so the choice is deterministic
    best = max(
        contours,
        key=lambda c: (cv2.contourArea(c), -cv2.boundingRect(c)[1], -cv2.boundingRect(c)[0]),
    )
    x, y, bw, bh = cv2.boundingRect(best)
    if bw * bh < min_area * h * w:
        return CropBox(0, 0, w, h, True, f"largest region {bw}x{bh} px is under {min_area:.0%}")
    dx, dy = int(round(margin * bw)), int(round(margin * bh))
    box = CropBox(max(0, x - dx), max(0, y - dy), min(w, x + bw + dx), min(h, y + bh + dy))
    return box if box.width > 1 and box.height > 1 else full


def crop_to_brain(
    gray: np.ndarray, margin: float = 0.02, min_area: float = MIN_AREA
) -> tuple[np.ndarray, CropBox]:
    """The plane cropped to brain_box (a view), and the box."""
    box = brain_box(gray, margin, min_area)
    return gray[box.y0 : box.y1, box.x0 : box.x1], box
