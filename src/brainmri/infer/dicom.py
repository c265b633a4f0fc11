"""DICOM slices -> the uint8 luminance plane the model reads, the way a viewer would show them.

Order (DICOM PS3.3 C.11): stored values -> modality LUT (RescaleSlope/Intercept or a Modality
LUT Sequence) -> VOI LUT (a VOI LUT Sequence, else the first WindowCenter/WindowWidth, linear
as in C.11.2.1.2) -> 0..255. Without a window the plane's own minimum and maximum map to 0 and
255, so 8-, 12- and 16-bit images are scaled the same way. MONOCHROME1 (white = 0) is inverted.
Compressed transfer syntaxes decode through pydicom's pixel handlers (pylibjpeg: JPEG,
JPEG-LS, JPEG 2000; RLE natively); one that no installed handler supports is an error.

Refused (RejectedInput): another modality than MR, more than one frame, colour data. Errors
(BrainMRIError): not a DICOM file, no pixel data, pixels that cannot be decoded.
"""

from __future__ import annotations

import io
import warnings
from pathlib import PurePath
from typing import Any

import numpy as np

from brainmri.errors import BrainMRIError, RejectedInput

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
ACCEPTED_MODALITIES = {"MR"}


def is_dicom(data: bytes, name: str = "") -> bool:
    """True for the 'DICM' magic at offset 128 (Part 10 files) or a DICOM file name suffix."""
    return data[128:132] == b"DICM" or PurePath(name).suffix.lower() in DICOM_SUFFIXES


def read_dataset(data: bytes) -> Any:
    """Parse a DICOM file (with or without the Part 10 preamble); BrainMRIError if it is not one."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError, TypeError) as exc:
        msg = f"dicom: not a readable DICOM file ({type(exc).__name__}: {exc})"
        raise BrainMRIError(msg) from exc


def check_dataset(ds: Any) -> None:
    """Refuse what is not one grayscale MR slice (see module doc)."""
    modality = str(ds.get("Modality", "") or "").upper()
    if modality and modality not in ACCEPTED_MODALITIES:
        raise RejectedInput(
            f"dicom: modality {modality} (only MR slices are accepted)", code="dicom-modality"
        )
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise BrainMRIError("dicom: no pixel data (a header-only or non-image DICOM object)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise RejectedInput(
            f"dicom: multi-frame ({frames} frames); give one slice per file",
            code="dicom-multiframe",
        )
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        raise RejectedInput(
            f"dicom: colour image ({photometric}, {samples} samples per pixel); MR slices are "
            "grayscale",
            code="dicom-colour",
        )


def _pixels(ds: Any) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's problem
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", str(ts)) if ts is not None else "unknown transfer syntax"
        raise BrainMRIError(
            f"dicom: cannot decode the pixel data ({name}): {type(exc).__name__}: {exc}"
        ) from exc
    if arr.ndim != 2:
        raise RejectedInput(
            f"dicom: pixel array of shape {arr.shape} is not one 2-D slice", code="dicom-shape"
        )
    return arr


def _window(ds: Any) -> tuple[float, float] | None:
    """The first (center, width) of the dataset's window, if it has a usable one."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None

    from pydicom.multival import MultiValue

    def first(v: Any) -> float:
        return float(v[0] if isinstance(v, MultiValue | list | tuple) else v)

    try:
        center, width = first(ds.WindowCenter), first(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    return (center, width) if width >= 1 else None


def to_uint8(ds: Any, arr: np.ndarray) -> np.ndarray:
    """Modality LUT -> VOI LUT / window (or min-max) -> uint8; MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    x = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    win = _window(ds)
    if "VOILUTSequence" in ds:
        x = np.asarray(apply_voi_lut(x, ds, prefer_lut=True), dtype=np.float64)
        win = None
    if win is not None:
        c, w = win  # DICOM linear VOI function (PS3.3 C.11.2.1.2.1)
        y = np.clip((x - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)
    else:
        lo, hi = float(x.min()), float(x.max())
        y = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        y = 1.0 - y
    return np.rint(y * 255.0).astype(np.uint8)


def dicom_plane(data: bytes) -> np.ndarray:
    """One DICOM file's bytes -> HxW uint8 plane (see module doc for what is refused)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # padding, VR mismatches: pydicom copes, the user can't
        ds = read_dataset(data)
        check_dataset(ds)
        return to_uint8(ds, _pixels(ds))
