"""One input file -> model-ready plane, and the record every consumer reports.

Decoding and cropping are the input guard's (``brainmri.infer.inputs``: the quality rules of
``clean``, DICOM, wide-black-frame detection); the OOD rejection reason is ``infer.guard``'s.

A record is a plain dict: ``path``, ``status`` (``ok`` | ``rejected`` | ``error``), ``reason``,
``label``, ``probability``, ``probabilities`` ({class: p}), ``ood_score``, ``cropped``. Label
and probability are None unless the status is ``ok``; probabilities are empty unless the model
scored the file and the input guard let it through (``ok``, or ``rejected`` as uncertain under
``min_confidence``: what the model said is kept).
"""

from __future__ import annotations

import numbers
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.data.images import resize_square
from brainmri.errors import BrainMRIError, RejectedInput
from brainmri.infer.inputs import CROP_MODES, auto_crop, load_plane
from brainmri.infer.ood_reason import ood_reason


def check_crop_mode(crop: str | bool) -> str:
    """'auto' | 'on' | 'off' (True/False accepted for 'on'/'off')."""
    if isinstance(crop, bool):
        return "on" if crop else "off"
    if crop not in CROP_MODES:
        raise BrainMRIError(f"unknown crop mode {crop!r} (one of {', '.join(CROP_MODES)})")
    return crop


TTA_MAX = 5
"""The most test-time augmentation views (len of data.transforms.TTA_VIEWS; kept here so
checking a `tta` argument imports no PyTorch)."""


def check_tta(tta: object) -> int:
    """`tta` as an int in [1, TTA_MAX]; anything else (0, negatives, too many, non-integers,
    bools) is one user error naming the range."""
    if isinstance(tta, numbers.Integral) and not isinstance(tta, bool) and 1 <= tta <= TTA_MAX:
        return int(tta)
    raise BrainMRIError(
        f"tta must be a whole number of test-time augmentation views from 1 to {TTA_MAX} "
        f"(1 = plain), got {tta!r}"
    )


def read_input(path: str | Path) -> bytes:
    """A file's bytes; a missing file, broken link or folder is a one-line user error."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise BrainMRIError(f"{p}: broken symbolic link")
    if not p.exists():
        raise BrainMRIError(f"{p}: no such file")
    if p.is_dir():
        raise BrainMRIError(f"{p}: is a folder")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise BrainMRIError(f"{p}: cannot read ({exc.strerror or exc})") from exc


def prepare_bytes(data: bytes, name: str, size: int, crop: str = "auto") -> tuple[np.ndarray, bool]:
    """Bytes -> (size×size uint8 plane, whether it was cropped); guard errors propagate."""
    gray = load_plane(data, name)
    gray, cropped = auto_crop(gray, crop)
    return resize_square(np.ascontiguousarray(gray), size), bool(cropped)


def empty_record(path: str, status: str, reason: str | None, cropped: bool = False) -> dict:
    return {
        "path": path, "status": status, "reason": reason, "label": None, "probability": None,
        "probabilities": {}, "ood_score": None, "cropped": cropped,
    }  # fmt: skip


def failed_record(path: str, exc: BrainMRIError) -> dict:
    """`rejected` for inputs the guard refuses, `error` for anything unreadable."""
    status = "rejected" if isinstance(exc, RejectedInput) else "error"
    return empty_record(path, status, str(exc))


def scored_record(
    path: str,
    probs: list[float],
    class_names: list[str],
    ood_score: float | None,
    ood_threshold: float | None,
    cropped: bool,
    min_confidence: float | None = None,
) -> dict[str, Any]:
    """An `ok` record; `rejected` (label None) when the OOD score is over the model's threshold
    or the top calibrated probability is under `min_confidence`. An uncertain record keeps its
    probabilities, and its reason (starting "uncertain") names the top class."""
    ood = None if ood_score is None else round(float(ood_score), 3)
    reason = ood_reason(ood_score, ood_threshold)
    if reason is not None:  # not a slice the model can judge: what it said means nothing
        rec = empty_record(path, "rejected", reason, cropped)
        rec["ood_score"] = ood
        return rec
    k = int(np.argmax(probs))
    rec = empty_record(path, "ok", None, cropped)
    rec.update(
        probabilities={n: round(float(p), 6) for n, p in zip(class_names, probs, strict=True)},
        ood_score=ood,
    )
    reason = uncertain_reason(probs[k], min_confidence, class_names[k])
    if reason is not None:
        rec.update(status="rejected", reason=reason)
        return rec
    rec.update(label=class_names[k], probability=rec["probabilities"][class_names[k]])
    return rec


def uncertain_reason(top: float, min_confidence: float | None, label: str = "") -> str | None:
    """`rejected: uncertain` when the top probability is under the asked confidence, e.g.
    "uncertain (top probability 0.620 < 0.9, for glioma)"; the probability is shown with as
    many decimals (3 to 6) as it takes to read as under the threshold."""
    if not min_confidence or top >= min_confidence:
        return None
    shown = next(
        (f"{top:.{d}f}" for d in range(3, 7) if float(f"{top:.{d}f}") < min_confidence),
        f"{top:.6f}",
    )
    of = f", for {label}" if label else ""
    return f"uncertain (top probability {shown} < {min_confidence:g}{of})"


def check_min_confidence(value: float | None) -> float | None:
    """None or 0 (off), else a probability in (0, 1]."""
    if value is None or value == 0:
        return None
    if not 0.0 < value <= 1.0:
        raise BrainMRIError(f"--min-confidence must be between 0 and 1, got {value}")
    return float(value)


Decoded = tuple[str, "np.ndarray | None", bool, "dict | None"]


def _decode_one(path: str | Path, size: int, crop: str) -> Decoded:
    try:
        plane, cropped = prepare_bytes(read_input(path), str(path), size, crop)
        return str(path), plane, cropped, None
    except BrainMRIError as exc:
        return str(path), None, False, failed_record(str(path), exc)


def decode_stream(
    paths: Iterable[str | Path],
    size: int,
    crop: str = "auto",
    workers: int | None = None,
    prefetch: int = 128,
) -> Iterator[Decoded]:
    """(path, plane | None, cropped, failed record | None) in input order.

    A thread pool decodes (Pillow releases the GIL while decoding and resizing); at most
    `prefetch` files are in flight, so memory stays bounded whatever the number of files.
    """
    workers = workers or min(4, os.cpu_count() or 1)
    source = iter(paths)
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending = deque()
        for p in source:
            pending.append(pool.submit(_decode_one, p, size, crop))
            if len(pending) >= max(1, prefetch):
                break
        while pending:
            done = pending.popleft().result()
            nxt = next(source, None)
            if nxt is not None:
                pending.append(pool.submit(_decode_one, nxt, size, crop))
            yield done
