"""The input guard's verdict on a score: the model file's threshold and the reason a file is
refused. No PyTorch here, so that the ONNX Runtime path reads it without importing PyTorch; the
score itself is computed in the exported graph (infer/guard.py builds it).
"""

from __future__ import annotations

import math
from typing import Any

from brainmri.errors import RejectedInput


def ood_threshold(meta: dict[str, Any]) -> float | None:
    """meta["guard"]["ood_threshold"] (or a flat "guard.ood_threshold"); None when absent."""
    guard = meta.get("guard")
    value = guard.get("ood_threshold") if isinstance(guard, dict) else None
    if value is None:
        value = meta.get("guard.ood_threshold")
    return None if value is None else float(value)


OOD_REASON = "unlike the brain MRI the model learned from"
"""Start of the reason for a score over the threshold. Not "not a brain MRI": the threshold is
set so that about 1 % of the benchmark's own scans score above it (docs/RESULTS.md §16.10), so
the score says an input is unlike the training images, not what it is."""


def ood_reason(score: float | None, threshold: float | None) -> str | None:
    """The rejection reason for a score over the threshold, else None."""
    if score is None or threshold is None:
        return None
    if not math.isfinite(score):
        return f"{OOD_REASON} (OOD score {score})"
    if score <= threshold:
        return None
    a, b = _distinct(score, threshold)
    return f"{OOD_REASON} (OOD score {a} > {b})"


def _distinct(a: float, b: float) -> tuple[str, str]:
    """a and b with 3 significant digits, or more until they read differently (a score just
    over a threshold of about 1 must not read "1 > 1")."""
    for digits in range(3, 8):
        sa, sb = f"{a:.{digits}g}", f"{b:.{digits}g}"
        if sa != sb:
            break
    return sa, sb


def check_ood(score: float | None, threshold: float | None) -> None:
    """Raise RejectedInput when the score is over the threshold."""
    reason = ood_reason(score, threshold)
    if reason is not None:
        raise RejectedInput(reason, code="ood")
