"""Ground truth in one standard table, whatever form it was registered in.

Columns: ``t, z, y, x, cell_id, parent_id, radius`` (plus any extra columns the source has,
such as the synthetic ``state`` and ``onset``). Positions are voxel indices (z = 0 in 2D),
``radius`` is in xy pixels, ``cell_id`` is the track label (constant along a track, new after a
division or gap) and ``parent_id`` the label of the track it continues from, -1 for none.
Sources: a CTC ``NN_GT`` folder (TRA markers: centroid and equivalent radius), a points table
(CSV or parquet) with at least ``t, y, x, cell_id, parent_id``, or the synthetic generator's table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from skimage.measure import regionprops_table

from celltrails.ctc import frame_number, list_frames, read_track_table
from celltrails.errors import InputError

log = logging.getLogger(__name__)

POINT_COLUMNS = ["t", "z", "y", "x", "cell_id", "parent_id", "radius"]
_REQUIRED = ["t", "y", "x", "cell_id", "parent_id"]


def equivalent_radius_px(n_voxels: np.ndarray, voxel_size: Sequence[float], is_3d: bool) -> np.ndarray:
    """Radius (xy pixels) of the disk (2D) or sphere (3D) with the marker's area or volume."""
    vz, vy, vx = voxel_size
    if is_3d:
        volume_um3 = n_voxels * vz * vy * vx
        return np.cbrt(3.0 * volume_um3 / (4.0 * np.pi)) / vx
    return np.sqrt(n_voxels * vy * vx / np.pi) / vx


def points_from_ctc(gt_folder: str | Path, voxel_size: Sequence[float], dataset: str) -> pd.DataFrame:
    """One row per marker per frame of a CTC ``NN_GT/TRA`` folder (or the ``TRA`` folder itself)."""
    gt_folder = Path(gt_folder)
    tra = gt_folder / "TRA" if (gt_folder / "TRA").is_dir() else gt_folder
    tracks = read_track_table(tra / "man_track.txt", dataset=dataset)
    parent_of = dict(zip(tracks.label, tracks.parent))
    rows = []
    for path in list_frames(tra, prefix="man_track", dataset=dataset):
        labels = tifffile.imread(path)
        is_3d = labels.ndim == 3 and labels.shape[0] > 1
        volume = labels if labels.ndim == 3 else labels[np.newaxis]
        props = regionprops_table(volume, properties=("label", "centroid", "area"))
        frame = pd.DataFrame({
            "t": frame_number(path),
            "z": props["centroid-0"], "y": props["centroid-1"], "x": props["centroid-2"],
            "cell_id": props["label"],
            "radius": equivalent_radius_px(props["area"], voxel_size, is_3d),
        })
        unknown = set(frame.cell_id) - set(parent_of)
        if unknown:
            raise InputError(f"labels {sorted(unknown)[:5]} are not in man_track.txt", dataset=dataset, path=path)
        rows.append(frame)
    points = pd.concat(rows, ignore_index=True)
    points["parent_id"] = points.cell_id.map(parent_of).astype("int64").replace(0, -1)
    return normalise_points(points, dataset, tra)


def points_from_table(path: str | Path, dataset: str) -> pd.DataFrame:
    """A user's points table (CSV/TSV or parquet) with ``t, [z,] y, x, cell_id, parent_id[, radius]``."""
    path = Path(path)
    if not path.is_file():
        raise InputError("ground-truth table not found", dataset=dataset, path=path)
    try:
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, sep=None, engine="python")
    except Exception as err:
        raise InputError(f"cannot read the ground-truth table: {err}", dataset=dataset, path=path) from err
    return normalise_points(table, dataset, path)


def normalise_points(table: pd.DataFrame, dataset: str, path: object) -> pd.DataFrame:
    """Check a points table and bring it to the standard columns and types."""
    missing = [c for c in _REQUIRED if c not in table.columns]
    if missing:
        raise InputError(f"ground-truth table lacks columns {missing} (needs t, [z,] y, x, cell_id, "
                         "parent_id[, radius])", dataset=dataset, path=path)
    table = table.copy()
    if "z" not in table.columns:
        table["z"] = 0.0
    if "radius" not in table.columns:
        table["radius"] = np.nan
    numeric = table[["t", "z", "y", "x", "cell_id", "parent_id"]]
    if numeric.isna().any().any():
        raise InputError("ground-truth table has missing values in t, z, y, x, cell_id or parent_id",
                         dataset=dataset, path=path)
    table["t"] = table["t"].astype("int64")
    table[["z", "y", "x", "radius"]] = table[["z", "y", "x", "radius"]].astype("float64")
    table["cell_id"] = table["cell_id"].astype("int64")
    table["parent_id"] = table["parent_id"].astype("int64").replace(0, -1)
    if (table.cell_id <= 0).any():
        raise InputError("cell_id must be positive integers", dataset=dataset, path=path)
    if table.duplicated(["t", "cell_id"]).any():
        raise InputError("a cell_id appears twice in one frame", dataset=dataset, path=path)
    if table.empty:
        raise InputError("ground truth has no cells", dataset=dataset, path=path)
    extra = [c for c in table.columns if c not in POINT_COLUMNS]
    return table[POINT_COLUMNS + extra].sort_values(["t", "cell_id"]).reset_index(drop=True)


def load_ground_truth(source: str | Path, voxel_size: Sequence[float], dataset: str) -> pd.DataFrame:
    """Standard points table from a CTC GT folder or a points table file."""
    source = Path(source)
    if source.is_dir():
        return points_from_ctc(source, voxel_size, dataset)
    return points_from_table(source, dataset)


def check_points_fit_image(points: pd.DataFrame, shape: Sequence[int], dataset: str, path: object) -> None:
    """Ground truth must lie inside the image it annotates: frames and (z, y, x) within bounds."""
    n_frames, _, nz, ny, nx = shape
    if points.t.min() < 0 or points.t.max() >= n_frames:
        raise InputError(f"ground truth has frames {points.t.min()}..{points.t.max()} but the image has "
                         f"{n_frames} frames (0..{n_frames - 1})", dataset=dataset, path=path)
    for axis, size in (("z", nz), ("y", ny), ("x", nx)):
        outside = (points[axis] < -0.5) | (points[axis] > size - 0.5)
        if outside.any():
            raise InputError(f"{int(outside.sum())} ground-truth points lie outside the image along {axis} "
                             f"(size {size}); is the axis order or voxel unit right?", dataset=dataset, path=path)
