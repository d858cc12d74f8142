"""A division into a daughter that vanishes after a frame is a false peak beside the cell: undone."""

from __future__ import annotations

import pandas as pd
import pytest
from celltrails.lineage import TRACK_COLUMNS, LineageParams, assemble_tracks
from celltrails.linking import LinkParams, link_frames
from celltrails.split_cells import detach_short_daughters
from detections_factory import Track, Truth, lineage_signature, make_detections
from test_split_cells import split_detections

LAST = 9  # the series' last frame


def tracks_of(spec: dict[int, tuple[int, int, int]]) -> pd.DataFrame:
    """Tracks from {track id: (first frame, last frame, parent track id)}; cell ids = 100 x id + t."""
    rows = [{"t": t, "cell_id": 100 * k + t, "track_id": k, "parent_track_id": parent, "z": 0.0,
             "y": 10.0 * k, "x": float(t), "radius": 5.0}
            for k, (first, last, parent) in spec.items() for t in range(first, last + 1)]
    return pd.DataFrame(rows)[TRACK_COLUMNS].sort_values(["track_id", "t"], ignore_index=True)


def lineage_by_cells(tracks: pd.DataFrame) -> set[tuple[tuple[int, ...], tuple[int, ...] | None]]:
    """Each track as (its cell ids, its parent's cell ids), whatever the numbering; one parent each."""
    assert (tracks.groupby("track_id")["parent_track_id"].nunique() == 1).all()
    return lineage_signature(tracks)


def cells(track: int, frames: range) -> tuple[int, ...]:
    return tuple(100 * track + t for t in frames)


def test_a_daughter_of_one_frame_is_detached_and_the_mother_goes_on_as_her_sister():
    # Mother 1 (0-3) "divides" into 2 (4-8, itself dividing into 4 and 5) and 3 (frame 4 only).
    tracks = tracks_of({1: (0, 3, -1), 2: (4, 8, 1), 3: (4, 4, 1), 4: (9, 9, 2), 5: (9, 9, 2)})
    result = detach_short_daughters(tracks, 2, LAST)
    one_cell = cells(1, range(4)) + cells(2, range(4, 9))
    assert lineage_by_cells(result) == {(one_cell, None), (cells(3, range(4, 5)), None),
                                        (cells(4, range(9, 10)), one_cell), (cells(5, range(9, 10)), one_cell)}
    assert sorted(result["track_id"].unique()) == [1, 2, 3, 4]  # renumbered by first frame
    assert result[["t", "cell_id", "z", "y", "x", "radius"]].sort_values("cell_id", ignore_index=True).equals(
        tracks[["t", "cell_id", "z", "y", "x", "radius"]].sort_values("cell_id", ignore_index=True))


@pytest.mark.parametrize("spec", [
    {1: (0, 3, -1), 2: (4, 9, 1), 3: (4, 5, 1)},                  # the daughter lives two frames
    {1: (0, 8, -1), 2: (9, 9, 1), 3: (9, 9, 1)},                  # the series ends after one
    {1: (0, 3, -1), 2: (4, 9, 1), 3: (4, 4, 1), 4: (5, 9, 3), 5: (5, 9, 3)},  # she divides
    {1: (0, 3, -1), 2: (4, 4, 1)},                                # an only child (a closed gap)
])
def test_divisions_that_stand(spec):
    tracks = tracks_of(spec)
    assert detach_short_daughters(tracks, 2, LAST).equals(tracks)


def test_a_longer_minimum_and_off():
    tracks = tracks_of({1: (0, 3, -1), 2: (4, 9, 1), 3: (4, 5, 1)})
    assert lineage_by_cells(detach_short_daughters(tracks, 3, LAST)) == {
        (cells(1, range(4)) + cells(2, range(4, 10)), None), (cells(3, range(4, 6)), None)}
    assert detach_short_daughters(tracks, 1, LAST).equals(tracks)


def test_a_grandmother_whose_daughter_lost_hers_too_is_one_track():
    # 1 -> (2, 3 short); 2 -> (4, 5 short): 1, 2 and 4 are one cell; 3 and 5 stand alone.
    tracks = tracks_of({1: (0, 2, -1), 2: (3, 5, 1), 3: (3, 3, 1), 4: (6, 9, 2), 5: (6, 6, 2)})
    result = detach_short_daughters(tracks, 2, LAST)
    assert lineage_by_cells(result) == {(cells(1, range(3)) + cells(2, range(3, 6)) + cells(4, range(6, 10)), None),
                                        (cells(3, range(3, 4)), None), (cells(5, range(6, 7)), None)}


def test_both_daughters_short_leave_the_mother_ending():
    tracks = tracks_of({1: (0, 3, -1), 2: (4, 4, 1), 3: (4, 4, 1)})
    assert lineage_by_cells(detach_short_daughters(tracks, 2, LAST)) == {
        (cells(1, range(4)), None), (cells(2, range(4, 5)), None), (cells(3, range(4, 5)), None)}


def test_daughters_reaching_the_last_frame_stand_whatever_the_minimum():
    tracks = tracks_of({1: (0, 7, -1), 2: (8, 9, 1), 3: (8, 9, 1)})
    assert detach_short_daughters(tracks, 3, LAST).equals(tracks)


