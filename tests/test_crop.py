"""Brain crop: the box holds the disc, is tight within the margin, and falls back when blank."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_brain

from brainmri.data.crop import brain_box, crop_to_brain
from brainmri.errors import BrainMRIError
from brainmri.infer.inputs import CROP_MARGIN, auto_crop, content_box, has_wide_frame


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


# ------------------------------------------------------------------ auto crop (predict --crop)


def framed_brain(canvas: int = 512, side: int = 224, seed: int = 0, at=None) -> np.ndarray:
    """A brain image that fills its own side x side picture, pasted into a black canvas."""
    img = np.zeros((canvas, canvas), np.uint8)
    y, x = at or ((canvas - side) // 2, (canvas - side) // 2)
    img[y : y + side, x : x + side] = synthetic_brain(side, 0.45, seed=seed)
    return img


@pytest.mark.parametrize("at", [None, (10, 250), (280, 20)], ids=["centre", "top-right", "low"])
def test_auto_crop_removes_a_wide_black_frame(at):
    img = framed_brain(at=at)
    out, cropped = auto_crop(img, "auto")
    assert cropped and has_wide_frame(img)
    side = 224 * 0.9  # the disc spans 0.9 of its picture
    assert side <= out.shape[0] <= side * (1 + 2 * CROP_MARGIN) + 4
    assert side <= out.shape[1] <= side * (1 + 2 * CROP_MARGIN) + 4
    assert (out > 100).sum() >= 0.99 * (img > 100).sum()  # the whole brain is kept


@pytest.mark.parametrize("radius", [0.3, 0.45])
def test_auto_crop_leaves_cropped_images_alone(radius):
    img = synthetic_brain(224, radius, seed=5)
    out, cropped = auto_crop(img, "auto")
    assert not cropped and out is img


def test_auto_crop_leaves_a_slice_narrow_on_one_axis_alone():
    """Content at 0.42 of the width and 0.88 of the height (as a group of benchmark notumor
    slices): already cropped, not framed; the same picture in a 512-px frame is cropped."""
    img = np.zeros((224, 224), np.uint8)
    img[12:209, 65:159] = synthetic_brain(224, 0.45, seed=2)[12:209, 65:159]
    x0, y0, x1, y1 = content_box(img)
    assert (x1 - x0) < 0.5 * 224 < (y1 - y0)
    assert auto_crop(img, "auto") == (img, False) and not has_wide_frame(img)
    canvas = np.zeros((512, 512), np.uint8)
    canvas[144:368, 144:368] = img
    out, cropped = auto_crop(canvas, "auto")
    assert cropped and out.shape[1] < 150  # cut to the content box (94 px) and its margin


def test_crop_modes_off_on_and_unknown():
    img = framed_brain()
    assert auto_crop(img, "off") == (img, False)
    assert auto_crop(img, "on")[1]
    cropped_already = synthetic_brain(224, 0.3, seed=1)
    out, did = auto_crop(cropped_already, "on")  # on: crops to the content box even here
    assert did and out.shape[0] < 224
    with pytest.raises(BrainMRIError, match="crop mode"):
        auto_crop(img, "sometimes")


def test_auto_crop_keeps_blank_and_dark_images():
    for img in (np.zeros((300, 300), np.uint8), np.full((64, 64), 15, np.uint8)):
        assert content_box(img) is None
        out, cropped = auto_crop(img, "auto")
        assert out is img and not cropped


def test_auto_crop_on_real_benchmark_images(small_benchmark):
    """Training images of the benchmark (already cropped) are left alone; framed, cropped."""
    from brainmri.data.images import load_gray

    files = sorted((small_benchmark / "Training").rglob("*.jpg"))
    assert len(files) >= 40
    touched = 0
    for f in files:
        g = load_gray(f)
        touched += auto_crop(g, "auto")[1]
        canvas = np.zeros((512, 512), np.uint8)
        canvas[144 : 144 + g.shape[0], 144 : 144 + g.shape[1]] = g
        out, cropped = auto_crop(canvas, "auto")
        assert cropped and out.shape[0] <= (224 + 4) * (1 + 2 * CROP_MARGIN) + 2  # blur: 2 px
    assert touched == 0  # none is framed on both axes (RESULTS §16.15)
