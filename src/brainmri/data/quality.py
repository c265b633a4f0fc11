"""The quarantine rules of `clean`, shared with predict and serve: one definition of a bad file.

`check_header` opens a file lazily (no pixel decoding) and judges format, mode, frames and
size; `decode` decodes it fully to the luminance plane (data/images.py) and classifies decoder
failures; a decoded plane with a single grey level is "blank". `clean` uses the dict form
(`bad(...)`, one report row per file, the batch goes on); `check_image_bytes` raises instead:
`RejectedInput` for a readable file that is not a usable slice, `BrainMRIError` for a file
that cannot be read at all.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from brainmri.data.images import load_gray_chroma
from brainmri.errors import BrainMRIError, RejectedInput

MIN_SIDE = 32
"""Smallest accepted width and height (pixels)."""
DEFAULT_MAX_PIXELS = 40_000_000
"""Pixel-limit default: larger images are refused before decoding (decompression bombs)."""
ALLOWED_MODES = {"L", "LA", "RGB", "RGBA", "P", "PA"}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
ERROR_REASONS = {"unreadable", "zero-byte", "not-an-image", "corrupt", "truncated"}
"""Reasons that mean "cannot be read" (status error); every other reason means "rejected"."""


def bad(reason: str, detail: str = "", sha: str = "") -> dict[str, Any]:
    """A failed check as clean reports it."""
    return {"ok": False, "reason": reason, "detail": detail, "sha256": sha}


def check_header(data: bytes, max_pixels: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Open lazily (no pixel decoding) and check format, mode, frames and size."""
    info: dict[str, Any] = {}
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            info = {"format": im.format, "mode": im.mode, "width": w, "height": h}
            if w * h > max_pixels:
                return bad("over-pixel-limit", f"{w}x{h} = {w * h} px > {max_pixels}"), info
            frames = int(getattr(im, "n_frames", 1) or 1)
            if frames > 1:
                return bad("animated", f"{im.format} with {frames} frames"), info
            if im.mode in SIXTEEN_BIT_MODES:
                return bad("16-bit", f"mode {im.mode}"), info
            if im.mode == "CMYK":
                return bad("cmyk", "CMYK colour mode"), info
            if im.mode not in ALLOWED_MODES:
                return bad("unsupported-mode", f"mode {im.mode}"), info
            if w < MIN_SIDE or h < MIN_SIDE:
                return bad("tiny", f"{w}x{h} px < {MIN_SIDE} px"), info
    except Image.DecompressionBombError as exc:
        return bad("over-pixel-limit", str(exc)), info
    except UnidentifiedImageError:
        return bad("not-an-image", "not a format PIL can read"), info
    except Exception as exc:  # noqa: BLE001 - a broken header of any kind: the batch goes on
        return bad("corrupt", f"{type(exc).__name__}: {exc}"), info
    return None, info


def decode(data: bytes) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """Full decode to the luminance plane (images.load_gray); classify failures."""
    pair, failed = decode_with_chroma(data, chroma=False)
    return (None if pair is None else pair[0]), failed


def decode_with_chroma(
    data: bytes, chroma: bool = True
) -> tuple[tuple[np.ndarray, float] | None, dict[str, Any] | None]:
    """`decode`, with the colour difference of the same decoded pixels (images.load_gray_chroma)."""
    try:
        return load_gray_chroma(io.BytesIO(data), chroma), None
    except BrainMRIError as exc:
        cause = exc.__cause__ or exc
        msg = f"{type(cause).__name__}: {cause}"
        if "truncated" in str(cause).lower():
            return None, bad("truncated", msg)
        return None, bad("corrupt", msg)
    except Exception as exc:  # noqa: BLE001 - a decoder crash on one file must not stop the batch
        return None, bad("corrupt", f"{type(exc).__name__}: {exc}")


def check_plane(gray: np.ndarray) -> dict[str, Any] | None:
    """Rules on a decoded plane (also for DICOM pixels): too small, or a single grey level."""
    h, w = gray.shape[:2]
    if w < MIN_SIDE or h < MIN_SIDE:
        return bad("tiny", f"{w}x{h} px < {MIN_SIDE} px")
    lo, hi = int(gray.min()), int(gray.max())
    if lo == hi:
        return bad("blank", f"constant image (value {lo})")
    return None


def raise_for(result: dict[str, Any]) -> None:
    """Raise the exception a failed check stands for (error kinds vs rejected kinds)."""
    reason, detail = result["reason"], result.get("detail", "")
    message = f"{reason}: {detail}" if detail else reason
    if reason in ERROR_REASONS:
        raise BrainMRIError(f"cannot read image ({message})")
    raise RejectedInput(message, code=reason)


def check_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Apply every quarantine rule to one file's bytes; return its uint8 luminance plane.

    Raises RejectedInput (tiny, 16-bit, animated, over-pixel-limit, cmyk, unsupported-mode,
    blank) or BrainMRIError (zero-byte, not-an-image, corrupt, truncated).
    """
    return _checked(data, max_pixels, chroma=False)[0]


def check_image_bytes_colour(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, float]:
    """`check_image_bytes` and the colour difference of the same decoded pixels
    (images.colour_difference; 0 for grey-level files): the input guard needs both."""
    return _checked(data, max_pixels, chroma=True)


def _checked(data: bytes, max_pixels: int, chroma: bool) -> tuple[np.ndarray, float]:
    if not data:
        raise_for(bad("zero-byte", "empty file"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning, odd EXIF: judged here
        failed, _ = check_header(data, max_pixels)
        if failed is not None:
            raise_for(failed)
        pair, failed = decode_with_chroma(data, chroma)
    if failed is not None or pair is None:
        raise_for(failed or bad("corrupt"))
    assert pair is not None
    failed = check_plane(pair[0])
    if failed is not None:
        raise_for(failed)
    return pair
