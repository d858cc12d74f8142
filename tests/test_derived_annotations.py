"""Labels from ground truth moved onto embedded tracks, and their sparse subset."""

from __future__ import annotations

import numpy as np
import pandas as pd
from celltrails.analysis.derived_annotations import derive_annotations, sparse_annotations, transfer_labels


def truth() -> pd.DataFrame:
    """Cell 1 (t 0-5) divides into 2 and 3 (t 6-11); cell 4 switches state at t=4 and never divides."""
    rows = []
    for t in range(12):
        if t < 6:
            rows.append((t, 10.0, 10.0, 1, -1, 0, -1))
        else:
            rows += [(t, 10.0, 5.0, 2, 1, 0, -1), (t, 10.0, 15.0, 3, 1, 0, -1)]
        rows.append((t, 40.0, 40.0, 4, -1, int(t >= 4), 4))
    table = pd.DataFrame(rows, columns=["t", "y", "x", "cell_id", "parent_id", "state", "onset"])
    return table.assign(z=0.0, radius=3.0)


def test_labels_follow_the_matched_ground_truth_cell():
    points = truth()
    # Tracks as a tracker might number them, positions off by a pixel; one spurious row matches nothing.
    tracks = points.rename(columns={"cell_id": "track_id"})[["t", "z", "y", "x", "track_id"]].copy()
    tracks["track_id"] += 100
    tracks["y"] += 1.0
    tracks = pd.concat([tracks, pd.DataFrame({"t": [3], "z": [0.0], "y": [80.0], "x": [80.0], "track_id": [999]})],
                       ignore_index=True)
    labelled = transfer_labels(tracks, points)
    by = {(k, t): row for k, t, row in zip(labelled.track_id, labelled.t, labelled.to_dict("records"))}
    assert by[(104, 3)]["reporter_state"] == "nuclear" and by[(104, 4)]["reporter_state"] == "cytoplasmic"
    assert by[(101, 5)]["division_state"] == "mitosis" and by[(101, 0)]["division_state"] == "interphase"
    assert by[(104, 0)]["division_state"] == "interphase"
    assert pd.isna(by[(999, 3)]["reporter_state"]) and pd.isna(by[(999, 3)]["division_state"])


def test_sparse_annotations_are_balanced_and_bounded():
    labelled = pd.DataFrame({"track_id": np.arange(100), "t": 0,
                             "division_state": ["mitosis"] * 5 + ["interphase"] * 90 + [None] * 5})
    sparse = sparse_annotations(labelled, "division_state", max_cells=20, seed=0)
    counts = sparse.division_state.value_counts()
    assert len(sparse) == 20 and counts["mitosis"] == 5 and counts["interphase"] == 15  # all rare ones taken
    assert sparse.division_state.notna().all()
    again = sparse_annotations(labelled, "division_state", max_cells=20, seed=0)
    pd.testing.assert_frame_equal(sparse, again)


def test_derive_annotations_respects_the_fraction():
    points = truth()
    tracks = points.rename(columns={"cell_id": "track_id"})[["t", "z", "y", "x", "track_id"]]
    annotations, labelled = derive_annotations(tracks, points, (1, 1, 1), fraction=0.2, max_cells=1000, seed=3)
    budget = int(0.2 * len(tracks))
    assert annotations["reporter_state"].notna().sum() == budget
    assert annotations["division_state"].notna().sum() == budget
    assert list(annotations.columns) == ["track_id", "t", "reporter_state", "division_state"]
    assert len(labelled) == len(tracks)
    merged = annotations.merge(labelled, on=["track_id", "t"], suffixes=("", "_truth"))
    known = merged.reporter_state.notna()
    assert (merged.reporter_state[known] == merged.reporter_state_truth[known]).all()


def test_a_points_table_without_radii_matches_within_the_tracked_radius():
    with_radii = truth()
    points = with_radii.assign(radius=float("nan"))
    tracks = points.rename(columns={"cell_id": "track_id"})[["t", "z", "y", "x", "track_id"]].assign(radius=3.0)
    tracks["y"] += 1.0
    labelled = transfer_labels(tracks, points)
    pd.testing.assert_frame_equal(labelled, transfer_labels(tracks, with_radii))  # same cells matched
