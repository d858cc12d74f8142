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
            partner: float = np.nan, score: float = 0.9, filled: tuple[int, ...] = (), z: float = 0.0,
            radius: float = RADIUS) -> None:
        """Cells of ``track``; ``ridge`` and ``partner`` (the ridge's distance) for each."""
        for t in frames:
            cell = -1 - sum(r["cell_id"] < 0 for r in self.rows) if t in filled else len(self.ridge)
            if cell >= 0:
                self.ridge[cell], self.partner[cell], self.score[cell] = ridge, partner, score
            self.rows.append({"t": t, "cell_id": cell, "track_id": track, "parent_track_id": parent,
                              "z": z, "y": y, "x": x, "radius": radius})

    def set(self, track: int, **values: float) -> None:
        """Change ``ridge`` or ``partner`` of every detected cell of ``track``."""
        for row in self.rows:
            if row["track_id"] == track and row["cell_id"] >= 0:
                for name, value in values.items():
                    getattr(self, name)[row["cell_id"]] = value

    def split(self, frames: range, ridge: float, gap: float = 8.0, partner: float | None = None,
              mother_parent: int = -1, **options) -> None:
        """Mother 1 (from frame 0, or 2 with a parent) whose 'daughters' 2 and 3 sit ``gap`` px apart
        over ``frames``, each with a ridge to a peak ``partner`` px away (default: to the other)."""
        partner = gap if partner is None else partner
        self.add(1, mother_parent, range(0 if mother_parent < 0 else 2, frames.start), 50.0, 50.0)
        self.add(2, 1, frames, 50.0, 50.0 - gap / 2, ridge, partner, score=0.6, **options)
        self.add(3, 1, frames, 50.0, 50.0 + gap / 2, ridge, partner, score=0.7)

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        tracks = pd.DataFrame(self.rows)[TRACK_COLUMNS].sort_values(["track_id", "t"], ignore_index=True)
        detections = pd.DataFrame({"score": self.score, "ridge": self.ridge, "ridge_distance": self.partner})
        return tracks, detections


def merged(lineage: Lineage, persistence: int = 5, min_ridge: float = 0.2, voxel=VOXEL, slack: float = 1.25
           ) -> pd.DataFrame:
    tracks, detections = lineage.tables()
    return merge_split_cells(tracks, detections, voxel, persistence, min_ridge, slack)


def lineage_of(tracks: pd.DataFrame) -> dict[int, tuple[int, int, int]]:
    """track id -> (first frame, last frame, parent track id), checking each track has one parent."""
    assert (tracks.groupby("track_id")["parent_track_id"].nunique() == 1).all(), "one parent per track"
    spans = tracks.groupby("track_id").agg(first=("t", "min"), last=("t", "max"),
                                           parent=("parent_track_id", "first"))
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


def test_a_granddaughter_merged_in_the_same_round_follows_her_renamed_mother():
    """Two merges of one round: the tail of the first (track 2) continues track 1, and track 5, her
    daughter, is merged too; the cells merged into track 5 must name track 1's id as their parent,
    not track 2's, which no longer exists (Fluo-N2DH-GOWT1 02 ended the lineage job that way)."""
    cells = Lineage()
    cells.split(range(3, 9), ridge=0.8)
    cells.add(2, 1, range(9, 13), 50.0, 50.0)  # one half goes on alone ...
    cells.add(5, 2, range(13, 17), 50.0, 30.0)  # ... and divides for real
    cells.add(6, 2, range(13, 16), 50.0, 70.0)
    cells.add(7, 5, range(17, 23), 50.0, 26.0, ridge=0.8, partner=8.0)  # daughter 5 is split later
    cells.add(8, 5, range(17, 23), 50.0, 34.0, ridge=0.8, partner=8.0)
    assert lineage_of(merged(cells)) == {1: (0, 12, -1), 2: (13, 22, 1), 3: (13, 15, 1)}


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
    stronger = Lineage()  # the filled frame in the half with the higher scores
    stronger.add(1, -1, range(3), 50.0, 50.0)
    stronger.add(2, 1, range(3, 9), 50.0, 46.0, 0.8, 8.0, score=0.6)
    stronger.add(3, 1, range(3, 9), 50.0, 54.0, 0.8, 8.0, score=0.7, filled=(5,))
    assert (merged(stronger).loc[lambda t: t["t"] == 5, "cell_id"] >= 0).all()


def test_a_ridge_to_another_peak_does_not_join_the_sisters():
    cells = Lineage()
    cells.split(range(3, 9), ridge=0.8, partner=5.0)  # e.g. a weak peak the threshold dropped
    assert merged(cells).equals(cells.tables()[0])


@pytest.mark.parametrize("values", [{"ridge": 0.1}, {"partner": 5.0}])
def test_both_sisters_must_be_ridge_joined_to_each_other(values):
    cells = Lineage()
    cells.split(range(3, 9), ridge=0.8)
    cells.set(2, **values)
    assert merged(cells).equals(cells.tables()[0])


