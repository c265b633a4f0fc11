"""A training objective on the Grad-CAM map: the share of the map that lies outside the head.

`explain`'s Grad-CAM map keeps about a third of its mass off the head on every variant tried,
and a head-only model on the untouched ImageNet backbone does the same (docs/RESULTS.md §16.22),
while the model's answers come from inside the head (§16.8). Training can ask for the map
directly, as "right for the right reasons" training does for input gradients (Ross et al.,
2017): a stage's `cam_penalty` adds weight × (the true class's map mass outside the head) to
the loss. The map is Grad-CAM's at the layer `explain` reads (infer.gradcam.target_layer):
ReLU of the activations weighted by the spatially averaged gradient of the class logit, scaled
to [0, 1] per image as pytorch-grad-cam scales it. The gradient is taken with
`create_graph=True`, so the penalty trains the weights through it (a second backward pass
through the layers after the stage: about 1.5-2x the cost of a plain step on a CPU).

The head mask is `infer.gradcam.head_mask` (the largest bright region, holes filled) of each
augmented training image, averaged over the map's cells. An epoch's `train_loss` includes the
term; the term's own mean is logged beside it ("map outside the head", TensorBoard
`cam_outside/train`).

The outside term alone makes every class's map alike (docs/RESULTS.md §16.24): it is met by
reshaping the activations every class's map weighs. A stage's `cam_apart` adds weight ×
max(0, margin - mean |true class's map - another class's map|) over the map's cells, the other
class drawn at random per image (one more gradient per step, not three), so that explaining
another class still moves the map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainmri.infer.gradcam import head_mask, target_layer


def head_masks(x: torch.Tensor) -> torch.Tensor:
    """Head masks (N, 1, H, W) as floats of a gray batch (N, 1, H, W) in [0, 1] or uint8."""
    planes = x[:, 0].detach().float()
    if x.dtype != torch.uint8:
        planes = planes.clamp(0, 1) * 255
    planes_u8 = planes.round().to(torch.uint8).cpu().numpy()
    masks = np.stack([head_mask(p) for p in planes_u8]).astype(np.float32)
    return torch.from_numpy(masks)[:, None].to(x.device)


def scaled_cam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps (N, h, w) from a stage's activations and the class logit's gradient at
    them, each scaled to [0, 1] (min subtracted, divided by the max) as pytorch-grad-cam does."""
    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1))
    low = cam.amin(dim=(1, 2), keepdim=True)
    cam = cam - low
    return cam / (cam.amax(dim=(1, 2), keepdim=True) + 1e-7)


def outside_share(cam: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image (N,): the share of each map's mass on cells outside the head, each cell
    counted by the share of its pixels outside the mask (masks (N, 1, H, W) in [0, 1])."""
    inside = F.adaptive_avg_pool2d(masks.to(cam.dtype), cam.shape[-2:])[:, 0]
    return (cam * (1 - inside)).sum(dim=(1, 2)) / (cam.sum(dim=(1, 2)) + 1e-7)


class CamPenalty:
    """Keeps the Grad-CAM layer's last activations (a forward hook) and turns them into the
    outside-the-head share of the true class's map, differentiable in the weights.
    Use as a context manager: the hook is removed on exit."""

    def __init__(self, model: nn.Module) -> None:
        self._acts: torch.Tensor | None = None
        self._hook = target_layer(model).register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self._acts = output

    def __enter__(self) -> CamPenalty:
        return self

    def __exit__(self, *exc: object) -> None:
        self._hook.remove()
        self._acts = None

    def maps(self, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Scaled maps (N, h, w), each image's of its own class in `classes` (N,), for the
        forward pass that produced `logits`; differentiable in the weights."""
        if self._acts is None:
            raise RuntimeError("no forward pass through the model since the penalty was set up")
        acts = self._acts
        chosen = logits.float().gather(1, classes[:, None]).sum()
        (grads,) = torch.autograd.grad(chosen, acts, create_graph=True, retain_graph=True)
        return scaled_cam(acts.float(), grads.float())

    def share(self, logits: torch.Tensor, y: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Per image (N,): the true class's map mass outside the head."""
        return outside_share(self.maps(logits, y), masks)


def apart(a: torch.Tensor, b: torch.Tensor, margin: float) -> torch.Tensor:
    """Per image (N,): how far two maps' mean |difference| falls short of `margin` (0 if not)."""
    return F.relu(margin - (a - b).abs().mean(dim=(1, 2)))


def other_classes(y: torch.Tensor, classes: int, generator: torch.Generator) -> torch.Tensor:
    """For each label, another class drawn uniformly from the rest."""
    shift = torch.randint(1, classes, y.shape, generator=generator).to(y.device)
    return (y + shift) % classes
