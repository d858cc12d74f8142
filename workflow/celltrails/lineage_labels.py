"""Cell-state labels derived from a lineage: mitosis vs interphase from where divisions happen.

Used to score embeddings and classifiers on data that has tracks with divisions but no
hand-made state annotations (the Cell Tracking Challenge ground truth): a cell is *mitotic*
in the last ``before`` frames of a track that divides (has two or more daughter tracks; a single
child is a closed gap, the same cell) and in the first ``after`` frames of a daughter; it is in *interphase* when it is at least ``margin`` frames away from every
division of its own track (end of a dividing track, start of a daughter). Rows in between are
left unlabelled (missing), so the two classes are not blurred by the ambiguous frames around a
division.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MITOSIS, INTERPHASE = "mitosis", "interphase"


def dividing_tracks(tracks: pd.DataFrame) -> np.ndarray:
    """Ids of the tracks that divide: parents of at least two tracks. A parent of a single track
    is a gap the linker closed (the same cell continuing under a new track id), not a division."""
    links = tracks.loc[tracks["parent_track_id"] >= 0, ["track_id", "parent_track_id"]].drop_duplicates()
    children = links.groupby("parent_track_id")["track_id"].nunique()
    return children.index[children >= 2].to_numpy()


def division_labels(tracks: pd.DataFrame, before: int = 2, after: int = 1, margin: int = 3) -> pd.Series:
    """Per row of ``tracks`` (``t, track_id, parent_track_id``): "mitosis", "interphase" or missing."""
    if before < 0 or after < 0 or margin < max(before, after):
        raise ValueError(f"need before, after >= 0 and margin >= both (got {before}, {after}, {margin})")
    span = tracks.groupby("track_id")["t"].agg(["min", "max"])
    mothers = dividing_tracks(tracks)
    parents = tracks.loc[tracks["parent_track_id"].isin(mothers), ["track_id", "parent_track_id"]].drop_duplicates()
    divides = span.index.isin(mothers)
    is_daughter = span.index.isin(parents["track_id"])
    end = span["max"].reindex(tracks["track_id"]).to_numpy()
    start = span["min"].reindex(tracks["track_id"]).to_numpy()
    divides_row = pd.Series(divides, index=span.index).reindex(tracks["track_id"]).to_numpy()
    daughter_row = pd.Series(is_daughter, index=span.index).reindex(tracks["track_id"]).to_numpy()
    t = tracks["t"].to_numpy()
    to_division = np.where(divides_row, end - t, np.iinfo(np.int64).max)  # 0 = last frame before division
    from_birth = np.where(daughter_row, t - start, np.iinfo(np.int64).max)  # 0 = first frame of a daughter
    mitosis = (to_division < before) | (from_birth < after)
    interphase = (to_division >= margin) & (from_birth >= margin)
    labels = np.full(len(tracks), None, dtype=object)
    labels[interphase] = INTERPHASE
    labels[mitosis] = MITOSIS
    return pd.Series(labels, index=tracks.index, name="division_state")