def test_an_only_child_elsewhere_is_not_joined_to_its_mother():
    # 6 continues 5 after a gap (an only child, as with lineage.fill_gaps off); 3 is a short daughter.
    tracks = tracks_of({1: (0, 3, -1), 2: (4, 9, 1), 3: (4, 4, 1), 5: (0, 3, -1), 6: (5, 9, 5)})
    assert lineage_by_cells(detach_short_daughters(tracks, 2, LAST)) == {
        (cells(1, range(4)) + cells(2, range(4, 10)), None), (cells(3, range(4, 5)), None),
        (cells(5, range(4)), None), (cells(6, range(5, 10)), cells(5, range(4)))}


def test_a_daughter_whose_own_daughters_were_detached_is_detached_in_turn():
    # 2 lives one frame and divides into 4 and 5, one frame each: once they go, so does 2.
    tracks = tracks_of({1: (0, 3, -1), 2: (4, 4, 1), 3: (4, 9, 1), 4: (5, 5, 2), 5: (5, 5, 2)})
    assert lineage_by_cells(detach_short_daughters(tracks, 2, LAST)) == {
        (cells(1, range(4)) + cells(3, range(4, 10)), None), (cells(2, range(4, 5)), None),
        (cells(4, range(5, 6)), None), (cells(5, range(5, 6)), None)}


def test_a_detached_daughter_shorter_than_min_track_length_is_removed():
    tracks = tracks_of({1: (0, 3, -1), 2: (4, 9, 1), 3: (4, 4, 1)})
    assert lineage_by_cells(detach_short_daughters(tracks, 2, LAST, min_track_length=2)) == {
        (cells(1, range(4)) + cells(2, range(4, 10)), None)}


def test_a_mother_left_with_two_daughters_still_divides():
    tracks = tracks_of({1: (0, 3, -1), 2: (4, 9, 1), 3: (4, 4, 1), 4: (4, 9, 1)})
    assert lineage_by_cells(detach_short_daughters(tracks, 2, LAST)) == {
        (cells(1, range(4)), None), (cells(2, range(4, 10)), cells(1, range(4))),
        (cells(3, range(4, 5)), None), (cells(4, range(4, 10)), cells(1, range(4)))}


def test_lineage_params_refuse_no_frames():
    with pytest.raises(ValueError, match="min_daughter_frames"):
        LineageParams(min_daughter_frames=0)


def test_assemble_tracks_detaches_a_one_frame_daughter_by_default():
    mother = Track(1, [(t, 50.0, 50.0 + t, 8.0) for t in range(5)])
    stays = Track(2, [(t, 43.0 - (t - 5), 55.0 + (t - 5), 6.0) for t in range(5, 9)], parent=1)
    flicker = Track(3, [(5, 57.0, 55.0, 6.0)], parent=1)
    bystander = Track(4, [(t, 150.0, 150.0 - t, 9.0) for t in range(9)])
    det = make_detections(Truth([mother, stays, flicker, bystander]))
    link = LinkParams()
    edges = link_frames(det, 0, 8, link)
    rows = {label: tuple(sorted(det.index[det["label"] == label])) for label in (1, 2, 3, 4)}
    kept = assemble_tracks(det, edges, link, LineageParams(min_daughter_frames=1))
    assert lineage_signature(kept) == {(rows[1], None), (rows[2], rows[1]), (rows[3], rows[1]), (rows[4], None)}
    tracks = assemble_tracks(det, edges, link)
    assert lineage_signature(tracks) == {(tuple(sorted(rows[1] + rows[2])), None), (rows[3], None), (rows[4], None)}


def test_assemble_tracks_keeps_a_division_on_the_last_frame():
    mother = Track(1, [(t, 50.0, 50.0 + t, 8.0) for t in range(8)])
    first = Track(2, [(8, 43.0, 58.0, 6.0)], parent=1)
    second = Track(3, [(8, 57.0, 58.0, 6.0)], parent=1)
    det = make_detections(Truth([mother, first, second]))
    link = LinkParams()
    tracks = assemble_tracks(det, link_frames(det, 0, 8, link), link)
    rows = {label: tuple(sorted(det.index[det["label"] == label])) for label in (1, 2, 3)}
    assert lineage_signature(tracks) == {(rows[1], None), (rows[2], rows[1]), (rows[3], rows[1])}


def test_a_half_left_after_undoing_a_split_is_detached_too():
    # A cell seen as two halves joined by a ridge (frames 3-9), which part at frame 10; there one
    # half is a last false peak. The merge makes it a one-frame daughter, which the detach undoes.
    det = split_detections(0.8)
    det = det[det["t"] <= 9]
    tail = pd.DataFrame({"t": [10, 10, 11, 12], "y": 50.0, "x": [46.0, 66.0, 46.0, 46.0]}).assign(
        z=0.0, score=0.9, radius=8.0, division_prob=0.01, ridge=0.0, ridge_distance=float("nan"))
    tail[[f"emb_{k}" for k in range(4)]] = det[det["t"] == 9][[f"emb_{k}" for k in range(4)]].to_numpy()[[0, 1, 0, 0]]
    det = pd.concat([det, tail], ignore_index=True)
    link = LinkParams()
    edges = link_frames(det, 0, 12, link)
    tracks = assemble_tracks(det, edges, link)
    ghost = det.index[(det["t"] == 10) & (det["x"] == 66.0)][0]
    spans = tracks.groupby("track_id").agg(first=("t", "min"), last=("t", "max"), parent=("parent_track_id", "first"))
    assert sorted(map(tuple, spans.to_numpy().tolist())) == [(0, 12, -1), (10, 10, -1)]
    assert tracks.loc[tracks["cell_id"] == ghost, "t"].tolist() == [10]
