"""Batched augmentation, model-input conversion and TTA views (synthetic tensors, CPU, fast)."""

from __future__ import annotations

import pytest
import torch

from brainmri.config import AugmentConfig
from brainmri.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TTA_VIEWS,
    BatchAugment,
    affine_matrices,
    apply_affine,
    normalize_intensity,
    normalize_planes,
    sample_affine_params,
    to_model_input,
    tta_views,
    uint8_percentiles,
)
from brainmri.errors import BrainMRIError

IDENTITY = dict(
    rotation_deg=0.0,
    shift=0.0,
    zoom=0.0,
    shear=0.0,
    hflip=False,
    brightness=(1.0, 1.0),
    contrast=(1.0, 1.0),
    gamma=(1.0, 1.0),
    blur_prob=0.0,
    lowres_prob=0.0,
)


def only(**changes) -> AugmentConfig:
    """An identity config with just ``changes`` switched on."""
    return AugmentConfig(**{**IDENTITY, **changes})


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noise(b: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 1, size, size, generator=gen(seed))


def hf_energy(x: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared difference between neighbouring pixels."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean(dim=(1, 2, 3))
    dy = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean(dim=(1, 2, 3))
    return dx + dy


def top_bottom(b: int, size: int = 64) -> torch.Tensor:
    x = torch.zeros(b, 1, size, size, dtype=torch.uint8)
    x[:, :, : size // 2] = 220
    return x


# ---------------------------------------------------------------- identity, dtype, determinism


def test_identity_config_returns_input():
    x = torch.randint(0, 256, (4, 1, 24, 24), dtype=torch.uint8)
    out = BatchAugment(AugmentConfig(**IDENTITY))(x, generator=gen())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x.float() / 255, atol=1e-5, rtol=0)


def test_identity_affine_through_grid_sample_is_exact():
    x = noise(3, 20)
    zero = torch.zeros(3)
    params = {"angle_deg": zero, "tx": zero, "ty": zero, "zoom": zero + 1, "shear": zero}
    theta = affine_matrices(params)
    torch.testing.assert_close(theta, torch.eye(2, 3).expand(3, 2, 3))
    torch.testing.assert_close(apply_affine(x, theta), x, atol=1e-5, rtol=0)


def test_output_float32_in_unit_range_same_shape():
    cfg = AugmentConfig(
        contrast=(0.5, 2.0), gamma=(0.5, 2.0), blur_prob=0.5, lowres_prob=0.5, brightness=(0.5, 2)
    )
    x = torch.randint(0, 256, (16, 1, 32, 32), dtype=torch.uint8)
    out = BatchAugment(cfg)(x, generator=gen())
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.isfinite(out).all()


def test_seeded_generator_repeats_and_seeds_differ():
    cfg = AugmentConfig(contrast=(0.8, 1.2), gamma=(0.8, 1.2), blur_prob=0.5, lowres_prob=0.5)
    aug = BatchAugment(cfg)
    x = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    a, b = aug(x, generator=gen(7)), aug(x, generator=gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, aug(x, generator=gen(8)))


def test_each_sample_gets_its_own_parameters():
    x = torch.full((8, 1, 16, 16), 100, dtype=torch.uint8).expand(8, 1, 16, 16)
    out = BatchAugment(only(brightness=(0.5, 1.5)))(x, generator=gen())
    means = out.mean(dim=(1, 2, 3))
    assert means.unique().numel() == 8


# ---------------------------------------------------------------- geometry


def test_affine_params_stay_in_range_and_cover_it():
    cfg = AugmentConfig()
    p = sample_affine_params(20000, cfg, gen(), "cpu")
    for key, lo, hi in [
        ("angle_deg", -cfg.rotation_deg, cfg.rotation_deg),
        ("tx", -cfg.shift, cfg.shift),
        ("ty", -cfg.shift, cfg.shift),
        ("zoom", 1 - cfg.zoom, 1 + cfg.zoom),
        ("shear", -cfg.shear, cfg.shear),
    ]:
        v = p[key]
        assert v.shape == (20000,)
        assert v.min() >= lo and v.max() <= hi, key
        span = hi - lo
        assert v.min() < lo + 0.01 * span and v.max() > hi - 0.01 * span, key
    assert p["flip"].dtype == torch.bool


def test_matrices_never_turn_up_into_down():
    cfg = AugmentConfig()
    p = sample_affine_params(20000, cfg, gen(1), "cpu")
    theta = affine_matrices(p)
    lin = theta[:, :, :2]
    assert (lin[:, 1, 1] > 0).all()  # output "down" samples input "down"
    forward = torch.linalg.inv(lin)
    assert (forward[:, 1, 1] > 0).all()  # input "down" lands "down"
    det = torch.linalg.det(lin)
    assert torch.equal(det < 0, p["flip"])  # only the horizontal flip mirrors


def test_matrices_invert_the_documented_forward_map():
    p = sample_affine_params(64, AugmentConfig(), gen(2), "cpu")
    a = torch.deg2rad(p["angle_deg"])
    c, s = torch.cos(a), torch.sin(a)
    one, zero = torch.ones(64), torch.zeros(64)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], 1)
    shear = torch.stack([torch.stack([one, p["shear"]], -1), torch.stack([zero, one], -1)], 1)
    f = torch.where(p["flip"], -one, one)
    scale = torch.diag_embed(torch.stack([f * p["zoom"], p["zoom"]], -1))
    lin = rot @ shear @ scale
    t = 2 * torch.stack([p["tx"], p["ty"]], -1)
    theta = affine_matrices(p)
    torch.testing.assert_close(theta[:, :, :2] @ lin, torch.eye(2).expand(64, 2, 2))
    # theta maps the forward image of the centre (the translation) back to the centre
    back = (theta[:, :, :2] @ t[..., None]).squeeze(-1) + theta[:, :, 2]
    torch.testing.assert_close(back, torch.zeros(64, 2), atol=1e-6, rtol=0)


