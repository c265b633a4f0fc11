"""Self-describing model files: safetensors weights + JSON metadata in the same file.

The metadata holds the recipe, class names and preprocessing, so predict, evaluate, export and
serve need nothing else. Writes are atomic (temp file + rename): a kill never leaves a broken
checkpoint behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from brainmri import CLASS_NAMES
from brainmri.config import Recipe, recipe_from_dict
from brainmri.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from brainmri.errors import BrainMRIError
from brainmri.model.shipped import SHIPPED_MODEL as SHIPPED_MODEL
from brainmri.model.shipped import shipped_model_path as shipped_model_path

FORMAT = "brainmri-checkpoint/1"
EXTRA_PREFIXES = ("guard.",)
"""Tensor-name prefixes of extra statistics a model file may carry beside its weights."""


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) then rename tmp onto path (same folder, so the rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a model file is for sharing
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_model(
    path: Path,
    model: nn.Module,
    recipe: Recipe,
    info: dict[str, Any] | None = None,
    half: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Path:
    """Write weights (+ fp16 when half) and metadata to one .safetensors file.

    mean/std: the input normalization the model was trained with (default ImageNet's); readers
    take them from `preprocessing` (`preprocessing_of`).
    """
    state = {
        k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    meta = {
        "format": FORMAT,
        "class_names": list(CLASS_NAMES),
        "recipe": recipe.model_dump(mode="json"),
        "preprocessing": {
            "image_size": recipe.data.image_size,
            "color": "luminance (L) repeated to 3 channels",
            "intensity": recipe.data.intensity,
            "mean": [float(v) for v in (IMAGENET_MEAN if mean is None else mean)],
            "std": [float(v) for v in (IMAGENET_STD if std is None else std)],
        },
        "dtype": "float16" if half else "float32",
        "info": info or {},
    }
    atomic_write(
        path, lambda tmp: save_file(state, str(tmp), metadata={"brainmri": json.dumps(meta)})
    )
    return path


def preprocessing_of(meta: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) stored in a model file's metadata; ImageNet's where a file has none."""
    pre = meta.get("preprocessing", {})
    return tuple(pre.get("mean", IMAGENET_MEAN)), tuple(pre.get("std", IMAGENET_STD))


def read_metadata(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("brainmri")
    except (SafetensorError, OSError) as exc:
        raise BrainMRIError(f"not a readable model file: {path} ({exc})") from exc
    if not raw:
        raise BrainMRIError(f"{path} is a safetensors file but not a brainmri model")
    return json.loads(raw)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the classifier (or ensemble) from a model file: (model in eval mode, meta)."""
    from brainmri.model.classifier import TumorClassifier
    from brainmri.model.ensemble import EnsembleClassifier

    path = Path(path)
    if not path.is_file():
        raise BrainMRIError(f"model file not found: {path}")
    meta = read_metadata(path)
    recipe = recipe_from_dict(meta["recipe"], str(path))
    n_classes = len(meta["class_names"])
    members = [
        TumorClassifier(recipe.model, num_classes=n_classes, pretrained=False)
        for _ in range(recipe.ensemble)
    ]
    model: nn.Module = members[0] if len(members) == 1 else EnsembleClassifier(members)
    model.load_state_dict(model_weights(path))
    model.to(device).eval()
    return model, meta


def model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A model file's weights as float32 (fp16-stored ones widened), without the input guard's
    statistics and other extra tensors."""
    return {
        k: v.float() if v.is_floating_point() else v
        for k, v in load_file(str(path)).items()
        if not k.startswith(EXTRA_PREFIXES)  # input-guard statistics: not model weights
    }


def add_extra_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], meta_update: dict[str, Any]
) -> Path:
    """Rewrite a model file with extra tensors (names with a prefix of EXTRA_PREFIXES) and
    top-level metadata keys added or replaced; its weights are copied bit for bit."""
    path = Path(path)
    bad = [k for k in tensors if not k.startswith(EXTRA_PREFIXES)]
    if bad:
        raise ValueError(f"extra tensor names must start with {EXTRA_PREFIXES}: {bad}")
    meta = read_metadata(path)
    state = dict(load_file(str(path)))
    prefixes = tuple({k.split(".", 1)[0] + "." for k in tensors})
    state = {k: v for k, v in state.items() if not k.startswith(prefixes)}  # replace old ones
    state |= {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta |= meta_update
    atomic_write(
        path, lambda tmp: save_file(state, str(tmp), metadata={"brainmri": json.dumps(meta)})
    )
    return path
