"""A division whose daughters stay one nucleus (joined by a ridge of the centre map) is merged back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from celltrails.lineage import TRACK_COLUMNS, LineageParams, assemble_tracks
from celltrails.linking import LinkParams, link_frames
from celltrails.split_cells import merge_split_cells

VOXEL = (1.0, 1.0, 1.0)
RADIUS = 8.0


class Lineage:
    """Hand-made tracks (2D, z = 0) with one detection per real cell; cell ids in order of adding."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.ridge: dict[int, float] = {}
        self.partner: dict[int, float] = {}
        self.score: dict[int, float] = {}

    def add(self, track: int, parent: int, frames: range, y: float, x: float, ridge: float = 0.0,
            partner: float = np.nan, score: float = 0.9, filled: tuple[int, ...] = ()) -> None:
        """Cells of ``track``; ``ridge`` and ``partner`` (the ridge's distance) for each."""
        for t in frames:
            cell = -1 - sum(r["cell_id"] < 0 for r in self.rows) if t in filled else len(self.ridge)
            if cell >= 0:
                self.ridge[cell], self.partner[cell], self.score[cell] = ridge, partner, score
            self.rows.append({"t": t, "cell_id": cell, "track_id": track, "parent_track_id": parent,
                              "z": 0.0, "y": y, "x": x, "radius": RADIUS})

    def split(self, frames: range, ridge: float, gap: float = 8.0, partner: float | None = None,
              **options) -> None:
        """Mother 1 (frames 0-2) whose 'daughters' 2 and 3 sit ``gap`` px apart over ``frames``,
        each with a ridge to a peak ``partner`` px away (default: to the other)."""
        partner = gap if partner is None else partner
        self.add(1, -1, range(frames.start), 50.0, 50.0)
        self.add(2, 1, frames, 50.0, 50.0 - gap / 2, ridge, partner, score=0.6, **options)
        self.add(3, 1, frames, 50.0, 50.0 + gap / 2, ridge, partner, score=0.7)

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        tracks = pd.DataFrame(self.rows)[TRACK_COLUMNS].sort_values(["track_id", "t"], ignore_index=True)
        detections = pd.DataFrame({"score": self.score, "ridge": self.ridge, "ridge_distance": self.partner})
        return tracks, detections


def merged(lineage: Lineage, persistence: int = 5, min_ridge: float = 0.2) -> pd.DataFrame:
    tracks, detections = lineage.tables()
    return merge_split_cells(tracks, detections, VOXEL, persistence, min_ridge)


def lineage_of(tracks: pd.DataFrame) -> dict[int, tuple[int, int, int]]:
    """track id -> (first frame, last frame, parent track id)."""
    spans = tracks.groupby("track_id").agg(first=("t", "min"), last=("t", "max"), parent=("parent_track_id", "first"))
    return {int(k): (int(r["first"]), int(r["last"]), int(r["parent"])) for k, r in spans.iterrows()}


def test_sisters_joined_by_a_ridge_for_persistence_frames_are_one_cell():
    cells = Lineage()
    cells.split(range(3, 9), ridge=0.8)
    cells.add(4, -1, range(9), 50.0, 120.0)  # a neighbour far away
    tracks = merged(cells)
    assert lineage_of(tracks) == {1: (0, 8, -1), 2: (0, 8, -1)}, "one cell, renumbered in order of first frame"
    one = tracks[(tracks["track_id"] == 1) & (tracks["t"] >= 3)]
    assert one[["y", "x"]].to_numpy().tolist() == [[50.0, 50.0]] * 6, "the midpoint of the halves"
    assert (one["radius"] == RADIUS + 4.0).all(), "a radius reaching over both halves"
    stronger = tracks.loc[tracks["t"] >= 3, "cell_id"].isin(list(range(3 + 6, 3 + 12)))  # track 3's cells
    assert stronger[tracks.loc[tracks["t"] >= 3, "track_id"] == 1].all(), "the stronger half's cell id"
    assert list(tracks.columns) == TRACK_COLUMNS


@pytest.mark.parametrize("ridge, persistence", [(0.05, 5), (0.8, 7)])
def test_a_valley_or_a_short_run_keeps_the_division(ridge, persistence):
    cells = Lineage()
    cells.split(range(3, 9), ridge=ridge)
    tracks = merged(cells, persistence)
    assert tracks.equals(cells.tables()[0]), "true daughters separate or part within a few frames"


def test_halves_that_part_make_a_division_where_they_part():
    cells = Lineage()
    cells.split(range(3, 9), ridge=0.8)
    cells.add(2, 1, range(9, 12), 50.0, 38.0, ridge=0.8)  # 24 px apart: farther than their radii
    cells.add(3, 1, range(9, 12), 50.0, 62.0, ridge=0.8)
    assert lineage_of(merged(cells)) == {1: (0, 8, -1), 2: (9, 11, 1), 3: (9, 11, 1)}


