"""The DynaCLR encoder (shapes, checks, config) and the batched augmentations."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from celltrails.dynaclr.augment import (
    AugmentConfig,
    adjust_contrast,
    affine_yx,
    augment,
    center_crop_yx,
    gaussian_smooth_yx,
)
from celltrails.dynaclr.model import PRESETS, ContrastiveEncoder, EncoderConfig, encoder_config

torch.set_num_threads(2)

TINY = EncoderConfig(dims=(8, 16, 32), depths=(1, 1, 1), projection_dim=8)
OFF = AugmentConfig(affine_probability=0, contrast_probability=0, intensity_probability=0,
                    smooth_probability=0, noise_probability=0)


# --- encoder -------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, shape", [
    (TINY, (2, 1, 1, 32, 48)),  # 2D, non-square
    (EncoderConfig(in_channels=2, z_window=5, stem_kernel_z=5, dims=(8, 16, 32), depths=(1, 1, 1),
                   projection_dim=8), (3, 2, 5, 16, 16)),  # D' = 1
    (EncoderConfig(z_window=6, stem_kernel_z=2, dims=(12, 24, 48), depths=(1, 1, 1), projection_dim=8),
     (2, 1, 6, 16, 32)),  # D' = 3 slabs folded into 12 channels
])
def test_output_shapes(config, shape):
    model = ContrastiveEncoder(config)
    features, projections = model(torch.randn(shape))
    assert features.shape == (shape[0], config.dims[-1])
    assert projections.shape == (shape[0], config.projection_dim)
    assert torch.isfinite(features).all() and torch.isfinite(projections).all()
    assert model.size_multiple == 4 * 2 ** (len(config.dims) - 1)


def test_stem_depth_must_divide_dims0():
    assert EncoderConfig(z_window=6, stem_kernel_z=2, dims=(12, 24), depths=(1, 1)).stem_depth == 3
    with pytest.raises(ValueError, match=r"dims\[0\] \(16\) must be divisible by .*D' .* = 3: set dims\[0\] to a "
                                         r"multiple of 3 \(e.g. 18\)"):
        ContrastiveEncoder(EncoderConfig(z_window=6, stem_kernel_z=2))
    with pytest.raises(ValueError, match=r"z_window \(6\) must be a positive multiple of stem_kernel_z \(4\)"):
        EncoderConfig(z_window=6, stem_kernel_z=4)
    with pytest.raises(ValueError, match="equal length"):
        EncoderConfig(dims=(8, 16), depths=(1,))


def test_presets():
    assert set(PRESETS) == {"small", "convnext_tiny"}
    assert encoder_config("small") == EncoderConfig()
    tiny = encoder_config("convnext_tiny", in_channels=2, z_window=15, stem_kernel_z=5)
    assert tiny.dims == (96, 192, 384, 768) and tiny.depths == (3, 3, 9, 3) and tiny.stem_depth == 3
    model = ContrastiveEncoder(tiny).eval()
    assert model.stem.out_channels == 32
    assert 28e6 < sum(p.numel() for p in model.parameters()) < 29e6
    with torch.no_grad():
        features, projections = model(torch.randn(1, 2, 15, 32, 32))
    assert features.shape == (1, 768) and projections.shape == (1, 32)
    with pytest.raises(ValueError, match=r"unknown encoder preset 'resnet'.*convnext_tiny.*small"):
        encoder_config("resnet")
    with pytest.raises(ValueError, match=r"unknown encoder config keys \['width'\]"):
        encoder_config("small", width=3)


def test_wrong_inputs_raise_helpful_errors():
    model = ContrastiveEncoder(EncoderConfig(in_channels=2, dims=(8, 16, 32), depths=(1, 1, 1)))
    assert model.size_multiple == 16
    with pytest.raises(ValueError, match=r"expects input \(B, C=2, Z=1, Y, X\), got shape \(2, 32, 32\)"):
        model(torch.zeros(2, 32, 32))
    with pytest.raises(ValueError, match=r"expects input \(B, C=2.*got shape \(2, 1, 1, 32, 32\)"):
        model(torch.zeros(2, 1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expects Z = z_window = 1 slices, got Z = 3"):
        model(torch.zeros(2, 2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"multiples of size_multiple=16.*Y=40, X=32: crop to Y=32, X=32 or pad "
                                         r"to Y=48, X=32"):
        model(torch.zeros(2, 2, 1, 40, 32))
    with pytest.raises(ValueError, match=r"Y=8, X=32: pad to Y=16, X=32"):
        model(torch.zeros(2, 2, 1, 8, 32))


def test_config_round_trip():
    config = EncoderConfig(in_channels=2, z_window=10, stem_kernel_z=5, dims=(8, 16), depths=(2, 1),
                           projection_dim=4, drop_path_rate=0.1)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["dims"] == [8, 16]
    assert EncoderConfig.from_dict(data) == config
    with pytest.raises(ValueError, match=r"unknown encoder config keys \['colour', 'size'\]"):
        EncoderConfig.from_dict({**data, "size": 1, "colour": 2})


def test_eval_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    model = ContrastiveEncoder(EncoderConfig(dims=(8, 16, 32), depths=(1, 1, 1), drop_path_rate=0.5))
    x = torch.randn(3, 1, 1, 32, 32)
    model.train()
    model(x)  # updates the BatchNorm running statistics
    model.eval()
    with torch.no_grad():
        first, second, alone = model(x), model(x), model(x[:1])
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    torch.testing.assert_close(alone[0], first[0][:1])
    torch.testing.assert_close(alone[1], first[1][:1])


def test_gradients_reach_the_stem():
    model = ContrastiveEncoder(EncoderConfig(z_window=4, stem_kernel_z=2, dims=(8, 16), depths=(1, 1)))
    features, projections = model(torch.randn(4, 1, 4, 16, 16))
    (projections.pow(2).sum() + features.sum()).backward()
    assert model.stem.weight.grad is not None and model.stem.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


# --- augmentations -------------------------------------------------------------------------------

def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augment_shape_and_reproducibility():
    batch = torch.randn(6, 2, 3, 24, 24)
    config = AugmentConfig()
    first = augment(batch, config, _generator(1))
    assert first.shape == batch.shape and first.dtype == batch.dtype
    assert torch.equal(first, augment(batch, config, _generator(1)))
    assert not torch.allclose(first, augment(batch, config, _generator(2)))
    assert not torch.equal(first, batch)


def test_augment_with_all_probabilities_zero_is_identity():
    batch = torch.randn(4, 1, 2, 16, 16)
    out = augment(batch, OFF, _generator(0))
    assert torch.equal(out, batch) and out is not batch


def test_augment_shares_the_transform_across_channels_and_z():
    sample = torch.randn(1, 1, 1, 20, 20).expand(3, 2, 4, 20, 20).contiguous()
    config = replace(OFF, affine_probability=1.0, contrast_probability=1.0, intensity_probability=1.0,
                                 smooth_probability=1.0)
    out = augment(sample, config, _generator(3))
    assert torch.allclose(out, out[:, :1, :1].expand_as(out))  # channels and z-slices alike
    assert not torch.allclose(out[0], out[1])  # samples differ


def test_rotation_matches_rot90():
    torch.manual_seed(0)
    patch = torch.randn(2, 2, 3, 16, 16)
    ones, no_shear = torch.ones(2), torch.zeros(2, 2)
    half_turn = affine_yx(patch, torch.full((2,), math.pi), ones, no_shear)
    expected = torch.rot90(patch, 2, dims=(-2, -1))
    torch.testing.assert_close(half_turn[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2], atol=1e-4, rtol=0)
    quarter = affine_yx(patch, torch.full((2,), math.pi / 2), ones, no_shear)
    torch.testing.assert_close(quarter[..., 2:-2, 2:-2], torch.rot90(patch, -1, dims=(-2, -1))[..., 2:-2, 2:-2],
                               atol=1e-4, rtol=0)
    identity = affine_yx(patch, torch.zeros(2), ones, no_shear)
    torch.testing.assert_close(identity, patch, atol=1e-5, rtol=0)


def test_zoom_and_shear_in_pixels_on_a_non_square_patch():
    y, x = 16, 24
    ramp_x = (torch.arange(x) - (x - 1) / 2).expand(1, 1, 1, y, x).clone()
    ramp_y = (torch.arange(y) - (y - 1) / 2).view(y, 1).expand(1, 1, 1, y, x).clone()
    zoomed = affine_yx(ramp_x, torch.zeros(1), torch.tensor([2.0]), torch.zeros(1, 2))
    torch.testing.assert_close(zoomed, ramp_x / 2)  # magnified: the content at d comes from d / 2
    # x += 0.1 * y: the output at (x, y) samples the input at x - 0.1 y
    sheared = affine_yx(ramp_x, torch.zeros(1), torch.ones(1), torch.tensor([[0.1, 0.0]]))
    inner = (..., slice(2, -2), slice(4, -4))
    torch.testing.assert_close(sheared[inner], (ramp_x - 0.1 * ramp_y)[inner])


def test_contrast_keeps_each_samples_min_and_max():
    batch = torch.rand(4, 2, 2, 16, 16) * torch.tensor([1.0, 5.0, 0.1, 3.0]).view(4, 1, 1, 1, 1) - 1
    gammas = torch.tensor([0.8, 1.2, 1.0, 0.9])
    out = adjust_contrast(batch, gammas)
    for reduce in (torch.amin, torch.amax):
        torch.testing.assert_close(reduce(out, dim=(2, 3, 4)), reduce(batch, dim=(2, 3, 4)), atol=1e-5, rtol=0)
    assert not torch.allclose(out[0], batch[0])
    torch.testing.assert_close(out[2], batch[2], atol=1e-5, rtol=0)  # gamma 1 (up to MONAI's epsilon)
    via_augment = augment(batch, replace(OFF, contrast_probability=1.0), _generator(0))
    torch.testing.assert_close(via_augment.amax(dim=(2, 3, 4)), batch.amax(dim=(2, 3, 4)), atol=1e-5, rtol=0)


def test_intensity_scaling_stays_within_the_factor():
    batch = torch.ones(64, 1, 1, 4, 4)
    out = augment(batch, replace(OFF, intensity_probability=1.0, intensity_factor=0.5), _generator(0))
    factors = out[:, 0, 0, 0, 0]
    assert torch.equal(out, factors.view(-1, 1, 1, 1, 1).expand_as(out))
    assert factors.min() >= 0.5 and factors.max() <= 1.5 and factors.std() > 0.2


def test_noise_adds_the_configured_std():
    batch = torch.zeros(4, 1, 2, 64, 64)
    out = augment(batch, replace(OFF, noise_probability=1.0, noise_std=0.2), _generator(0))
    assert abs(out.std().item() - 0.2) < 0.005 and abs(out.mean().item()) < 0.005


def test_smoothing_reduces_white_noise_variance():
    noise = torch.randn(2, 1, 2, 64, 64, generator=_generator(0))
    weak = gaussian_smooth_yx(noise, torch.full((2,), 0.25), torch.full((2,), 0.25))
    strong = gaussian_smooth_yx(noise, torch.full((2,), 0.75), torch.full((2,), 0.75))
    assert strong.var() < weak.var() < noise.var()
    assert strong.var() < 0.25 * noise.var()
    torch.testing.assert_close(strong.mean(), noise.mean(), atol=0.01, rtol=0)  # kernels sum to 1
    z_only = gaussian_smooth_yx(noise[:, :, :1].expand(2, 1, 2, 64, 64), torch.ones(2), torch.ones(2))
    assert torch.equal(z_only[:, :, 0], z_only[:, :, 1])  # no smoothing across z


def test_center_crop_yx():
    batch = torch.arange(7 * 8.0).view(1, 1, 1, 7, 8)
    crop = center_crop_yx(batch, 4)
    assert crop.shape == (1, 1, 1, 4, 4)
    assert torch.equal(crop[0, 0, 0], batch[0, 0, 0, 1:5, 2:6])
    with pytest.raises(ValueError, match=r"cannot crop a 9 x 9 centre from patches of Y=7, X=8"):
        center_crop_yx(batch, 9)


def test_augment_config_round_trip_and_checks():
    config = AugmentConfig(gamma=(0.5, 1.5), noise_std=0.1)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["gamma"] == [0.5, 1.5] and AugmentConfig.from_dict(data) == config
    with pytest.raises(ValueError, match=r"unknown augmentation config keys \['blur'\]"):
        AugmentConfig.from_dict({"blur": 1})
    with pytest.raises(ValueError, match="noise_probability must be in"):
        AugmentConfig(noise_probability=1.5)
    with pytest.raises(ValueError, match="augment expects a float batch"):
        augment(torch.zeros(2, 1, 8, 8), AugmentConfig(), _generator(0))
