"""Brain crop: the box holds the disc, is tight within the margin, and falls back when blank."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_brain

from brainmri.data.crop import brain_box, crop_to_brain


def disc_bbox(size: int, radius: float, offset=(0, 0)) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the disc drawn by synthetic_brain, in continuous pixel units."""
    r = radius * size
    cy, cx = size / 2 + offset[0], size / 2 + offset[1]
    return cx - r, cy - r, cx + r + 1, cy + r + 1


@pytest.mark.parametrize(
    ("size", "radius", "offset"),
    [(256, 0.3, (0, 0)), (256, 0.2, (50, -60)), (300, 0.25, (-70, 40)), (512, 0.35, (20, 30))],
)
@pytest.mark.parametrize("margin", [0.0, 0.02, 0.1])
def test_box_contains_disc_and_is_tight(size, radius, offset, margin):
    img = synthetic_brain(size, radius, seed=3, offset=offset)
    box = brain_box(img, margin=margin)
    assert not box.fallback
    x0, y0, x1, y1 = disc_bbox(size, radius, offset)
    # contains the disc (1 px of rounding at the rim)
    assert box.x0 <= x0 + 1 and box.y0 <= y0 + 1
    assert box.x1 >= x1 - 1 and box.y1 >= y1 - 1
    # tight: no more than the margin (of the disc's own size) plus 2 px of blur on each side
    slack = margin * 2 * radius * size + 2
    assert box.x0 >= x0 - slack and box.y0 >= y0 - slack
    assert box.x1 <= x1 + slack and box.y1 <= y1 + slack


def test_crop_returns_the_box_region():
    img = synthetic_brain(256, 0.2, seed=1, offset=(40, -30))
    cropped, box = crop_to_brain(img, margin=0.02)
    assert cropped.shape == (box.height, box.width)
    assert np.array_equal(cropped, img[box.y0 : box.y1, box.x0 : box.x1])
    # almost all of the bright disc is inside the crop
    assert (cropped > 100).sum() >= 0.99 * (img > 100).sum()


def test_largest_region_wins_over_a_small_bright_mark():
    img = synthetic_brain(256, 0.25, seed=2, offset=(20, 20))
    img[5:20, 5:60] = 255  # a text/ruler-like mark in the corner
    box = brain_box(img, margin=0.0)
    assert box.x0 > 60 or box.y0 > 20, box


@pytest.mark.parametrize(
    "img",
    [
        np.zeros((200, 240), np.uint8),
        np.full((64, 64), 77, np.uint8),
        np.random.default_rng(0).integers(0, 12, (256, 256)).astype(np.uint8),
    ],
    ids=["all-black", "constant-grey", "dark-noise"],
)
def test_no_brain_falls_back_to_full_image(img):
    cropped, box = crop_to_brain(img)
    assert box.fallback
    assert box.reason
    assert (box.x0, box.y0, box.x1, box.y1) == (0, 0, img.shape[1], img.shape[0])
    assert cropped.shape == img.shape


def test_rejects_colour_input():
    with pytest.raises(ValueError):
        brain_box(np.zeros((10, 10, 3), np.uint8))
