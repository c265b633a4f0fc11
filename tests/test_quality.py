"""data/quality.py: clean's quarantine rules as one function that predict and serve share."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import synthetic_brain
from PIL import Image

from brainmri.data.quality import (
    MIN_SIDE,
    check_header,
    check_image_bytes,
    check_image_bytes_colour,
    check_plane,
)
from brainmri.errors import BrainMRIError, RejectedInput


def encode(arr: np.ndarray, fmt: str = "PNG", convert: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    (im.convert(convert) if convert else im).save(buf, fmt, **kw)
    return buf.getvalue()


def test_a_good_image_comes_back_as_its_luminance_plane():
    img = synthetic_brain(96, seed=4)
    rgb = np.repeat(img[:, :, None], 3, axis=2)
    for data in (encode(img), encode(rgb), encode(rgb, "JPEG", quality=95)):
        plane, colour = check_image_bytes_colour(data)
        assert np.array_equal(plane, check_image_bytes(data))
        assert plane.dtype == np.uint8 and plane.shape == (96, 96)
        assert np.abs(plane.astype(int) - img).mean() < 3  # JPEG: nearly; PNG: exactly
        assert colour < 1.0  # grey pixels in an RGB file are no colour


def test_the_colour_difference_comes_from_the_same_decode():
    img = synthetic_brain(300, seed=5)
    tinted = np.stack([img, img // 2, np.zeros_like(img)], axis=2)  # a red-brown picture
    plane, colour = check_image_bytes_colour(encode(tinted))
    assert plane.shape == (300, 300)
    rgb = tinted.astype(np.int16)
    full = (np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])
            + np.abs(rgb[..., 0] - rgb[..., 2])).mean() / 3  # fmt: skip
    assert abs(colour - full) < 0.05 * full  # the 128-px thumbnail keeps the mean
    assert colour > 5.0


def _gif(frames: int) -> bytes:
    ims = [Image.fromarray(synthetic_brain(64, seed=k)) for k in range(frames)]
    buf = io.BytesIO()
    ims[0].save(buf, "GIF", save_all=True, append_images=ims[1:], duration=50)
    return buf.getvalue()


REJECTED = {
    "tiny": lambda: encode(np.full((1, 1), 128, np.uint8)),
    "16-bit": lambda: encode(synthetic_brain(64).astype(np.uint16) * 256),
    "animated": lambda: _gif(3),
    "cmyk": lambda: encode(synthetic_brain(64), "JPEG", convert="CMYK"),
    "blank": lambda: encode(np.full((64, 64), 200, np.uint8)),
    "over-pixel-limit": lambda: encode(synthetic_brain(300)),
}


@pytest.mark.parametrize("reason", sorted(REJECTED))
def test_refused_files_raise_rejected_input_with_the_reason(reason):
    with pytest.raises(RejectedInput) as info:
        check_image_bytes(REJECTED[reason](), max_pixels=50_000)
    assert info.value.code == reason
    assert str(info.value).startswith(reason + ": ")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "zero-byte"),
        (b"this is not an image\n", "not-an-image"),
        (encode(synthetic_brain(128), "JPEG", quality=90)[:900], "truncated"),
    ],
    ids=["zero-byte", "text", "truncated"],
)
def test_unreadable_files_are_errors_not_rejections(data, reason):
    with pytest.raises(BrainMRIError) as info:
        check_image_bytes(data)
    assert not isinstance(info.value, RejectedInput)
    assert reason in str(info.value)


def test_plane_rules_and_header_rules_agree_on_the_size_limit():
    small = np.zeros((MIN_SIDE - 1, 200), np.uint8)
    small[0, 0] = 9
    assert check_plane(small)["reason"] == "tiny"
    failed, info = check_header(encode(small), 10**8)
    assert failed["reason"] == "tiny" and info["width"] == 200
    ok = synthetic_brain(MIN_SIDE)
    assert check_plane(ok) is None and check_header(encode(ok), 10**8)[0] is None
