"""Reference transitions for pseudo-time: predicted and annotated switches, paths through divisions."""

from __future__ import annotations

import pandas as pd
from celltrails.analysis.transitions import (
    annotated_switch_onsets,
    choose_onsets,
    division_trajectories,
    predicted_switch_onsets,
)


def predictions(states_by_track: dict[int, str]) -> pd.DataFrame:
    rows = [(t, track, {"a": "off", "b": "on"}[c]) for track, seq in states_by_track.items() for t, c in enumerate(seq)]
    return pd.DataFrame(rows, columns=["t", "track_id", "predicted_state"])


def test_a_clean_switch_is_found_at_its_first_frame_and_flickers_are_ignored():
    table = predictions({
        1: "aaaaabbbbbb",    # switch at 5
        2: "aaaaaaaaaaa",    # never
        3: "aabaaabbbbb",    # a one-frame flicker at 2, switch at 6
        4: "abababababa",    # no consistent switch
        5: "aab",            # too short on the 'after' side
        6: "bbbbbbbbaaa",    # the opposite direction
    })
    onsets = predicted_switch_onsets(table, "state", "off", "on", min_frames=3)
    assert onsets == {1: 5, 3: 6}


def test_annotated_switches_need_both_classes_in_order():
    annotations = pd.DataFrame({"track_id": [1, 1, 1, 2, 2, 3], "t": [0, 4, 9, 3, 1, 5],
                                "state": ["off", "on", "on", "off", "on", "on"]})
    assert annotated_switch_onsets(annotations, "state", "off", "on") == {1: 4}
    chosen, source = choose_onsets({1: 4}, {7: 3, 8: 2}, min_tracks=2)
    assert chosen == {7: 3, 8: 2} and source == "predicted"
    assert choose_onsets({1: 4, 2: 5}, {7: 3}, min_tracks=2) == ({1: 4, 2: 5}, "annotated")


def test_division_paths_join_a_mother_and_one_daughter():
    rows = [(t, 1, -1) for t in range(5)] + [(t, k, 1) for k in (3, 2) for t in range(5, 9)]
    rows += [(t, 4, -1) for t in range(9)]
    table = pd.DataFrame(rows, columns=["t", "track_id", "parent_track_id"])
    paths, onsets = division_trajectories(table)
    assert list(onsets.values()) == [5] and set(paths.trajectory_id) == {0}
    path = paths[paths.trajectory_id == 0]
    assert path.t.tolist() == list(range(9)) and set(path.source_track_id) == {1, 2}  # the smaller daughter id
    empty, none = division_trajectories(table[table.track_id == 4])
    assert empty.empty and none == {}


def test_a_closed_gap_gives_no_division_path():
    rows = [(t, 1, -1) for t in range(5)] + [(t, 2, 1) for t in range(6, 10)]
    paths, onsets = division_trajectories(pd.DataFrame(rows, columns=["t", "track_id", "parent_track_id"]))
    assert paths.empty and onsets == {}
