"""Batched train augmentation, model-input conversion and test-time-augmentation views.

Everything works on whole batches of tensors (CPU or CUDA, whichever device the batch is on):
training images are decoded once and cached as uint8 ``(N, 1, S, S)``; each batch is indexed
from the cache, augmented here on its single gray channel, then turned into the 3-channel,
ImageNet-normalized model input by :func:`to_model_input`.

Geometry convention: :func:`affine_matrices` returns the ``theta`` that ``F.affine_grid`` takes,
which maps *output* normalized coordinates (x right, y down, in [-1, 1]) to *input* ones.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from brainmri.data.intensity import INTENSITY_MODES, PCT_HI, PCT_LO
from brainmri.data.intensity import normalize_planes as np_normalize_planes
from brainmri.data.intensity import uint8_percentiles as np_percentiles
from brainmri.errors import BrainMRIError

if TYPE_CHECKING:  # only for annotations: keeps this module free of the pydantic import
    from brainmri.config import AugmentConfig

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

TTA_VIEWS: tuple[str, ...] = ("original", "hflip", "rot+10", "rot-10", "zoom1.1")
"""Deterministic TTA views, in order; ``tta_views(x, n)`` returns the first ``n``."""

_TTA_ANGLE_DEG = 10.0
_TTA_ZOOM = 1.1
_LOWRES_LEVELS = 8
"""Low-res scales are drawn uniformly, then snapped to this many evenly spaced levels so that a
batch needs at most this many ``interpolate`` calls whatever its size."""


# ---------------------------------------------------------------------------------------------
# model input
# ---------------------------------------------------------------------------------------------


def to_model_input(
    x_uint8: Tensor,
    channels_last: bool = False,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Tensor:
    """uint8 ``(B, 1|3, H, W)`` (or float in [0, 1]) -> float32 ``(B, 3, H, W)``, normalized.

    Computes ``(x / 255 - mean) / std`` as one fused multiply-add; a gray channel is broadcast
    to three. mean/std default to the ImageNet constants (model files without stored ones).
    With ``channels_last`` the result is in ``torch.channels_last`` memory format.
    """
    x = x_uint8
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected (B, 1|3, H, W), got {tuple(x.shape)}")
    pixel = 1.0 / 255.0 if x.dtype == torch.uint8 else 1.0
    mean_t = IMAGENET_MEAN if mean is None else tuple(mean)
    std_t = IMAGENET_STD if std is None else tuple(std)
    std_v = torch.tensor(std_t, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    mean_v = torch.tensor(mean_t, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    scale = pixel / std_v
    bias = -mean_v / std_v
    b, _, h, w = x.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((b, 3, h, w), dtype=torch.float32, device=x.device, memory_format=fmt)
    # out = bias + x * scale, written straight into the requested memory format (no extra copy)
    torch.addcmul(bias, x.to(torch.float32), scale, out=out)
    return out


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------


def _check_config(cfg: AugmentConfig) -> None:
    """Reject settings that could flip an image upside down or make no sense."""
    problems = []
    if not 0.0 <= cfg.rotation_deg <= 45.0:
        problems.append(f"rotation_deg must be in [0, 45], got {cfg.rotation_deg}")
    if not 0.0 <= cfg.shift <= 0.5:
        problems.append(f"shift must be in [0, 0.5], got {cfg.shift}")
    if not 0.0 <= cfg.zoom < 1.0:
        problems.append(f"zoom must be in [0, 1), got {cfg.zoom}")
    if not 0.0 <= cfg.shear < 1.0:
        problems.append(f"shear must be in [0, 1), got {cfg.shear}")
    for name in ("brightness", "contrast", "gamma", "blur_sigma", "lowres_scale"):
        lo, hi = getattr(cfg, name)
        if not 0.0 < lo <= hi:
            problems.append(f"{name} must be (low, high) with 0 < low <= high, got {(lo, hi)}")
    if cfg.lowres_scale[1] > 1.0:
        problems.append(f"lowres_scale must not exceed 1, got {cfg.lowres_scale}")
    if problems:
        raise BrainMRIError("augment: " + "; ".join(problems))


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, device) -> Tensor:
    """``n`` float32 draws uniform in [lo, hi] (on the generator's device, moved to ``device``)."""
    gen_device = generator.device if generator is not None else device
    u = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float32)
    return (lo + (hi - lo) * u).to(device)


