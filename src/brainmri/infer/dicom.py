"""DICOM slices -> the uint8 luminance plane the model reads, the way a viewer would show them.

Order (DICOM PS3.3 C.11): stored values -> modality LUT (RescaleSlope/Intercept or a Modality
LUT Sequence) -> VOI LUT (a VOI LUT Sequence, else the first WindowCenter/WindowWidth, linear
as in C.11.2.1.2) -> 0..255. Without a window the plane's own minimum and maximum map to 0 and
255, so 8-, 12- and 16-bit images are scaled the same way. MONOCHROME1 (white = 0) is inverted.
Compressed transfer syntaxes decode through pydicom's pixel handlers (pylibjpeg: JPEG,
JPEG-LS, JPEG 2000; RLE natively); one that no installed handler supports is an error.

Refused (RejectedInput): another modality than MR, a Body Part Examined (0018,0015) that names
another part of the body than the head, more than one frame, colour data. Errors
(BrainMRIError): not a DICOM file, no pixel data, pixels that cannot be decoded.

The body-part check refuses only what the file itself says is elsewhere: a value with a word of
NON_HEAD_BODY_PARTS (DICOM PS3.16 CID 4031 terms) and none of HEAD_WORDS. An empty, missing or
unknown value (another language, a site's own code) is read as it would be without the tag.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import PurePath
from typing import Any

import numpy as np

from brainmri.errors import BrainMRIError, RejectedInput

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
ACCEPTED_MODALITIES = {"MR"}
HEAD_WORDS = ("HEAD", "BRAIN", "SKULL", "CRAN", "CEREB", "NEURO", "PITUIT", "SELLA")
"""Parts of a Body Part Examined value that mean the head (HEADNECK, INTRACRANIAL, ...)."""
NON_HEAD_BODY_PARTS = frozenset(
    """ABDOMEN ABDOMENPELVIS ANKLE ARM BLADDER BREAST BUTTOCK CALF CHEST CHESTABDOMEN
    CHESTABDPELVIS CLAVICLE COCCYX COLON CSPINE ELBOW ESOPHAGUS EXTREMITY FEMUR FINGER FOOT
    FOREARM GALLBLADDER HAND HEART HIP HUMERUS KIDNEY KNEE LEG LIVER LSPINE LUNG NECK PANCREAS
    PELVIS PROSTATE RECTUM RIB SACRUM SCROTUM SHOULDER SPINE SPLEEN SSPINE STOMACH TESTIS THIGH
    THORAX TLSPINE TOE TSPINE UTERUS WRIST""".split()
)
"""Body parts (DICOM CID 4031 defined terms) that are not the head: refused as a whole word."""


def is_dicom(data: bytes, name: str = "") -> bool:
    """True for the 'DICM' magic at offset 128 (Part 10 files) or a DICOM file name suffix."""
    return data[128:132] == b"DICM" or PurePath(name).suffix.lower() in DICOM_SUFFIXES


def read_dataset(data: bytes) -> Any:
    """Parse a DICOM file (with or without the Part 10 preamble); BrainMRIError if it is not one."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    part10 = data[128:132] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not part10)
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError, TypeError) as exc:
        msg = f"dicom: not a readable DICOM file ({type(exc).__name__}: {exc})"
        raise BrainMRIError(msg) from exc
    if not part10 and not any(k in ds for k in ("SOPClassUID", "Modality", "PixelData")):
        # force=True parses any bytes into something: without these it was not DICOM
        raise BrainMRIError("dicom: not a readable DICOM file (no DICOM header found)")
    return ds


def check_dataset(ds: Any) -> None:
    """Refuse what is not one grayscale MR slice (see module doc)."""
    modality = str(ds.get("Modality", "") or "").upper()
    if modality and modality not in ACCEPTED_MODALITIES:
        raise RejectedInput(
            f"dicom: modality {modality} (only MR slices are accepted)", code="dicom-modality"
        )
    if (part := other_body_part(str(ds.get("BodyPartExamined", "") or ""))) is not None:
        raise RejectedInput(
            f"dicom: body part {part} (Body Part Examined); only head slices are accepted",
            code="dicom-body-part",
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


def other_body_part(value: str) -> str | None:
    """The Body Part Examined value when it names a part of the body other than the head, else
    None (empty, unknown, or the head; module doc)."""
    upper = value.strip().upper()
    if not upper or any(word in upper for word in HEAD_WORDS):
        return None
    words = set(re.split(r"[^A-Z]+", upper))
    return upper if words & NON_HEAD_BODY_PARTS else None


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


def dicom_plane(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """One DICOM file's bytes -> HxW uint8 plane (see module doc for what is refused); with
    max_pixels, a larger slice is refused from its header, before its pixels are decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # padding, VR mismatches: pydicom copes, the user can't
        ds = read_dataset(data)
        check_dataset(ds)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        if max_pixels is not None and rows * cols > max_pixels:
            raise RejectedInput(
                f"over-pixel-limit: {cols}x{rows} = {rows * cols} px > {max_pixels}",
                code="over-pixel-limit",
            )
        return to_uint8(ds, _pixels(ds))


def plane_to_dicom(
    plane: np.ndarray,
    bits: int = 12,
    slope: float = 1.0,
    intercept: float = 0.0,
    monochrome1: bool = False,
    window: tuple[float, float] | None = None,
    transfer_syntax: str | None = None,
    modality: str = "MR",
) -> bytes:
    """A uint8 plane written as a single-frame DICOM file (tests, benchmarks, demos).

    Stored value v = round((p * (2**bits - 1) / 255 - intercept) / slope), so the modality LUT
    gives back p scaled to the full `bits` range; MONOCHROME1 stores the inverted values.
    `transfer_syntax` (a UID, e.g. pydicom.uid.RLELossless) compresses the pixel data.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    top = 2**bits - 1
    real = plane.astype(np.float64) * top / 255.0
    if monochrome1:
        real = top - real
    values = np.rint((real - intercept) / slope)
    if values.min() < 0 or values.max() > top:
        raise ValueError(f"slope {slope} / intercept {intercept} do not fit {bits}-bit storage")
    stored = values.astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Rows, ds.Columns = plane.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    ds.PixelData = stored.tobytes()
    if transfer_syntax is not None:
        ds.compress(transfer_syntax)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
