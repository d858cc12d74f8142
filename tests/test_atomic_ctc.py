"""Atomic outputs and CTC track-table handling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from celltrails.atomic import atomic_path
from celltrails.ctc import (
    check_track_consistency,
    labels_per_frame,
    mask_name,
    read_track_table,
    write_label_frame,
    write_track_table,
)
from celltrails.errors import InputError


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "store.ome.zarr"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.mkdir()
            (tmp / "chunk").write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_suffix_and_replaces_old_result(tmp_path):
    final = tmp_path / "table.parquet"
    final.write_text("old")
    with atomic_path(final) as tmp:
        assert tmp.name.endswith(".parquet") and tmp.parent == tmp_path and tmp != final
        assert final.read_text() == "old"  # the old result stays until the new one is complete
        tmp.write_text("new")
    assert final.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_track_table_round_trip_and_consistency(tmp_path):
    tracks = pd.DataFrame({"label": [1, 2, 3], "begin": [0, 2, 2], "end": [1, 3, 2], "parent": [0, 1, 1]})
    write_track_table(tracks, tmp_path / "res_track.txt")
    assert read_track_table(tmp_path / "res_track.txt").equals(tracks)
    frames = [np.zeros((8, 8), np.uint16) for _ in range(4)]
    frames[0][1, 1] = frames[1][1, 1] = 1
    frames[2][2, 2] = frames[3][2, 2] = 2
    frames[2][5, 5] = 3
    for t, frame in enumerate(frames):
        write_label_frame(frame, tmp_path, "mask", t, 4)
    assert check_track_consistency(tracks, labels_per_frame(tmp_path, "mask")) == []
    frames[3][5, 5] = 3  # label 3 now also in frame 3, beyond its end
    write_label_frame(frames[3], tmp_path, "mask", 3, 4)
    problems = check_track_consistency(tracks, labels_per_frame(tmp_path, "mask"))
    assert len(problems) == 1 and "label 3" in problems[0]


def test_bad_track_table_is_named(tmp_path):
    (tmp_path / "man_track.txt").write_text("1 0 5 0\n2 7 3 1\n")
    with pytest.raises(InputError, match="man_track.txt.*invalid track lines"):
        read_track_table(tmp_path / "man_track.txt", dataset="ds")


def test_mask_names_grow_with_long_series():
    assert mask_name("mask", 7, 100) == "mask007.tif"
    assert mask_name("mask", 7, 1500) == "mask0007.tif"
