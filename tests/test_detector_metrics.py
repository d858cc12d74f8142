"""Detection metrics on hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from celltrails.detector.metrics import embedding_successor_accuracy, match_detections, true_successors


def points(rows: list[tuple], columns=("t", "z", "y", "x"), index=None) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns), index=index, dtype=float).astype({"t": int})


def gt_points(rows: list[tuple[int, float, float, float, int, int, float]], index=None) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=["t", "z", "y", "x", "cell_id", "parent_id", "radius"], index=index)
    return table.astype({"t": int, "z": float, "y": float, "x": float, "cell_id": int, "parent_id": int})


def test_counts_with_a_false_positive_between_two_cells():
    gt = gt_points([(0, 0, 10, 10, 1, -1, 3.0), (0, 0, 10, 30, 2, -1, 3.0)])
    pred = points([(0, 0, 11, 10), (0, 0, 10, 20)], index=[7, 8])  # 10 px from both cells: out of reach
    result = match_detections(pred, gt)
    assert (result["tp"], result["fp"], result["fn"]) == (1, 1, 1)
    assert result["precision"] == result["recall"] == result["f1"] == 0.5
    assert result["pairs"][["t", "pred", "gt"]].values.tolist() == [[0, 7, 0]]
    assert result["pairs"]["distance"].tolist() == [1.0]


def test_matching_is_one_to_one_and_maximal():
    gt = gt_points([(0, 0, 10, 10, 1, -1, 3.0), (0, 0, 10, 14, 2, -1, 3.0)])
    # p0 lies between the cells, nearer to the first; p1 reaches only the first. Taking the nearest
    # pair first (p0-first) would leave one cell unmatched; the optimum matches both.
    pred = points([(0, 0, 10, 11.5), (0, 0, 10, 8)])
    result = match_detections(pred, gt)
    assert (result["tp"], result["fp"], result["fn"]) == (2, 0, 0)
    assert sorted(result["pairs"][["pred", "gt"]].values.tolist()) == [[0, 1], [1, 0]]
    crowd = match_detections(points([(0, 0, 10, 10), (0, 0, 10, 11), (0, 0, 11, 10)]), gt.iloc[:1])
    assert (crowd["tp"], crowd["fp"], crowd["fn"]) == (1, 2, 0)
    assert crowd["pairs"]["pred"].tolist() == [0], "the nearest of the crowd is the match"


def test_distances_are_physical_in_anisotropic_stacks():
    gt = gt_points([(0, 2, 10, 10, 1, -1, 3.0)])  # radius 3 px = 3 um with 1-um pixels
    pred = points([(0, 3, 10, 10)])  # one slice off
    assert match_detections(pred, gt, voxel_size=(2.0, 1.0, 1.0))["tp"] == 1  # 2 um
    assert match_detections(pred, gt, voxel_size=(5.0, 1.0, 1.0))["tp"] == 0  # 5 um
    assert match_detections(pred, gt, voxel_size=(5.0, 1.0, 1.0), max_distance=6.0)["tp"] == 1
    # the radius is in xy pixels: 3 px of 0.5 um reach 1.5 um only, less than the 2-um slice step
    assert match_detections(pred, gt, voxel_size=(2.0, 0.5, 0.5))["tp"] == 0


def test_per_frame_counts_and_empty_frames():
    gt = gt_points([(0, 0, 5, 5, 1, -1, 2.0), (1, 0, 5, 5, 1, -1, 2.0)])
    pred = points([(0, 0, 5, 6), (2, 0, 9, 9)])
    result = match_detections(pred, gt)
    frames = result["per_frame"].set_index("t")
    assert frames[["tp", "fp", "fn"]].values.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
    assert frames.loc[1, "precision"] == 1.0 and frames.loc[1, "recall"] == 0.0 and frames.loc[1, "f1"] == 0.0
    assert result["f1"] == pytest.approx(2 / 4)
    nothing = match_detections(pred.iloc[:0], gt)
    assert (nothing["tp"], nothing["fn"], nothing["f1"]) == (0, 2, 0.0)


def test_missing_radius_needs_max_distance():
    gt = gt_points([(0, 0, 5, 5, 1, -1, np.nan)])
    with pytest.raises(ValueError, match="max_distance"):
        match_detections(points([(0, 0, 5, 5)]), gt)
    assert match_detections(points([(0, 0, 5, 5)]), gt, max_distance=2.0)["tp"] == 1


def test_true_successors_follow_tracks_and_divisions_but_not_gaps():
    gt = gt_points([(0, 0, 0, 0, 1, -1, 1.0), (1, 0, 0, 0, 1, -1, 1.0), (2, 0, 0, 0, 2, 1, 1.0),
                    (2, 0, 0, 0, 3, 1, 1.0), (2, 0, 0, 0, 4, -1, 1.0), (3, 0, 0, 0, 5, -1, 1.0),
                    (5, 0, 0, 0, 5, -1, 1.0)])
    links = true_successors(gt)
    assert sorted(map(tuple, links.values.tolist())) == [(0, 1, False), (1, 2, True), (1, 3, True)]


def successor_case() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cells 1 and 2 swap-prone (2's embedding at t=1 resembles 1's), cell 3 divides into 4 and 5,
    cell 6 jumps out of the search radius, cell 7 is not detected at t=1."""
    gt = gt_points([(0, 0, 10, 10, 1, -1, 4.0), (1, 0, 10, 12, 1, -1, 4.0),
                    (0, 0, 10, 20, 2, -1, 4.0), (1, 0, 10, 18, 2, -1, 4.0),
                    (0, 0, 40, 40, 3, -1, 4.0), (1, 0, 37, 40, 4, 3, 4.0), (1, 0, 43, 40, 5, 3, 4.0),
                    (0, 0, 70, 10, 6, -1, 4.0), (1, 0, 70, 40, 6, -1, 4.0),
                    (0, 0, 90, 90, 7, -1, 4.0), (1, 0, 90, 92, 7, -1, 4.0)], index=range(100, 111))
    embedding = {100: (1, 0), 101: (1, 0.1), 102: (0, 1), 103: (1, -0.5), 104: (5, 5), 105: (5, 5.2),
                 106: (5, 4.9), 107: (-3, 0), 108: (-3, 0), 109: (0, -3)}
    det = gt.loc[list(embedding), ["t", "z", "y", "x"]].reset_index(drop=True)
    det[["emb_0", "emb_1"]] = np.array(list(embedding.values()), dtype=float)
    det["y"] += 0.5  # detections slightly off the GT centres
    return det, gt


def test_successor_accuracy_on_constructed_embeddings():
    det, gt = successor_case()
    result = embedding_successor_accuracy(det, gt, search_radius_factor=3.0)
    assert (result["n"], result["hits"], result["fraction"], result["out_of_reach"]) == (4, 2, 0.5, 1)
    assert result["continuing"] == {"n": 3, "fraction": pytest.approx(1 / 3)}
    assert result["division"] == {"n": 1, "fraction": 1.0}
    wide = embedding_successor_accuracy(det, gt, search_radius_factor=10.0)  # cell 6's successor in reach now
    assert wide["out_of_reach"] == 0 and wide["n"] == 4


def test_successor_accuracy_needs_embeddings():
    det, gt = successor_case()
    with pytest.raises(ValueError, match="emb_"):
        embedding_successor_accuracy(det.drop(columns=["emb_0", "emb_1"]), gt)
