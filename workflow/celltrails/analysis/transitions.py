"""Where cells change state: the reference transitions a DTW pseudo-time template is built from.

Two kinds of transition:

* **a state switch** (e.g. uninfected -> infected, the synthetic reporter's nucleus -> cytoplasm):
  a track *switches* when its predicted class goes once from ``from_class`` to ``to_class`` and
  stays there: at least ``min_frames`` frames on each side, each side a majority (>= 80 %) of its
  class after a 3-frame running mode (single-frame classifier flips do not count). Its onset is
  the first frame of the ``to_class`` run. Annotated transitions (a track annotated with both
  classes, the earlier one before the later) are used first when there are enough of them.
* **a division** (digital synchronisation around mitosis, as in the DynaCLR paper): a cell's
  trajectory through a division (a track with two or more daughters; a single child is a closed
  gap) is the mother track followed by one of its daughters (the one
  with the smaller track id, so the choice is reproducible); its onset is the daughter's first frame.
  Each such path becomes one sequence with its own ``trajectory_id``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from celltrails.lineage_labels import dividing_tracks

SWITCH_MAJORITY = 0.8


def _running_mode(values: np.ndarray, width: int = 3) -> np.ndarray:
    """Most frequent value in a centred window (ties keep the original value)."""
    half = width // 2
    out = values.copy()
    for i in range(len(values)):
        window = values[max(0, i - half): i + half + 1]
        uniques, counts = np.unique(window, return_counts=True)
        best = uniques[counts == counts.max()]
        out[i] = values[i] if values[i] in best else best[0]
    return out


def predicted_switch_onsets(predictions: pd.DataFrame, task: str, from_class: str, to_class: str,
                            min_frames: int = 3) -> dict[int, int]:
    """``{track_id: onset frame}`` of the tracks whose predicted ``task`` switches once and stays."""
    column = f"predicted_{task}"
    onsets: dict[int, int] = {}
    for track, rows in predictions.sort_values("t").groupby("track_id"):
        states = _running_mode(rows[column].astype(str).to_numpy())
        t = rows["t"].to_numpy()
        is_to = states == to_class
        if not is_to.any() or is_to.all():
            continue
        first = int(np.argmax(is_to))
        before, after = states[:first], states[first:]
        if (len(before) >= min_frames and len(after) >= min_frames
                and np.mean(before == from_class) >= SWITCH_MAJORITY and np.mean(after == to_class) >= SWITCH_MAJORITY):
            onsets[int(track)] = int(t[first])
    return onsets


def annotated_switch_onsets(annotations: pd.DataFrame, task: str, from_class: str, to_class: str) -> dict[int, int]:
    """``{track_id: onset}`` for tracks annotated with ``from_class`` before ``to_class``: the onset
    is the first annotated ``to_class`` frame (the switch happened at or before it)."""
    onsets: dict[int, int] = {}
    rows = annotations.dropna(subset=[task])
    for track, part in rows.groupby("track_id"):
        first_to = part.loc[part[task] == to_class, "t"]
        last_from = part.loc[part[task] == from_class, "t"]
        if len(first_to) and len(last_from) and last_from.max() < first_to.min():
            onsets[int(track)] = int(first_to.min())
    return onsets


def division_trajectories(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, int]]:
    """Rows of ``table`` (``t, track_id, parent_track_id``, ...) regrouped into mother -> daughter paths.

    Returns (the rows of every path with a new ``trajectory_id`` column and the original
    ``track_id`` kept as ``source_track_id``, ``{trajectory_id: onset}`` = the daughter's first frame).
    """
    spans = table.groupby("track_id")["t"].agg(["min", "max"])
    mothers = dividing_tracks(table)
    parents = (table.loc[table["parent_track_id"].isin(mothers), ["track_id", "parent_track_id"]].drop_duplicates()
               .sort_values("track_id"))
    chosen = parents.drop_duplicates("parent_track_id", keep="first")
    chosen = chosen[chosen["parent_track_id"].isin(spans.index)]
    parts, onsets = [], {}
    for trajectory, (daughter, mother) in enumerate(zip(chosen["track_id"], chosen["parent_track_id"])):
        rows = table[table["track_id"].isin([mother, daughter])].copy()
        rows["source_track_id"] = rows["track_id"]
        rows["trajectory_id"] = trajectory
        parts.append(rows.sort_values("t"))
        onsets[trajectory] = int(spans.loc[daughter, "min"])
    if not parts:
        return table.iloc[:0].assign(source_track_id=[], trajectory_id=[]), {}
    return pd.concat(parts, ignore_index=True), onsets


def choose_onsets(annotated: Mapping[int, int], predicted: Mapping[int, int], min_tracks: int = 5) -> tuple[dict, str]:
    """Annotated transitions when there are at least ``min_tracks``, else the predicted ones."""
    if len(annotated) >= min_tracks:
        return dict(annotated), "annotated"
    return dict(predicted), "predicted"