def test_no_vertical_flip_in_500_augmentations():
    aug = BatchAugment(AugmentConfig())  # rotation 15, shift .1, zoom .1, shear .1, hflip
    out = aug(top_bottom(500), generator=gen(3))
    top = out[:, :, :32].mean(dim=(1, 2, 3))
    bottom = out[:, :, 32:].mean(dim=(1, 2, 3))
    assert (top > bottom).all()
    assert (top > 2 * bottom + 0.1).all()


def test_hflip_about_half_the_time_and_exact():
    x = torch.zeros(1000, 1, 8, 8, dtype=torch.uint8)
    x[..., :4] = 255  # left half bright
    out = BatchAugment(only(hflip=True))(x, generator=gen(4))
    ref = x.float() / 255
    flipped = (out - torch.flip(ref, dims=[3])).abs().amax(dim=(1, 2, 3)) < 1e-5
    kept = (out - ref).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert (flipped ^ kept).all()  # every sample is exactly one of the two
    assert 0.42 < flipped.float().mean() < 0.58


def test_shift_moves_content():
    x = torch.zeros(1, 1, 40, 40)
    x[..., 20, 20] = 1.0
    p = {"tx": torch.tensor([0.1]), "ty": torch.tensor([-0.1])}
    out = apply_affine(x, affine_matrices(p))
    yx = divmod(int(out.flatten().argmax()), 40)
    assert yx == (16, 24)  # 10% of 40 = 4 px right and up


def test_rejects_settings_that_could_flip_upside_down():
    with pytest.raises(BrainMRIError):
        BatchAugment(AugmentConfig(rotation_deg=120))
    with pytest.raises(BrainMRIError):
        BatchAugment(AugmentConfig(zoom=1.0))


# ---------------------------------------------------------------- intensity


def test_brightness_scales_the_mean():
    x = torch.full((4, 1, 16, 16), 0.5)
    out = BatchAugment(only(brightness=(1.2, 1.2)))(x)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.full((4,), 0.6))
    out = BatchAugment(only(brightness=(0.8, 1.1)))(x[:1].expand(200, 1, 16, 16), generator=gen())
    ratio = out.mean(dim=(1, 2, 3)) / 0.5
    assert ratio.min() >= 0.8 - 1e-6 and ratio.max() <= 1.1 + 1e-6
    assert ratio.max() - ratio.min() > 0.2


def test_contrast_and_gamma():
    x = torch.full((2, 1, 8, 8), 0.25)
    x[..., 4:] = 0.75
    out = BatchAugment(only(contrast=(2.0, 2.0)))(x)
    assert out[..., :4].abs().max() < 1e-6 and (out[..., 4:] - 1).abs().max() < 1e-6
    out = BatchAugment(only(gamma=(2.0, 2.0)))(x)
    torch.testing.assert_close(out, x**2)


def test_blur_lowers_high_frequency_energy():
    x = noise(8, 32)
    out = BatchAugment(only(blur_prob=1.0, blur_sigma=(1.0, 2.0)))(x, generator=gen())
    assert (hf_energy(out) < 0.3 * hf_energy(x)).all()
    flat = torch.full((3, 1, 16, 16), 0.4)
    out = BatchAugment(only(blur_prob=1.0))(flat, generator=gen())
    torch.testing.assert_close(out, flat)  # normalized kernel, reflect padding


