"""Batched random augmentations of single-cell patches, as in DynaCLR (defaults are the paper's values).

:func:`augment` takes a batch ``(B, C, Z, Y, X)`` of normalised patches and applies, in DynaCLR's
order and each with its own probability, independently per sample: an affine transform in yx
(rotation about z, isotropic zoom, shear), a contrast change (gamma), an intensity scaling, a
Gaussian smoothing in yx and additive Gaussian noise. :func:`center_crop_yx` then crops the
final patch.

Design choices and why
----------------------
* **Torch on the batch's device, no numpy, no MONAI.** Augmenting the whole batch at once on the
  GPU (or CPU) avoids a per-sample Python loop in the data loader; the transforms reproduce the
  semantics of the MONAI transforms DynaCLR uses (RandAffine, RandAdjustContrast,
  RandScaleIntensity, RandGaussianSmooth, RandGaussianNoise).
* **Reproducible.** Every random number comes from the ``torch.Generator`` passed in, which must
  live on the batch's device. Every parameter is drawn for every sample whether or not the
  transform is applied, so the random stream depends only on the batch shape and the config.
* **Per-sample parameters, shared across channels and z.** Each sample gets its own angle, zoom,
  gamma, ...; one sample's channels and z-slices get the same yx affine and the same parameters
  (MONAI's dictionary transforms share one draw between the keys, i.e. the channels).
* **Affine by** ``F.affine_grid`` / ``F.grid_sample`` (bilinear, zero padding), about the patch
  centre, in pixel units (a rotation stays a rotation on non-square patches). Zero padding is
  harmless because callers extract patches larger than the final crop (the corners of a rotated
  square reach 1.41x its half-width) and crop the centre afterwards.
* **Smoothing** uses pixel-integrated (erf) Gaussian kernels, as MONAI's default: a sampled
  Gaussian misrepresents sigma 0.25. Borders are replicated (MONAI pads with zeros, which would
  darken the border; both disappear in the centre crop).
* **Noise has a fixed std** ``noise_std``. MONAI's RandGaussianNoise draws the std uniformly in
  [0, std] by default (``sample_std=True``), so on average this is stronger noise than DynaCLR's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from celltrails.serialize import config_from_dict, config_to_dict

CONTRAST_EPS = 1e-7  # as MONAI's AdjustContrast


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation probabilities and ranges (DynaCLR's values by default)."""

    affine_probability: float = 0.8
    rotation: float = math.pi  # max |angle| in radians, about z
    scale: float = 0.2  # isotropic xy zoom factor drawn in [1 - scale, 1 + scale]
    shear: float = 0.01  # both yx shear coefficients drawn in [-shear, shear]
    contrast_probability: float = 0.5
    gamma: tuple[float, float] = (0.8, 1.2)
    intensity_probability: float = 0.5
    intensity_factor: float = 0.5  # multiply by (1 + f), f uniform in [-factor, factor]
    smooth_probability: float = 0.5
    smooth_sigma: tuple[float, float] = (0.25, 0.75)  # xy, pixels; no smoothing in z
    noise_probability: float = 0.5
    noise_std: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "gamma", tuple(float(g) for g in self.gamma))
        object.__setattr__(self, "smooth_sigma", tuple(float(s) for s in self.smooth_sigma))
        for name in ("affine", "contrast", "intensity", "smooth", "noise"):
            p = getattr(self, f"{name}_probability")
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}_probability must be in [0, 1], got {p}")
        if min(self.rotation, self.shear, self.intensity_factor, self.noise_std) < 0 or not 0 <= self.scale < 1:
            raise ValueError("rotation, shear, intensity_factor and noise_std must be >= 0 and scale in [0, 1)")
        for name, low_min in (("gamma", 0.0), ("smooth_sigma", 0.0)):
            r = getattr(self, name)
            if len(r) != 2 or not low_min < r[0] <= r[1]:
                raise ValueError(f"{name} must be a range (low, high) with 0 < low <= high, got {r}")

    def to_dict(self) -> dict:
        """JSON/YAML-friendly (tuples as lists); round-trips with :meth:`from_dict`."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> AugmentConfig:
        return config_from_dict(cls, data, "augmentation")


def _rand(n: int, generator: torch.Generator) -> Tensor:
    return torch.rand(n, generator=generator, device=generator.device)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * _rand(n, generator)


def _per_sample(values: Tensor, batch: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1, 1) in the batch's dtype, to broadcast over a (B, C, Z, Y, X) batch."""
    return values.to(batch.dtype).view(-1, 1, 1, 1, 1)


