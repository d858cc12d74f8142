"""Per-frame intensity normalisation of detector inputs.

A frame is mapped linearly so that its ``low`` percentile becomes 0 and its ``high`` percentile 1
(no clipping: bright mitotic nuclei may exceed 1). The percentiles are computed once per frame
from a *strided* sample of the whole frame (every s-th voxel along each axis, s chosen so that at
most ``MAX_SAMPLES`` voxels are read), never from a tile: a tile cut from a normalised frame is
therefore identical whichever tiling (training crop, inference tile, overlap) produced it, and
the cost does not grow with the frame (a 100 x 2048 x 2048 stack is sampled with stride 8).

The same strides are used whether the frame is a numpy array or a region of a zarr array
(:func:`percentiles_from_store`, used by the training sampler and usable by inference), so both
routes give exactly the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_SAMPLES = 1 << 20  # voxels sampled per frame for the percentiles
MIN_RANGE = 1e-6  # a constant frame gets range 1 instead of a division by zero


def sample_strides(shape: Sequence[int], max_samples: int = MAX_SAMPLES) -> tuple[int, ...]:
    """One stride for every axis longer than 1, the smallest keeping the sample <= ``max_samples``."""
    shape = tuple(int(n) for n in shape)
    stride = 1
    while np.prod([-(-n // stride) if n > 1 else 1 for n in shape], dtype=np.float64) > max_samples:
        stride += 1
    return tuple(stride if n > 1 else 1 for n in shape)


def _percentiles(sample: np.ndarray, low: float, high: float) -> tuple[float, float]:
    lo, hi = np.percentile(np.asarray(sample, dtype=np.float64).ravel(), [low, high])
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("the frame contains non-finite values; cannot normalise it")
    if hi - lo < MIN_RANGE:
        hi = lo + 1.0
    return float(lo), float(hi)


def frame_percentiles(frame: np.ndarray, low: float = 1.0, high: float = 99.8,
                      max_samples: int = MAX_SAMPLES) -> tuple[float, float]:
    """(low, high) percentiles of a whole frame (any number of axes) from its strided sample."""
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    strides = sample_strides(frame.shape, max_samples)
    return _percentiles(frame[tuple(slice(None, None, s) for s in strides)], low, high)


def percentiles_from_store(array, t: int, channel: int, low: float = 1.0, high: float = 99.8,
                           max_samples: int = MAX_SAMPLES) -> tuple[float, float]:
    """Percentiles of frame ``t``, ``channel`` of a (t, c, z, y, x) zarr (or numpy) array.

    Reads only the strided sample (zarr still decodes the chunks, but never holds the frame),
    with the same strides as :func:`frame_percentiles` on the frame itself: same result.
    """
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    strides = sample_strides(array.shape[2:], max_samples)
    sample = array[(int(t), int(channel), *(slice(None, None, s) for s in strides))]
    return _percentiles(sample, low, high)


def apply_percentiles(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(x - lo) / (hi - lo) as float32: a frame or any tile of it, with the frame's percentiles."""
    x = np.asarray(x, dtype=np.float32)
    return (x - np.float32(lo)) * np.float32(1.0 / (hi - lo))


def normalize_frame(frame: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Normalise a whole frame: float32, its ``low`` percentile at 0 and ``high`` percentile at 1.

    Percentiles come from a strided sample of the whole frame (see the module docstring), so
    ``normalize_frame(frame)[tile] == apply_percentiles(frame[tile], *frame_percentiles(frame))``.
    """
    lo, hi = frame_percentiles(frame, low, high)
    return apply_percentiles(frame, lo, hi)


def normalization_settings(low: float = 1.0, high: float = 99.8) -> dict:
    """The settings stored in a checkpoint; inference calls ``normalize_frame(frame, low, high)``."""
    return {"method": "percentile", "low": float(low), "high": float(high), "max_samples": MAX_SAMPLES,
            "scope": "frame"}