def test_blur_probability_is_per_sample():
    x = noise(64, 16)
    out = BatchAugment(only(blur_prob=0.5))(x, generator=gen(5))
    unchanged = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-6
    assert 10 < unchanged.sum() < 54


def test_lowres_keeps_shape_and_removes_detail():
    x = noise(8, 48)
    out = BatchAugment(only(lowres_prob=1.0, lowres_scale=(0.4, 0.6)))(x, generator=gen())
    assert out.shape == x.shape
    assert (hf_energy(out) < 0.5 * hf_energy(x)).all()
    flat = torch.full((2, 1, 48, 48), 0.3)
    out = BatchAugment(only(lowres_prob=1.0))(flat, generator=gen())
    torch.testing.assert_close(out, flat)


# ---------------------------------------------------------------- TTA


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_tta_views_names_and_count(n):
    x = noise(2, 16)
    views = tta_views(x, n)
    assert [name for name, _ in views] == list(TTA_VIEWS[:n])
    assert all(v.shape == x.shape for _, v in views)
    assert torch.equal(views[0][1], x)


def test_tta_views_content():
    x = noise(2, 24)
    views = dict(tta_views(x, 5))
    assert len(TTA_VIEWS) == 5
    assert torch.equal(views["hflip"], torch.flip(x, dims=[3]))
    # flipping conjugates a rotation into its opposite
    mirrored = torch.flip(tta_views(torch.flip(x, dims=[3]), 3)[2][1], dims=[3])
    torch.testing.assert_close(views["rot-10"], mirrored, atol=1e-5, rtol=0)
    assert not torch.allclose(views["rot+10"], views["rot-10"])
    flat = torch.full((1, 1, 24, 24), 0.5)
    fv = dict(tta_views(flat, 5))
    torch.testing.assert_close(fv["zoom1.1"], flat)  # zoom-in never samples outside
    assert fv["rot+10"][0, 0, 0, 0] < 0.1  # rotated corners are padding
    assert torch.equal(dict(tta_views(x, 5))["rot+10"], views["rot+10"])  # deterministic
    with pytest.raises(ValueError):
        tta_views(x, 6)


# ---------------------------------------------------------------- model input


def test_to_model_input_normalizes_and_repeats_gray():
    x = torch.full((2, 1, 8, 8), 128, dtype=torch.uint8)
    out = to_model_input(x)
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float32
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    expected = ((128 / 255) - mean) / std
    torch.testing.assert_close(out[0, :, 3, 5], expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out, expected.view(1, 3, 1, 1).expand(2, 3, 8, 8))


def test_to_model_input_rgb_and_channels_last():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = to_model_input(x, channels_last=True)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert not to_model_input(x).is_contiguous(memory_format=torch.channels_last)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    ref = (x.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(to_model_input(x.float() / 255), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [1, 17, 160, 192])
def test_uint8_percentiles_equal_torch_quantile_bit_for_bit(size):
    """The histogram percentiles give exactly torch.quantile's values (same model inputs)."""
    g = torch.Generator().manual_seed(size)
    noise = torch.randint(0, 256, (8, 1, size, size), generator=g, dtype=torch.uint8)
    # skewed, mostly dark images like scans (many equal values around each rank)
    dark = (torch.rand(8, 1, size, size, generator=g) ** 6 * 255).to(torch.uint8)
    flat_const = torch.full((2, 1, size, size), 37, dtype=torch.uint8)
    for u8 in (noise, dark, flat_const):
        x = u8.float() / 255.0
        want = torch.quantile(x.reshape(len(x), -1), torch.tensor([0.005, 0.995]), dim=1)
        assert torch.equal(uint8_percentiles(u8), want)
        assert torch.equal(
            normalize_intensity(x, "percentile", uint8_percentiles(u8)),
            normalize_intensity(x, "percentile"),
        )
        for mode in ("percentile", "none"):  # the inference paths' helper
            assert torch.equal(normalize_planes(u8, mode), normalize_intensity(x, mode))


def test_uint8_percentiles_on_real_scans(benchmark_dir):
    from brainmri.data.cache import decode_images

    files = sorted((benchmark_dir / "Testing").glob("*/*.jpg"))[::40]
    u8 = decode_images(files, 192, desc="decode")
    want = torch.quantile((u8.float() / 255).reshape(len(u8), -1), torch.tensor([0.005, 0.995]), 1)
    assert torch.equal(uint8_percentiles(u8), want)
