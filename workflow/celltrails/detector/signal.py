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
runs as before).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from celltrails.detector.normalize import MAX_SAMPLES

MIN_SIGNIFICANCE = 7.0
_MAD_TO_SIGMA = 1.0 / (0.6745 * np.sqrt(2.0))  # MAD of a difference of two N(0, s) -> s


def noise_sigma(frame: np.ndarray, max_samples: int = MAX_SAMPLES) -> float:
    """Standard deviation of pixel noise in a (z, y, x) frame, from x-neighbour differences.

    Rows (z, y) are strided so that at most about ``max_samples`` differences are used.
    """
    z, y, x = frame.shape
    stride = max(1, int(np.ceil(np.sqrt(z * y * max(x - 1, 1) / max_samples))))
    rows = np.asarray(frame[::stride if z > 1 else 1, ::stride], dtype=np.float32)
    differences = np.diff(rows, axis=-1).ravel()
    if differences.size == 0:
        return 0.0
    return float(np.median(np.abs(differences - np.median(differences)))) * _MAD_TO_SIGMA


def _block_means(frame: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
    """Means of the whole (bz, by, bx) blocks of a (z, y, x) frame (the ragged edge is left out).

    Summed one axis at a time (x first), so no copy of the frame is made: the largest temporary
    is 8 bytes per x-block.
    """
    counts = [n // b for n, b in zip(frame.shape, block)]
    sums = frame[tuple(slice(0, c * b) for c, b in zip(counts, block))]
    for axis in (2, 1, 0):
        sums = np.add.reduceat(sums, np.arange(0, counts[axis] * block[axis], block[axis]), axis=axis,
                               dtype=np.float64)
    return sums / float(np.prod(block))


def signal_significance(frame: np.ndarray, radius: float, voxel_size: Sequence[float]) -> float:
    """Brightest nucleus-sized block of a (z, y, x) frame above the median block, in noise units.

    ``radius`` is a nucleus radius in xy pixels of the frame; z blocks span the same physical
    length (at least one slice, at most the stack). ``inf`` for a noise-free frame with structure,
    0 for a constant one.
    """
    frame = np.asarray(frame)
    z, y, x = frame.shape
    side = max(1, min(round(radius), y, x))
    depth = max(1, min(round(radius * voxel_size[2] / voxel_size[0]), z))
    means = _block_means(frame, (depth, side, side))
    excess = float(means.max() - np.median(means))
    sigma = noise_sigma(frame)
    if sigma == 0.0:
        return float("inf") if excess > 0 else 0.0
    return excess / (sigma / np.sqrt(depth * side * side))
