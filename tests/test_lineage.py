"""Lineage assembly: divisions, gap closing, cells leaving, fragment removal, outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from celltrails.lineage import TRACK_COLUMNS, LineageParams, assemble_tracks, napari_tracks, write_tracks
from celltrails.linking import LinkParams, link_frames, with_candidates
from detections_factory import Track, Truth, lineage_signature, make_detections, truth_tracks
from test_linking import division_truth


def track(det: pd.DataFrame, lineage: LineageParams | None = None) -> pd.DataFrame:
    params = LinkParams()
    return assemble_tracks(det, link_frames(det, int(det.t.min()), int(det.t.max()), params), params, lineage)


def cells_of(det: pd.DataFrame, label: int, frames: range | None = None) -> tuple[int, ...]:
    rows = det[det["label"] == label]
    if frames is not None:
        rows = rows[rows["t"].isin(list(frames))]
    return tuple(sorted(rows.index))


def test_division_gives_daughters_new_tracks():
    truth = division_truth()
    det = make_detections(truth)
    tracks = track(det)
    assert list(tracks.columns) == TRACK_COLUMNS
    expected = truth_tracks(det, {t.label: t.parent for t in truth.tracks})
    assert lineage_signature(tracks) == lineage_signature(expected)
    mother = tracks.loc[tracks["cell_id"] == cells_of(det, 1)[0], "track_id"].item()
    daughters = tracks[tracks["cell_id"].isin(cells_of(det, 2) + cells_of(det, 3))]
    assert daughters["track_id"].nunique() == 2 and (daughters["parent_track_id"] == mother).all()
    assert sorted(tracks["track_id"].unique()) == [1, 2, 3, 4]


def gap_truth(missing: list[int]) -> Truth:
    """One cell drifting over 10 frames, not detected in ``missing``; a neighbour 30 px away."""
    cell = Track(1, [(t, 50.0 + 1.5 * t, 50.0, 8.0) for t in range(10) if t not in missing])
    neighbour = Track(2, [(t, 50.0 + 1.5 * t, 80.0, 8.0) for t in range(10)])
    return Truth([cell, neighbour])


def test_gap_is_filled_with_an_interpolated_cell():
    det = make_detections(gap_truth(missing=[5]))
    tracks = track(det)
    cell = tracks[tracks["track_id"] == tracks.loc[tracks["cell_id"] == cells_of(det, 1)[0], "track_id"].item()]
    assert list(cell["t"]) == list(range(10)) and (cell["parent_track_id"] == -1).all()
    filled = cell[cell["cell_id"] < 0]
    assert list(filled["cell_id"]) == [-1] and filled["t"].item() == 5
    before, after = det.loc[cells_of(det, 1, range(4, 5))[0]], det.loc[cells_of(det, 1, range(6, 7))[0]]
    for column in ("y", "x", "radius"):
        assert filled[column].item() == pytest.approx((before[column] + after[column]) / 2)
    assert tracks["track_id"].nunique() == 2 and sorted(tracks.loc[tracks["cell_id"] >= 0, "cell_id"]) == sorted(det.index)


def test_filling_takes_float_frames_and_a_missing_radius():
    det = make_detections(gap_truth(missing=[5]))
    det["t"] = det["t"].astype(float)
    det.loc[cells_of(det, 1, range(4, 5))[0], "radius"] = np.nan
    filled = track(det).query("cell_id < 0")
    assert filled["t"].tolist() == [5] and filled["radius"].item() == pytest.approx(8.0)


def test_gap_without_filling_starts_a_new_track():
    det = make_detections(gap_truth(missing=[5]))
    tracks = track(det, LineageParams(fill_gaps=False))
    before, after = cells_of(det, 1, range(5)), cells_of(det, 1, range(6, 10))
    assert lineage_signature(tracks) == {(before, None), (after, before), (cells_of(det, 2), None)}
    no_closing = track(det, LineageParams(max_gap=0))
    assert lineage_signature(no_closing) == {(before, None), (after, None), (cells_of(det, 2), None)}


def test_gap_longer_than_max_gap_stays_open():
    det = make_detections(gap_truth(missing=[4, 5, 6]))
    tracks = track(det, LineageParams(max_gap=2))
    assert (tracks["parent_track_id"] == -1).all() and tracks["track_id"].nunique() == 3
    assert (tracks["cell_id"] >= 0).all()
    closed = track(det, LineageParams(max_gap=3))
    assert closed["track_id"].nunique() == 2
    assert sorted(closed.loc[closed["cell_id"] < 0, "t"]) == [4, 5, 6]


def test_division_after_a_filled_gap_keeps_the_mother_whole():
    truth = division_truth()
    mother = truth.tracks[0]                                    # frames 0..4, divides into labels 2 and 3
    mother.points = [p for p in mother.points if p[0] != 2]     # not detected in frame 2
    det = make_detections(truth)
    tracks = track(det)
    mother_track = tracks.loc[tracks["cell_id"] == cells_of(det, mother.label)[0], "track_id"].item()
    assert tracks.loc[tracks["cell_id"] < 0, "track_id"].tolist() == [mother_track]
    daughters = tracks[tracks["parent_track_id"] == mother_track]
    assert daughters["track_id"].nunique() == 2


def test_cell_leaving_the_field_ends_its_track():
    leaving = Track(1, [(t, 60.0, 40.0 - 10 * t, 8.0) for t in range(4)])       # x = 40 .. 10, then gone
    neighbour = Track(2, [(t, 60.0, 70.0 - 2 * t, 8.0) for t in range(10)])      # 30 px away
    entering = Track(3, [(t, 400.0, 300.0, 8.0) for t in range(5, 10)])          # appears far away
    truth = Truth([leaving, neighbour, entering])
    det = make_detections(truth)
    tracks = track(det)
    assert lineage_signature(tracks) == {(cells_of(det, k), None) for k in (1, 2, 3)}


def test_short_isolated_fragments_are_removed_but_lineage_kept():
    truth = division_truth()
    truth.tracks.append(Track(9, [(4, 300.0, 300.0, 8.0)]))     # spurious: one frame mid-movie
    truth.tracks.append(Track(10, [(8, 300.0, 20.0, 8.0)]))     # enters on the last frame: kept
    det = make_detections(truth)
    tracks = track(det, LineageParams(min_track_length=3))
    kept = set(tracks["cell_id"])
    assert not set(cells_of(det, 9)) & kept
    assert set(cells_of(det, 10)) <= kept
    assert len(kept) == len(det) - 1
    everything = track(det, LineageParams(min_track_length=1))
    assert len(everything) == len(det)


def test_napari_tracks_and_parquet(tmp_path):
    det = make_detections(division_truth())
    tracks = track(det)
    data, graph = napari_tracks(tracks)
    assert data.shape == (len(tracks), 5)
    assert graph == {3: [1], 4: [1]}      # numbered by first frame, then first cell: mother 1, bystander 2
    np.testing.assert_array_equal(np.unique(data[:, 0]), [1, 2, 3, 4])
    write_tracks(tracks, tmp_path / "tracks.parquet")
    back = pd.read_parquet(tmp_path / "tracks.parquet")
    assert list(back.columns) == TRACK_COLUMNS
    pd.testing.assert_frame_equal(back, tracks)


def test_cell_ids_are_detection_rows():
    det = make_detections(division_truth())
    tracks = track(det)
    assert sorted(tracks["cell_id"]) == sorted(det.index)
    merged = tracks.merge(det[["t", "y", "x"]], left_on="cell_id", right_index=True, suffixes=("", "_det"))
    assert (merged["t"] == merged["t_det"]).all() and np.allclose(merged["y"], merged["y_det"])


def test_candidates_extend_a_track_and_alone_are_dropped():
    # A cell dims as it leaves the field: its last two frames are weak peaks (candidates). So is a
    # flicker of three weak peaks elsewhere, which no detection continues.
    leaving = Track(1, [(t, 60.0, 80.0 - 10 * t, 8.0) for t in range(7)])
    neighbour = Track(2, [(t, 200.0, 70.0 - 2 * t, 8.0) for t in range(10)])
    flicker = Track(3, [(t, 400.0, 300.0, 8.0) for t in range(4, 7)])
    det = make_detections(Truth([leaving, neighbour, flicker]))
    weak = ((det["label"] == 1) & (det["t"] >= 5)) | (det["label"] == 3)
    cells = with_candidates(det[~weak], det[weak])
    tracks = track(cells)
    labels = cells["label"].loc[tracks["cell_id"]]
    assert set(labels) == {1, 2}, "the flicker is dropped"
    assert (labels == 1).sum() == 7 and tracks.loc[(labels == 1).to_numpy(), "track_id"].nunique() == 1
    everything = track(cells.drop(columns="candidate"))
    assert set(cells["label"].loc[everything["cell_id"]]) == {1, 2, 3}


def test_candidates_in_a_gap_closed_chain_keep_its_lineage_without_filling():
    # One cell missed at t=4 and t=7, seen only as weak peaks at t=5-6: with fill_gaps off the chain
    # is three tracks, each the parent of the next, and the middle one (candidates alone) stays.
    det = make_detections(gap_truth(missing=[4, 7]))
    weak = (det["label"] == 1) & det["t"].isin([5, 6])
    cells = with_candidates(det[~weak], det[weak])
    tracks = track(cells, LineageParams(fill_gaps=False))
    mine = tracks[cells["label"].loc[tracks["cell_id"]].to_numpy() == 1]
    assert len(mine) == (det["label"] == 1).sum()
    heads = mine.drop_duplicates("track_id").sort_values("t")
    assert len(heads) == 3 and list(heads["parent_track_id"].iloc[1:]) == list(heads["track_id"].iloc[:2])
