"""Mitosis / interphase labels derived from a lineage."""

from __future__ import annotations

import pandas as pd
import pytest
from celltrails.lineage_labels import INTERPHASE, MITOSIS, dividing_tracks, division_labels


def lineage() -> pd.DataFrame:
    """Track 1 (t 0-9) divides into 2 and 3 (t 10-19); track 4 (t 0-19) never divides."""
    rows = [(t, 1, -1) for t in range(10)] + [(t, k, 1) for k in (2, 3) for t in range(10, 20)]
    rows += [(t, 4, -1) for t in range(20)]
    return pd.DataFrame(rows, columns=["t", "track_id", "parent_track_id"])


def test_labels_follow_the_distance_to_a_division():
    tracks = lineage()
    labels = division_labels(tracks, before=2, after=1, margin=3)
    by = dict(zip(zip(tracks.track_id, tracks.t), labels))
    assert [by[(1, t)] for t in (8, 9)] == [MITOSIS, MITOSIS]  # the last two frames before division
    assert pd.isna(by[(1, 7)]) and by[(1, 6)] == INTERPHASE  # 2 frames before: ambiguous; 3: interphase
    assert by[(2, 10)] == MITOSIS and by[(3, 10)] == MITOSIS  # daughters' first frame
    assert pd.isna(by[(2, 11)]) and pd.isna(by[(2, 12)]) and by[(2, 13)] == INTERPHASE
    assert all(by[(4, t)] == INTERPHASE for t in range(20))  # never divides
    assert by[(1, 0)] == INTERPHASE


def test_after_zero_labels_only_the_mother():
    tracks = lineage()
    labels = division_labels(tracks, before=2, after=0, margin=3)
    assert labels[tracks.track_id.isin([2, 3]) & (tracks.t == 10)].isna().all()
    assert (labels == MITOSIS).sum() == 2


def test_margin_must_cover_the_mitotic_frames():
    with pytest.raises(ValueError, match="margin"):
        division_labels(lineage(), before=3, margin=2)


def test_a_closed_gap_is_not_a_division():
    """The linker continues a cell after a gap as a new track whose only child-link is the old one."""
    rows = [(t, 1, -1) for t in range(10)] + [(t, 2, 1) for t in range(11, 21)]
    tracks = pd.DataFrame(rows, columns=["t", "track_id", "parent_track_id"])
    labels = division_labels(tracks)
    assert (labels == INTERPHASE).all()
    assert list(dividing_tracks(tracks)) == []
    assert list(dividing_tracks(lineage())) == [1]
