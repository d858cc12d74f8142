"""Frame-pair linking on hand-made detections with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from celltrails.linking import LinkParams, link_frames, link_pair, solve_assignment, with_candidates
from detections_factory import Track, Truth, make_detections


def chosen_pairs(edges: pd.DataFrame, detections: pd.DataFrame) -> set[tuple[int, int, int]]:
    """Chosen edges as (t, truth label of source, truth label of target)."""
    taken = edges[edges["chosen"]]
    label = detections["label"]
    return set(zip(taken["t"], label.loc[taken["source"]], label.loc[taken["target"]]))


def swap_truth() -> Truth:
    """Two cells crossing each other: between t=1 and t=2 each moves 11 px past the other, so each
    cell at t=2 is nearer to the *other* cell's previous position (9.8 px vs 11 px)."""
    a = Track(1, [(t, 48.0, 29.0 + 11 * t, 8.0) for t in range(4)])
    b = Track(2, [(t, 52.0, 71.0 - 11 * t, 8.0) for t in range(4)])
    return Truth([a, b])


def division_truth() -> Truth:
    mother = Track(1, [(t, 50.0, 50.0 + t, 8.0) for t in range(5)])
    d1 = Track(2, [(t, 43.0 - (t - 5), 55.0 + (t - 5), 6.0) for t in range(5, 9)], parent=1)
    d2 = Track(3, [(t, 57.0 + (t - 5), 55.0 + (t - 5), 6.0) for t in range(5, 9)], parent=1)
    bystander = Track(4, [(t, 150.0, 150.0 - t, 9.0) for t in range(9)])
    return Truth([mother, d1, d2, bystander])


def test_swap_needs_embeddings():
    det = make_detections(swap_truth())
    ours = chosen_pairs(link_frames(det, 0, 3, LinkParams()), det)
    assert ours == {(t, k, k) for t in range(3) for k in (1, 2)}
    position_only = chosen_pairs(link_frames(det, 0, 3, LinkParams(embedding_weight=0.0)), det)
    assert {(1, 1, 2), (1, 2, 1)} <= position_only, "position alone should be fooled by the crossing"


def test_cosine_metric_also_resolves_swap():
    det = make_detections(swap_truth())
    edges = link_frames(det, 0, 3, LinkParams(embedding_metric="cosine"))
    assert chosen_pairs(edges, det) == {(t, k, k) for t in range(3) for k in (1, 2)}


def test_division_takes_two_successors():
    det = make_detections(division_truth())
    edges = link_frames(det, 0, 8)
    pairs = chosen_pairs(edges, det)
    assert {(4, 1, 2), (4, 1, 3)} <= pairs
    assert all(s == d or (s, d) in {(1, 2), (1, 3)} for _, s, d in pairs)
    division = edges[(edges["t"] == 4) & edges["chosen"]]
    assert division["second_successor"].sum() == 1


def lopsided_division_truth() -> Truth:
    """A mother (radius 8) whose one daughter (radius 6) appears 2 px from it, the other 16 px."""
    mother = Track(1, [(t, 50.0, 50.0, 8.0) for t in range(3)])
    near = Track(2, [(t, 52.0, 50.0, 6.0) for t in range(3, 5)], parent=1)
    far = Track(3, [(t, 34.0, 50.0, 6.0) for t in range(3, 5)], parent=1)
    return Truth([mother, near, far])


def test_daughters_are_expected_beside_the_mother():
    # The far daughter is 16 px = 2.7 daughter radii from the mother's centre: as a plain successor
    # it costs (16 / 8)^2 = 4 in displacement alone, more than a birth plus the mother's saved
    # "no division" term, so without the daughter offset it is a new cell; expected one daughter
    # radius out, it costs (10 / 8)^2 = 1.6 and the division is found.
    det = make_detections(lopsided_division_truth())
    divided = {(2, 1, 2), (2, 1, 3)}
    assert divided <= chosen_pairs(link_frames(det, 0, 4), det)
    assert not divided <= chosen_pairs(link_frames(det, 0, 4, LinkParams(daughter_offset=0.0)), det)
    # A cell that does not divide gains nothing: it keeps its one successor.
    det["division_prob"] = 0.01
    pairs = chosen_pairs(link_frames(det, 0, 4), det)
    assert [p for p in pairs if p[0] == 2 and p[1] == 1] == [(2, 1, 2)]