@pytest.mark.parametrize("x, who", [(40.0, "nearer to sister 2"), (61.0, "nearer to sister 3 only")])
def test_a_cell_nearer_than_the_sister_breaks_the_run(x, who):
    cells = Lineage()
    cells.split(range(3, 9), ridge=0.8, gap=8.0)  # sisters at x = 46 and 54
    cells.add(4, -1, range(9), 50.0, x)
    assert merged(cells).equals(cells.tables()[0]), who


def test_sisters_farther_apart_than_their_radii_are_two_cells_whatever_the_ridge():
    cells = Lineage()
    cells.split(range(3, 9), ridge=0.8, gap=20.0)  # radii 8 + 8 < 20
    assert merged(cells).equals(cells.tables()[0])


def test_a_missing_radius_never_joins_the_sisters():
    cells = Lineage()
    cells.add(1, -1, range(3), 50.0, 50.0)
    cells.add(2, 1, range(3, 9), 50.0, 30.0, 0.8, 40.0, radius=np.nan)
    cells.add(3, 1, range(3, 9), 50.0, 70.0, 0.8, 40.0, radius=np.nan)
    assert merged(cells).equals(cells.tables()[0])


def test_the_merged_cell_keeps_the_mothers_parent():
    cells = Lineage()
    cells.add(10, -1, range(2), 50.0, 50.0)  # grandmother divides into mother 1 and a far sibling
    cells.add(11, 10, range(2, 11), 50.0, 150.0)
    cells.split(range(5, 11), ridge=0.8, mother_parent=10)
    assert lineage_of(merged(cells)) == {1: (0, 1, -1), 2: (2, 10, 1), 3: (2, 10, 1)}
    cells.add(3, 1, range(11, 14), 50.0, 54.0)  # one half goes on alone: still the same cell
    assert lineage_of(merged(cells)) == {1: (0, 1, -1), 2: (2, 13, 1), 3: (2, 10, 1)}


def test_a_split_mother_is_merged_once_her_split_daughter_is():
    # Sister 2 ends the run by dividing into 5 and 6, which are themselves the two halves of one
    # nucleus: once they are merged, sister 2 no longer divides and her mother's split is undone.
    cells = Lineage()
    cells.split(range(3, 9), ridge=0.8)
    cells.add(5, 2, range(9, 15), 50.0, 46.0, ridge=0.8, partner=8.0)
    cells.add(6, 2, range(9, 15), 50.0, 54.0, ridge=0.8, partner=8.0)
    assert lineage_of(merged(cells)) == {1: (0, 14, -1)}


def slack_lineage(gaps: dict[int, float], frames: range = range(3, 9), weak: tuple[int, ...] = (),
                  filled: tuple[int, ...] = ()) -> Lineage:
    """Mother 1 (frames 0-2), 'daughters' 2 and 3 over ``frames``: 8 px apart and ridge-joined (a
    valley of 0.05 in ``weak`` frames; sister 2 filled into a gap in ``filled`` frames), or
    ``gaps[t]`` px apart with no ridge read (the radii sum to 16 px)."""
    cells = Lineage()
    cells.add(1, -1, range(frames.start), 50.0, 50.0)
    for t in frames:
        gap = gaps.get(t, 8.0)
        ridge, partner = (0.05 if t in weak else 0.8, 8.0) if t not in gaps else (0.0, np.nan)
        cells.add(2, 1, range(t, t + 1), 50.0, 50.0 - gap / 2, ridge, partner, score=0.6, filled=filled)
        cells.add(3, 1, range(t, t + 1), 50.0, 50.0 + gap / 2, ridge, partner)
    return cells


@pytest.mark.parametrize("first_gap, slack, one_cell", [(18.0, 1.25, True), (18.0, 1.0, False),
                                                        (19.9, 1.25, True), (20.0, 1.25, False), (16.0, 1.25, True)])
def test_a_first_frame_too_far_apart_for_a_ridge_continues_the_run_in_the_slack(first_gap, slack, one_cell):
    """Fluo-N2DH-GOWT1 02: the halves of a large nucleus, whose radii the detector gets short, sit
    farther apart than the sum of their radii (16 px here) in the first frame, so no ridge is read
    there, then are ridge-joined in 5 frames; closer than ``slack`` times the sum, that frame
    continues the run without counting (at exactly the sum, no ridge is read either)."""
    tracks = merged(slack_lineage({3: first_gap}, range(3, 9)), slack=slack)
    expected = {1: (0, 8, -1)} if one_cell else {1: (0, 2, -1), 2: (3, 8, 1), 3: (3, 8, 1)}
    assert lineage_of(tracks) == expected


DIVIDES_AT_8 = {1: (0, 7, -1), 2: (8, 10, 1), 3: (8, 10, 1)}


