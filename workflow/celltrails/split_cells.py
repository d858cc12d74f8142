"""Undo the divisions that are one cell split in two by the detector.

A detector can place two peaks in one nucleus (a large, dim or textured one). The linker then sees
one cell become two, a division, and the two "daughters" stay side by side, joined by a ridge of
the centre map (the detections' ``ridge`` column, :mod:`celltrails.detector.infer`), for as long
as the nucleus looks that way: 55 frames for the large dim nucleus of Fluo-N2DH-GOWT1 02, which
cost 21 missed cells in the CTC measures (each half covers under half of the nucleus). Real
daughters separate: measured on the suite's tracks (sessions' notes), the sisters of true
divisions on Fluo-N2DH-SIM+ 02 and the synthetic heldout3d series were ridge-joined in at most
their first 3 frames.

Rule: a division whose two daughter tracks, in each of their first ``persistence`` frames, are
each other's nearest cell, closer than the sum of their radii, and joined by a ridge of at least
``min_ridge`` (each one's ridge is to the other: its ``ridge_distance`` is their distance) is a
split cell (a frame where a sister was filled into a gap has no ridge: it
continues such a run without counting). Over the whole run of such
frames the pair becomes one cell of the mother's track: the stronger detection's ``cell_id``, the
midpoint, and a radius reaching over both. After the run, two tails stay the mother's daughters
(the cell divides when its halves part), one tail continues the mother's track.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from celltrails.linking import scaled_positions

log = logging.getLogger(__name__)


def merge_split_cells(tracks: pd.DataFrame, detections: pd.DataFrame, voxel_size: Sequence[float],
                      persistence: int, min_ridge: float) -> pd.DataFrame:
    """``tracks`` (lineage.TRACK_COLUMNS) with split cells merged (module docstring).

    ``detections`` is indexed by ``cell_id`` and has ``score``, ``ridge`` and ``ridge_distance``
    columns; without them, or with ``persistence`` 0, the tracks are returned unchanged. Every
    merge re-examines the mother and her own mother, whose daughters it may have changed. Track ids are
    renumbered 1, 2, ... in order of first frame when a merge removed any.
    """
    if persistence < 1 or not {"score", "ridge", "ridge_distance"} <= set(detections.columns) or tracks.empty:
        return tracks
    tracks = tracks.sort_values(["track_id", "t"], ignore_index=True)
    points = scaled_positions(tracks, tuple(voxel_size))
    merged = 0
    mothers = list(tracks.groupby("track_id")["t"].max().sort_values(kind="stable").index)
    while mothers:
        mother = mothers.pop(0)
        children = tracks.loc[tracks["parent_track_id"] == mother, "track_id"].unique()
        if len(children) != 2:
            continue
        run, evidence = _joined_frames(tracks, points, detections, *children, min_ridge)
        if evidence < persistence or _divides_within(tracks, children, run[-1]):
            continue
        tracks = _merge(tracks, points, detections, mother, children, run)
        points = scaled_positions(tracks, tuple(voxel_size))
        merged += 1
        log.info("track %d: its daughters %s are one cell split by the detector in frames %d-%d; merged",
                 mother, [int(c) for c in children], run[0], run[-1])
        grandmother = int(tracks.loc[tracks["track_id"] == mother, "parent_track_id"].iloc[0])
        # Her children may have changed (a tail's own division), and so may her mother's: a
        # daughter that ended by dividing may now go on as one cell.
        mothers[:0] = [mother] + ([grandmother] if grandmother >= 0 else [])
    if merged:
        log.info("%d division(s) merged back into one cell (split by the detector)", merged)
    return _renumbered(tracks) if merged else tracks


def _joined_frames(tracks: pd.DataFrame, points: np.ndarray, detections: pd.DataFrame, first: int,
                   second: int, min_ridge: float) -> tuple[list[int], int]:
    """Frames, from the sisters' start on, in which the two are one split cell (module docstring),
    and how many of them show the ridge: a frame where one sister was filled into a gap has no
    ridge to read, so it continues the run (positions permitting) without counting."""
    rows_a = tracks.index[tracks["track_id"] == first]
    rows_b = tracks.index[tracks["track_id"] == second]
    by_frame_b = dict(zip(tracks.loc[rows_b, "t"], rows_b))
    frames: list[int] = []
    evidence: list[int] = []
    for a in rows_a:
        t = int(tracks.at[a, "t"])
        b = by_frame_b.get(t)
        if b is None or (frames and t != frames[-1] + 1):
            break
        frame = np.flatnonzero(tracks["t"].to_numpy() == t)
        distance = float(np.linalg.norm(points[a] - points[b]))
        if (not distance < tracks.at[a, "radius"] + tracks.at[b, "radius"]  # False for a NaN radius
                or _nearest(points, frame, a) != b or _nearest(points, frame, b) != a):
            break
        cells = [tracks.at[a, "cell_id"], tracks.at[b, "cell_id"]]
        detected = min(cells) >= 0
        if detected and not _joined(detections.loc[cells], distance, min_ridge):
            break
        frames.append(t)
        evidence.append(detected)
    return frames, sum(evidence)


def _joined(pair: pd.DataFrame, distance: float, min_ridge: float) -> bool:
    """Whether both cells' ridges reach ``min_ridge`` and run to a peak at the pair's distance."""
    to_each_other = np.isclose(pair["ridge_distance"].to_numpy(float), distance, rtol=1e-3, atol=1e-3)
    return bool(to_each_other.all() and (pair["ridge"].to_numpy(float) >= min_ridge).all())


def _divides_within(tracks: pd.DataFrame, children: Sequence[int], last: int) -> bool:
    """Whether a sister ends by dividing within the run (its daughters would lose their mother)."""
    for child in children:
        ends_in_run = tracks.loc[tracks["track_id"] == child, "t"].max() <= last
        if ends_in_run and (tracks["parent_track_id"] == child).any():
            return True
    return False


def _nearest(points: np.ndarray, frame: np.ndarray, row: int) -> int:
    """Row of the frame's cell nearest to ``row`` (itself excluded)."""
    others = frame[frame != row]
    return int(others[np.argmin(np.linalg.norm(points[others] - points[row], axis=1))])


