"""Nuclear foreground of a frame from its intensity, for the shape of the CTC masks.

Detections are centres with a radius; drawn as disks they miss the part of an elongated or
unusually large nucleus that sticks out, and CTC's TRA counts a cell as missed when its mask covers
less than half of the annotated marker (10x the cost of a false cell). The classical answer, a
smoothed image above Otsu's threshold, shows where the nuclei actually extend; the export then grows
each disk into it (:func:`celltrails.ctc_export.grow_into_foreground`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from celltrails.ome_zarr_io import open_image


@dataclass(frozen=True)
class Foreground:
    """A frame's nuclear foreground: ``mask`` (bool) and the smoothed intensity it came from,
    whose valleys separate touching nuclei (the watershed's landscape)."""

    mask: np.ndarray
    smoothed: np.ndarray


def intensity_foreground(frame: np.ndarray, sigma: float,
                         voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> Foreground:
    """The (z, y, x) voxels brighter than Otsu's threshold after Gaussian smoothing.

    ``sigma`` is in xy pixels; along z it shrinks by voxel_x / voxel_z (and is 0 for a 2D frame,
    z = 1), so the smoothing is isotropic in space. A frame without contrast has no foreground.
    """
    if frame.ndim != 3:
        raise ValueError(f"frame must be (z, y, x), not shape {frame.shape}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, not {sigma}")
    sigmas = (sigma * float(voxel_size[2]) / float(voxel_size[0]) if frame.shape[0] > 1 else 0.0, sigma, sigma)
    smoothed = ndimage.gaussian_filter(np.asarray(frame, dtype=np.float32), sigmas)
    if not np.isfinite(smoothed).all():
        raise ValueError("frame has NaN or infinite values")
    if smoothed.max() <= smoothed.min():
        return Foreground(np.zeros(frame.shape, dtype=bool), smoothed)
    return Foreground(smoothed > threshold_otsu(smoothed), smoothed)


def series_foreground(image_path: str | Path, channel: int, radius: np.ndarray, smoothing: float
                      ) -> tuple[Callable[[int], Foreground], float]:
    """Frame t -> its :func:`intensity_foreground` in one channel of an OME-Zarr image, and the sigma.

    The Gaussian sigma is ``smoothing`` times the median of the finite ``radius`` values (the cells'
    detected radii, xy pixels), so the smoothing follows the nuclei's size, not the pixel size.
    """
    array, meta = open_image(image_path)
    finite = np.asarray(radius, dtype=float)
    finite = finite[np.isfinite(finite)]
    sigma = smoothing * float(np.median(finite)) if len(finite) else 0.0

    def foreground(t: int) -> Foreground:
        try:
            return intensity_foreground(np.asarray(array[t, channel]), sigma, meta.voxel_size)
        except ValueError as err:
            raise ValueError(f"{image_path}, frame {t}, channel {channel}: {err}") from err

    return foreground, sigma
