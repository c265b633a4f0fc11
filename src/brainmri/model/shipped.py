"""Where the model shipped inside the package lives (no PyTorch import: the ONNX Runtime path
reads it too)."""

from __future__ import annotations

from pathlib import Path

from brainmri.errors import BrainMRIError

SHIPPED_MODEL = "lite0_cpu.safetensors"


def shipped_model_path() -> Path:
    """The model shipped inside the package (brainmri/weights/), used when none is given."""
    from importlib import resources

    path = Path(str(resources.files("brainmri") / "weights" / SHIPPED_MODEL))
    if not path.is_file():
        raise BrainMRIError(f"no --model given and no shipped model at {path}")
    return path
