"""`brainmri predict`: image files or folders -> class and calibrated probabilities per image.

Each file is decoded like the training data (luminance plane) and resized to the model's input
size, exactly as `evaluate` does. `crop=True` first crops to the brain as `clean` does: for raw
scans with a wide black frame. It is off by default because cropping an already-cropped image
again cuts into it (on 48 benchmark test images: 44 right with a second crop, 47 without).
A file that cannot be read gets a one-line error and the rest of the batch goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from brainmri.data.crop import crop_to_brain
from brainmri.data.folders import is_image_file
from brainmri.data.images import load_gray, resize_square
from brainmri.errors import BrainMRIError
from brainmri.infer.core import InferenceModel


@dataclass
class Prediction:
    path: str
    label: str | None = None
    probability: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given; folders walked recursively for image files (sorted)."""
    out: list[Path] = []
    for item in inputs:
        if item.is_dir():
            out.extend(sorted(p for p in item.rglob("*") if is_image_file(p)))
        else:
            out.append(item)
    return out


def prepare(path: Path, size: int, crop: bool = False) -> np.ndarray:
    """Decode -> (brain crop) -> size×size uint8 plane; BrainMRIError when unreadable."""
    if not path.exists():
        raise BrainMRIError(f"{path}: no such file")
    gray = load_gray(path)
    if crop:
        gray, _ = crop_to_brain(gray)
    return resize_square(np.ascontiguousarray(gray), size)


def predict_files(
    loaded: InferenceModel,
    paths: list[Path],
    tta: int = 1,
    crop: bool = False,
    batch_size: int = 64,
) -> list[Prediction]:
    """One Prediction per path, in order; unreadable files carry `error` instead of a label."""
    results = [Prediction(str(p)) for p in paths]
    planes, ok = [], []
    for i, p in enumerate(paths):
        try:
            planes.append(prepare(p, loaded.image_size, crop))
            ok.append(i)
        except BrainMRIError as exc:
            results[i].error = str(exc)
    if planes:
        images = torch.from_numpy(np.stack(planes)[:, None])
        probs = loaded.probs(images, tta=tta, batch_size=batch_size)
        names = loaded.class_names
        for i, row in zip(ok, probs.tolist(), strict=True):
            k = int(np.argmax(row))
            results[i].label = names[k]
            results[i].probability = round(row[k], 6)
            results[i].probabilities = {n: round(v, 6) for n, v in zip(names, row, strict=True)}
    return results
