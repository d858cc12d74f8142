"""CTC result export: ``res_track.txt`` + ``maskTTT.tif`` from a point-track table.

CELLECT-style tracks are centres with a radius, not masks, so each cell is drawn as a disk (2D) or
an ellipsoid (3D; the z semi-axis is radius * voxel_x / voxel_z slices). Where shapes overlap, a
voxel goes to the cell with the smallest size-normalised distance |p - c| / r (a multiplicatively
weighted Voronoi split inside the shapes), which keeps every cell's own centre; each centre voxel is
then stamped explicitly so that every label is present in every frame of its track, as the CTC
format requires, even for sub-voxel radii or coinciding centres. No library renders point tracks
into CTC masks under these rules, hence the hand-written painter.

With a foreground map (:mod:`celltrails.foreground`) each shape then grows into the foreground
voxels no shape claimed, up to ``reach`` radii from its centre, split between cells by a seeded
watershed (scikit-image) on the smoothed intensity: masks follow the nuclei where
they are larger or less round than the disk, and a shape never shrinks, so a dim cell outside the
foreground keeps its disk. Measured on celltrails' own tracks (TRA, disks -> grown, reach 1.5):
Fluo-N2DH-GOWT1 02 0.887 -> 0.929, synthetic 3D heldout3d 0.952 -> 0.967, Fluo-N2DH-SIM+ 02
0.948 -> 0.949. (A watershed on the foreground's distance transform scored the same and took 10x
longer: 0.19 s per 1024x1024 frame for the transform alone.)

One Otsu threshold per frame sits between the bright nuclei and the background, so a dim nucleus
falls below it and keeps only its disk, which covers half its marker or less where the detector
also sizes it small. With ``local_level`` each cell first adds the voxels around it that stand out
from its own surroundings (:func:`add_local_foreground`). Measured on the tracks of
``benchmarks/results.md`` (TRA, Otsu only -> level 0.2): GOWT1 02 0.923 -> 0.953 (a large dim nucleus
the detector splits in two halves for 90 frames: one half now covers it), SIM+ 02 0.943 -> 0.950,
heldout3d 0.967 -> 0.969, and with the shipped 2D checkpoint (zero-shot, smaller radii) SIM+ 02
0.739 -> 0.816, GOWT1 02 0.900 -> 0.922. Level 0.5 / 0.3 / 0.1 gave 0.780 / 0.802 / 0.831 on the
zero-shot SIM+ 02, but 0.1 dropped heldout3d's division F1 from 0.714 to 0.500 (daughters' masks
merge), so 0.2.

The same level also bounds the growth (:func:`grow_into_foreground`): the blur of a bright nucleus,
such as a condensed mitotic one, clears the frame's Otsu threshold well beyond the nucleus. Measured
by re-drawing the same tracks (detectors trained on the ``01`` sequences, seed 42, and the shipped
3D detector): heldout3d SEG 0.487 -> 0.526, division F1 0.755 -> 0.792 (one division more: the
mask of a condensed mitotic mother now overlaps hers at IoU >= 0.3, which the division matching
needs), masks under IoU 0.3 with their nucleus (frames 5, 10, 20) 15 -> 3 of 165, TRA unchanged
at 0.973; SIM+ 02 TRA 0.9709 -> 0.9702 for seed 42 and unchanged for seeds 1, 2, 3; GOWT1 02
unchanged (TRA 0.959, SEG 0.719). The grown 3D masks still span 4.1 slices
where the nuclei span 2.7: the rest of the z spread is the foreground's own (axial blur).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.segmentation import watershed

from celltrails.atomic import atomic_path
from celltrails.ctc import write_label_frame, write_track_table
from celltrails.foreground import Foreground, series_foreground
from celltrails.ome_zarr_io import read_image_meta

_MAX_LABEL = int(np.iinfo(np.uint16).max)
# A cell adds its local foreground only when its disk's upper quartile stands this many background
# noise sigmas over its box's 10th percentile: a detection in plain noise has about 1.9 (0.67 + 1.28).
LOCAL_MIN_CONTRAST = 3.0


def ctc_labels(tracks: pd.DataFrame) -> dict[int, int]:
    """CTC label of each track id: the id itself when all ids fit 1..65535, else 1..N in id order."""
    ids = np.unique(tracks["track_id"].to_numpy(np.int64))
    if len(ids) > _MAX_LABEL:
        raise ValueError(f"{len(ids)} tracks do not fit CTC's uint16 labels (at most {_MAX_LABEL})")
    if len(ids) == 0 or (ids.min() >= 1 and ids.max() <= _MAX_LABEL):
        return {int(i): int(i) for i in ids}
    return {int(i): k for k, i in enumerate(ids, start=1)}


def track_table(tracks: pd.DataFrame, labels: dict[int, int]) -> pd.DataFrame:
    """CTC ``L B E P`` table; raises ValueError for gaps or duplicates inside a track."""
    per_track = tracks.groupby("track_id").agg(begin=("t", "min"), end=("t", "max"), n=("t", "size"),
                                                 frames=("t", "nunique"), parent=("parent_track_id", "first"))
    broken = per_track[(per_track["n"] != per_track["frames"])
                       | (per_track["n"] != per_track["end"] - per_track["begin"] + 1)]
    if len(broken):
        raise ValueError(f"tracks {broken.index.tolist()[:5]} have gaps or several cells in one frame; "
                         "CTC needs one cell per frame from begin to end")
    parent = per_track["parent"].map(lambda p: labels.get(int(p), 0) if p >= 0 else 0)
    return pd.DataFrame({"label": per_track.index.map(labels), "begin": per_track["begin"],
                         "end": per_track["end"], "parent": parent}).reset_index(drop=True)


def render_frame(cells: pd.DataFrame, labels: dict[int, int], shape: tuple[int, int, int],
                 voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 foreground: Foreground | None = None, reach: float = 1.5,
                 local_level: float | None = None) -> np.ndarray:
    """uint16 (z, y, x) label image of one frame's cells (columns track_id, z, y, x, radius),
    grown into ``foreground`` up to ``reach`` radii if given (with each cell's local foreground
    added, and its growth bounded by its own level, when ``local_level`` is a number,
    :func:`cell_levels`)."""
    check_local_level(local_level)
    image = np.zeros(shape, dtype=np.uint16)
    best = np.full(shape, np.inf, dtype=np.float32)
    centres = cells[["z", "y", "x"]].to_numpy(float)
    radius = np.nan_to_num(cells["radius"].to_numpy(float), nan=0.0).clip(min=0.5)
    label = cells["track_id"].map(labels).to_numpy(np.uint16)
    for centre, r, lab in zip(centres, radius, label):
        found = _sphere_box(centre, r, voxel_size, shape)
        if found is None:
            continue
        box, dist = found
        dist = dist.astype(np.float32)
        take = (dist <= 1.0) & (dist < best[box])
        best[box][take] = dist[take]
        image[box][take] = lab
    if foreground is not None and len(label):
        del best
        levels = None
        if local_level is not None:
            levels = cell_levels(foreground, centres, radius, voxel_size, reach, local_level)
            foreground = add_local_foreground(foreground, centres, radius, voxel_size, reach, levels)
        grow_into_foreground(image, centres, radius, label, foreground, reach, voxel_size, levels)
    _stamp_centres(image, centres, label)
    return image


def grow_into_foreground(image: np.ndarray, centres: np.ndarray, radius: np.ndarray, label: np.ndarray,
                         foreground: Foreground, reach: float,
                         voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0),
                         levels: np.ndarray | None = None) -> None:
    """Give the unlabelled foreground voxels to the cells, in place, without moving any label.

    Each cell's shape inside the foreground mask seeds a watershed of the negated smoothed
    intensity (touching nuclei split at the dark valley between them; a whole shape, not only the
    centre voxel, so a cell with a dark nucleolus at its centre still grows); a voxel it assigns is
    taken when it is still unlabelled, within ``reach`` * radius (xy pixels, z scaled) of its
    cell's centre and, where the cell has a level (``levels``, :func:`cell_levels`; NaN = none),
    brighter than it: the blurred rim of a bright nucleus clears the frame's Otsu threshold
    farther out than the nucleus reaches. Labels must be unique in the frame. Memory: about 29
    bytes per voxel of a 3D frame, 56 of a 2D one (scikit-image's watershed works on float64
    copies; tracemalloc, nuclei 24 px apart), on top of the foreground's 5;
    :mod:`celltrails.memory` sizes the job from it.
    """
    if foreground.mask.shape != image.shape:
        raise ValueError(f"foreground shape {foreground.mask.shape} differs from the frame's {image.shape}")
    markers = np.where(foreground.mask, image, 0).astype(np.int32)
    if not markers.any():
        return
    regions = watershed(-foreground.smoothed, markers, mask=foreground.mask)
    del markers
    levels = np.full(len(label), np.nan) if levels is None else levels
    for centre, r, lab, level in zip(centres, radius, label, levels):
        found = _sphere_box(centre, reach * r, voxel_size, image.shape)
        if found is None:
            continue
        box, dist = found
        take = (dist <= 1.0) & (regions[box] == lab) & (image[box] == 0)
        if np.isfinite(level):
            take &= foreground.smoothed[box] > level
        image[box][take] = lab


def cell_levels(foreground: Foreground, centres: np.ndarray, radius: np.ndarray,
                voxel_size: tuple[float, float, float], reach: float, level: float) -> np.ndarray:
    """Each cell's own intensity level, ``background + level * (cell - background)`` of the
    smoothed intensity, or NaN where the cell has no contrast to take a level from.

    ``cell`` is the median smoothed intensity within half the cell's radius, ``background`` the 10th
    percentile of the box around its reach. A cell not brighter than that, or whose disk's upper
    quartile stands less than ``LOCAL_MIN_CONTRAST`` times the frame's background noise
    (:func:`background_noise`) above it, has no level: a detection in plain background would
    otherwise take most of its reach. Where cells crowd the box its percentile rises, which only
    raises the level. No library thresholds around given seeds at their own contrast, hence by hand.
    """
    check_local_level(level)
    levels = np.full(len(centres), np.nan)
    smoothed = foreground.smoothed
    least = LOCAL_MIN_CONTRAST * background_noise(foreground)
    inner = (0.5 / reach) ** 2  # half a radius, in the reach sphere's units
    for k, (centre, r) in enumerate(zip(centres, radius)):
        found = _sphere_box(centre, reach * r, voxel_size, smoothed.shape)
        if found is None:
            continue
        box, dist = found
        values = smoothed[box]
        core = values[dist <= inner]
        if core.size == 0:
            continue
        cell, background = float(np.median(core)), float(np.percentile(values, 10))
        if cell <= background:
            continue
        # The guard reads the upper quartile of the whole disk, not the core: a nucleus with a dark
        # centre has a bright rim (with the core's median, 3 sigmas cost GOWT1 02 TRA 0.953 -> 0.940).
        if float(np.percentile(values[dist <= 4 * inner], 75)) - background <= least:
            continue
        levels[k] = background + level * (cell - background)
    return levels


def add_local_foreground(foreground: Foreground, centres: np.ndarray, radius: np.ndarray,
                         voxel_size: tuple[float, float, float], reach: float,
                         levels: np.ndarray) -> Foreground:
    """``foreground`` plus, around each cell with a level (:func:`cell_levels`), the voxels within
    ``reach`` radii of its centre whose smoothed intensity exceeds it. The new mask costs one byte
    per voxel."""
    mask = foreground.mask.copy()
    for centre, r, level in zip(centres, radius, levels):
        if not np.isfinite(level):
            continue
        found = _sphere_box(centre, reach * r, voxel_size, mask.shape)
        if found is None:
            continue
        box, dist = found
        mask[box] |= (dist <= 1.0) & (foreground.smoothed[box] > level)
    return Foreground(mask, foreground.smoothed)


def background_noise(foreground: Foreground, samples: int = 1_000_000) -> float:
    """Robust standard deviation (1.4826 x MAD) of the smoothed intensity outside the foreground,
    from at most ``samples`` evenly strided voxels; 0 when the frame has no background."""
    step = max(1, foreground.mask.size // samples)  # strided first: no frame-sized copy
    values = foreground.smoothed.reshape(-1)[::step][~foreground.mask.reshape(-1)[::step]]
    if values.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def check_local_level(level: float | None) -> None:
    """Raise ValueError unless ``level`` is None or a fraction in (0, 1]."""
    if level is not None and not 0.0 < level <= 1.0:
        raise ValueError(f"local_level must be a fraction in (0, 1] or None, not {level}")


def _sphere_box(centre: np.ndarray, radius: float, voxel_size: Sequence[float], shape: Sequence[int]
                ) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """The frame box around a sphere of ``radius`` xy pixels (an ellipsoid in voxels: z shrinks by
    voxel_x / voxel_z) and each box voxel's squared distance from the centre in radii (<= 1 inside);
    None when the box lies outside the frame."""
    semi = radius * float(voxel_size[2]) / np.asarray(voxel_size, dtype=float)
    lo = np.maximum(np.floor(centre - semi).astype(int), 0)
    hi = np.minimum(np.ceil(centre + semi).astype(int) + 1, np.asarray(shape))
    if np.any(hi <= lo):
        return None
    grid = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    dist = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, semi))
    return tuple(slice(a, b) for a, b in zip(lo, hi)), dist


def _stamp_centres(image: np.ndarray, centres: np.ndarray, label: np.ndarray) -> None:
    """Give each cell its centre voxel; a cell whose centre voxel is already taken by another
    centre gets the nearest voxel not claimed by a centre (searched in growing cubes)."""
    claimed: set[tuple[int, ...]] = set()
    upper = np.asarray(image.shape) - 1
    for centre, lab in zip(centres, label):
        voxel = tuple(np.clip(np.rint(centre).astype(int), 0, upper).tolist())
        reach = 0
        while voxel in claimed:
            reach += 1
            steps = np.arange(-reach, reach + 1)
            offsets = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
            offsets = offsets[np.argsort(np.abs(offsets).sum(1), kind="stable")]
            options = np.clip(np.rint(centre).astype(int) + offsets, 0, upper)
            free = [tuple(v) for v in options.tolist() if tuple(v) not in claimed]
            if free:
                voxel = free[0]
            elif reach > max(image.shape):
                raise ValueError("more cells than voxels in a frame")
        claimed.add(voxel)
        image[voxel] = lab


def write_ctc(tracks: pd.DataFrame, folder: str | Path, shape: tuple[int, int, int], n_frames: int,
              voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0),
              foreground: Callable[[int], Foreground] | None = None, reach: float = 1.5,
              local_level: float | None = None,
              progress: Callable[[], None] | None = None) -> dict[int, int]:
    """Write a CTC result folder (``res_track.txt`` + ``maskTTT.tif``) atomically.

    ``shape`` is (z, y, x); with z == 1 the masks are 2D images. Masks are rendered frame by frame
    (memory: one frame), grown into ``foreground(t)`` (frame t's foreground, plus each cell's
    local foreground at ``local_level``, see :func:`render_frame`) when given;
    ``progress`` is called after each frame. Returns the track_id -> CTC label mapping (identity
    when ids fit uint16).
    """
    if len(shape) != 3:
        raise ValueError(f"shape must be (z, y, x), not {shape}")
    check_local_level(local_level)
    if len(tracks) and (tracks["t"].min() < 0 or tracks["t"].max() >= n_frames):
        raise ValueError(f"track frames {tracks['t'].min()}..{tracks['t'].max()} outside 0..{n_frames - 1}")
    labels = ctc_labels(tracks)
    table = track_table(tracks, labels)
    by_frame = dict(tuple(tracks.groupby("t")))
    empty = tracks.iloc[:0]
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for t in range(n_frames):
            cells = by_frame.get(t, empty)
            fg = foreground(t) if foreground is not None and len(cells) else None
            image = render_frame(cells, labels, shape, voxel_size, fg, reach, local_level)
            write_label_frame(image[0] if shape[0] == 1 else image, tmp, "mask", t, n_frames)
            if progress is not None:
                progress()
        write_track_table(table, tmp / "res_track.txt")
    return labels


def write_ctc_of_image(tracks: pd.DataFrame, folder: str | Path, image_path: str | Path, *, channel: int = 0,
                       shape: str = "foreground", reach: float = 1.5, smoothing: float = 0.12,
                       local_level: float | None = 0.2,  # the schema's ctc_masks defaults
                       progress: Callable[[], None] | None = None) -> float | None:
    """:func:`write_ctc` with the frame geometry of an OME-Zarr image and masks as the config's
    ``ctc_masks`` ask: ``shape`` 'disk', or 'foreground' (grown into the foreground of
    ``channel``, :func:`celltrails.foreground.series_foreground`, and each cell's local foreground
    at ``local_level``, None for none). Returns the smoothing sigma
    (xy pixels) when the masks were grown, else None."""
    meta = read_image_meta(image_path)
    foreground, sigma = None, None
    if shape == "foreground" and len(tracks):
        foreground, sigma = series_foreground(image_path, channel, tracks["radius"].to_numpy(float), smoothing)
    write_ctc(tracks, folder, shape=meta.shape[2:], n_frames=meta.n_frames, voxel_size=meta.voxel_size,
              foreground=foreground, reach=reach, local_level=local_level, progress=progress)
    return sigma
