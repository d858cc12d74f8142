"""Memory requests (MB) of the jobs whose peak grows with the size of a frame or of the series.

A cluster kills a job that outgrows its request, and one fixed request is either too small for
large frames or keeps every small job waiting longer in the queue. ``detect_block`` holds two
normalised frames and the daughter map of one frame (tiles and the model are bounded by the
tile size); ``lineage`` holds one frame's foreground, its watershed and the label image. So
each peak is a fixed part (interpreter, libraries, model, tables) plus a number of bytes per
voxel of one frame. ``evaluate_tracking`` scores CTC masks with traccuracy, whose loader holds
the ground-truth and result masks of the whole series, so its peak grows with the series. The
slopes below were measured with tracemalloc between two sizes (detect: 1024^2 vs 2048^2 and 16
vs 48 x 512^2; lineage: 1024^2 to 4096^2 and 16 vs 48 x 512^2, cells 24 px apart; evaluate: 4 vs
12 frames of 512^2 and of 8 x 256^2) and rounded up; the fixed parts cover the peak resident
memory the benchmark runs record (detect 0.46-0.65 GB, lineage 0.25-0.31 GB) with room for
large tables.
"""

from __future__ import annotations

import math

from celltrails.ome_zarr_io import ImageMeta

DETECT_FIXED_MB = 1500
DETECT_BYTES_PER_VOXEL = 16  # measured 13 (2D), 15 (3D)
LINEAGE_FIXED_MB = 2000
# scikit-image's watershed works on float64 copies; denser in 2D, where more of the frame is cells.
LINEAGE_BYTES_PER_VOXEL = {("foreground", False): 65, ("foreground", True): 36,  # measured 64.2, 35.1
                           ("disk", False): 10, ("disk", True): 10}  # measured 9, 8
EVALUATE_FIXED_MB = 2000
EVALUATE_BYTES_PER_SERIES_VOXEL = 8  # measured 7.5 (2D), 4.3 (3D): both mask series, uint16 or wider
EVALUATE_SEG_BYTES_PER_FRAME_VOXEL = 40  # measured 32 (2D and 3D): SEG reads one frame at a time


def frame_voxels(meta: ImageMeta) -> int:
    """Voxels of one channel of one frame."""
    return math.prod(meta.shape[2:])


def detect_memory_mb(meta: ImageMeta) -> int:
    """Memory a ``detect_block`` job of this image needs (any number of frames per job)."""
    return DETECT_FIXED_MB + math.ceil(frame_voxels(meta) * DETECT_BYTES_PER_VOXEL / 1e6)


def lineage_memory_mb(meta: ImageMeta, mask_shape: str) -> int:
    """Memory the ``lineage`` job of this image needs with CTC masks of ``mask_shape``
    ('foreground' or 'disk', the config's ``ctc_masks.shape``)."""
    key = (mask_shape, meta.is_3d)
    if key not in LINEAGE_BYTES_PER_VOXEL:
        raise ValueError(f"unknown CTC mask shape {mask_shape!r} (expected 'foreground' or 'disk')")
    return LINEAGE_FIXED_MB + math.ceil(frame_voxels(meta) * LINEAGE_BYTES_PER_VOXEL[key] / 1e6)


def evaluate_memory_mb(meta: ImageMeta, masks: bool) -> int:
    """Memory the ``evaluate_tracking`` job of this image needs: with ``masks`` (CTC ground truth)
    both mask series are loaded whole, then freed before SEG reads one frame at a time; a points
    table needs only the fixed part."""
    if not masks:
        return EVALUATE_FIXED_MB
    need = max(meta.n_frames * frame_voxels(meta) * EVALUATE_BYTES_PER_SERIES_VOXEL,
               frame_voxels(meta) * EVALUATE_SEG_BYTES_PER_FRAME_VOXEL)
    return EVALUATE_FIXED_MB + math.ceil(need / 1e6)