def test_one_tail_continues_the_mother_and_its_daughters_follow():
    cells = Lineage()
    cells.split(range(3, 9), ridge=0.8)
    cells.add(2, 1, range(9, 13), 50.0, 50.0)  # one half goes on alone ...
    cells.add(5, 2, range(13, 16), 50.0, 30.0)  # ... and divides for real
    cells.add(6, 2, range(13, 16), 50.0, 70.0)
    assert lineage_of(merged(cells)) == {1: (0, 12, -1), 2: (13, 15, 1), 3: (13, 15, 1)}


def test_a_half_that_goes_on_alone_and_splits_again_is_merged_again():
    cells = Lineage()
    cells.split(range(3, 9), ridge=0.8)
    cells.add(2, 1, range(9, 12), 50.0, 50.0)
    cells.add(5, 2, range(12, 18), 50.0, 46.0, ridge=0.8, partner=8.0)
    cells.add(6, 2, range(12, 18), 50.0, 54.0, ridge=0.8, partner=8.0)
    assert lineage_of(merged(cells)) == {1: (0, 17, -1)}


def test_a_frame_filled_into_a_gap_continues_the_run_without_counting():
    cells = Lineage()
    cells.split(range(3, 9), ridge=0.8, filled=(5,))
    assert lineage_of(merged(cells, persistence=6)) == {1: (0, 2, -1), 2: (3, 8, 1), 3: (3, 8, 1)}
    tracks = merged(cells, persistence=5)
    assert lineage_of(tracks) == {1: (0, 8, -1)}
    assert (tracks.loc[tracks["t"] == 5, "cell_id"] >= 0).all(), "the detected half stands for the frame"


def test_a_ridge_to_another_peak_does_not_join_the_sisters():
    cells = Lineage()
    cells.split(range(3, 9), ridge=0.8, partner=5.0)  # e.g. a weak peak the threshold dropped
    assert merged(cells).equals(cells.tables()[0])


def test_a_cell_nearer_than_the_sister_breaks_the_run():
    cells = Lineage()
    cells.split(range(3, 9), ridge=0.8, gap=12.0)
    cells.add(4, -1, range(9), 50.0, 38.0)  # 6 px from daughter 2, her sister is 12 px away
    assert merged(cells).equals(cells.tables()[0])


def test_a_sister_dividing_within_the_run_is_left_alone():
    cells = Lineage()
    cells.split(range(3, 9), ridge=0.8)
    cells.add(3, 1, range(9, 12), 50.0, 54.0, ridge=0.8)  # sister 3 outlives the run's end ...
    cells.add(5, 2, range(9, 12), 50.0, 20.0)  # ... while sister 2 divides at its last frame
    cells.add(6, 2, range(9, 12), 50.0, 80.0)
    tracks = merged(cells)
    assert tracks.equals(cells.tables()[0])


def test_off_or_without_ridges_nothing_changes():
    cells = Lineage()
    cells.split(range(3, 9), ridge=0.8)
    tracks, detections = cells.tables()
    assert merge_split_cells(tracks, detections, VOXEL, 0, 0.2).equals(tracks)
    for column in ("ridge", "ridge_distance"):
        assert merge_split_cells(tracks, detections.drop(columns=column), VOXEL, 5, 0.2).equals(tracks)


def split_detections(ridge: float) -> pd.DataFrame:
    """A dividing-looking cell: one peak (frames 0-2), then two peaks 8 px apart (frames 3-9)."""
    rows = [(t, 50.0, 50.0) for t in range(3)] + [(t, 50.0, x) for t in range(3, 10) for x in (46.0, 54.0)]
    det = pd.DataFrame(rows, columns=["t", "y", "x"]).assign(z=0.0, score=0.9, radius=RADIUS)
    det["division_prob"] = np.where(det["t"].isin([2, 3]), 0.9, 0.01)
    det["ridge"] = np.where(det["t"] >= 3, ridge, 0.0)
    det["ridge_distance"] = np.where(det["t"] >= 3, 8.0, np.nan)
    rng = np.random.default_rng(0)
    det[[f"emb_{k}" for k in range(4)]] = rng.normal(size=(len(det), 4))
    return det


@pytest.mark.parametrize("ridge, persistence, tracks_expected", [(0.8, 5, 1), (0.8, 0, 3), (0.0, 5, 3)])
def test_lineage_merges_split_cells_by_default(ridge, persistence, tracks_expected):
    det = split_detections(ridge)
    link = LinkParams()
    edges = link_frames(det, 0, 9, link)
    unmerged = assemble_tracks(det, edges, link, LineageParams(split_persistence=0))
    assert unmerged["parent_track_id"].max() > 0, "the linker sees a division"
    tracks = assemble_tracks(det, edges, link, LineageParams(split_persistence=persistence))
    assert tracks["track_id"].nunique() == tracks_expected