def _select(apply: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Per sample: ``new`` where ``apply`` (B,) is True, else ``old``."""
    return torch.where(apply.view(-1, 1, 1, 1, 1), new, old)


def affine_yx(batch: Tensor, angles: Tensor, scales: Tensor, shears: Tensor) -> Tensor:
    """Resample each sample of (B, C, Z, Y, X) under its own yx affine about the patch centre.

    The forward transform (in pixels, x right, y down) is rotation(angle) @ shear @ zoom(scale):
    ``scale`` > 1 magnifies, ``shears`` (B, 2) are the coefficients (x += s0 * y, y += s1 * x), and a
    positive angle turns the content from +x towards +y (a quarter turn is
    ``torch.rot90(batch, -1, dims=(-2, -1))``). Bilinear, zeros outside. All channels and z-slices
    of a sample get the same transform.
    """
    b, c, z, y, x = batch.shape
    dtype = torch.float64 if batch.dtype == torch.float64 else torch.float32
    angles, scales, shears = (t.to(batch.device, dtype) for t in (angles, scales, shears))
    cos, sin = torch.cos(angles), torch.sin(angles)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    ones = torch.ones_like(angles)
    shear = torch.stack([torch.stack([ones, shears[:, 0]], -1), torch.stack([shears[:, 1], ones], -1)], -2)
    forward = rotation @ shear * scales.view(-1, 1, 1)
    # grid_sample maps output to input coordinates, normalised to [-1, 1] (align_corners=False):
    # pixel offset from the centre = half_size * normalised coordinate.
    half = torch.tensor([x / 2, y / 2], device=batch.device, dtype=dtype)
    theta = torch.linalg.inv(forward) * half.view(1, 1, 2) / half.view(1, 2, 1)
    theta = torch.cat([theta, torch.zeros(b, 2, 1, device=batch.device, dtype=dtype)], -1)
    flat = batch.reshape(b, c * z, y, x)
    grid = F.affine_grid(theta.to(batch.dtype), list(flat.shape), align_corners=False)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(b, c, z, y, x)


def adjust_contrast(batch: Tensor, gammas: Tensor) -> Tensor:
    """MONAI AdjustContrast per sample and channel: rescale to [0, 1], power gamma, rescale back."""
    low = batch.amin(dim=(2, 3, 4), keepdim=True)
    spread = batch.amax(dim=(2, 3, 4), keepdim=True) - low
    return ((batch - low) / (spread + CONTRAST_EPS)) ** _per_sample(gammas, batch) * spread + low


def _gaussian_kernels(sigmas: Tensor, radius: int) -> Tensor:
    """(B,) sigmas -> (B, 2 * radius + 1) pixel-integrated Gaussian kernels summing to 1."""
    offsets = torch.arange(-radius, radius + 1, device=sigmas.device, dtype=sigmas.dtype)
    scaled = math.sqrt(2.0) * sigmas.clamp_min(1e-6).view(-1, 1)
    kernels = 0.5 * (torch.erf((offsets + 0.5) / scaled) - torch.erf((offsets - 0.5) / scaled))
    return kernels / kernels.sum(dim=1, keepdim=True)


def gaussian_smooth_yx(batch: Tensor, sigma_y: Tensor, sigma_x: Tensor) -> Tensor:
    """Separable Gaussian smoothing in y and x with per-sample sigmas (B,), in pixels; none in z."""
    b, c, z, y, x = batch.shape
    sigmas = torch.stack([sigma_y, sigma_x]).to(batch.device, batch.dtype)
    radius = max(1, math.ceil(4.0 * float(sigmas.max())))  # MONAI truncates at 4 sigma
    h = batch.reshape(1, b * c * z, y, x)
    for axis, sigma in enumerate(sigmas):
        weight = _gaussian_kernels(sigma, radius).repeat_interleave(c * z, dim=0)
        if axis == 0:
            h = F.conv2d(F.pad(h, (0, 0, radius, radius), mode="replicate"), weight[:, None, :, None],
                         groups=b * c * z)
        else:
            h = F.conv2d(F.pad(h, (radius, radius, 0, 0), mode="replicate"), weight[:, None, None, :],
                         groups=b * c * z)
    return h.reshape(b, c, z, y, x)


def augment(batch: Tensor, config: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Randomly augment a (B, C, Z, Y, X) float batch; returns a new tensor of the same shape.

    ``generator`` must be on the batch's device (``torch.Generator(device=batch.device)``). Each
    transform is applied to each sample with its probability; see the module docstring.
    """
    if batch.ndim != 5 or not batch.is_floating_point():
        raise ValueError(f"augment expects a float batch (B, C, Z, Y, X), got {batch.dtype} {tuple(batch.shape)}")
    if generator.device.type != batch.device.type:
        raise ValueError(f"the generator is on {generator.device} but the batch on {batch.device}: create it "
                         "with torch.Generator(device=batch.device)")
    cfg, n = config, batch.shape[0]
    out = batch

    apply = _rand(n, generator) < cfg.affine_probability
    angles = _uniform(n, -cfg.rotation, cfg.rotation, generator)
    scales = _uniform(n, 1.0 - cfg.scale, 1.0 + cfg.scale, generator)
    shears = _uniform(2 * n, -cfg.shear, cfg.shear, generator).view(n, 2)
    if cfg.affine_probability > 0:
        out = _select(apply, affine_yx(out, angles, scales, shears), out)

    apply = _rand(n, generator) < cfg.contrast_probability
    gammas = _uniform(n, *cfg.gamma, generator)
    if cfg.contrast_probability > 0:
        out = _select(apply, adjust_contrast(out, gammas), out)

    apply = _rand(n, generator) < cfg.intensity_probability
    factors = _uniform(n, -cfg.intensity_factor, cfg.intensity_factor, generator)
    if cfg.intensity_probability > 0:
        out = _select(apply, out * (1.0 + _per_sample(factors, out)), out)

    apply = _rand(n, generator) < cfg.smooth_probability
    sigma_y = _uniform(n, *cfg.smooth_sigma, generator)
    sigma_x = _uniform(n, *cfg.smooth_sigma, generator)
    if cfg.smooth_probability > 0:
        out = _select(apply, gaussian_smooth_yx(out, sigma_y, sigma_x), out)

    apply = _rand(n, generator) < cfg.noise_probability
    noise = torch.randn(out.shape, generator=generator, device=generator.device, dtype=out.dtype)
    if cfg.noise_probability > 0:
        out = _select(apply, out + cfg.noise_std * noise, out)
    return out if out is not batch else batch.clone()


def center_crop_yx(batch: Tensor, size: int) -> Tensor:
    """(B, C, Z, Y, X) -> (B, C, Z, size, size), the centre (an odd margin leaves the extra pixel at the end)."""
    y, x = batch.shape[-2:]
    if size < 1 or size > y or size > x:
        raise ValueError(f"cannot crop a {size} x {size} centre from patches of Y={y}, X={x}: extract larger "
                         "patches or crop smaller")
    top, left = (y - size) // 2, (x - size) // 2
    return batch[..., top:top + size, left:left + size]
