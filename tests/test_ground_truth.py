"""Ground truth, whatever its form, becomes one table that agrees with its source."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from celltrails.ctc import read_track_table, write_label_frame, write_track_table
from celltrails.errors import InputError
from celltrails.ground_truth import check_points_fit_image, equivalent_radius_px, load_ground_truth


def test_ctc_markers_become_points_that_agree_with_man_track(ctc_root):
    gt = ctc_root / "Fluo-N2DH-SIM+" / "01_GT"
    points = load_ground_truth(gt, (1.0, 1.0, 1.0), "sim01")
    tracks = read_track_table(gt / "TRA" / "man_track.txt")
    per_label = points.groupby("cell_id").agg(begin=("t", "min"), end=("t", "max"), n=("t", "size"),
                                               parent=("parent_id", "first"))
    assert (per_label.index.sort_values() == tracks.label.sort_values().values).all()
    assert (per_label.begin.values == tracks.set_index("label").loc[per_label.index, "begin"].values).all()
    assert (per_label.n == per_label.end - per_label.begin + 1).all()
    expected_parent = tracks.set_index("label").loc[per_label.index, "parent"].replace(0, -1)
    assert (per_label.parent.values == expected_parent.values).all()
    # A marker's centroid lies on its own label in the mask.
    frame = tifffile.imread(gt / "TRA" / "man_track010.tif")
    cells = points[points.t == 10]
    hits = frame[cells.y.round().astype(int), cells.x.round().astype(int)]
    assert (hits == cells.cell_id.values).mean() > 0.95


def test_3d_markers_use_anisotropic_equivalent_radius(tmp_path):
    tra = tmp_path / "01_GT" / "TRA"
    tra.mkdir(parents=True)
    zz, yy, xx = np.indices((6, 40, 40))
    # An ellipsoid that is a 10 µm-radius sphere in a 4 x 1 x 1 µm voxel grid.
    sphere = ((zz - 3) * 4.0) ** 2 + (yy - 20.0) ** 2 + (xx - 20.0) ** 2 <= 10.0 ** 2
    for t in range(2):
        write_label_frame(sphere.astype(np.uint16) * 5, tra, "man_track", t, 2)
    write_track_table(pd.DataFrame({"label": [5], "begin": [0], "end": [1], "parent": [0]}), tra / "man_track.txt")
    points = load_ground_truth(tmp_path / "01_GT", (4.0, 1.0, 1.0), "ds3d")
    assert points[["z", "y", "x"]].iloc[0].tolist() == pytest.approx([3.0, 20.0, 20.0])
    assert points.radius.iloc[0] == pytest.approx(10.0, rel=0.15)
    assert (points.parent_id == -1).all()


def test_equivalent_radius_of_a_disk():
    assert equivalent_radius_px(np.array([np.pi * 25]), (1.0, 0.5, 0.5), False)[0] == pytest.approx(5.0)


def test_points_table_zero_parent_means_none(tmp_path):
    path = tmp_path / "points.csv"
    pd.DataFrame({"t": [0, 1, 1], "y": [5.0, 6, 9], "x": [5.0, 6, 9], "cell_id": [1, 2, 3],
                  "parent_id": [0, 1, 1]}).to_csv(path, index=False)
    points = load_ground_truth(path, (1, 1, 1), "pts")
    assert points.parent_id.tolist() == [-1, 1, 1]
    assert (points.z == 0).all() and points.radius.isna().all()


def test_points_table_errors_name_dataset_and_file(tmp_path):
    path = tmp_path / "points.csv"
    pd.DataFrame({"t": [0], "y": [1.0], "x": [2.0]}).to_csv(path, index=False)
    with pytest.raises(InputError, match=r"dataset 'pts', file '.*points.csv'.*lacks columns \['cell_id', 'parent_id'\]"):
        load_ground_truth(path, (1, 1, 1), "pts")
    pd.DataFrame({"t": [0, 0], "y": [1.0, 2], "x": [2.0, 3], "cell_id": [4, 4], "parent_id": [0, 0]}).to_csv(path, index=False)
    with pytest.raises(InputError, match="appears twice in one frame"):
        load_ground_truth(path, (1, 1, 1), "pts")


def test_points_must_fit_the_image():
    points = pd.DataFrame({"t": [0, 3], "z": [0.0, 0.0], "y": [1.0, 50.0], "x": [1.0, 1.0]})
    with pytest.raises(InputError, match="frames 0..3 but the image has 3 frames"):
        check_points_fit_image(points, (3, 1, 1, 60, 60), "ds", "gt.csv")
    with pytest.raises(InputError, match="outside the image along y"):
        check_points_fit_image(points.assign(t=[0, 1]), (3, 1, 1, 40, 60), "ds", "gt.csv")
