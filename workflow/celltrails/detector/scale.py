"""The detector's working scale: images binned in y and x so that nuclei have the size it learned.

A U-Net sees a fixed neighbourhood and learns one range of object sizes: the shipped detectors were
trained on synthetic nuclei of radius ~5 px, while the Cell Tracking Challenge's Fluo-N2DH-SIM+
and Fluo-N2DH-GOWT1 nuclei are ~25 px. Rather than a deeper network (slower, and still
size-specific), every frame is binned by an integer factor ``f`` in y and x (mean of f x f pixel
blocks, which also averages noise) so that nuclei come out near the network's *working radius*;
z is never binned (anisotropic stacks have few slices). Binning is lazy (``dask.array.coarsen``
over the zarr store): a training crop or an inference tile reads only the chunks it needs, so
memory stays bounded by the tile.

Coordinates: working pixel ``i`` covers image pixels ``[i f, (i + 1) f)``, its centre is image
coordinate ``i f + (f - 1) / 2``; radii scale by ``f``. Image rows and columns beyond the last
whole block are dropped (fewer than ``f`` pixels at the far edge).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd

DEFAULT_WORKING_RADIUS = 5.0  # xy px: the median nucleus radius of the synthetic training series


def binning_factor(nucleus_radius: float, working_radius: float = DEFAULT_WORKING_RADIUS) -> int:
    """The integer binning that brings nuclei of ``nucleus_radius`` (image px) nearest ``working_radius``."""
    if not (np.isfinite(nucleus_radius) and nucleus_radius > 0):
        raise ValueError(f"the nucleus radius must be a positive number of pixels, got {nucleus_radius}")
    if not working_radius > 0:
        raise ValueError(f"the working radius must be positive, got {working_radius}")
    return max(1, round(float(nucleus_radius) / float(working_radius)))


def binned_image(array: Any, factor: int) -> Any:
    """A lazy (t, c, z, y, x) view of ``array`` averaged over ``factor`` x ``factor`` blocks in y, x.

    ``factor`` 1 returns ``array`` itself. Indexing the view and converting it with ``np.asarray``
    computes only the blocks that the index touches.
    """
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"the binning factor must be a positive integer, got {factor}")
    if factor == 1:
        return array
    if min(array.shape[3:]) < factor:
        raise ValueError(f"an image of {array.shape[3]} x {array.shape[4]} pixels cannot be binned by {factor}")
    chunks = getattr(array, "chunks", None) or "auto"
    lazy = da.from_array(array, chunks=chunks, asarray=False, fancy=False)
    return da.coarsen(np.mean, lazy, {3: factor, 4: factor}, trim_excess=True, dtype=np.float32)


def working_voxel_size(voxel_size: Sequence[float], factor: int) -> tuple[float, float, float]:
    """(z, y, x) voxel size of the binned image."""
    z, y, x = (float(v) for v in voxel_size)
    return z, y * factor, x * factor


def to_working(points: pd.DataFrame, factor: int) -> pd.DataFrame:
    """Points (``y``, ``x``, optional ``radius``, ``ridge_distance`` in image pixels) in binned-image
    coordinates."""
    return _rescale(points, 1.0 / factor, -(factor - 1) / 2.0 / factor)


def to_image(points: pd.DataFrame, factor: int) -> pd.DataFrame:
    """Inverse of :func:`to_working`: binned-image coordinates back to image pixels."""
    return _rescale(points, float(factor), (factor - 1) / 2.0)


def _rescale(points: pd.DataFrame, gain: float, offset: float) -> pd.DataFrame:
    if gain == 1.0:
        return points
    out = points.copy()
    for column, shift in (("y", offset), ("x", offset), ("radius", 0.0), ("ridge_distance", 0.0)):
        if column in out.columns:
            values = out[column].to_numpy()
            dtype = values.dtype if values.dtype.kind == "f" else np.float64
            out[column] = (values.astype(np.float64) * gain + shift).astype(dtype)
    return out
