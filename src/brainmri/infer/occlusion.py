"""Occlusion sensitivity (Zeiler and Fergus, 2014) with Captum: what in the image the answer
depends on.

A black window (a sixth of the input's side, stride half the window: 32 px and 16 px at 192)
is slid over the model input; each pixel's value is the mean drop of the explained class's logit
over the windows that cover it. The positive part, scaled to [0, 1], is the map. Unlike
Grad-CAM it reads no layer, so an ensemble is explained as one model, and covering black
background with black changes nothing, so background gets no weight unless removing it changes
the answer. It costs about (side / stride)^2 forward passes per map (121 at 192 px);
docs/RESULTS.md §16.8 compares it with Grad-CAM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

WINDOW_SHARE = 1 / 6
"""Window side as a share of the input side; the stride is half the window."""


def black_input() -> torch.Tensor:
    """The model input of a black pixel, (3,): black is 0 after the intensity normalization."""
    from brainmri.data.transforms import to_model_input

    return to_model_input(torch.zeros(1, 1, 1, 1))[0, :, 0, 0]


def window_for(size: int) -> tuple[int, int]:
    """(window, stride) in pixels for an input of `size` pixels."""
    window = max(2, round(size * WINDOW_SHARE))
    return window, max(1, window // 2)


@torch.no_grad()
def occlusion_maps(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x_input: torch.Tensor,
    class_idx: int | Sequence[int],
    black: torch.Tensor | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Maps (N, H, W) in [0, 1] for an input batch (N, C, H, W) and one class index, or one per
    image. `forward`: a model (fed the normalized 3-channel input; `black` defaults to
    black_input()) or any function from such a batch to logits, e.g. an ONNX Runtime session
    fed the 1-channel pixels in [0, 1], where black is 0 (see pixel_maps)."""
    from captum.attr import Occlusion

    n, c, h, _ = x_input.shape
    idx = [int(class_idx)] * n if isinstance(class_idx, int) else [int(k) for k in class_idx]
    if len(idx) != n:
        raise ValueError(f"{len(idx)} class indices for {n} images")
    black = black_input() if black is None else black
    window, stride = window_for(h)
    was_training = getattr(forward, "training", False)
    if isinstance(forward, nn.Module):
        forward.eval()
    try:
        attr = Occlusion(forward).attribute(
            x_input.float(),
            sliding_window_shapes=(c, window, window),
            strides=(c, stride, stride),
            target=idx,
            baselines=black.float().reshape(1, c, 1, 1).to(x_input.device),
            perturbations_per_eval=batch_size,
        )
    finally:
        if isinstance(forward, nn.Module):
            forward.train(was_training)
    maps = attr[:, 0].clamp_min(0.0).cpu().numpy()  # every channel is covered alike
    peak = maps.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, maps / np.maximum(peak, 1e-12), 0.0).astype(np.float32)


def pixel_maps(
    backend: Callable[[torch.Tensor], dict[str, Any]],
    pixels: torch.Tensor,
    class_idx: int | Sequence[int],
) -> np.ndarray:
    """Occlusion maps (N, S, S) through an inference backend that takes the intensity-normalized
    pixels (N, 1, S, S) in [0, 1] and returns {"logits": ...}; black is 0 there. An ONNX Runtime
    backend runs the 121 occluded copies about three times faster than PyTorch eager on 2 CPU
    cores, with the same map (docs/RESULTS.md §16.8)."""
    def logits(v: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(backend(v)["logits"])

    return occlusion_maps(logits, pixels, class_idx, black=torch.zeros(1), batch_size=32)
