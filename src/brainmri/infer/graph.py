"""The one forward graph both runtimes run: pixels -> logits, penultimate features, OOD score.

Input ``pixels``: float32 ``(N, 1, S, S)`` in [0, 1], the resized luminance plane after the
model's intensity normalization (and after any TTA view). The graph repeats the plane to three
channels, applies the mean/std from the model's metadata and runs the classifier (an ensemble
is one graph: the mean of its members' logits, their features concatenated). When the model file
carries input-guard statistics, the graph also outputs the out-of-distribution score of the
features the guard reads (infer/guard.py), from the same backbone pass. PyTorch runs this module
as it is; ``export`` writes it to ONNX, so the two runtimes compute the same thing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from brainmri.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from brainmri.infer.guard import guard_inputs

GUARD_PREFIX = "guard."
OUTPUTS_BASE = ("logits", "features")


class InferenceGraph(nn.Module):
    def __init__(
        self,
        model: nn.Module,
        mean: list[float] | tuple[float, ...] = IMAGENET_MEAN,
        std: list[float] | tuple[float, ...] = IMAGENET_STD,
        ood: nn.Module | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        self.model = model
        self.ood = ood
        self.channels_last = channels_last
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / std_t, persistent=False)
        self.register_buffer("bias", -mean_t / std_t, persistent=False)

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUTS_BASE + (("ood_score",) if self.ood is not None else ())

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = pixels.expand(-1, 3, -1, -1) * self.scale + self.bias
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.ood is None:
            features = self.model.penultimate(x)
            return self.model.classify(features), features
        features, guard = guard_inputs(self.model, x, self.ood.source)
        return self.model.classify(features), features, self.ood(guard)


def guard_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The input-guard statistics stored in a model file (keys with prefix ``guard.``)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k).float() for k in f.keys() if k.startswith(GUARD_PREFIX)}


def ood_module(meta: dict, path: str | Path) -> nn.Module | None:
    """The OOD scorer built from the model file's guard statistics, or None without them."""
    from brainmri.infer.guard import ood_from_meta

    tensors = guard_tensors(path)
    return ood_from_meta(meta, tensors) if tensors else None


def build_graph(
    model: nn.Module, meta: dict, path: str | Path | None = None, channels_last: bool = False
) -> InferenceGraph:
    """InferenceGraph with the model file's mean/std (ImageNet when absent) and guard."""
    prep = meta.get("preprocessing", {})
    ood = ood_module(meta, path) if path is not None else None
    graph = InferenceGraph(
        model,
        prep.get("mean", IMAGENET_MEAN),
        prep.get("std", IMAGENET_STD),
        ood,
        channels_last,
    )
    return graph.eval()
