"""Lineage assembly: chosen frame-pair edges -> tracks with parent links, gap closing, cleanup.

A track is a chain of 1-to-1 links between consecutive frames. At a division both daughters start
new tracks whose parent is the mother's track. Gap closing joins a track end to a later track start
(up to ``max_gap`` missing frames) by one global assignment. The CTC format forbids gaps inside a
track, so a closed gap is either filled (default: the cell's position and radius interpolated
linearly over the missing frames, one track throughout) or, with ``fill_gaps`` off, the
continuation becomes a new track whose parent is the old one. Candidates (weak peaks below the
detection threshold, ``candidate`` column) are kept only in a cell's chain of gap-closed tracks
that also holds a detection: hysteresis in time, which follows a cell as it dims at the field's
border or fades without admitting isolated weak peaks. Optionally, short isolated fragments (no
parent, no children, not cut by the first or last frame) are dropped as spurious detections. Last,
a division whose daughters stay joined by a ridge of the detector's centre map is merged back into
one cell, and a division into a daughter that vanishes after a frame is undone
(:mod:`celltrails.split_cells`).

Output (``tracks.parquet``): ``t, cell_id, track_id, parent_track_id (-1 = none), z, y, x, radius``;
``cell_id`` is the cell's id in the linked table (``linking.with_candidates``: a detection's row
number, or a candidate's row number plus the number of detections), or -1, -2, ... for a filled-in
(interpolated) cell; track ids are 1, 2, ... in order of first frame, so they double as CTC labels
when <= 65535.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from celltrails.atomic import atomic_path
from celltrails.linking import (
    LinkParams,
    check_detections,
    embedding_columns,
    embedding_scale,
    paired_embedding_distance,
    radii,
    scaled_positions,
    solve_assignment,
    transition_cost,
)
from celltrails.split_cells import detach_short_daughters, merge_split_cells

TRACK_COLUMNS = ["t", "cell_id", "track_id", "parent_track_id", "z", "y", "x", "radius"]


@dataclass(frozen=True)
class LineageParams:
    """Gap closing and fragment removal.

    Attributes:
        max_gap: most missing frames a gap-closing link may bridge (0 switches gap closing off).
        gap_frame_cost: extra cost per missing frame, on top of the linker's transition cost
            (search radius and displacement tolerance grow with sqrt(frames)). A gap is closed
            when the total is below LinkParams.appear_cost + disappear_cost, the same trade-off
            as for frame-to-frame links.
        fill_gaps: fill a closed gap with interpolated cells, so the cell keeps one track. Off,
            the continuation is a new track whose parent is the old one, which reads like a
            division with one daughter, and which CTC's metrics count as a false link plus a
            missed cell per missing frame (a missed cell costs 10x a false one).
        min_track_length: isolated tracks (no parent, no children) with fewer frames are removed,
            unless they touch the first or last frame (there the movie, not the detector, cut them).
            Off (1) by default: CTC's TRA charges a missed cell 10x a false one, so removal only
            pays when over ~90% of the short tracks are false; on SIM+/GOWT1 ground-truth
            detections a value of 2 already drops real cells (border slivers, cells that flicker
            in and out of focus). Use 2-3 for noisy detectors when clean lineages matter more.
        split_persistence: a division whose daughters are joined by a ridge of the detector's
            centre map in this many frames of an unbroken run from their first frame on (frames
            filled into a gap and frames within ``split_slack`` continue it) is one cell split by
            the detector and is merged back (:mod:`celltrails.split_cells`); 0 switches it off.
        split_ridge: the ridge (detections' ``ridge`` column) that joins two peaks of one cell.
        split_slack: a frame where such sisters are farther apart than the sum of their radii but
            closer than this factor times it (no ridge is read that far) continues the run without
            counting, as a frame filled into a gap, when a frame showing the ridge follows it
            before the next such frame and before the run ends; 1 switches it off.
        min_daughter_frames: a division into a daughter that lives fewer frames (and ends before
            the last frame without dividing) is a false peak beside the cell: the daughter becomes
            a track of its own (removed if shorter than ``min_track_length``), and a mother left
            with one daughter continues as her (:func:`celltrails.split_cells.detach_short_daughters`);
            1 switches it off.
    """

    max_gap: int = 4
    gap_frame_cost: float = 0.5
    min_track_length: int = 1
    fill_gaps: bool = True
    split_persistence: int = 5
    split_ridge: float = 0.2
    split_slack: float = 1.25
    min_daughter_frames: int = 2

    def __post_init__(self) -> None:
        if self.max_gap < 0 or self.min_track_length < 1 or self.gap_frame_cost < 0:
            raise ValueError("max_gap >= 0, min_track_length >= 1 and gap_frame_cost >= 0 required")
        if self.split_persistence < 0 or not 0.0 <= self.split_ridge <= 1.0 or not self.split_slack >= 1.0:
            raise ValueError("split_persistence >= 0, split_ridge in [0, 1] and split_slack >= 1 required")
        if self.min_daughter_frames < 1:
            raise ValueError("min_daughter_frames >= 1 required")


def _segments(n_cells: int, source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment of each cell (chains of 1-to-1 links) and the predecessor of each cell (-1 = none).

    ``source``/``target`` are positions (0..n_cells-1) of the chosen edges.
    """
    predecessor = np.full(n_cells, -1)
    predecessor[target] = source
    n_successors = np.bincount(source, minlength=n_cells)
    continues = n_successors[source] == 1
    graph = coo_matrix((np.ones(continues.sum()), (source[continues], target[continues])),
                       shape=(n_cells, n_cells))
    _, segment = connected_components(graph, directed=False)
    return segment, predecessor


def _segment_table(cells: pd.DataFrame, segment: np.ndarray, predecessor: np.ndarray) -> pd.DataFrame:
    """One row per segment: first/last cell position, start/end frame, parent segment (-1)."""
    frame = cells["t"].to_numpy()
    order = np.lexsort((frame, segment))
    seg_sorted = segment[order]
    starts = np.flatnonzero(np.r_[True, seg_sorted[1:] != seg_sorted[:-1]])
    ends = np.r_[starts[1:], len(order)] - 1
    first, last = order[starts], order[ends]
    pred = predecessor[first]
    return pd.DataFrame({"first": first, "last": last, "start": frame[first], "end": frame[last],
                         "parent": np.where(pred >= 0, segment[np.maximum(pred, 0)], -1)},
                        index=seg_sorted[starts])


def _close_gaps(cells: pd.DataFrame, table: pd.DataFrame, link: LinkParams, lineage: LineageParams,
                scale: float | None) -> pd.Series:
    """Parent segment of each gap-closed start segment (index: child segment)."""
    t_first, t_last = cells["t"].min(), cells["t"].max()
    has_children = table.index.isin(table["parent"])
    ends = table[~has_children & (table["end"] < t_last - 1)]
    starts = table[(table["parent"] < 0) & (table["start"] > t_first + 1)]
    if lineage.max_gap == 0 or len(ends) == 0 or len(starts) == 0:
        return pd.Series(dtype="int64")
    pos = scaled_positions(cells, link.voxel_size)
    rad = radii(cells, link.min_radius)
    a, b = ends["last"].to_numpy(), starts["first"].to_numpy()
    # Gap closing is a bipartite matching like the frame-pair linking; candidates are within the
    # linker's search radius, widened by sqrt(elapsed frames) as for a random walk.
    reach = np.maximum(link.min_search_radius, link.search_factor * rad[a]) * np.sqrt(lineage.max_gap + 1)
    near = cKDTree(pos[b]).query_ball_point(pos[a], r=reach)
    i = np.repeat(np.arange(len(a)), [len(n) for n in near])
    j = np.concatenate([np.asarray(n, dtype=np.int64) for n in near])
    frames = cells["t"].to_numpy()[b[j]] - cells["t"].to_numpy()[a[i]]
    in_time = (frames >= 2) & (frames <= lineage.max_gap + 1)
    i, j, frames = i[in_time], j[in_time], frames[in_time]
    distance = np.linalg.norm(pos[a[i]] - pos[b[j]], axis=1)
    keep = distance <= np.maximum(link.min_search_radius, link.search_factor * rad[a[i]]) * np.sqrt(frames)
    i, j, frames, distance = i[keep], j[keep], frames[keep], distance[keep]
    if len(i) == 0:
        return pd.Series(dtype="int64")
    emb = np.full(len(i), np.nan)
    if scale is not None:
        vectors = cells[embedding_columns(cells)].to_numpy(float)
        emb = paired_embedding_distance(vectors[a[i]], vectors[b[j]], link.embedding_metric) / scale
    cost = (transition_cost(distance, rad[a[i]], rad[b[j]], emb, link, frames=frames)
            + lineage.gap_frame_cost * (frames - 1))
    half = (link.appear_cost + link.disappear_cost) / 2
    chosen = solve_assignment(i, j, cost, np.full(len(a), half), np.full(len(b), half), link.dense_limit)
    return pd.Series(ends.index.to_numpy()[i[chosen]], index=starts.index.to_numpy()[j[chosen]])


def assemble_tracks(detections: pd.DataFrame, edges: pd.DataFrame, link: LinkParams | None = None,
                    lineage: LineageParams | None = None) -> pd.DataFrame:
    """Tracks table (``TRACK_COLUMNS``) from detections and the linker's edge table.

    ``cell_id`` is the detection's index label (its row id in detections.parquet), negative for a
    cell filled into a closed gap; only edges with ``chosen`` are used. Each cell may have at most
    one chosen predecessor. With a boolean ``candidate`` column, a cell's chain of gap-closed tracks
    made of candidates only is dropped.
    """
    link, lineage = link or LinkParams(), lineage or LineageParams()
    check_detections(detections)
    if not detections.index.is_unique:
        raise ValueError("detection ids (the table index) must be unique")
    cells = detections.sort_index()
    if len(cells) == 0:
        return _empty_tracks()
    chosen = edges[edges["chosen"]]
    source = cells.index.get_indexer(chosen["source"])
    target = cells.index.get_indexer(chosen["target"])
    if (source < 0).any() or (target < 0).any():
        raise ValueError("edges refer to cell ids that are not in the detections")
    if len(np.unique(target)) != len(target):
        raise ValueError("a cell has more than one chosen predecessor")

    segment, predecessor = _segments(len(cells), source, target)
    table = _segment_table(cells, segment, predecessor)
    scale = embedding_scale([f for _, f in cells.groupby("t")], link) if link.embedding_weight > 0 else None
    gap_parent = _close_gaps(cells, table, link, lineage, scale)
    table.loc[gap_parent.index, "parent"] = gap_parent.to_numpy()
    # A chain: a segment and its gap-closed continuations, one cell throughout. Every segment
    # belongs to the track of its chain's head with filled gaps, to its own track without.
    chain = pd.Series(table.index.to_numpy(np.int64), index=table.index)
    if len(gap_parent):
        parent_of = gap_parent.to_dict()
        chain.loc[gap_parent.index] = [_chain_head(s, parent_of) for s in gap_parent.index]
    table["track"] = chain if lineage.fill_gaps else table.index.to_numpy(np.int64)
    filled = gap_parent if lineage.fill_gaps else pd.Series(dtype="int64")
    tracks = _track_table(table)
    if "candidate" in cells:  # drop the chains of candidates alone (whole chains: no lineage is cut)
        detected = pd.Series(~cells["candidate"].to_numpy(bool)).groupby(chain.loc[segment].to_numpy()).any()
        tracks = tracks[detected.loc[chain.loc[tracks.index]].to_numpy()]
    segment_track = table["track"].loc[segment]  # each cell's track

    frames = cells["t"].to_numpy()
    length = tracks["end"] - tracks["start"] + 1
    isolated = (tracks["parent"] < 0) & ~tracks.index.isin(tracks["parent"])
    spurious = (isolated & (length < lineage.min_track_length)
                & (tracks["start"] > frames.min()) & (tracks["end"] < frames.max()))
    tracks = tracks[~spurious].sort_values(["start", "first"])
    track_id = pd.Series(np.arange(1, len(tracks) + 1), index=tracks.index)
    parent_track = tracks["parent"].map(track_id).fillna(-1).astype("int64")

    keep = segment_track.isin(tracks.index).to_numpy()
    out = pd.DataFrame({
        "t": frames[keep].astype("int64"), "cell_id": cells.index.to_numpy()[keep].astype("int64"),
        "track_id": track_id.loc[segment_track[keep]].to_numpy(),
        "parent_track_id": parent_track.loc[segment_track[keep]].to_numpy(),
        "z": cells["z"].to_numpy(float)[keep], "y": cells["y"].to_numpy(float)[keep],
        "x": cells["x"].to_numpy(float)[keep], "radius": cells["radius"].to_numpy(float)[keep]})
    gaps = _filled_cells(cells, table, filled, track_id, parent_track)
    tracks = pd.concat([out, gaps], ignore_index=True).sort_values(["track_id", "t"], ignore_index=True)
    # The merge goes first: undoing a split can leave one half as a daughter that vanishes at once.
    tracks = merge_split_cells(tracks, cells, link.voxel_size, lineage.split_persistence, lineage.split_ridge,
                               lineage.split_slack)
    return detach_short_daughters(tracks, lineage.min_daughter_frames, int(frames.max()), lineage.min_track_length)


def _chain_head(segment: int, gap_parent: dict[int, int]) -> int:
    """First segment of the chain of gap-closed continuations that ``segment`` belongs to."""
    while segment in gap_parent:
        segment = gap_parent[segment]
    return segment


def _track_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per track (index: its head segment): first cell, start/end frame, parent track."""
    heads = table[table["track"] == table.index]
    span = table.groupby("track").agg(start=("start", "min"), end=("end", "max"))
    parent = heads["parent"].map(table["track"]).fillna(-1).astype("int64")
    return pd.DataFrame({"first": heads["first"], "start": span.loc[heads.index, "start"],
                         "end": span.loc[heads.index, "end"], "parent": parent})


def _filled_cells(cells: pd.DataFrame, table: pd.DataFrame, filled: pd.Series, track_id: pd.Series,
                  parent_track: pd.Series) -> pd.DataFrame:
    """Cells interpolated linearly (position and radius) over each filled gap; cell ids -1, -2, ..."""
    # Gaps of tracks removed as short isolated fragments are not filled either.
    filled = filled[table.loc[filled.index, "track"].isin(track_id.index).to_numpy()]
    if len(filled) == 0:
        return _empty_tracks()
    before, after = table.loc[filled.to_numpy(), "last"].to_numpy(), table.loc[filled.index, "first"].to_numpy()
    frames = cells["t"].to_numpy().astype(np.int64)
    missing = frames[after] - frames[before] - 1
    gap = np.repeat(np.arange(len(filled)), missing)          # the gap each filled cell is in
    step = np.concatenate([np.arange(1, m + 1) for m in missing])
    fraction = step / (missing[gap] + 1)
    values = cells[["z", "y", "x", "radius"]].to_numpy(float)
    start, end = values[before[gap]], values[after[gap]]
    start, end = np.where(np.isnan(start), end, start), np.where(np.isnan(end), start, end)  # NaN radius
    interpolated = start + fraction[:, None] * (end - start)
    track = table.loc[filled.index, "track"].to_numpy()[gap]
    gaps = pd.DataFrame({"t": frames[before[gap]] + step, "track_id": track_id.loc[track].to_numpy(),
                         "parent_track_id": parent_track.loc[track].to_numpy()})
    gaps[["z", "y", "x", "radius"]] = interpolated
    gaps = gaps.sort_values(["track_id", "t"], ignore_index=True)
    gaps.insert(1, "cell_id", -np.arange(1, len(gaps) + 1, dtype=np.int64))
    return gaps[TRACK_COLUMNS]


def _empty_tracks() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c in TRACK_COLUMNS[:4] else "float64")
                         for c in TRACK_COLUMNS})


def write_tracks(tracks: pd.DataFrame, path: str | Path) -> None:
    """Write ``tracks.parquet`` (exactly ``TRACK_COLUMNS``) atomically."""
    with atomic_path(path) as tmp:
        tracks[TRACK_COLUMNS].to_parquet(tmp, index=False)


def napari_tracks(tracks: pd.DataFrame) -> tuple[np.ndarray, dict[int, list[int]]]:
    """napari Tracks layer input: data rows ``track_id, t, z, y, x`` and graph {track: [parent]}."""
    data = tracks.sort_values(["track_id", "t"])[["track_id", "t", "z", "y", "x"]].to_numpy(float)
    parents = tracks.drop_duplicates("track_id")
    parents = parents[parents["parent_track_id"] >= 0]
    graph = {int(k): [int(p)] for k, p in zip(parents["track_id"], parents["parent_track_id"])}
    return data, graph