def test_low_division_probability_prevents_division_in_the_assignment():
    det = make_detections(division_truth())
    det["division_prob"] = 0.01
    pairs = chosen_pairs(link_frames(det, 0, 8, LinkParams(complete_divisions=False)), det)
    assert len([p for p in pairs if p[0] == 4 and p[1] == 1]) == 1


def test_sisters_complete_a_division_the_head_missed():
    # Daughters 7 px either side of where the mother was: their midpoint is 1 px from it.
    det = make_detections(division_truth())
    det["division_prob"] = 0.01
    edges = link_frames(det, 0, 8)
    assert {(4, 1, 2), (4, 1, 3)} <= chosen_pairs(edges, det)
    added = edges[(edges["t"] == 4) & edges["second_successor"]]
    assert len(added) == 1 and added["cost"].item() < LinkParams().appear_cost


def test_newcomer_beside_a_cell_is_not_its_daughter():
    # A cell moving on, and a cell appearing 14 px to one side of it: not sisters, whose midpoint
    # would sit on the mother (here it is 7 px off, a cost of 4 x (7 / 8)^2 = 3.1 > a birth).
    walker = Track(1, [(t, 50.0, 50.0 + t, 8.0) for t in range(6)])
    newcomer = Track(2, [(t, 64.0, 53.0 + t, 8.0) for t in range(3, 6)])
    det = make_detections(Truth([walker, newcomer]))
    det["division_prob"] = 0.01
    pairs = chosen_pairs(link_frames(det, 0, 5), det)
    assert not any(s != d for _, s, d in pairs)
    assert link_frames(det, 0, 5)["second_successor"].sum() == 0


def test_far_apart_pair_is_not_completed_into_sisters():
    # Symmetric about the mother but each 17 px (2.1 mother radii) from it: not where daughters are.
    mother = Track(1, [(t, 50.0, 50.0, 8.0) for t in range(3)])
    left = Track(2, [(t, 50.0, 33.0, 8.0) for t in range(3, 5)], parent=1)
    right = Track(3, [(t, 50.0, 67.0, 8.0) for t in range(3, 5)])
    det = make_detections(Truth([mother, left, right]))
    det["division_prob"] = 0.01
    assert link_frames(det, 0, 4)["second_successor"].sum() == 0


def test_completed_division_marks_one_second_successor():
    # The likely mother's one successor sits in the second slot ("divided, a daughter lost"): the
    # other daughter, 16 px away, is a birth in the assignment. The completion (daughters expected
    # two radii out) adds it, and second_successor still marks one edge.
    mother = Track(1, [(0, 50.0, 50.0, 8.0)])
    d1 = Track(2, [(1, 50.0, 34.0, 8.0)], parent=1)
    d2 = Track(3, [(1, 50.0, 66.0, 8.0)], parent=1)
    det = make_detections(Truth([mother, d1, d2]))
    det["division_prob"] = np.where(det["label"] == 1, 0.99, np.where(det["label"] == 2, 0.5, 1e-6))
    alone = link_frames(det, 0, 1, LinkParams(daughter_offset=2.0, complete_divisions=False))
    assert alone["chosen"].sum() == 1 and alone["second_successor"].sum() == 1
    edges = link_frames(det, 0, 1, LinkParams(daughter_offset=2.0))
    assert edges["chosen"].sum() == 2 and edges["second_successor"].sum() == 1


def test_blocks_concatenate_to_whole():
    det = make_detections(division_truth())
    whole = link_frames(det, 0, 8)
    blocks = pd.concat([link_frames(det, 0, 3), link_frames(det, 3, 8)], ignore_index=True)
    pd.testing.assert_frame_equal(whole, blocks)


def test_pair_output_and_gating():
    det = make_detections(division_truth())
    frames = dict(tuple(det.groupby("t")))
    edges = link_pair(frames[0], frames[1], LinkParams())
    assert list(edges.columns) == ["t", "source", "target", "distance", "embedding_distance", "cost",
                                   "division_cost", "chosen", "second_successor"]
    # the bystander is 140 px away: never a candidate for the mother (search radius 3 * 8 px)
    assert set(zip(det.loc[edges["source"], "label"], det.loc[edges["target"], "label"])) == {(1, 1), (4, 4)}
    assert link_pair(frames[0], frames[1].iloc[:0], LinkParams()).empty


