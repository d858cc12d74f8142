"""The DynaCLR encoder: a ConvNeXt that embeds one single-cell patch, plus a projection MLP for the loss.

Input ``(B, C, Z, Y, X)``: B patches of C channels, ``z_window`` slices deep (1 for 2D), Y and X a
multiple of :attr:`EncoderConfig.size_multiple`. Output ``(features, projections)``: the features
``(B, dims[-1])`` are the embedding used downstream (DynaCLR's "embedding"); the projections
``(B, projection_dim)`` only feed the contrastive loss (SimCLR: the loss is computed on a projection
so the features keep information the loss would otherwise discard).

Design choices and why
----------------------
* **As DynaCLR (VisCy ``ContrastiveEncoder``).** A 3D stem convolution with kernel = stride
  ``(stem_kernel_z, 4, 4)`` turns the stack into ``D' = (z_window - kz) // kz + 1`` slabs and folds
  them into channels (``C_s * D' = dims[0]``), so a 2D ConvNeXt can process 3D patches; the stem's
  LayerNorm, the ConvNeXt v1 stages, global average pooling + LayerNorm, and the projection
  ``Linear(F, F) - BatchNorm - ReLU - Linear(F, P) - BatchNorm`` follow VisCy / timm ``convnext_tiny``.
* **ConvNeXt written here, not imported.** torchvision and timm have no CPU builds in this
  project's environment; the blocks are short (depthwise 7x7 conv, channels-last LayerNorm, MLP
  with 4x expansion and GELU, layer scale 1e-6, stochastic depth) and follow timm's ConvNeXt v1
  (LayerNorm eps 1e-6, drop-path rates increasing linearly over all blocks, trunc-normal std 0.02
  initialisation with zero biases). No pretrained weights: DynaCLR trains from scratch.
* **Sizes are configuration.** ``dims`` / ``depths`` choose the width and depth. Presets (parameter
  counts measured with the other defaults: 1 channel, z_window 1, projection 32): ``small`` (dims
  16-128, depths 1-1-2-1: 289,456 parameters; trains on a CPU) and ``convnext_tiny`` (dims 96-768,
  depths 3-3-9-3, the paper's backbone: 28,433,856 parameters, 28,511,392 with 2 channels,
  z_window 15, stem_kernel_z 5 and projection 128; for GPUs).
* **z_window must be a multiple of stem_kernel_z** (VisCy silently ignores the remainder slices);
  ``dims[0]`` must be divisible by ``D'``. Both are checked when the config is built, with an error
  that says what to change.
* **Shapes are checked in forward**, with errors that say what to crop or pad to: every stage
  halves y and x after the stem's 4x, so Y and X must be multiples of ``4 * 2**(len(dims) - 1)``.
* **BatchNorm in the projection** (as VisCy): training needs batches of at least 2 patches;
  evaluation (``model.eval()``) works with any batch size and is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from celltrails.serialize import config_from_dict, config_to_dict

LAYER_SCALE_INIT = 1e-6
NORM_EPS = 1e-6


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of a :class:`ContrastiveEncoder` (stored in checkpoints)."""

    in_channels: int = 1
    z_window: int = 1  # patch depth in z slices (1 = 2D)
    stem_kernel_z: int = 1  # stem kernel = stride in z; folds z into channels
    dims: tuple[int, ...] = (16, 32, 64, 128)  # channels per ConvNeXt stage; dims[-1] = feature size
    depths: tuple[int, ...] = (1, 1, 2, 1)  # ConvNeXt blocks per stage
    projection_dim: int = 32
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        if not self.dims or len(self.dims) != len(self.depths):
            raise ValueError(f"dims {self.dims} and depths {self.depths} must be non-empty and of equal length")
        if min(self.dims) < 1 or min(self.depths) < 1:
            raise ValueError(f"dims {self.dims} and depths {self.depths} must all be >= 1")
        if self.in_channels < 1 or self.projection_dim < 1:
            raise ValueError("in_channels and projection_dim must be >= 1")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        kz, zw = self.stem_kernel_z, self.z_window
        if kz < 1 or zw < kz or zw % kz:
            raise ValueError(f"z_window ({zw}) must be a positive multiple of stem_kernel_z ({kz}): the stem "
                             "folds z in non-overlapping slabs of stem_kernel_z slices")
        d = self.stem_depth
        if self.dims[0] % d:
            up = -(-self.dims[0] // d) * d
            raise ValueError(f"dims[0] ({self.dims[0]}) must be divisible by the stem's output depth "
                             f"D' = (z_window - stem_kernel_z) // stem_kernel_z + 1 = ({zw} - {kz}) // {kz} + 1 "
                             f"= {d}: set dims[0] to a multiple of {d} (e.g. {up}), or change z_window / "
                             f"stem_kernel_z so that D' divides {self.dims[0]}")

    @property
    def stem_depth(self) -> int:
        """D': the number of z slabs the stem folds into channels."""
        return (self.z_window - self.stem_kernel_z) // self.stem_kernel_z + 1

    @property
    def size_multiple(self) -> int:
        """Patch Y and X must be multiples of this (stem 4x, then 2x per further stage)."""
        return 4 * 2 ** (len(self.dims) - 1)

    def to_dict(self) -> dict:
        """JSON/YAML-friendly (tuples as lists); round-trips with :meth:`from_dict`."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> EncoderConfig:
        return config_from_dict(cls, data, "encoder")


PRESETS: dict[str, dict] = {
    "small": {"dims": (16, 32, 64, 128), "depths": (1, 1, 2, 1)},  # CPU
    "convnext_tiny": {"dims": (96, 192, 384, 768), "depths": (3, 3, 9, 3)},  # the paper's, for GPUs
}


def encoder_config(preset: str, **overrides) -> EncoderConfig:
    """The config of a preset (see :data:`PRESETS`), with any field overridden."""
    if preset not in PRESETS:
        raise ValueError(f"unknown encoder preset {preset!r} (known: {sorted(PRESETS)})")
    return EncoderConfig.from_dict({**PRESETS[preset], **overrides})


class _LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first (B, C, H, W) tensor."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class _DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class _Block(nn.Module):
    """ConvNeXt v1 block: dwconv 7x7 - LayerNorm - Linear 4x - GELU - Linear - layer scale - drop path."""

    def __init__(self, dim: int, drop_path: float):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))
        self.drop_path = _DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        h = self.fc2(self.act(self.fc1(h))) * self.gamma
        return x + self.drop_path(h.permute(0, 3, 1, 2))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


class ContrastiveEncoder(nn.Module):
    """DynaCLR encoder: depth-to-channels stem, ConvNeXt stages, pooled features and a projection."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        dims = config.dims
        kernel = (config.stem_kernel_z, 4, 4)
        self.stem = nn.Conv3d(config.in_channels, dims[0] // config.stem_depth, kernel, stride=kernel)
        self.stem_norm = _LayerNorm2d(dims[0], eps=NORM_EPS)
        rates = torch.linspace(0.0, config.drop_path_rate, sum(config.depths)).tolist()
        self.stages = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, config.depths)):
            layers: list[nn.Module] = []
            if i:
                layers += [_LayerNorm2d(dims[i - 1], eps=NORM_EPS), nn.Conv2d(dims[i - 1], dim, 2, stride=2)]
            layers += [_Block(dim, rates.pop(0)) for _ in range(depth)]
            self.stages.append(nn.Sequential(*layers))
        self.head_norm = nn.LayerNorm(dims[-1], eps=NORM_EPS)
        self.projection = nn.Sequential(
            nn.Linear(dims[-1], dims[-1]),
            nn.BatchNorm1d(dims[-1]),
            nn.ReLU(inplace=True),
            nn.Linear(dims[-1], config.projection_dim),
            nn.BatchNorm1d(config.projection_dim),
        )
        self.apply(_init_weights)

    @property
    def size_multiple(self) -> int:
        return self.config.size_multiple

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError that says what is wrong with an input's shape and how to fix it."""
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"ContrastiveEncoder expects input (B, C={cfg.in_channels}, Z={cfg.z_window}, Y, X), "
                             f"got shape {tuple(x.shape)}")
        _, _, z, y, x_ = x.shape
        if z != cfg.z_window:
            raise ValueError(f"ContrastiveEncoder expects Z = z_window = {cfg.z_window} slices, got Z = {z}")
        m = cfg.size_multiple
        if y % m or x_ % m:
            fix = f"pad to Y={-(-y // m) * m}, X={-(-x_ // m) * m}"
            if y >= m and x_ >= m:
                fix = f"crop to Y={y // m * m}, X={x_ // m * m} or {fix}"
            raise ValueError(f"ContrastiveEncoder input Y and X must be multiples of size_multiple={m} "
                             f"({len(cfg.dims)} stages), got Y={y}, X={x_}: {fix}")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, C, Z, Y, X) float, normalised. Returns features (B, dims[-1]), projections (B, projection_dim)."""
        self.check_input(x)
        h = self.stem(x)  # (B, C_s, D', Y/4, X/4)
        h = self.stem_norm(h.reshape(h.shape[0], -1, *h.shape[-2:]))  # depth folded into channels
        for stage in self.stages:
            h = stage(h)
        features = self.head_norm(h.mean(dim=(-2, -1)))
        return features, self.projection(features)
