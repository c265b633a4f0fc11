"""MRI-specific train augmentation: sequence/contrast randomization, scanner artifacts, framing.

Why: on the benchmark, notumor images are mostly T2-weighted and tumour images mostly contrast
T1, and every image is cropped tight to the head; a model can learn "looks like T2" or "fills
the frame" instead of the tumour. These ops make the sequence's intensity mapping, the
scanner's artifacts and the framing vary at random so that none of them is a reliable cue:

- ``intensity_curves``: each image goes through its own random piecewise-linear intensity
  curve with K knots, monotone (a random brightness/contrast law) or non-monotone (bright
  tissue may become dark and vice versa, as between T1 and T2); batched.
- ``invert``: ``1 - x`` inside the head (the black background stays black); batched.
- ``histogram_randomize``: histogram equalization of the head followed by a random monotone
  curve, so the grey-level distribution is redrawn; batched (a 256-bin histogram per image).
- ``frame``: shrink the image into a black frame at a random place (what an uncropped slice
  looks like); one ``grid_sample`` per batch.
- ``MRIArtifacts``: TorchIO's RandomBiasField, RandomNoise, RandomGhosting, RandomMotion,
  RandomSpike and an anisotropic RandomBlur on each slice as a 1-slice volume (per image:
  TorchIO transforms one subject at a time). Seeded from the caller's generator.

No op flips an image (a vertical flip would turn anatomy upside down). Inputs and outputs are
float ``(B, 1, H, W)`` in [0, 1]; `MRIAugment` applies the configured ops, each with its own
per-image chance, after the geometric/intensity `BatchAugment` and before `to_model_input`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from brainmri.data.transforms import BatchAugment
from brainmri.errors import BrainMRIError

HEAD_LEVEL = 0.04
"""Pixels brighter than this (on [0, 1]) count as head; darker ones as background."""


@dataclass(frozen=True)
class MRIAugmentSettings:
    """Chances (per image) of each op; 0 switches an op off. All 0: the identity."""

    curve_prob: float = 0.0
    curve_knots: int = 5
    curve_monotone_share: float = 0.5
    invert_prob: float = 0.0
    histogram_prob: float = 0.0
    artifact_prob: float = 0.0
    frame_prob: float = 0.0
    frame_scale: tuple[float, float] = (0.6, 0.9)

    def __post_init__(self) -> None:
        probs = (
            "curve_prob",
            "curve_monotone_share",
            "invert_prob",
            "histogram_prob",
            "artifact_prob",
            "frame_prob",
        )
        bad = [f"{n}={getattr(self, n)}" for n in probs if not 0.0 <= getattr(self, n) <= 1.0]
        lo, hi = self.frame_scale
        if not 0.2 <= lo <= hi <= 1.0:
            bad.append(f"frame_scale={self.frame_scale} (need 0.2 <= low <= high <= 1)")
        if self.curve_knots < 2:
            bad.append(f"curve_knots={self.curve_knots} (need >= 2)")
        if bad:
            raise BrainMRIError("mri augment: out of range: " + ", ".join(bad))

    @property
    def active(self) -> bool:
        return any(
            (
                self.curve_prob,
                self.invert_prob,
                self.histogram_prob,
                self.artifact_prob,
                self.frame_prob,
            )
        )


def _rand(shape, generator: torch.Generator | None, device) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _chosen(n: int, p: float, generator, device) -> Tensor:
    """Indices of the images an op with chance p applies to (drawn even when p is 0 or 1)."""
    return torch.nonzero(_rand(n, generator, device) < p).flatten()


def _check(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 1 or not x.is_floating_point():
        raise ValueError(f"expected float (B, 1, H, W), got {x.dtype} {tuple(x.shape)}")


def random_knots(n: int, knots: int, monotone: Tensor, generator=None, device="cpu") -> Tensor:
    """(n, knots) curve values at evenly spaced inputs 0..1; rows with monotone=True increase
    from 0 to 1 (random increments), the others take any values in [0, 1] (knot 0 stays 0 so
    the background stays black)."""
    inc = _rand((n, knots - 1), generator, device) + 0.05
    mono = torch.cat(
        [torch.zeros(n, 1, device=device), inc.cumsum(1) / inc.sum(1, keepdim=True)], 1
    )
    free = torch.cat(
        [torch.zeros(n, 1, device=device), _rand((n, knots - 1), generator, device)], 1
    )
    return torch.where(monotone.view(-1, 1), mono, free)


def apply_curves(x: Tensor, knots: Tensor) -> Tensor:
    """Per-image piecewise-linear map: x (B, 1, H, W) in [0, 1], knots (B, K) -> same shape."""
    b, k = knots.shape
    pos = x.clamp(0, 1).reshape(b, -1) * (k - 1)
    lo = pos.floor().long().clamp(max=k - 2)
    w = pos - lo
    out = knots.gather(1, lo) * (1 - w) + knots.gather(1, lo + 1) * w
    return out.view_as(x)


def intensity_curves(
    x: Tensor, knots: int = 5, monotone_share: float = 0.5, generator=None
) -> Tensor:
    """Each image through its own random intensity curve (monotone with chance monotone_share)."""
    _check(x)
    n = x.shape[0]
    monotone = _rand(n, generator, x.device) < monotone_share
    return apply_curves(x, random_knots(n, knots, monotone, generator, x.device))


def invert(x: Tensor) -> Tensor:
    """Negative of the head, background kept black."""
    _check(x)
    return torch.where(x > HEAD_LEVEL, 1.0 - x, x)


def histogram_randomize(x: Tensor, knots: int = 5, generator=None) -> Tensor:
    """Equalize each image's head histogram (256-bin CDF), then a random monotone curve.

    Equal input values stay equal and brighter stays brighter; only the grey-level law changes.
    """
    _check(x)
    b = x.shape[0]
    flat = x.reshape(b, -1)
    head = flat > HEAD_LEVEL
    bins = (flat.clamp(0, 1) * 255).round().long()
    counts = torch.zeros(b, 256, device=x.device, dtype=x.dtype).scatter_add_(
        1, bins, head.to(x.dtype)
    )
    cdf = counts.cumsum(1) / counts.sum(1, keepdim=True).clamp_min(1.0)
    eq = cdf.gather(1, bins)
    mono = torch.ones(b, dtype=torch.bool, device=x.device)
    curved = apply_curves(eq.view_as(x), random_knots(b, knots, mono, generator, x.device))
    return torch.where(head.view_as(x), curved.clamp_min(HEAD_LEVEL + 1e-3), x)


def frame(x: Tensor, scale: tuple[float, float] = (0.6, 0.9), generator=None) -> Tensor:
    """Shrink each image by a random factor in `scale` into a black frame, at a random place."""
    _check(x)
    n = x.shape[0]
    s = scale[0] + (scale[1] - scale[0]) * _rand(n, generator, x.device)
    room = 1.0 - s  # free margin (normalized units span 2, so the centre may move by +-room)
    tx = (2 * _rand(n, generator, x.device) - 1) * room
    ty = (2 * _rand(n, generator, x.device) - 1) * room
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = 1.0 / s
    theta[:, 1, 1] = 1.0 / s
    theta[:, 0, 2] = -tx / s
    theta[:, 1, 2] = -ty / s
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class MRIArtifacts:
    """One random TorchIO artifact (bias field, noise, ghosting, motion, spike, anisotropic
    blur) per image, on the slice as a (1, H, W, 1) volume; intensities stay in [0, 1]."""

    def __init__(self) -> None:
        import torchio as tio

        self.transform = tio.OneOf(
            {
                tio.RandomBiasField(coefficients=0.5): 1.0,
                tio.RandomNoise(std=(0.01, 0.05)): 1.0,
                tio.RandomGhosting(num_ghosts=(2, 6), axes=(0, 1), intensity=(0.3, 0.8)): 1.0,
                tio.RandomMotion(degrees=4, translation=4, num_transforms=2): 1.0,
                tio.RandomSpike(num_spikes=(1, 2), intensity=(0.1, 0.4)): 1.0,
                tio.RandomBlur(std=(0.0, 2.0, 0.0, 0.2, 0.0, 0.0)): 0.5,
                tio.RandomBlur(std=(0.0, 0.2, 0.0, 2.0, 0.0, 0.0)): 0.5,
            }
        )

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check(x)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
        out = torch.empty_like(x)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i in range(x.shape[0]):
                vol = x[i].detach().cpu().float().unsqueeze(-1)  # (1, H, W, 1)
                res = self.transform(vol)
                res = torch.as_tensor(res).squeeze(-1).to(x.device, x.dtype)
                peak = float(x[i].max())
                out[i] = res.clamp(0.0, max(peak, 1e-3))
        return out


class MRIAugment(torch.nn.Module):
    """The configured ops in a fixed order: framing, artifacts, curves / histogram, inversion."""

    def __init__(self, settings: MRIAugmentSettings) -> None:
        super().__init__()
        self.settings = settings
        self.artifacts = MRIArtifacts() if settings.artifact_prob > 0 else None

    def _apply(self, x: Tensor, idx: Tensor, fn) -> Tensor:
        if idx.numel() == 0:
            return x
        return x.index_copy(0, idx, fn(x[idx]).to(x.dtype))

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check(x)
        s, n, dev = self.settings, x.shape[0], x.device
        x = self._apply(
            x,
            _chosen(n, s.frame_prob, generator, dev),
            lambda v: frame(v, s.frame_scale, generator),
        )
        if self.artifacts is not None:
            x = self._apply(
                x,
                _chosen(n, s.artifact_prob, generator, dev),
                lambda v: self.artifacts(v, generator),
            )
        x = self._apply(
            x,
            _chosen(n, s.histogram_prob, generator, dev),
            lambda v: histogram_randomize(v, s.curve_knots, generator),
        )
        x = self._apply(
            x,
            _chosen(n, s.curve_prob, generator, dev),
            lambda v: intensity_curves(v, s.curve_knots, s.curve_monotone_share, generator),
        )
        x = self._apply(x, _chosen(n, s.invert_prob, generator, dev), invert)
        return x.clamp(0.0, 1.0)


def settings_from_augment(cfg) -> MRIAugmentSettings:
    """The `mri_*` fields of a recipe's `augment` section (AugmentConfig) as settings.

    Missing fields read as 0 (off), so a recipe without them trains as before.
    """
    return MRIAugmentSettings(
        curve_prob=getattr(cfg, "mri_curve_prob", 0.0),
        invert_prob=getattr(cfg, "mri_invert_prob", 0.0),
        histogram_prob=getattr(cfg, "mri_histogram_prob", 0.0),
        artifact_prob=getattr(cfg, "mri_artifact_prob", 0.0),
        frame_prob=getattr(cfg, "mri_frame_prob", 0.0),
    )


class TrainAugment(torch.nn.Module):
    """What training applies to a uint8 batch: the recipe's `BatchAugment`, then, when any
    `augment.mri_*` chance is above 0, `MRIAugment` -- one generator drives both."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.batch = BatchAugment(cfg)
        settings = settings_from_augment(cfg)
        self.mri = MRIAugment(settings) if settings.active else None

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = self.batch(x, generator=generator)
        return x if self.mri is None else self.mri(x, generator)
