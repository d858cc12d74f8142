"""Does a frame show anything brighter than its noise at the size of a nucleus?

A detector whose input is normalised to a fixed intensity range finds "nuclei" in pure noise: a
series of camera noise (no cell at all) gave the shipped 2D detector 14 detections in 6 frames of
96 x 96 pixels, which became tracks, patches and a report, with no warning. Before peaks are read,
each frame is therefore tested for signal at the scale of a nucleus:

* the noise level ``sigma`` is the median absolute deviation of differences between x-neighbours,
  divided by 0.6745 * sqrt(2) (robust to the nuclei, which change slowly between neighbours);
* the frame is averaged in blocks of about one nucleus radius (y, x; z scaled by the voxel size);
* its significance is (brightest block - median block) / (sigma / sqrt(voxels per block)), the
  brightest nucleus-sized region in units of the noise of such a mean.

Pure noise scores at most ~5 (the largest of many standard normal block means: measured 2.5-3.4 on
96 x 96 frames, 3.9 on 1024^2, 4.8 on 4096^2), frames with nuclei score far more (lowest frame of
Fluo-N2DH-SIM+ 02: 77, Fluo-N2DH-GOWT1 02: 478, the synthetic 3D heldout3d: 52, each at the
detector's scale), and a single nucleus of radius 5 only 2 noise sigmas above the background of a 1024^2
noise frame scores 9.8. Frames below ``MIN_SIGNIFICANCE`` (7) get no detections.

Written here because the statistic is a few lines of numpy; ``skimage.restoration.estimate_sigma``
would add PyWavelets for the noise level alone. The noise must be roughly independent between
neighbouring pixels; smoothed or deconvolved noise scores higher and may pass (the detector then
runs as before). With very few photons per pixel (integer data, Poisson mean below ~2) the median
absolute deviation is coarse: it overestimates the noise (real nuclei score up to ~1.5x lower), and
noise alone can score near 7; a hot pixel 50 noise sigmas bright scores ~8 on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from celltrails.detector.normalize import MAX_SAMPLES, sample_strides

MIN_SIGNIFICANCE = 7.0
_MAD_TO_SIGMA = 1.0 / (0.6745 * np.sqrt(2.0))  # MAD of a difference of two N(0, s) -> s


def noise_sigma(frame: np.ndarray, max_samples: int = MAX_SAMPLES) -> float:
    """Standard deviation of pixel noise in a (z, y, x) frame, from x-neighbour differences.

    Rows (y, and z in a stack) are strided as the normalisation's sample is
    (:func:`celltrails.detector.normalize.sample_strides`), so that at most about ``max_samples``
    differences are used.
    """
    z, y, x = frame.shape
    stride_z, stride_y = sample_strides((z, y), max(1, max_samples // max(x - 1, 1)))
    differences = np.diff(np.asarray(frame[::stride_z, ::stride_y], dtype=np.float32), axis=-1).ravel()
    if differences.size == 0:
        return 0.0
    return float(np.median(np.abs(differences - np.median(differences)))) * _MAD_TO_SIGMA


def _block_means(frame: np.ndarray, block: tuple[int, int, int], from_end: bool = False) -> np.ndarray:
    """Means of the whole (bz, by, bx) blocks of a (z, y, x) frame, tiled from its first voxel
    (or, ``from_end``, from its last one); the ragged remainder is left out.

    Summed one axis at a time, x first in the frame's own precision (a float64 sum of the whole
    frame would be a full float64 copy of it): the largest temporary is one value per x-block.
    """
    counts = [n // b for n, b in zip(frame.shape, block)]
    sums = frame[tuple(slice(n - c * b, n) if from_end else slice(0, c * b)
                       for n, c, b in zip(frame.shape, counts, block))]
    for axis in (2, 1, 0):
        sums = np.add.reduceat(sums, np.arange(0, counts[axis] * block[axis], block[axis]), axis=axis,
                               dtype=None if axis == 2 else np.float64)
    return sums / float(np.prod(block))


def signal_significance(frame: np.ndarray, radius: float, voxel_size: Sequence[float]) -> float:
    """Brightest nucleus-sized block of a (z, y, x) frame above the median block, in noise units.

    ``radius`` is a nucleus radius in xy pixels of the frame; z blocks span the same physical
    length (at least one slice, at most the stack). Blocks are tiled from both ends of the frame,
    so a nucleus in the last slices of a stack (the remainder of one tiling) lies in whole blocks
    of the other. ``inf`` for a noise-free frame with structure, 0 for a constant one.
    """
    frame = np.asarray(frame)
    if not np.issubdtype(frame.dtype, np.floating):
        frame = frame.astype(np.float32)
    z, y, x = frame.shape
    side = max(1, min(round(radius), y, x))
    depth = max(1, min(round(radius * voxel_size[2] / voxel_size[0]), z))
    means = _block_means(frame, (depth, side, side))
    brightest = max(float(means.max()), float(_block_means(frame, (depth, side, side), from_end=True).max()))
    excess = brightest - float(np.median(means))
    sigma = noise_sigma(frame)
    if sigma == 0.0:
        return float("inf") if excess > 0 else 0.0
    return excess / (sigma / np.sqrt(depth * side * side))