def test_anisotropy_scales_z():
    base = {"score": 1.0, "radius": 4.0, "division_prob": 0.05}
    det = pd.DataFrame([{"t": 0, "z": 10.0, "y": 20.0, "x": 20.0, **base},
                        {"t": 1, "z": 13.0, "y": 20.0, "x": 20.0, **base}])
    near = link_frames(det, 0, 1, LinkParams(voxel_size=(1.0, 1.0, 1.0), min_search_radius=5))
    far = link_frames(det, 0, 1, LinkParams(voxel_size=(5.0, 1.0, 1.0), min_search_radius=5))
    assert near["chosen"].all() and near["distance"].iloc[0] == pytest.approx(3.0)
    assert far.empty, "3 slices of 5 um are 15 px-equivalents, beyond the search radius"


def test_sparse_and_dense_solvers_agree():
    rng = np.random.default_rng(3)
    n_rows, n_cols = 60, 70
    pairs = {(int(r), int(c)) for r, c in zip(rng.integers(0, n_rows, 400), rng.integers(0, n_cols, 400))}
    rows, cols = map(np.array, zip(*sorted(pairs)))
    costs = rng.uniform(0, 3, len(rows))
    row_skip, col_skip = rng.uniform(0.5, 2, n_rows), rng.uniform(0.5, 2, n_cols)
    dense = solve_assignment(rows, cols, costs, row_skip, col_skip, dense_limit=10_000)
    sparse = solve_assignment(rows, cols, costs, row_skip, col_skip, dense_limit=0)

    def total(chosen: np.ndarray) -> float:
        return (costs[chosen].sum() + row_skip[np.setdiff1d(np.arange(n_rows), rows[chosen])].sum()
                + col_skip[np.setdiff1d(np.arange(n_cols), cols[chosen])].sum())

    assert total(dense) == pytest.approx(total(sparse))
    for chosen in (dense, sparse):
        assert len(set(rows[chosen])) == chosen.sum() and len(set(cols[chosen])) == chosen.sum()


def test_a_candidate_never_divides_and_gives_way_to_a_division():
    # Mother 1 divides into 2 and 3 at t=5, the head missing it (p 0.01): the sisters complete it.
    # A weak peak (label 5, a candidate) sits at t=4 right where daughter 3 appears.
    truth = division_truth()
    truth.tracks.append(Track(5, [(4, 57.0, 55.0, 6.0)]))
    det = make_detections(truth)
    det["division_prob"] = 0.01
    det["candidate"] = det["label"] == 5
    pairs = chosen_pairs(link_frames(det, 0, 8), det)
    assert {(4, 1, 2), (4, 1, 3)} <= pairs and (4, 5, 3) not in pairs
    # As a detection, the peak holds daughter 3 and the mother does not divide.
    as_detection = chosen_pairs(link_frames(det.assign(candidate=False), 0, 8), det)
    assert (4, 5, 3) in as_detection and (4, 1, 3) not in as_detection
    # A candidate daughter is not a division's second successor, even with a likely mother.
    det = make_detections(division_truth())
    det["candidate"] = (det["label"] == 3) & (det["t"] == 5)

    def mother_successors(cells: pd.DataFrame) -> set[int]:
        return {d for t, s, d in chosen_pairs(link_frames(cells, 0, 8), cells) if (t, s) == (4, 1)}

    assert len(mother_successors(det)) == 1
    assert mother_successors(det.assign(candidate=False)) == {2, 3}
    # Nor does completion make one a daughter: the mother's one successor is the candidate right
    # beside her (daughter 3 at t=5), and detected daughter 2 is left a birth.
    truth = division_truth()
    truth.tracks[2].points = [(t, 54.0, 55.0, 6.0) for t in range(5, 9)]
    det = make_detections(truth)
    det["division_prob"] = 0.01
    det["candidate"] = (det["label"] == 3) & (det["t"] == 5)
    assert mother_successors(det) == {3}
    assert mother_successors(det.assign(candidate=False)) == {2, 3}


def test_candidate_ids_follow_the_detections():
    det = make_detections(division_truth()).reset_index(drop=True)
    half = len(det) // 2
    cells = with_candidates(det.iloc[:half], det.iloc[half:])
    assert list(cells.index) == list(range(len(det))) and cells["x"].tolist() == det["x"].tolist()
    assert cells["candidate"].tolist() == [False] * half + [True] * (len(det) - half)
    assert with_candidates(det, det.iloc[:0])["candidate"].dtype == bool
