"""CTC export validity and traccuracy scoring (hand-made truth; SIM+ when the CTC data is there)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from celltrails.ctc import (
    check_track_consistency,
    labels_per_frame,
    read_track_table,
    write_label_frame,
    write_track_table,
)
from celltrails.ctc_export import add_local_foreground, cell_levels, render_frame, write_ctc
from celltrails.evaluate import evaluate_ctc, evaluate_points, segmentation_score, track_edges
from celltrails.foreground import intensity_foreground, series_foreground
from celltrails.lineage import LineageParams, assemble_tracks
from celltrails.linking import LinkParams, link_frames
from celltrails.ome_zarr_io import create_image_store
from celltrails.serialize import write_metrics
from ctc_metrics import validate_sequence
from detections_factory import (
    CTC_ROOT,
    Track,
    Truth,
    ctc_detections,
    make_detections,
    truth_tracks,
    write_clipped_gt,
    write_gt_folder,
)
from scipy import ndimage
from test_linking import division_truth

SHAPE = (1, 200, 200)
N_FRAMES = 10


def family_truth() -> Truth:
    """A division, a gap-closed cell (track 6 continues track 5 after a missing frame), a bystander."""
    truth = division_truth()
    truth.tracks.append(Track(5, [(t, 120.0, 40.0 + t, 7.0) for t in range(4)]))
    truth.tracks.append(Track(6, [(t, 120.0, 40.0 + t, 7.0) for t in range(5, 10)], parent=5))
    return truth


def family() -> tuple[pd.DataFrame, pd.DataFrame]:
    truth = family_truth()
    det = make_detections(truth)
    return det, truth_tracks(det, {t.label: t.parent for t in truth.tracks})


def points_of(tracks: pd.DataFrame) -> pd.DataFrame:
    """Ground-truth points table (t, z, y, x, cell_id, parent_id) of a tracks table."""
    parent = {c: p for p, c in track_edges(tracks)}
    return tracks.assign(parent_id=tracks["cell_id"].map(lambda c: parent.get(c, -1)))[
        ["t", "z", "y", "x", "cell_id", "parent_id"]]


def assert_valid_ctc(folder) -> None:
    assert validate_sequence(str(folder), threads=1) == {"Valid": 1}
    assert check_track_consistency(read_track_table(folder / "res_track.txt"),
                                   labels_per_frame(folder, prefix="mask")) == []


def test_linked_result_is_valid_ctc(tmp_path):
    det, _ = family()
    params = LinkParams()
    tracks = assemble_tracks(det, link_frames(det, 0, N_FRAMES - 1, params), params)
    labels = write_ctc(tracks, tmp_path / "RES", SHAPE, N_FRAMES)
    assert labels == {k: k for k in tracks["track_id"].unique()}
    assert sorted(p.name for p in (tmp_path / "RES").iterdir())[:2] == ["mask000.tif", "mask001.tif"]
    assert_valid_ctc(tmp_path / "RES")


def test_anisotropic_3d_result_is_valid_and_matches_truth(tmp_path):
    det, truth = family()
    z = 4.0 + 0.2 * det["t"] + (det["label"] % 3)      # slices of 3 um; cells at different depths
    det, truth = det.assign(z=z), truth.assign(z=truth["cell_id"].map(z))
    params = LinkParams(voxel_size=(3.0, 1.0, 1.0))
    # The truth keeps its gap (track 6 continues 5 after a missing frame), so the gap is not filled.
    tracks = assemble_tracks(det, link_frames(det, 0, N_FRAMES - 1, params), params, LineageParams(fill_gaps=False))
    write_ctc(tracks, tmp_path / "RES", (12, 200, 200), N_FRAMES, voxel_size=(3.0, 1.0, 1.0))
    assert_valid_ctc(tmp_path / "RES")
    scores = evaluate_points(points_of(truth), tracks, threshold=3.0, scale=(3.0, 1.0, 1.0))
    assert scores["TRA"] == scores["division_f1"] == 1.0


def test_filled_gap_recovers_the_missed_cell(tmp_path):
    """The detector misses a cell for one frame; filling the closed gap scores it as found, a
    parent link across the gap scores a false link and a missed cell."""
    whole = Truth([Track(1, [(t, 60.0, 40.0 + 2 * t, 8.0) for t in range(N_FRAMES)]),
                   Track(2, [(t, 140.0, 150.0 - t, 8.0) for t in range(N_FRAMES)])])
    gt = write_gt_folder(truth_tracks(make_detections(whole), {1: 0, 2: 0}), tmp_path / "GT" / "TRA",
                         SHAPE, N_FRAMES)
    whole.tracks[0].points = [p for p in whole.tracks[0].points if p[0] != 4]
    det = make_detections(whole)
    params = LinkParams()
    edges = link_frames(det, 0, N_FRAMES - 1, params)
    scores = {}
    for fill in (True, False):
        tracks = assemble_tracks(det, edges, params, LineageParams(fill_gaps=fill))
        write_ctc(tracks, tmp_path / f"fill-{fill}", SHAPE, N_FRAMES)
        assert_valid_ctc(tmp_path / f"fill-{fill}")
        scores[fill] = evaluate_ctc(gt, tmp_path / f"fill-{fill}")
    assert scores[True]["TRA"] == 1.0 and scores[True]["fn_nodes"] == 0
    assert scores[False]["fn_nodes"] == 1 and scores[False]["fp_edges"] == 1
    assert scores[False]["TRA"] < scores[True]["TRA"]


def test_overlapping_and_coinciding_cells_keep_their_labels():
    cells = pd.DataFrame({"track_id": [1, 2, 3, 4], "z": 0.0, "y": [20.0, 22.0, 40.0, 40.2],
                          "x": [20.0, 21.0, 40.0, 40.1], "radius": [10.0, 2.0, 5.0, 0.1]})
    image = render_frame(cells, {k: k for k in range(1, 5)}, (1, 64, 64))
    assert set(np.unique(image)) == {0, 1, 2, 3, 4}
    assert image[0, 22, 21] == 2 and image[0, 20, 20] == 1
    assert (image == 1).sum() > (image == 2).sum() > 0


def test_ellipsoids_follow_anisotropy():
    cells = pd.DataFrame({"track_id": [1], "z": [5.0], "y": [16.0], "x": [16.0], "radius": [4.0]})
    image = render_frame(cells, {1: 1}, (11, 32, 32), voxel_size=(2.0, 1.0, 1.0))
    z_extent = np.flatnonzero((image == 1).any(axis=(1, 2)))
    assert z_extent.tolist() == [3, 4, 5, 6, 7]         # 4 px / (2 um per slice) = 2 slices each way
    assert (image[5] == 1).sum() == 49                   # lattice points with x^2 + y^2 <= 16


def nuclei_frame(shape: tuple[int, int], nuclei: list[tuple[float, float, float, float]]) -> np.ndarray:
    """(1, y, x) image: uniform ellipses (cy, cx, semi-axis y, semi-axis x) at 1000 on 100, noise-free."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    image = np.full(shape, 100.0)
    for cy, cx, ay, ax in nuclei:
        image[((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1] = 1000.0
    return image[None]


def test_masks_grown_into_the_foreground_cover_an_elongated_nucleus(tmp_path):
    # A 30 x 10 px ellipse detected with radius 10: the disk covers a third of the marker, which
    # CTC counts as a missed cell; grown up to 1.5 radii it covers more than half.
    frame = nuclei_frame((80, 120), [(40.0, 60.0, 10.0, 30.0)])
    marker = (frame[0] == 1000).astype(np.uint16)
    gt = tmp_path / "GT"
    gt.mkdir()
    for t in range(3):
        write_label_frame(marker, gt, "man_track", t, 3)
    write_track_table(pd.DataFrame({"label": [1], "begin": [0], "end": [2], "parent": [0]}), gt / "man_track.txt")
    tracks = pd.DataFrame({"t": [0, 1, 2], "cell_id": [0, 1, 2], "track_id": 1, "parent_track_id": -1,
                           "z": 0.0, "y": 40.0, "x": 60.0, "radius": 10.0})
    foreground = intensity_foreground(frame, sigma=1.0)
    write_ctc(tracks, tmp_path / "disk", (1, 80, 120), 3)
    write_ctc(tracks, tmp_path / "grown", (1, 80, 120), 3, foreground=lambda t: foreground, reach=1.5)
    assert_valid_ctc(tmp_path / "grown")
    assert evaluate_ctc(gt, tmp_path / "disk")["fn_nodes"] == 3
    assert evaluate_ctc(gt, tmp_path / "grown")["TRA"] == 1.0
    grown = render_frame(tracks.iloc[:1], {1: 1}, (1, 80, 120), foreground=foreground, reach=1.5)[0]
    yy, xx = np.nonzero(grown == 1)
    assert np.hypot(yy - 40, xx - 60).max() <= 15.0          # never beyond reach * radius
    assert (grown == 1).sum() > 0.5 * marker.sum() > (render_frame(tracks.iloc[:1], {1: 1}, (1, 80, 120)) == 1).sum()


def test_grown_masks_split_touching_nuclei_and_never_shrink_a_disk():
    # Two nuclei touching at x = 40 (a dimmer seam after smoothing); the left one is detected
    # small. A third cell sits in the background: its disk stays as it is.
    frame = nuclei_frame((60, 100), [(30.0, 25.0, 12.0, 15.0), (30.0, 53.0, 12.0, 13.0)])
    cells = pd.DataFrame({"track_id": [1, 2, 3], "z": 0.0, "y": [30.0, 30.0, 8.0], "x": [25.0, 53.0, 90.0],
                          "radius": [6.0, 12.0, 4.0]})
    disk = render_frame(cells, {k: k for k in (1, 2, 3)}, (1, 60, 100))
    grown = render_frame(cells, {k: k for k in (1, 2, 3)}, (1, 60, 100),
                         foreground=intensity_foreground(frame, sigma=2.0), reach=3.0)
    assert np.array_equal(grown[disk > 0], disk[disk > 0])   # disks never shrink or change hands
    assert np.array_equal(grown == 3, disk == 3)              # a cell outside the foreground keeps its disk
    left = frame[0] == 1000
    left[:, 40:] = False
    assert (grown[0][left] == 1).mean() > 0.9 and not (grown[0][left] == 2).any()
    assert (grown == 1).sum() > 2 * (disk == 1).sum()


def test_a_nucleus_with_a_dark_centre_still_grows_and_keeps_its_neighbour_out():
    # Nucleus A has a dark nucleolus under its centre voxel: its whole disk seeds the watershed.
    frame = nuclei_frame((60, 100), [(30.0, 30.0, 14.0, 14.0), (30.0, 58.0, 14.0, 14.0)])
    frame[0, 27:34, 27:34] = 100.0
    cells = pd.DataFrame({"track_id": [1, 2], "z": 0.0, "y": 30.0, "x": [30.0, 58.0], "radius": [8.0, 14.0]})
    disk = render_frame(cells, {1: 1, 2: 2}, (1, 60, 100))
    grown = render_frame(cells, {1: 1, 2: 2}, (1, 60, 100), foreground=intensity_foreground(frame, sigma=1.0),
                         reach=2.0)
    nucleus_a = np.hypot(*np.mgrid[:60, :100] - np.array([30.0, 30.0])[:, None, None]) <= 14
    assert (grown[0][nucleus_a] == 1).sum() > 1.5 * (disk[0][nucleus_a] == 1).sum()
    assert not (grown[0][nucleus_a & (np.arange(100) < 44)] == 2).any()


def test_a_dim_nucleus_below_otsu_grows_into_its_own_local_foreground(tmp_path):
    # Two bright nuclei set Otsu's threshold; the dim one (250 on 100) is an elongated 30 x 12 px
    # ellipse detected with radius 8: its disk covers a fifth of its marker, Otsu alone adds nothing.
    frame = nuclei_frame((80, 160), [(20.0, 30.0, 12.0, 12.0), (60.0, 30.0, 12.0, 12.0)])
    dim = ((np.mgrid[:80, :160][0] - 40) / 12.0) ** 2 + ((np.mgrid[:80, :160][1] - 110) / 30.0) ** 2 <= 1
    frame[0][dim] = 250.0
    foreground = intensity_foreground(frame, sigma=1.0)
    assert not foreground.mask[0][dim].any()
    cells = pd.DataFrame({"track_id": [1, 2, 3], "z": 0.0, "y": [20.0, 60.0, 40.0], "x": [30.0, 30.0, 110.0],
                          "radius": [12.0, 12.0, 8.0]})
    labels = {k: k for k in (1, 2, 3)}
    otsu = render_frame(cells, labels, (1, 80, 160), foreground=foreground, reach=2.0)
    local = render_frame(cells, labels, (1, 80, 160), foreground=foreground, reach=2.0, local_level=0.2)
    assert (otsu[0][dim] == 3).mean() < 0.25 and (local[0][dim] == 3).mean() > 0.5
    for bright in (1, 2):  # a bright nucleus gains at most its blurred rim (level 0.2 sits below Otsu)
        assert np.all(local[otsu == bright] == bright)
        assert (local == bright).sum() < 1.15 * (otsu == bright).sum() and not (local[0][dim] == bright).any()
    yy, xx = np.nonzero(local[0] == 3)
    assert np.hypot(yy - 40, xx - 110).max() <= 16.0 and (frame[0][yy, xx] == 250).mean() > 0.9  # its rim
    assert np.array_equal(render_frame(cells, labels, (1, 80, 160), foreground=foreground, reach=2.0,
                                       local_level=None), otsu)
    with pytest.raises(ValueError, match="local_level"):
        render_frame(cells, labels, (1, 80, 160), foreground=foreground, local_level=1.5)
    # Through the writer, scored as CTC would: the dim cell is missed with Otsu only, found with the level.
    gt = tmp_path / "GT"
    gt.mkdir()
    markers = np.zeros((80, 160), np.uint16)
    for label, (cy, cx) in enumerate([(20, 30), (60, 30)], start=1):
        markers[np.hypot(*(np.mgrid[:80, :160] - np.array([cy, cx])[:, None, None])) <= 12] = label
    markers[dim] = 3
    for t in range(2):
        write_label_frame(markers, gt, "man_track", t, 2)
    write_track_table(pd.DataFrame({"label": [1, 2, 3], "begin": 0, "end": 1, "parent": 0}),
                      gt / "man_track.txt")
    tracks = pd.concat([cells.assign(t=t, cell_id=np.arange(3) + 3 * t, parent_track_id=-1)
                        for t in range(2)])
    for level in (None, 0.2):
        write_ctc(tracks, tmp_path / f"res-{level}", (1, 80, 160), 2, foreground=lambda t: foreground,
                  reach=2.0, local_level=level)
    assert evaluate_ctc(gt, tmp_path / "res-None")["fn_nodes"] == 2
    assert evaluate_ctc(gt, tmp_path / "res-0.2")["TRA"] == 1.0


def test_local_foreground_is_the_level_contour_within_reach_and_ignores_noise():
    # A dome-shaped dim nucleus (no plateau: the level decides the contour) in 2D and, with z steps of
    # 3 px, in 3D; a detection in plain noise beside it adds nothing.
    rng = np.random.default_rng(0)
    for shape, voxel in (((1, 60, 60), (1.0, 1.0, 1.0)), ((21, 60, 60), (3.0, 1.0, 1.0))):
        zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
        z0 = shape[0] // 2
        dome = np.exp(-((3 * (zz - z0)) ** 2 + (yy - 30) ** 2 + (xx - 20) ** 2) / (2 * 6.0 ** 2))
        frame = 100 + 150 * dome + rng.normal(0, 5, shape)
        frame[:, 5:15, 45:55] = 2000.0          # a bright nucleus sets Otsu's threshold above the dome
        foreground = intensity_foreground(frame, sigma=1.0, voxel_size=voxel)
        cells = np.array([[z0, 30.0, 20.0], [z0, 45.0, 45.0]])  # the dome, and a detection in noise
        radius = np.array([4.0, 4.0])
        grown = {level: add_local_foreground(foreground, cells, radius, voxel, 2.0,
                                             cell_levels(foreground, cells, radius, voxel, 2.0, level)).mask
                 & ~foreground.mask for level in (0.2, 0.6)}
        smoothed = foreground.smoothed
        distance = np.sqrt((3 * (zz - z0)) ** 2 + (yy - 30) ** 2 + (xx - 20) ** 2)  # in xy pixels
        box = smoothed[max(0, z0 - 3):z0 + 4, 22:39, 12:29]  # around the reach, 2 x 4 px (z: 8/3 slices)
        reach, core = distance <= 8.0, distance <= 2.0
        cell, background = np.median(smoothed[core]), np.percentile(box, 10)
        expected = reach & (smoothed > background + 0.2 * (cell - background)) & ~foreground.mask
        assert np.array_equal(grown[0.2], expected)
        assert 0 < grown[0.6].sum() < 0.7 * grown[0.2].sum()
        assert not grown[0.2][:, 40:, 40:].any()  # the detection in noise
        if shape[0] > 1:
            z = np.nonzero(grown[0.2])[0]
            assert z.min() >= z0 - 2 and z.max() <= z0 + 2 and len(np.unique(z)) > 1


def test_a_dim_nucleus_with_a_dark_centre_still_takes_its_local_foreground():
    # A dim ring (dark out to 2/3 of the radius, 180 on 100 with noise) below a bright nucleus's
    # Otsu threshold: the noise guard reads the disk's upper quartile, so the ring passes where the
    # core alone would not.
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:60, :100]
    distance = np.hypot(yy - 30, xx - 30)
    frame = 100 + 80 * ((distance <= 12) & (distance > 8)) + rng.normal(0, 5, (60, 100))
    frame[20:40, 70:90] = 2000.0
    foreground = intensity_foreground(frame[None], sigma=1.0)
    centre, radius = np.array([[0, 30.0, 30.0]]), np.array([12.0])
    levels = cell_levels(foreground, centre, radius, (1.0, 1.0, 1.0), 1.5, 0.2)
    added = add_local_foreground(foreground, centre, radius, (1.0, 1.0, 1.0), 1.5, levels).mask[0]
    added &= ~foreground.mask[0]
    ring = (distance <= 12) & (distance > 8)
    assert added[ring].mean() > 0.8 and not foreground.mask[0][ring].any()


def test_grown_ellipsoids_respect_the_anisotropy():
    # z steps of 3 px: reach 1.5 x radius 6 = 9 px = 3 slices each way, never more.
    frame = np.full((21, 40, 40), 100.0)
    frame[4:17, 5:35, 5:35] = 1000.0                          # a big bright box around the cell
    cells = pd.DataFrame({"track_id": [1], "z": [10.0], "y": [20.0], "x": [20.0], "radius": [6.0]})
    grown = render_frame(cells, {1: 1}, (21, 40, 40), voxel_size=(3.0, 1.0, 1.0),
                         foreground=intensity_foreground(frame, sigma=1.0, voxel_size=(3.0, 1.0, 1.0)), reach=1.5)
    z, y, x = np.nonzero(grown == 1)
    assert z.min() == 7 and z.max() == 13
    assert np.sqrt((3 * (z - 10)) ** 2 + (y - 20) ** 2 + (x - 20) ** 2).max() <= 9.0
    assert (grown == 1).sum() > 2 * (render_frame(cells, {1: 1}, (21, 40, 40), voxel_size=(3.0, 1.0, 1.0)) == 1).sum()


def test_a_bright_nucleus_grows_only_within_its_own_level():
    # Three dim nuclei (1000 on 100) set Otsu's threshold near 550; the blur of a bright one (4000)
    # clears it a slice beyond the nucleus. With local_level the bright cell grows only into voxels
    # above its own level (0.2 of its contrast, near 790), which keeps its mask nearer the nucleus.
    voxel = (3.0, 1.0, 1.0)
    zz, yy, xx = np.mgrid[:21, :64, :64]

    def ellipsoid(y: float, x: float, r: float) -> np.ndarray:
        return (3 * (zz - 10)) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= r * r

    frame = np.full((21, 64, 64), 100.0)
    for y, x in ((45, 20), (20, 45), (45, 45)):
        frame[ellipsoid(y, x, 9.0)] = 1000.0
    nucleus = ellipsoid(20, 20, 6.0)
    frame[nucleus] = 4000.0
    foreground = intensity_foreground(ndimage.gaussian_filter(frame, 1.0), sigma=0.5, voxel_size=voxel)
    cells = pd.DataFrame({"track_id": [1, 2, 3, 4], "z": 10.0, "y": [20.0, 45.0, 20.0, 45.0],
                          "x": [20.0, 20.0, 45.0, 45.0], "radius": [6.0, 9.0, 9.0, 9.0]})
    labels = {k: k for k in range(1, 5)}
    levels = cell_levels(foreground, cells[["z", "y", "x"]].to_numpy(float), cells["radius"].to_numpy(float),
                         voxel, 1.5, 0.2)
    masks = render_frame(cells, labels, (21, 64, 64), voxel, foreground, reach=1.5, local_level=0.2)
    disks = render_frame(cells, labels, (21, 64, 64), voxel)
    otsu = render_frame(cells, labels, (21, 64, 64), voxel, foreground, reach=1.5) == 1
    bounded, disk = masks == 1, disks == 1
    assert (foreground.smoothed[otsu & ~disk] <= levels[0]).any()  # Otsu alone takes the blurred rim
    for k in (1, 2, 3, 4):  # every cell, dim ones too, grows and stops at its own level
        grown = (masks == k) & (disks != k)
        assert grown.any() and (foreground.smoothed[grown] > levels[k - 1]).all()

    def iou(mask: np.ndarray) -> float:
        return (mask & nucleus).sum() / (mask | nucleus).sum()

    assert iou(bounded) > iou(otsu) + 0.03


def test_intensity_foreground_rejects_nan_and_finds_nothing_in_a_flat_frame():
    assert not intensity_foreground(np.full((1, 20, 20), 7.0), sigma=1.0).mask.any()
    frame = nuclei_frame((40, 40), [(20.0, 20.0, 6.0, 6.0)])
    found = intensity_foreground(frame, sigma=1.0)
    assert found.mask[0, 20, 20] and not found.mask[0, 2, 2]
    frame[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        intensity_foreground(frame, sigma=1.0)


def test_series_foreground_reads_the_channel_and_scales_sigma_with_the_radius(tmp_path):
    array = create_image_store(tmp_path / "image.ome.zarr", (2, 2, 1, 40, 40), np.float32, (1.0, 1.0, 1.0), 1.0,
                               ("empty", "nuclei"))
    array[1, 1] = nuclei_frame((40, 40), [(20.0, 20.0, 6.0, 6.0)])
    foreground, sigma = series_foreground(tmp_path / "image.ome.zarr", 1, np.array([8.0, np.nan, 12.0]), 0.25)
    assert sigma == 2.5                                       # 0.25 x median of the finite radii
    assert foreground(1).mask[0, 20, 20] and not foreground(0).mask.any()
    array[0, 1, 0, 5, 5] = np.nan
    with pytest.raises(ValueError, match="frame 0, channel 1"):
        foreground(0)


def test_large_track_ids_are_remapped(tmp_path):
    tracks = pd.DataFrame({"t": [0, 1, 2, 2], "cell_id": [0, 1, 2, 3],
                           "track_id": [70000, 70000, 70001, 90000],
                           "parent_track_id": [-1, -1, 70000, 70000], "z": 0.0, "y": [10.0, 10, 5, 15],
                           "x": 10.0, "radius": 2.0})
    labels = write_ctc(tracks, tmp_path / "RES", (1, 32, 32), 3)
    assert labels == {70000: 1, 70001: 2, 90000: 3}
    table = read_track_table(tmp_path / "RES" / "res_track.txt")
    assert table.values.tolist() == [[1, 0, 1, 0], [2, 2, 2, 1], [3, 2, 2, 1]]
    assert_valid_ctc(tmp_path / "RES")


def test_gap_inside_a_track_is_rejected(tmp_path):
    tracks = pd.DataFrame({"t": [0, 2], "cell_id": [0, 1], "track_id": [1, 1], "parent_track_id": -1,
                           "z": 0.0, "y": 10.0, "x": 10.0, "radius": 2.0})
    with pytest.raises(ValueError, match="gaps"):
        write_ctc(tracks, tmp_path / "RES", (1, 32, 32), 3)
    assert not (tmp_path / "RES").exists()


def perturbed(tracks: pd.DataFrame) -> pd.DataFrame:
    """Cut the mother's track at t = 2 and orphan the daughters (a missed link and a missed division)."""
    out = tracks.copy()
    out.loc[(out["track_id"] == 1) & (out["t"] >= 2), "track_id"] = 99
    out.loc[out["parent_track_id"] == 1, "parent_track_id"] = -1
    return out


def test_evaluate_ctc_truth_against_itself_and_perturbed(tmp_path):
    _, truth = family()
    gt = write_gt_folder(truth, tmp_path / "GT" / "TRA", SHAPE, N_FRAMES)
    write_ctc(truth, tmp_path / "same", SHAPE, N_FRAMES)
    perfect = evaluate_ctc(gt, tmp_path / "same")
    assert perfect["TRA"] == perfect["DET"] == perfect["LNK"] == perfect["division_f1"] == 1.0
    assert perfect["gt_divisions"] == perfect["tp_divisions"] == 1
    assert perfect["fn_edges"] == perfect["fp_edges"] == perfect["fp_nodes"] == 0
    write_ctc(perturbed(truth), tmp_path / "worse", SHAPE, N_FRAMES)
    worse = evaluate_ctc(gt, tmp_path / "worse")
    assert worse["TRA"] < 1.0 and worse["LNK"] < 1.0 and worse["fn_edges"] >= 3
    # no predicted division: precision is 0/0, so traccuracy's F1 is NaN -> None with a note
    assert worse["division_f1"] is None and worse["fn_divisions"] == 1 and worse["tp_divisions"] == 0
    assert any("1 ground-truth and 0 predicted" in n for n in worse["notes"])


def test_evaluate_points_truth_against_itself_and_perturbed():
    _, truth = family()
    perfect = evaluate_points(points_of(truth), truth, threshold=3.0)
    assert perfect["TRA"] == perfect["LNK"] == perfect["division_f1"] == 1.0
    worse = evaluate_points(points_of(truth), perturbed(truth), threshold=3.0)
    assert worse["TRA"] < 1.0 and worse["fn_divisions"] == 1
    shifted = evaluate_points(points_of(truth), truth.assign(x=truth["x"] + 5.0), threshold=3.0)
    assert shifted["DET"] == 0.0


def test_undefined_division_f1_is_null_with_a_note(tmp_path):
    _, truth = family()
    no_divisions = truth[~truth["track_id"].isin([2, 3])]
    metrics = evaluate_points(points_of(no_divisions), no_divisions, threshold=3.0)
    assert metrics["division_f1"] is None and any("division_f1" in n for n in metrics["notes"])
    write_metrics(metrics, tmp_path / "tracking.json")
    assert json.loads((tmp_path / "tracking.json").read_text())["division_f1"] is None


@pytest.mark.ctc
def test_sim_plus_linking_scores_high(tmp_path):
    if not (CTC_ROOT / "Fluo-N2DH-SIM+" / "01_GT" / "TRA").is_dir():
        pytest.skip(f"CTC data not found: {CTC_ROOT} (expected ../shared/data/ctc next to the repo)")
    n_frames = 30
    det, _, shape, tra = ctc_detections("Fluo-N2DH-SIM+", "01", n_frames=n_frames, seed=0)
    params = LinkParams()
    tracks = assemble_tracks(det, link_frames(det, 0, n_frames - 1, params), params)
    write_ctc(tracks, tmp_path / "RES", shape, n_frames)
    assert_valid_ctc(tmp_path / "RES")
    metrics = evaluate_ctc(write_clipped_gt(tra, tmp_path / "GT", n_frames), tmp_path / "RES")
    assert metrics["TRA"] > 0.98, metrics


def test_one_mask_over_two_cells_still_scores_divisions_one_to_one(tmp_path):
    """A predicted mask covering two ground-truth markers makes CTC's matching many-to-one, for
    which traccuracy computes no division metrics: the CTC scores come from CTCMatcher and the
    division scores from a one-to-one IoU matching of the same masks, with a note saying so."""
    gt, res = tmp_path / "GT", tmp_path / "RES"
    gt.mkdir()
    res.mkdir()
    for t in range(3):
        markers, masks = np.zeros((48, 48), np.uint16), np.zeros((48, 48), np.uint16)
        markers[8:12, 8:12], markers[8:12, 14:18] = 1, 2  # two touching cells ...
        if t == 0:
            masks[6:14, 6:20] = 1  # ... detected as one in frame 0
        else:
            masks[8:12, 8:12], masks[8:12, 14:18] = 1, 2
        if t < 2:  # cell 3 divides into 4 and 5 after frame 1
            markers[30:36, 30:36], masks[30:36, 30:36] = 3, 3
        else:
            markers[26:30, 30:34], markers[38:42, 30:34] = 4, 5
            masks[26:30, 30:34], masks[38:42, 30:34] = 4, 5
        write_label_frame(markers, gt, "man_track", t, 3)
        write_label_frame(masks, res, "mask", t, 3)
    tracks = pd.DataFrame({"label": [1, 2, 3, 4, 5], "begin": [0, 0, 0, 2, 2], "end": [2, 2, 1, 2, 2],
                           "parent": [0, 0, 0, 3, 3]})
    write_track_table(tracks, gt / "man_track.txt")
    write_track_table(tracks.assign(begin=[0, 1, 0, 2, 2]), res / "res_track.txt")
    metrics = evaluate_ctc(gt, res)
    assert metrics["DET"] is not None and metrics["DET"] < 1.0 and metrics["ns_nodes"] == 1
    assert metrics["division_f1"] == 1.0 and metrics["tp_divisions"] == 1
    assert metrics["division_matcher"].startswith("IOUMatcher")
    assert any("not one-to-one" in note for note in metrics["notes"])


def test_an_empty_result_scores_zero_instead_of_crashing(tmp_path):
    gt, res = tmp_path / "GT", tmp_path / "RES"
    gt.mkdir()
    res.mkdir()
    for t in range(3):
        markers = np.zeros((16, 16), np.uint16)
        markers[4:8, 4:8] = 1
        write_label_frame(markers, gt, "man_track", t, 3)
        write_label_frame(np.zeros((16, 16), np.uint16), res, "mask", t, 3)
    write_track_table(pd.DataFrame({"label": [1], "begin": [0], "end": [2], "parent": [0]}), gt / "man_track.txt")
    (res / "res_track.txt").write_text("")
    metrics = evaluate_ctc(gt, res)
    assert (metrics["TRA"], metrics["DET"], metrics["LNK"]) == (0.0, 0.0, 0.0)
    assert metrics["fn_nodes"] == 3 and metrics["fn_edges"] == 2 and metrics["division_f1"] is None


def _seg_case(tmp_path, result_masks: dict[int, np.ndarray]) -> tuple:
    """A 3-frame ground truth of two 4x4 nuclei with SEG annotations in frames 0 and 2 only, and a
    result whose masks are ``result_masks[t]`` (the ground truth's markers where not given)."""
    gt, res = tmp_path / "GT", tmp_path / "RES"
    for folder in (gt / "TRA", gt / "SEG", res):
        folder.mkdir(parents=True)
    markers = np.zeros((16, 16), np.uint16)
    markers[2:6, 2:6], markers[8:12, 8:12] = 1, 2
    for t in range(3):
        write_label_frame(markers, gt / "TRA", "man_track", t, 3)
        if t != 1:
            write_label_frame(markers, gt / "SEG", "man_seg", t, 3)
        write_label_frame(result_masks.get(t, markers), res, "mask", t, 3)
    table = pd.DataFrame({"label": [1, 2], "begin": [0, 0], "end": [2, 2], "parent": [0, 0]})
    write_track_table(table, gt / "TRA" / "man_track.txt")
    write_track_table(table, res / "res_track.txt")
    return gt, res


def test_seg_is_the_challenges_jaccard_over_the_annotated_nuclei(tmp_path):
    shrunk = np.zeros((16, 16), np.uint16)
    shrunk[2:6, 2:5] = 1  # 12 of 16 pixels: Jaccard 0.75
    shrunk[8:12, 8:10] = 2  # 8 of 16: not more than half covered, so it scores 0
    gt, res = _seg_case(tmp_path, {2: shrunk})
    seg = segmentation_score(gt, res)
    assert seg["seg_frames"] == 2 and seg["notes"] == []
    assert seg["SEG"] == pytest.approx((1 + 1 + 0.75 + 0) / 4)
    metrics = evaluate_ctc(gt / "TRA", res)  # the SEG folder beside TRA is found and scored
    assert metrics["SEG"] == pytest.approx(0.6875)
    assert metrics["fn_nodes"] == 1  # the half-covered nucleus is missed by DET's rule too


def test_seg_ignores_unannotated_frames_and_is_null_without_annotations(tmp_path):
    wrong = np.zeros((16, 16), np.uint16)
    wrong[13:15, 13:15], wrong[0, 0] = 1, 2
    gt, res = _seg_case(tmp_path, {1: wrong})  # frame 1 has no SEG annotation
    assert segmentation_score(gt, res)["SEG"] == 1.0
    for path in (gt / "SEG").iterdir():
        path.unlink()
    missing = evaluate_ctc(gt / "TRA", res)
    assert missing["SEG"] is None and missing["seg_frames"] == 0
    assert any("no SEG annotations" in note for note in missing["notes"])
    write_label_frame(np.ones((16, 16), np.uint16), gt / "SEG", "man_seg_000_", 0, 3)  # a slice annotation
    sliced = segmentation_score(gt, res)
    assert sliced["SEG"] is None and any("single slices" in note for note in sliced["notes"])


def test_seg_of_an_empty_result_is_zero(tmp_path):
    gt, res = _seg_case(tmp_path, {t: np.zeros((16, 16), np.uint16) for t in range(3)})
    (res / "res_track.txt").write_text("")
    metrics = evaluate_ctc(gt / "TRA", res)
    assert metrics["SEG"] == 0.0 and metrics["seg_frames"] == 2 and metrics["TRA"] == 0.0
    for mask in res.glob("mask*.tif"):  # an annotated frame without a result mask scores 0 too
        mask.unlink()
    assert segmentation_score(gt, res)["SEG"] == 0.0


def test_seg_pairs_each_annotation_with_its_own_result_mask(tmp_path):
    shrunk = np.zeros((16, 16), np.uint16)
    shrunk[2:6, 2:5], shrunk[8:12, 8:12] = 1, 2
    gt, res = _seg_case(tmp_path, {2: shrunk})
    write_label_frame(np.zeros((16, 16), np.uint16), res, "mask002_old", 0, 3)  # not a CTC mask name
    (res / "mask.tif").write_bytes(b"")
    assert segmentation_score(gt, res)["SEG"] == pytest.approx((1 + 1 + 0.75 + 1) / 4)
    (res / "mask002.tif").unlink()
    missing = segmentation_score(gt, res)
    assert missing["SEG"] == pytest.approx(0.5) and any("[2] have no result mask" in n for n in missing["notes"])


def test_seg_takes_any_uint16_labels(tmp_path):
    # Track ids near the top of uint16 (py-ctcmetrics' label offsets wrap there and score 0).
    markers = np.zeros((16, 16), np.uint16)
    markers[2:6, 2:6], markers[8:12, 8:12] = 65500, 65501
    gt, res = _seg_case(tmp_path, {t: markers for t in range(3)})
    assert segmentation_score(gt, res)["SEG"] == 1.0


def test_points_scores_say_why_seg_is_null():
    _, truth = family()
    metrics = evaluate_points(points_of(truth), truth, threshold=3.0)
    assert metrics["SEG"] is None and any("SEG" in note for note in metrics["notes"])