def _merge(tracks: pd.DataFrame, points: np.ndarray, detections: pd.DataFrame, mother: int,
           children: Sequence[int], run: list[int]) -> pd.DataFrame:
    """One cell of ``mother`` per frame of ``run`` in place of the two sisters; tails re-parented."""
    in_run = tracks["track_id"].isin(children) & tracks["t"].isin(run)
    pairs = tracks[in_run].sort_values(["t", "track_id"])
    grandparent = int(tracks.loc[tracks["track_id"] == mother, "parent_track_id"].iloc[0])
    cells = []
    for t, pair in pairs.groupby("t"):
        a, b = pair.iloc[0], pair.iloc[1]
        stronger = a if _score(detections, a.cell_id) >= _score(detections, b.cell_id) else b
        half = 0.5 * float(np.linalg.norm(points[pair.index[0]] - points[pair.index[1]]))  # xy px, z scaled
        cells.append({"t": t, "cell_id": stronger.cell_id, "track_id": mother, "parent_track_id": grandparent,
                      "z": (a.z + b.z) / 2, "y": (a.y + b.y) / 2, "x": (a.x + b.x) / 2,
                      "radius": max(a.radius, b.radius) + half})
    tracks = pd.concat([tracks[~in_run], pd.DataFrame(cells).astype(tracks.dtypes)], ignore_index=True)
    tails = [c for c in children if (tracks["track_id"] == c).any()]
    if len(tails) == 1:  # the cell goes on as one: the tail is the mother's track, its children hers
        tail = tracks["track_id"] == tails[0]
        tracks.loc[tail, ["track_id", "parent_track_id"]] = [mother, grandparent]
        tracks.loc[tracks["parent_track_id"] == tails[0], "parent_track_id"] = mother
    return tracks.sort_values(["track_id", "t"], ignore_index=True)


def _score(detections: pd.DataFrame, cell_id: int) -> float:
    """A detected cell's centre score; -inf for a cell filled into a gap (negative id)."""
    return float(detections.at[cell_id, "score"]) if cell_id >= 0 else -np.inf


def _renumbered(tracks: pd.DataFrame) -> pd.DataFrame:
    """Track ids 1, 2, ... in order of first frame (ties: the old id), as lineage numbers them."""
    start = tracks.groupby("track_id")["t"].min()
    order = start.reset_index().sort_values(["t", "track_id"])["track_id"]
    new_id = pd.Series(np.arange(1, len(order) + 1), index=order.to_numpy())
    tracks = tracks.copy()
    tracks["track_id"] = tracks["track_id"].map(new_id).astype("int64")
    parent = tracks["parent_track_id"]
    tracks["parent_track_id"] = parent.map(new_id).where(parent >= 0, -1).astype("int64")
    return tracks.sort_values(["track_id", "t"], ignore_index=True)
