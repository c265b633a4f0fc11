"""Grad-CAM with activations taken relative to a reference input's (docs/RESULTS.md §16.21).

Grad-CAM weighs a stage's activations A by the class gradient's spatial mean w and keeps
ReLU(sum_k w_k A_k). Where the input is plain black background the activations are not 0 (biases,
batch-norm shifts), so wherever sum_k w_k A_k happens to be positive there the map keeps a level
over the background (§16.17). Taking the activations relative to those of a reference input,
sum_k w_k (A_k - A_ref_k), as DeepLIFT (Shrikumar et al., 2017) and Integrated Grad-CAM
(Sattarzadeh et al., 2021) do with their baselines, gives a region that looks like the reference
a value near 0 whatever the weights. The reference is an all-black input (black is 0 after the
intensity normalization); the weights are Grad-CAM's, from the real input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from torch import nn


def layer_activations(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Activations (N, C, h, w) of `layer` for the input batch `x`, without gradients."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0].float().cpu().numpy()


class ReferenceGradCAM(GradCAM):
    """pytorch-grad-cam's GradCAM over one target layer, its activations minus those of
    `reference` (a (1, 3, H, W) model input the size of the inputs to explain)."""

    def __init__(
        self, model: nn.Module, target_layers: Sequence[nn.Module], reference: torch.Tensor
    ) -> None:
        if len(target_layers) != 1:
            raise ValueError("ReferenceGradCAM reads one target layer")
        self.reference_activations = layer_activations(model, target_layers[0], reference)
        super().__init__(model=model, target_layers=list(target_layers))

    def get_cam_image(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: list,
        activations: np.ndarray,
        grads: np.ndarray,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        relative = np.asarray(activations) - self.reference_activations
        return super().get_cam_image(
            input_tensor, target_layer, targets, relative, grads, eigen_smooth
        )


def black_reference(x: torch.Tensor) -> torch.Tensor:
    """The all-black model input (1, 3, H, W) matching the batch `x` (black is 0 after the
    intensity normalization), in `x`'s dtype, device and memory format."""
    from brainmri.infer.occlusion import black_input

    ref = black_input().to(device=x.device, dtype=x.dtype)[None, :, None, None]
    ref = ref.expand(1, x.shape[1], x.shape[2], x.shape[3]).clone()
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        ref = ref.contiguous(memory_format=torch.channels_last)
    return ref