def sample_affine_params(
    batch: int,
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """Per-sample geometric parameters, each a ``(batch,)`` tensor on ``device``.

    ``angle_deg`` in ±rotation_deg, ``tx``/``ty`` in ±shift (fractions of width/height),
    ``zoom`` in [1 - zoom, 1 + zoom] (> 1 magnifies), ``shear`` in ±shear (x-shear factor),
    ``flip`` (bool) with p = 0.5 if ``cfg.hflip`` else never.
    """
    r, s, z, k = cfg.rotation_deg, cfg.shift, cfg.zoom, cfg.shear
    angle = _uniform(batch, -r, r, generator, device)
    tx = _uniform(batch, -s, s, generator, device)
    ty = _uniform(batch, -s, s, generator, device)
    zoom = _uniform(batch, 1.0 - z, 1.0 + z, generator, device)
    shear = _uniform(batch, -k, k, generator, device)
    if cfg.hflip:
        flip = _uniform(batch, 0.0, 1.0, generator, device) < 0.5
    else:
        flip = torch.zeros(batch, dtype=torch.bool, device=device)
    return {"angle_deg": angle, "tx": tx, "ty": ty, "zoom": zoom, "shear": shear, "flip": flip}


def affine_matrices(params: dict[str, Tensor], size: tuple[int, int] | None = None) -> Tensor:
    """``theta`` ``(B, 2, 3)`` for ``F.affine_grid`` from :func:`sample_affine_params` output.

    The forward (input -> output) map, in pixel units about the image centre, is
    ``p_out = R(angle) @ Shear(k) @ zoom @ Flip @ p_in + t``; theta is its inverse written in
    normalized coordinates (``size = (H, W)`` corrects rotation/shear for non-square images).
    Its linear part is ``Flip @ zoom^-1 @ Shear(-k) @ R(-angle)``, so det(theta) has the sign of
    the flip only, and ``theta[:, 1, 1] = cos(angle) / zoom > 0``: up never becomes down.
    Missing keys default to the identity.
    """
    ref = next(iter(params.values()))
    n, device = ref.shape[0], ref.device
    zeros = torch.zeros(n, dtype=torch.float32, device=device)
    angle = torch.deg2rad(params.get("angle_deg", zeros).float())
    tx = params.get("tx", zeros).float()
    ty = params.get("ty", zeros).float()
    zoom = params.get("zoom", zeros + 1.0).float()
    k = params.get("shear", zeros).float()
    flip = params.get("flip", torch.zeros(n, dtype=torch.bool, device=device))
    f = 1.0 - 2.0 * flip.float()  # -1 where flipped

    c, s = torch.cos(angle), torch.sin(angle)
    # inverse linear part M = Flip @ (1/zoom) @ [[1, -k], [0, 1]] @ [[c, s], [-s, c]]
    a = c + k * s
    b = s - k * c
    m00 = f * a / zoom
    m01 = f * b / zoom
    m10 = -s / zoom
    m11 = c / zoom
    if size is not None:  # pixel-space linear map expressed in normalized coordinates
        h, w = size
        m01 = m01 * (h / w)
        m10 = m10 * (w / h)
    # translation in normalized units is 2 * fraction; theta's offset is -M @ t
    t0, t1 = 2.0 * tx, 2.0 * ty
    theta = torch.stack(
        [
            torch.stack([m00, m01, -(m00 * t0 + m01 * t1)], dim=-1),
            torch.stack([m10, m11, -(m10 * t0 + m11 * t1)], dim=-1),
        ],
        dim=1,
    )
    return theta


def apply_affine(x: Tensor, theta: Tensor) -> Tensor:
    """One ``affine_grid`` + ``grid_sample`` (bilinear, zero padding, align_corners=False)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ---------------------------------------------------------------------------------------------
# intensity helpers
# ---------------------------------------------------------------------------------------------


def _gaussian_blur(x: Tensor, sigma: Tensor, radius: int) -> Tensor:
    """Separable Gaussian blur with one sigma per sample (grouped depthwise conv, one call)."""
    b, c, h, w = x.shape
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t[None, :] / sigma.to(x.dtype)[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (b, K)
    kernel = kernel.repeat_interleave(c, dim=0)  # (b*c, K): one kernel per (sample, channel)
    mode = "reflect" if radius < min(h, w) else "replicate"
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(
        F.pad(y, (radius, radius, 0, 0), mode=mode), kernel[:, None, None, :], groups=b * c
    )
    y = F.conv2d(
        F.pad(y, (0, 0, radius, radius), mode=mode), kernel[:, None, :, None], groups=b * c
    )
    return y.reshape(b, c, h, w)


def _lowres(x: Tensor, scale: float) -> Tensor:
    """Bilinear antialiased downsampling by ``scale``, then bilinear back to the input size."""
    h, w = x.shape[-2:]
    small = (max(1, round(h * scale)), max(1, round(w * scale)))
    y = F.interpolate(x, size=small, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)


def _chance(
    n: int, p: float, generator: torch.Generator | None, device: torch.device
) -> Tensor | None:
    """Indices of the samples picked with probability ``p``; None when none is picked."""
    idx = torch.nonzero(_uniform(n, 0.0, 1.0, generator, device) < p).flatten()
    return idx if idx.numel() else None


# ---------------------------------------------------------------------------------------------
# train augmentation
# ---------------------------------------------------------------------------------------------


class BatchAugment(torch.nn.Module):
    """Random train augmentation of a whole batch, with its own parameters for every image.

    Geometry (rotation, shift, zoom, x-shear, horizontal flip; never a vertical flip) is
    composed into one 2x3 affine matrix per sample and applied with a single
    ``affine_grid`` + ``grid_sample`` (bilinear, zero padding) for the batch. Intensity follows:
    brightness (multiply), contrast (about each image's mean), gamma, Gaussian blur and
    low-resolution down-then-up sampling (each with its own chance), then a clamp to [0, 1].
    Ops whose configured range is the identity are skipped.

    Why hand-composed rather than ``torchvision.transforms.v2``: v2 draws *one* parameter set
    per call, so on a batch tensor every image gets the same rotation, flip and brightness.
    Per-image parameters would need a Python loop calling v2 once per image (and one
    ``grid_sample`` per image); here the whole batch costs one ``grid_sample`` and a few
    vectorized ops, which is much faster on CPU and runs unchanged on CUDA.

    Input: uint8 ``(B, C, H, W)`` or float in [0, 1]; output: float (float32 for uint8 input) in
    [0, 1], same shape and device. Run it on the 1-channel cache batch before
    :func:`to_model_input` (three times less work than on 3 channels). ``generator`` may live
    on any device; parameters are drawn there, so a seeded generator repeats the output.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        _check_config(cfg)
        self.cfg = cfg
        self.geometric = bool(cfg.rotation_deg or cfg.shift or cfg.zoom or cfg.shear or cfg.hflip)
        self.blur_radius = max(1, math.ceil(3.0 * cfg.blur_sigma[1]))

    def extra_repr(self) -> str:
        return repr(self.cfg)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected (B, C, H, W), got {tuple(x.shape)}")
        cfg = self.cfg
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        if not x.is_floating_point():
            raise TypeError(f"expected uint8 or float input, got {x.dtype}")
        n, device = x.shape[0], x.device

        if self.geometric:
            params = sample_affine_params(n, cfg, generator, device)
            x = apply_affine(x, affine_matrices(params, size=tuple(x.shape[-2:])))

        if cfg.brightness != (1.0, 1.0):
            x = x * _uniform(n, *cfg.brightness, generator, device).to(x.dtype).view(n, 1, 1, 1)
        if cfg.contrast != (1.0, 1.0):
            factor = _uniform(n, *cfg.contrast, generator, device).to(x.dtype).view(n, 1, 1, 1)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * factor + mean
        if cfg.gamma != (1.0, 1.0):
            g = _uniform(n, *cfg.gamma, generator, device).to(x.dtype).view(n, 1, 1, 1)
            x = x.clamp(0.0, 1.0).pow(g)

        if cfg.blur_prob > 0.0:
            idx = _chance(n, cfg.blur_prob, generator, device)
            sigma = _uniform(n, *cfg.blur_sigma, generator, device)
            if idx is not None:
                x = x.index_copy(0, idx, _gaussian_blur(x[idx], sigma[idx], self.blur_radius))

        if cfg.lowres_prob > 0.0 and cfg.lowres_scale != (1.0, 1.0):
            idx = _chance(n, cfg.lowres_prob, generator, device)
            level = (_uniform(n, 0.0, 1.0, generator, device) * _LOWRES_LEVELS).long()
            if idx is not None:
                level = level[idx].clamp_(max=_LOWRES_LEVELS - 1)
                lo, hi = cfg.lowres_scale
                out = x.clone()
                for lv in torch.unique(level).tolist():  # at most _LOWRES_LEVELS calls
                    sel = idx[level == lv]
                    scale = lo + (hi - lo) * (lv + 0.5) / _LOWRES_LEVELS
                    out[sel] = _lowres(x[sel], scale)
                x = out

        return x.clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# test-time augmentation
# ---------------------------------------------------------------------------------------------


def _fixed_theta(x: Tensor, angle_deg: float = 0.0, zoom: float = 1.0) -> Tensor:
    n = x.shape[0]
    params = {
        "angle_deg": torch.full((n,), angle_deg, device=x.device),
        "zoom": torch.full((n,), zoom, device=x.device),
    }
    return affine_matrices(params, size=tuple(x.shape[-2:]))


def tta_views(x: Tensor, n: int = 5) -> list[tuple[str, Tensor]]:
    """The first ``n`` deterministic views of ``x`` (float ``(B, C, H, W)``), named by TTA_VIEWS.

    ``original`` is ``x`` itself, ``hflip`` is ``torch.flip(x, dims=[3])``, ``rot±10`` rotate by
    ±10 degrees and ``zoom1.1`` magnifies 1.1x about the centre (one ``grid_sample`` each, zero
    padding). Apply it to [0, 1] images *before* :func:`to_model_input`, so that the padding
    is black as in training rather than the ImageNet mean.
    """
    if not 1 <= n <= len(TTA_VIEWS):
        raise ValueError(f"n must be in [1, {len(TTA_VIEWS)}], got {n}")
    if not x.is_floating_point():
        raise TypeError(f"tta_views expects a float tensor, got {x.dtype}")
    views: list[tuple[str, Tensor]] = []
    for name in TTA_VIEWS[:n]:
        if name == "original":
            view = x
        elif name == "hflip":
            view = torch.flip(x, dims=[3])
        elif name == "rot+10":
            view = apply_affine(x, _fixed_theta(x, angle_deg=_TTA_ANGLE_DEG))
        elif name == "rot-10":
            view = apply_affine(x, _fixed_theta(x, angle_deg=-_TTA_ANGLE_DEG))
        else:  # zoom1.1
            view = apply_affine(x, _fixed_theta(x, zoom=_TTA_ZOOM))
        views.append((name, view))
    return views


# ---------------------------------------------------------------------------------------------
# intensity normalization (part of preprocessing: training, evaluation and prediction alike)
# ---------------------------------------------------------------------------------------------



def uint8_percentiles(u8: Tensor) -> Tensor:
    """(2, B): the 0.5th and 99.5th percentiles of uint8 images ``(B, ...)``, as
    ``torch.quantile`` gives them on ``u8.float() / 255`` — bit for bit — but read from each
    image's 256-bin histogram instead of a sort (on CPU numpy's bincount: ~10x faster than
    torch.quantile on 32 images of 192 px).

    Same arithmetic as torch's linear interpolation: ranks in float64, the two order statistics
    around each rank, ``lerp`` in float32 with the fractional rank as weight.
    """
    if u8.device.type == "cpu":  # numpy, the same bits (data/intensity.py)
        return torch.from_numpy(np_percentiles(u8.contiguous().numpy()))
    b = u8.shape[0]
    flat = u8.reshape(b, -1)
    n = flat.shape[1]
    offsets = 256 * torch.arange(b, device=u8.device)[:, None]
    keys = (flat.long() + offsets).reshape(-1)
    cum = torch.bincount(keys, minlength=256 * b).view(b, 256).cumsum(1)
    ranks = torch.tensor([PCT_LO, PCT_HI], dtype=torch.float32).double() * (n - 1)
    below, above = ranks.floor().long(), ranks.ceil().long()

    def order_stat(k: Tensor) -> Tensor:  # (2,) ranks -> (2, B): smallest v with cum[v] > k
        k = k.to(cum.device).view(1, -1).expand(b, -1).contiguous()
        return torch.searchsorted(cum, k, right=True).t().float() / 255.0

    weight = (ranks - below.double()).float().to(cum.device).view(-1, 1)
    return torch.lerp(order_stat(below), order_stat(above), weight).to(u8.device)


def normalize_intensity(x: Tensor, mode: str = "none", quantiles: Tensor | None = None) -> Tensor:
    """Per-image intensity standardization of float [0, 1] images ``(B, C, H, W)``.

    ``percentile`` maps each image's 0.5th..99.5th percentile to 0..1 (clipped), so a linear
    change of brightness or contrast between scanners leaves the model input nearly unchanged.
    ``none`` returns ``x``. ``quantiles`` (2, B), when the caller has them (from
    `uint8_percentiles` of the planes ``x`` was made of), saves the sort.
    """
    if mode == "none":
        return x
    if mode != "percentile":
        raise BrainMRIError(f"unknown intensity mode {mode!r} (one of {INTENSITY_MODES})")
    if quantiles is None:
        flat = x.reshape(x.shape[0], -1).float()
        quantiles = torch.quantile(flat, torch.tensor([PCT_LO, PCT_HI], device=x.device), dim=1)
    lo = quantiles[0].view(-1, 1, 1, 1)
    span = (quantiles[1] - quantiles[0]).clamp_min(1e-3).view(-1, 1, 1, 1)
    return ((x - lo) / span).clamp_(0.0, 1.0)


def normalize_planes(planes: Tensor, mode: str = "none") -> Tensor:
    """uint8 planes ``(B, C, H, W)`` -> float [0, 1] images, intensity-normalized: what every
    inference path feeds the model. The percentiles come from `uint8_percentiles` (no sort), and
    each image's 256 possible outputs are computed once and looked up per pixel — the same
    float32 arithmetic as `normalize_intensity` on ``planes / 255``, so the same bits."""
    if planes.device.type == "cpu":  # numpy, the same bits (data/intensity.py)
        return torch.from_numpy(np_normalize_planes(planes.contiguous().numpy(), mode))
    if mode != "percentile":
        return normalize_intensity(planes.float() / 255.0, mode)
    b = planes.shape[0]
    levels = torch.arange(256, dtype=torch.float32, device=planes.device) / 255.0
    table = normalize_intensity(levels.expand(b, 1, 1, 256), mode, uint8_percentiles(planes))
    index = planes.reshape(b, -1).long()
    return torch.gather(table.reshape(b, 256), 1, index).view(planes.shape)