@pytest.mark.parametrize("gaps, persistence, options, expected", [
    ({5: 18.0, 8: 18.0}, 5, {}, {1: (0, 10, -1)}),  # single frames apart inside the run
    ({5: 18.0, 8: 18.0}, 7, {}, {1: (0, 2, -1), 2: (3, 10, 1), 3: (3, 10, 1)}),  # they do not count
    ({5: 18.0, 6: 18.0}, 5, {}, {1: (0, 2, -1), 2: (3, 10, 1), 3: (3, 10, 1)}),  # two in a row end it
    # a filled frame between two such frames shows no ridge either: the second one ends the run
    ({5: 18.0, 7: 18.0}, 5, {"filled": (6,)}, {1: (0, 2, -1), 2: (3, 10, 1), 3: (3, 10, 1)}),
    ({10: 18.0}, 5, {}, {1: (0, 9, -1), 2: (10, 10, 1), 3: (10, 10, 1)}),  # the series ends on one
    ({8: 18.0, 9: 24.0}, 5, {}, DIVIDES_AT_8),  # the halves part beyond the slack next
    ({8: 18.0}, 5, {"weak": (9, 10)}, DIVIDES_AT_8),  # a valley between them next
    ({8: 18.0}, 5, {"filled": (9,), "weak": (10,)}, DIVIDES_AT_8),  # a filled frame, then a valley
])
def test_a_frame_apart_continues_a_run_only_when_a_ridge_joins_the_halves_again(gaps, persistence, options,
                                                                                 expected):
    """The cell divides where its halves part: a frame beyond the sum of the radii counts only
    when a frame showing the ridge follows it before another such frame and before the run ends."""
    assert lineage_of(merged(slack_lineage(gaps, range(3, 11), **options), persistence)) == expected


def test_a_frame_apart_needs_the_sisters_to_be_each_others_nearest_cell():
    cells = slack_lineage({3: 18.0}, range(3, 9))
    cells.add(4, -1, range(3, 4), 50.0, 58.0)  # between the halves' 41 and 59 px, nearer to each
    cells.add(4, -1, range(4, 9), 50.0, 120.0)
    assert lineage_of(merged(cells))[2] == (3, 8, 1), "no run: the division stays"


def test_in_3d_distances_and_the_merged_radius_are_physical():
    # Voxels 2 x 1 x 1: halves 4 slices apart are 8 px apart, inside radii 8 + 8.
    cells = Lineage()
    cells.add(1, -1, range(3), 50.0, 50.0, z=10.0)
    cells.add(2, 1, range(3, 9), 50.0, 50.0, 0.8, 8.0, score=0.6, z=8.0)
    cells.add(3, 1, range(3, 9), 50.0, 50.0, 0.8, 8.0, score=0.7, z=12.0)
    tracks = merged(cells, voxel=(2.0, 1.0, 1.0))
    assert lineage_of(tracks) == {1: (0, 8, -1)}
    late = tracks[tracks["t"] >= 3]
    assert (late["z"] == 10.0).all() and (late["radius"] == RADIUS + 4.0).all()


@pytest.mark.parametrize("values", [{"split_persistence": -1}, {"split_ridge": 1.5}, {"split_ridge": -0.1},
                                    {"split_slack": 0.9}])
def test_lineage_params_refuse_a_negative_persistence_a_ridge_outside_0_1_and_a_slack_below_1(values):
    with pytest.raises(ValueError, match="split_persistence"):
        LineageParams(**values)
    assert LineageParams(split_slack=1.0).split_slack == 1.0, "1 switches the slack off"


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
    assert merge_split_cells(tracks, detections, VOXEL, 0, 0.2, 1.25).equals(tracks)
    for column in ("ridge", "ridge_distance"):
        assert merge_split_cells(tracks, detections.drop(columns=column), VOXEL, 5, 0.2, 1.25).equals(tracks)


def split_detections(ridge: float, first_gap: float = 8.0) -> pd.DataFrame:
    """A dividing-looking cell: one peak (frames 0-2), then two peaks 8 px apart (frames 3-9; in
    frame 3 ``first_gap`` apart, with no ridge read beyond the sum of the radii, 16 px)."""
    rows = ([(t, 50.0, 50.0) for t in range(3)] + [(3, 50.0, 50.0 + side * first_gap / 2) for side in (-1, 1)]
            + [(t, 50.0, x) for t in range(4, 10) for x in (46.0, 54.0)])
    det = pd.DataFrame(rows, columns=["t", "y", "x"]).assign(z=0.0, score=0.9, radius=RADIUS)
    det["division_prob"] = np.where(det["t"].isin([2, 3]), 0.9, 0.01)
    joined = (det["t"] >= 3) & ((det["t"] > 3) | (first_gap < 2 * RADIUS))
    det["ridge"] = np.where(joined, ridge, 0.0)
    det["ridge_distance"] = np.where(joined, np.where(det["t"] == 3, first_gap, 8.0), np.nan)
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


@pytest.mark.parametrize("slack, tracks_expected", [(None, 1), (1.0, 3)])
def test_lineage_passes_its_slack_to_the_merge(slack, tracks_expected):
    det = split_detections(0.8, first_gap=18.0)  # the first frame of the split beyond the radii's sum
    link = LinkParams()
    edges = link_frames(det, 0, 9, link)
    params = LineageParams() if slack is None else LineageParams(split_slack=slack)
    tracks = assemble_tracks(det, edges, link, params)
    assert tracks["track_id"].nunique() == tracks_expected
