"""MRI augmentation: seeded, shape- and range-preserving, background kept, never a vertical flip."""

from __future__ import annotations

import pytest
import torch

from brainmri.data import mri_augment as ma
from brainmri.errors import BrainMRIError


def _slices(n: int = 4, size: int = 48) -> torch.Tensor:
    """Synthetic 'heads': a bright ellipse with a darker blob, on black, top half brighter."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    head = ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1).float()
    x = head * (0.5 + 0.3 * (yy < 0).float()) - 0.2 * head * ((xx - 0.2) ** 2 + yy**2 < 0.05)
    return x.expand(n, 1, size, size).clone().clamp(0, 1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


ALL = ma.MRIAugmentSettings(curve_prob=1.0, invert_prob=0.5, histogram_prob=0.5, frame_prob=0.5)
"""Every batched op (TorchIO artifacts, one image at a time, are tested on their own: slower)."""


def test_identity_when_off():
    x = _slices()
    assert not ma.MRIAugmentSettings().active
    assert torch.equal(ma.MRIAugment(ma.MRIAugmentSettings())(x, _gen()), x)


def test_seeded_and_in_range():
    x = _slices(6)
    aug = ma.MRIAugment(ALL)
    a, b, c = aug(x, _gen(1)), aug(x, _gen(1)), aug(x, _gen(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_monotone_curves_keep_order_and_black():
    x = torch.linspace(0, 1, 256).view(1, 1, 16, 16).repeat(8, 1, 1, 1)
    y = ma.intensity_curves(x, knots=5, monotone_share=1.0, generator=_gen())
    assert torch.all(y.flatten(1).diff(dim=1) >= -1e-6)
    assert torch.allclose(y[:, :, 0, 0], torch.zeros(8, 1))
    # non-monotone curves: some image is no longer sorted (a T1 <-> T2-like swap)
    z = ma.intensity_curves(x, knots=5, monotone_share=0.0, generator=_gen())
    assert bool((z.flatten(1).diff(dim=1) < -1e-3).any())


def test_invert_keeps_background():
    x = _slices(1)
    y = ma.invert(x)
    bg = x <= ma.HEAD_LEVEL
    assert torch.equal(y[bg], x[bg])
    assert torch.allclose(y[~bg], 1 - x[~bg])


def test_histogram_randomize_spreads_head_values():
    x = _slices(2)
    y = ma.histogram_randomize(x, generator=_gen())
    head = x > ma.HEAD_LEVEL
    assert torch.equal(y[~head], x[~head])
    assert float(y[head].min()) > ma.HEAD_LEVEL
    # order of head pixels is kept (monotone), values are redrawn
    i = torch.argsort(x[0][head[0]])
    assert torch.all(y[0][head[0]][i].diff() >= -1e-6)
    assert not torch.allclose(y, x)


def test_frame_shrinks_into_black_border():
    x = torch.ones(3, 1, 40, 40)
    y = ma.frame(x, scale=(0.5, 0.5), generator=_gen())
    covered = (y > 0.5).float().mean(dim=(1, 2, 3))
    assert torch.allclose(covered, torch.full((3,), 0.25), atol=0.04)


def test_no_vertical_flip():
    """Bright top half stays above the dim bottom half under framing and artifacts."""
    x = _slices(6, 48)
    framed = ma.MRIAugment(ma.MRIAugmentSettings(frame_prob=1.0))(x, _gen(3))
    rows = torch.arange(48, dtype=torch.float32).view(1, 1, 48, 1)
    for img in framed:
        bright, dim = img > 0.7, (img > 0.3) & (img < 0.6)
        assert (rows[0] * bright).sum() / bright.sum() < (rows[0] * dim).sum() / dim.sum()
    noisy = ma.MRIArtifacts()(x[:3], _gen(4))
    top, bottom = noisy[:, :, :20].mean(dim=(1, 2, 3)), noisy[:, :, 28:].mean(dim=(1, 2, 3))
    assert bool((top > bottom).all())


def test_artifacts_seeded_change_image_keep_range():
    x = _slices(2, 32)
    art = ma.MRIArtifacts()
    y, y2 = art(x, _gen(5)), art(x, _gen(5))
    assert y.shape == x.shape and torch.equal(y, y2)
    assert not torch.allclose(y, x)
    assert float(y.min()) >= 0.0 and float(y.max()) <= float(x.max()) + 1e-6


def test_bad_settings_rejected():
    with pytest.raises(BrainMRIError):
        ma.MRIAugmentSettings(curve_prob=1.5)
    with pytest.raises(BrainMRIError):
        ma.MRIAugmentSettings(frame_scale=(0.9, 0.5))
    with pytest.raises(ValueError):
        ma.invert(torch.zeros(2, 3, 8, 8))


def test_recipe_fields_default_off_and_switch_on():
    from brainmri.config import AugmentConfig

    assert not ma.settings_from_augment(AugmentConfig()).active
    on = ma.settings_from_augment(AugmentConfig(mri_curve_prob=0.5, mri_frame_prob=0.25))
    assert on.curve_prob == 0.5 and on.frame_prob == 0.25 and on.active


def test_training_applies_the_recipe_mri_fields():
    """train/loop.py and adapt build `TrainAugment`: the MRI ops run only when switched on."""
    from brainmri.config import AugmentConfig
    from brainmri.data.transforms import BatchAugment

    x = (torch.rand(6, 1, 48, 48) * 255).to(torch.uint8)
    off = ma.TrainAugment(AugmentConfig())
    assert off.mri is None
    a = off(x, torch.Generator().manual_seed(1))
    b = BatchAugment(AugmentConfig())(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    on = ma.TrainAugment(AugmentConfig(mri_invert_prob=1.0))
    assert on.mri is not None
    c = on(x, torch.Generator().manual_seed(1))
    assert not torch.allclose(a, c) and 0.0 <= float(c.min()) and float(c.max()) <= 1.0
