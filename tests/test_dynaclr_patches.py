"""DynaCLR patches: normalization statistics, windows at borders, extraction to a patch store, reading it."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from celltrails.dynaclr.normalization import (
    STATISTICS,
    Normalization,
    StatisticsAccumulator,
    frame_sample,
    image_statistics,
    sample_statistics,
)
from celltrails.dynaclr.patches import (
    INDEX_COLUMNS,
    PatchSpec,
    PatchStore,
    cut_patches,
    extract_patches,
    lineage_ids,
    tracks_from_ground_truth,
    window,
)
from celltrails.errors import InputError
from celltrails.ome_zarr_io import create_image_store

NAMES = ("a", "b")


def numpy_statistics(values: np.ndarray) -> dict[str, float]:
    """The statistics written out with plain numpy calls (finite values only)."""
    v = np.asarray(values, np.float64).ravel()
    v = v[~np.isnan(v)]
    q = {p: np.percentile(v, p) for p in (1, 5, 25, 50, 75, 95, 99)}
    return {"mean": v.mean(), "std": v.std(), "median": np.median(v), "iqr": q[75] - q[25], "p1": q[1],
            "p5": q[5], "p95": q[95], "p99": q[99], "p95_p5": q[95] - q[5], "p99_p1": q[99] - q[1]}


def assert_statistics(actual: dict, expected: dict) -> None:
    """Same keys, same values to float precision."""
    assert set(actual) == set(STATISTICS) == set(expected)
    for key in STATISTICS:
        assert actual[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-9), key


def write_image(path: Path, data: np.ndarray, names=NAMES, time_interval: float = 5.0) -> Path:
    """An OME-Zarr image of ``data`` (t, c, z, y, x) written frame by frame."""
    array = create_image_store(path, data.shape, data.dtype, (1.0, 0.5, 0.5), time_interval, names[:data.shape[1]])
    for t in range(data.shape[0]):
        array[t] = data[t]
    return path


def random_image(shape, seed: int = 0, dtype=np.uint16) -> np.ndarray:
    """Random pixels with a different range per channel (and so different statistics)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 1000, size=shape).astype(np.float64)
    data *= (1 + np.arange(shape[1]))[None, :, None, None, None]
    return data.astype(dtype)


def division_tracks() -> pd.DataFrame:
    """Tracks in a 40 x 48 image, 4 frames, patch 16: track 1 divides into 2 and 3 after t=1; 4 sits at
    the top-left corner and 5 at the right edge (border cells); 7 starts at t=1. Rows deliberately unsorted."""
    rows = [
        *[(t, 1, -1, 20.4, 23.6) for t in (0, 1)],
        *[(t, 2, 1, 14.0, 20.0) for t in (2, 3)],
        *[(t, 3, 1, 26.0, 28.0) for t in (2, 3)],
        *[(t, 4, -1, 1.0, 2.0) for t in range(4)],
        *[(t, 5, -1, 20.0, 44.0) for t in range(4)],
        *[(t, 7, -1, 30.0, 10.0) for t in (1, 2, 3)],
    ]
    table = pd.DataFrame(rows, columns=["t", "track_id", "parent_track_id", "y", "x"])
    table.insert(3, "z", 0.0)
    table["state"] = [f"s{track}-{t}" for t, track in zip(table.t, table.track_id)]
    return table.sample(frac=1.0, random_state=3).reset_index(drop=True)


def manual_crop(data: np.ndarray, t: int, z: float, y: float, x: float, size: int, z_window: int = 1):
    """The patch of an interior cell by plain slicing (round half up, as the window)."""
    zc, yc, xc = (math.floor(v + 0.5) for v in (z, y, x))
    z0, y0, x0 = zc - z_window // 2, yc - size // 2, xc - size // 2
    assert min(z0, y0, x0) >= 0 and z0 + z_window <= data.shape[2]
    assert y0 + size <= data.shape[3] and x0 + size <= data.shape[4], "not an interior cell"
    return data[t, :, z0:z0 + z_window, y0:y0 + size, x0:x0 + size]


def is_interior(z: float, y: float, x: float, size: int, z_window: int, shape) -> bool:
    """Whether the whole patch around the cell lies inside the image (z, y, x shape)."""
    for c, s, n in zip((z, y, x), (z_window, size, size), shape):
        start = math.floor(c + 0.5) - s // 2
        if start < 0 or start + s > n:
            return False
    return True


def leftovers(folder: Path) -> list[str]:
    """Everything in ``folder``, hidden temporaries included."""
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def image_2d(tmp_path_factory) -> tuple[Path, np.ndarray]:
    data = random_image((4, 2, 1, 40, 48))
    return write_image(tmp_path_factory.mktemp("img2d") / "image.ome.zarr", data), data


@pytest.fixture(scope="module")
def extracted_2d(image_2d, tmp_path_factory):
    path, data = image_2d
    out = tmp_path_factory.mktemp("patches2d") / "patches"
    index = extract_patches(path, division_tracks(), out, PatchSpec(size=16, border="shift"), stats_stride=4,
                            dataset="ds")
    return out, index, data


# --- normalization statistics --------------------------------------------------------------------

def test_sample_statistics_match_numpy_and_ignore_nan():
    values = np.random.default_rng(0).gamma(2.0, 50.0, size=997)
    assert_statistics(sample_statistics(values), numpy_statistics(values))
    with_nan = np.concatenate([values, [np.nan] * 43])
    np.random.default_rng(1).shuffle(with_nan)
    assert_statistics(sample_statistics(with_nan.reshape(-1, 8)), numpy_statistics(values))
    for bad in (np.array([]), np.full(5, np.nan)):
        with pytest.raises(ValueError, match="no finite"):
            sample_statistics(bad)


def test_frame_sample_takes_every_stride_th_pixel_over_all_z():
    frame = np.arange(2 * 3 * 10 * 7).reshape(2, 3, 10, 7)
    sample = frame_sample(frame, 3)
    assert sample.shape == (2, 3 * 4 * 3)
    for c in range(2):
        expected = [frame[c, z, y, x] for z in range(3) for y in range(0, 10, 3) for x in range(0, 7, 3)]
        np.testing.assert_array_equal(sample[c], expected)


@pytest.mark.parametrize("stride", [1, 3])
def test_image_statistics_timepoint_and_dataset_levels(stride):
    data = random_image((3, 2, 2, 12, 10), seed=4).astype(np.float32)
    data[1, 0, 0, 0, 0] = np.nan  # NaN-aware: one missing pixel in the sample (it is at y=x=0)
    stats = image_statistics(data, NAMES, stride=stride)
    assert set(stats) == set(NAMES)
    for c, name in enumerate(NAMES):
        sampled = data[:, c, :, ::stride, ::stride]
        assert set(stats[name]["timepoint_statistics"]) == {"0", "1", "2"}
        for t in range(3):
            assert_statistics(stats[name]["timepoint_statistics"][str(t)], numpy_statistics(sampled[t]))
        assert_statistics(stats[name]["dataset_statistics"], numpy_statistics(sampled))
    assert stats["b"]["dataset_statistics"]["mean"] > 1.5 * stats["a"]["dataset_statistics"]["mean"]
    with pytest.raises(ValueError, match="channel names"):
        image_statistics(data, ["a"], stride=stride)


def test_dataset_level_pools_a_bounded_seeded_subsample_per_frame():
    data = random_image((4, 1, 1, 8, 8), seed=5).astype(np.float64)

    def pooled(seed):
        accumulator = StatisticsAccumulator(["a"], n_frames=4, stride=1, max_dataset_samples=20, seed=seed)
        for t in range(4):
            accumulator.add(t, data[t])
        return accumulator, accumulator.result()

    accumulator, result = pooled(0)
    assert [len(p) for p in accumulator.pooled[0]] == [5] * 4  # 20 samples over 4 frames
    for t, part in enumerate(accumulator.pooled[0]):
        assert np.isin(part, data[t]).all()
    assert_statistics(result["a"]["dataset_statistics"], numpy_statistics(np.concatenate(accumulator.pooled[0])))
    for t in range(4):  # the timepoint level always uses the whole sample
        assert_statistics(result["a"]["timepoint_statistics"][str(t)], numpy_statistics(data[t]))
    assert pooled(0)[1] == result
    assert pooled(1)[1]["a"]["dataset_statistics"] != result["a"]["dataset_statistics"]


def test_a_frame_without_finite_values_is_an_error_naming_frame_and_channel():
    data = np.ones((3, 2, 1, 4, 4), np.float32)
    data[2, 1] = np.nan
    with pytest.raises(InputError, match=r"dataset 'ds'.*frame 2, channel 'b'"):
        image_statistics(data, NAMES, stride=1, dataset="ds")


def constant_statistics(values_by_frame: list[list[float]]) -> dict:
    """Statistics of a single-channel series with the given pixel values per frame."""
    data = np.array(values_by_frame, np.float32)[:, None, None, None, :]
    return image_statistics(data, ["a"], stride=1)


@pytest.mark.parametrize("level", ["timepoint", "dataset"])
def test_normalization_apply_is_the_formula_by_hand(level):
    data = random_image((3, 2, 1, 6, 6), seed=7).astype(np.float32)
    stats = image_statistics(data, NAMES, stride=1)
    norm = Normalization(level=level, subtrahend="p5", divisor="p95_p5")
    t = np.array([2, 0, 2, 1])
    patches = data[t, :, :, 1:5, 1:5]
    out = norm.apply(patches, stats, NAMES, t)
    assert out.dtype == np.float32 and out.shape == patches.shape
    for i, frame in enumerate(t):
        for c, name in enumerate(NAMES):
            s = stats[name]["dataset_statistics" if level == "dataset" else "timepoint_statistics"]
            s = s if level == "dataset" else s[str(frame)]
            expected = (patches[i, c].astype(np.float64) - s["p5"]) / (s["p95_p5"] + 1e-8)
            np.testing.assert_allclose(out[i, c], expected, rtol=1e-5, atol=1e-5)
    if level == "timepoint":  # frames really get their own statistics
        assert not np.allclose(out[0], Normalization("dataset", "p5", "p95_p5").apply(patches, stats, NAMES, t)[0])


def test_normalization_check_names_the_constant_channel_and_a_flat_frame_falls_back():
    varied = constant_statistics([[1, 2, 3, 4], [2, 3, 4, 9]])
    flat_frame = constant_statistics([[1, 2, 3, 4], [5, 5, 5, 5]])
    Normalization().check(varied, ["a"])
    Normalization(level="dataset").check(flat_frame, ["a"])  # frames differ: the dataset IQR is not 0
    Normalization().check(flat_frame, ["a"], dataset="ds")  # frame 1's IQR is 0: it takes the dataset's
    offsets, scales = Normalization().offsets_and_scales(flat_frame, ["a"], np.array([0, 1]))
    assert offsets[1, 0] == 5 and scales[1, 0] == pytest.approx(flat_frame["a"]["dataset_statistics"]["iqr"])
    assert scales[0, 0] == pytest.approx(flat_frame["a"]["timepoint_statistics"]["0"]["iqr"])
    constant = constant_statistics([[7, 7, 7, 7], [7, 7, 7, 7]])
    with pytest.raises(InputError, match=r"dataset 'ds'.*channel 'a'.*'std' is 0 over the whole dataset"):
        Normalization("dataset", "mean", "std").check(constant, ["a"], dataset="ds")
    with pytest.raises(InputError, match="no normalization statistics for channel 'c'"):
        Normalization().check(varied, ["c"])


def test_normalization_rejects_unknown_level_and_statistics_and_round_trips():
    with pytest.raises(ValueError, match="level 'fov'"):
        Normalization(level="fov")
    with pytest.raises(ValueError, match="statistic 'max'"):
        Normalization(subtrahend="max")
    with pytest.raises(ValueError, match="statistic 'p50'"):
        Normalization(divisor="p50")
    norm = Normalization("dataset", "p1", "p99_p1")
    assert Normalization.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm


# --- track tables ------------------------------------------------------------------------------

def test_lineage_ids_follow_parents_to_the_root():
    track = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 9])
    parent = np.array([-1, 1, 1, 2, -1, 99, 6, 9, 8, 8])  # 99 is not in the table; 8 <-> 9 is a cycle
    lineage = lineage_ids(track, parent)
    assert lineage[:5].tolist() == [1, 1, 1, 1, 5]
    assert lineage[5] == lineage[6] == 6
    assert lineage[7] == lineage[8] == lineage[9]


def test_tracks_from_ground_truth_renames_and_keeps_extras():
    points = pd.DataFrame({"t": [0, 1], "z": 0.0, "y": 1.0, "x": 2.0, "cell_id": [3, 4], "parent_id": [-1, 3],
                           "state": ["G1", "M"]})
    tracks = tracks_from_ground_truth(points)
    assert tracks["track_id"].tolist() == [3, 4] and tracks["parent_track_id"].tolist() == [-1, 3]
    assert tracks["state"].tolist() == ["G1", "M"] and "parent_id" not in tracks


# --- windows at borders ------------------------------------------------------------------------

def ramp_frame(shape) -> np.ndarray:
    """A (1, Z, Y, X) frame whose every voxel has a distinct value (1, 2, ...)."""
    return (np.arange(math.prod(shape), dtype=np.float64) + 1).reshape(1, *shape)


@pytest.mark.parametrize("border", ["shift", "pad"])
@pytest.mark.parametrize("size, length", [(8, 20), (5, 20), (8, 8), (8, 5), (5, 3), (2, 9)])
def test_the_cell_sits_at_patch_centre_minus_shift_everywhere(border, size, length):
    frame = ramp_frame((1, 20, length))  # y = 10 is interior for every size here; x is the axis under test
    centre = size // 2
    for x in range(length):
        for offset in (-0.4, 0.0, 0.4):
            c = min(max(x + offset, -0.5), length - 0.6)
            patch, shift, padded = cut_patches(frame, np.array([[0.0, 10.0, c]]), PatchSpec(size=size, border=border))
            assert patch.shape == (1, 1, 1, size, size) and shift[0, :2].tolist() == [0, 0]
            assert patch[0, 0, 0, centre, centre - shift[0, 2]] == frame[0, 0, 10, x]
            start, before, after, s = window(c, size, length, border)
            assert s == shift[0, 2] and padded[0] == (before + after > 0)
            np.testing.assert_array_equal(patch[0, 0, 0, centre, before:size - after],
                                          frame[0, 0, 10, start:start + size - before - after])
            if length >= size and border == "shift":  # inside the image, nothing padded
                assert not padded[0] and 0 <= start and start + size <= length and abs(s) <= size // 2
            if length >= size and border == "pad":  # centred exactly
                assert s == 0
            if length < size:
                assert padded[0] and start == 0 and before + after == size - length


def test_corner_cell_with_shift_stays_inside_and_is_found_at_centre_minus_shift():
    frame = np.full((2, 1, 30, 40), 10, np.uint16)
    frame[:, 0, 1, 2] = 1000  # the cell at y=1, x=2
    frame[1, 0, 28, 37] = 2000  # a second cell near the opposite corner (channel 1 only)
    patches, shifts, padded = cut_patches(frame, np.array([[0, 1.0, 2.0], [0, 28.0, 37.0]]), PatchSpec(size=16, border="shift"))
    assert not padded.any()
    np.testing.assert_array_equal(patches[0], frame[:, :, 0:16, 0:16])  # the window moved inside
    np.testing.assert_array_equal(patches[1], frame[:, :, 14:30, 24:40])
    for i, value, channel in ((0, 1000, 0), (1, 2000, 1)):
        found = np.argwhere(patches[i, channel, 0] == value)
        assert len(found) == 1
        np.testing.assert_array_equal(found[0], np.array([8, 8]) - shifts[i, 1:])
    assert shifts[0].tolist() == [0, 7, 6] and shifts[1].tolist() == [0, -6, -5]


def test_corner_cell_with_pad_is_centred_and_padded_by_reflection():
    frame = ramp_frame((1, 30, 40))
    patches, shifts, padded = cut_patches(frame, np.array([[0.0, 1.0, 2.0]]), PatchSpec(size=16, border="pad"))
    assert padded[0] and (shifts == 0).all()
    patch = patches[0, 0, 0]
    assert patch[8, 8] == frame[0, 0, 1, 2]
    np.testing.assert_array_equal(patch[7:, 6:], frame[0, 0, :9, :10])  # the image part, unchanged
    assert patch[6, 8] == frame[0, 0, 1, 2] and patch[5, 8] == frame[0, 0, 2, 2]  # y = -1, -2 mirror 1, 2
    assert patch[8, 5] == frame[0, 0, 1, 1]  # x = -1 mirrors x = 1


def test_image_smaller_than_the_patch_is_padded_in_that_axis():
    frame = ramp_frame((1, 10, 40))  # y: 10 < 16
    for border in ("shift", "pad"):
        for y, x in ((1.0, 20.0), (8.0, 20.0), (5.0, 1.0)):
            patches, shifts, padded = cut_patches(frame, np.array([[0.0, y, x]]), PatchSpec(16, border=border))
            assert padded[0] and patches.shape == (1, 1, 1, 16, 16)
            cy, cx = np.array([8, 8]) - shifts[0, 1:]
            assert patches[0, 0, 0, cy, cx] == frame[0, 0, int(y), int(x)]
            rows = [r for r in range(16) if np.isin(patches[0, 0, 0, r, cx], frame[0, 0, :, int(x)]).all()]
            assert len(rows) == 16  # every patch row is an image row (reflected), none invented


def test_z_window_in_3d_shifts_at_the_stack_edge_and_pads_a_thin_stack():
    frame = ramp_frame((7, 12, 12))
    centres = np.array([[3.0, 6.0, 6.0], [0.0, 6.0, 6.0], [6.2, 6.0, 6.0]])
    patches, shifts, padded = cut_patches(frame, centres, PatchSpec(size=8, z_window=3, border="shift"))
    np.testing.assert_array_equal(patches[0], frame[:, 2:5, 2:10, 2:10])
    np.testing.assert_array_equal(patches[1], frame[:, 0:3, 2:10, 2:10])
    np.testing.assert_array_equal(patches[2], frame[:, 4:7, 2:10, 2:10])
    assert shifts[:, 0].tolist() == [0, 1, -1] and not padded.any()
    for i, z in enumerate((3, 0, 6)):
        assert patches[i, 0, 1 - shifts[i, 0], 4, 4] == frame[0, z, 6, 6]
    thin, thin_shift, thin_padded = cut_patches(frame[:, :3], np.array([[1.0, 6.0, 6.0]]), PatchSpec(8, z_window=5))
    assert thin_padded[0] and thin.shape == (1, 1, 5, 8, 8)
    assert thin[0, 0, 2 - thin_shift[0, 0], 4, 4] == frame[0, 1, 6, 6]
    np.testing.assert_array_equal(thin[0, 0, 1:4], frame[0, 0:3, 2:10, 2:10])


# --- extraction ---------------------------------------------------------------------------------

def test_extract_2d_store_index_and_contents(extracted_2d):
    out, index, data = extracted_2d
    tracks = division_tracks()
    store = PatchStore(out)
    assert sorted(p.name for p in out.iterdir()) == ["index.parquet", "normalization.json", "patches.zarr"]
    assert store.array.shape == (len(tracks), 2, 1, 16, 16) and store.array.dtype == np.uint16
    assert len(store) == len(tracks) and store.patch_shape == (2, 1, 16, 16)
    assert store.channel_names == list(NAMES)
    assert store.attrs["size"] == 16 and store.attrs["z_window"] == 1 and store.attrs["dataset"] == "ds"
    pd.testing.assert_frame_equal(store.index, index)
    assert list(index.columns) == INDEX_COLUMNS + ["state"]
    keys = list(zip(index.t, index.track_id))
    assert keys == sorted(zip(tracks.t, tracks.track_id))
    assert (index.state == [f"s{k}-{t}" for t, k in keys]).all()  # extras travel with their row
    lineage = dict(zip(index.track_id, index.lineage_id))
    assert lineage == {1: 1, 2: 1, 3: 1, 4: 4, 5: 5, 7: 7}

    patches = store.read(np.arange(len(store)))
    n_interior = 0
    for i, row in index.iterrows():
        interior = is_interior(row.z, row.y, row.x, 16, 1, data.shape[2:])
        assert (row.shift_y, row.shift_x) == (0, 0) or not interior
        assert not row.padded
        if interior:
            n_interior += 1
            np.testing.assert_array_equal(patches[i], manual_crop(data, row.t, row.z, row.y, row.x, 16))
    assert n_interior == 9
    corner = index[index.track_id == 4]
    assert (corner.shift_y == 7).all() and (corner.shift_x == 6).all()
    np.testing.assert_array_equal(patches[corner.index[0]], data[corner.t.iloc[0], :, :, 0:16, 0:16])
    edge = index[index.track_id == 5]
    assert (edge.shift_y == 0).all() and (edge.shift_x == -4).all()
    np.testing.assert_array_equal(patches[edge.index[1]], data[edge.t.iloc[1], :, :, 12:28, 32:48])

    written = json.loads((out / "normalization.json").read_text())
    assert written == image_statistics(data, NAMES, stride=4)


def test_extract_logs_the_border_cells_it_kept(image_2d, tmp_path, caplog):
    path, data = image_2d
    tracks = division_tracks()
    n_border = sum(not is_interior(r.z, r.y, r.x, 16, 1, data.shape[2:]) for r in tracks.itertuples())
    with caplog.at_level(logging.INFO, logger="celltrails.dynaclr.patches"):
        index = extract_patches(path, tracks, tmp_path / "p", PatchSpec(size=16, border="pad"))
    assert n_border == 8 and int(index.padded.sum()) == n_border
    assert (index[["shift_z", "shift_y", "shift_x"]] == 0).all().all()
    assert f"{n_border} near the border kept (pad)" in caplog.text


def test_extract_3d_float_store(tmp_path):
    data = random_image((2, 1, 7, 24, 24), seed=2, dtype=np.float32)
    path = write_image(tmp_path / "img3d.ome.zarr", data)
    tracks = pd.DataFrame({"t": [0, 0, 1, 1], "track_id": [1, 2, 1, 2], "parent_track_id": -1,
                           "z": [3.0, 0.2, 3.4, 6.0], "y": [12.0, 12.0, 11.6, 12.0], "x": [12.0] * 4})
    index = extract_patches(path, tracks, tmp_path / "p3", PatchSpec(size=12, z_window=3, border="shift"),
                            stats_stride=2)
    store = PatchStore(tmp_path / "p3")
    assert store.array.dtype == np.float32 and store.patch_shape == (1, 3, 12, 12)
    assert store.attrs["is_3d"] and store.channel_names == ["a"]
    assert index.shift_z.tolist() == [0, 1, 0, -1]
    np.testing.assert_array_equal(store.read([0, 2]), [manual_crop(data, 0, 3.0, 12, 12, 12, 3),
                                                       manual_crop(data, 1, 3.4, 11.6, 12, 12, 3)])
    np.testing.assert_array_equal(store.read([1])[0], data[0, :, 0:3, 6:18, 6:18])
    assert json.loads((tmp_path / "p3" / "normalization.json").read_text()) == \
        image_statistics(data, ["a"], stride=2)


def test_extract_selects_channels_by_name_or_number(image_2d, tmp_path):
    path, data = image_2d
    tracks = division_tracks()
    for i, channels in enumerate((["b"], [1], ["1"])):
        index = extract_patches(path, tracks, tmp_path / f"p{i}", PatchSpec(size=16), channels=channels,
                                stats_stride=4)
        store = PatchStore(tmp_path / f"p{i}")
        assert store.channel_names == ["b"] and store.patch_shape == (1, 1, 16, 16)
        row = index[(index.track_id == 1) & (index.t == 0)].iloc[0]
        np.testing.assert_array_equal(store.read([row.name])[0], manual_crop(data, 0, 0, 20.4, 23.6, 16)[1:])
        assert set(store.statistics) == {"b"}
    for bad in (["c"], [2]):
        with pytest.raises(InputError, match="does not exist"):
            extract_patches(path, tracks, tmp_path / "bad", PatchSpec(size=16), channels=bad)


def test_position_outside_the_image_fails_without_leftovers(image_2d, tmp_path):
    path, _ = image_2d
    tracks = division_tracks()
    tracks.loc[3, "x"] = 48.0
    out_root = tmp_path / "out"
    out_root.mkdir()
    with pytest.raises(InputError, match=r"dataset 'ds'.*outside the image"):
        extract_patches(path, tracks, out_root / "patches", PatchSpec(size=16), dataset="ds")
    assert leftovers(out_root) == []


def test_failure_during_extraction_leaves_no_output_or_temporary(tmp_path):
    data = random_image((3, 2, 1, 20, 20), dtype=np.float32)
    data[2, 1] = np.nan  # found only when frame 2 is read, inside the atomic write
    path = write_image(tmp_path / "img.ome.zarr", data)
    tracks = pd.DataFrame({"t": [0, 1, 2], "track_id": 1, "parent_track_id": -1, "z": 0.0, "y": 10.0, "x": 10.0})
    out_root = tmp_path / "out"
    out_root.mkdir()
    with pytest.raises(InputError, match=r"dataset 'ds'.*frame 2, channel 'b'"):
        extract_patches(path, tracks, out_root / "patches", PatchSpec(size=8), dataset="ds", chunk_patches=1)
    assert leftovers(out_root) == []
    # a previous complete result survives a failed rerun untouched
    extract_patches(path, tracks.iloc[:2], out_root / "patches", PatchSpec(size=8), channels=["a"])
    before = (out_root / "patches" / "index.parquet").read_bytes()
    with pytest.raises(InputError):
        extract_patches(path, tracks, out_root / "patches", PatchSpec(size=8))
    assert leftovers(out_root) == ["patches"]
    assert (out_root / "patches" / "index.parquet").read_bytes() == before


@pytest.mark.parametrize("change, message", [
    (lambda tr: tr.iloc[0:0], "no cells"),
    (lambda tr: tr.assign(y=tr.y.where(tr.index != 2, np.nan)), "NaN"),
    (lambda tr: tr.drop(columns=["z", "parent_track_id"]), r"lacks columns \['parent_track_id', 'z'\]"),
    (lambda tr: pd.concat([tr, tr.iloc[:1]]), "two rows in one frame"),
    (lambda tr: tr.assign(t=tr.t.where(tr.index != 0, 4)), "outside the image"),
])
def test_bad_track_tables_are_clear_input_errors(image_2d, tmp_path, change, message):
    path, _ = image_2d
    with pytest.raises(InputError, match=rf"dataset 'ds', file 'tracks.parquet': .*{message}"):
        extract_patches(path, change(division_tracks()), tmp_path / "p", PatchSpec(size=16), dataset="ds",
                        tracks_path="tracks.parquet")
    assert leftovers(tmp_path) == []


def test_non_integer_frame_numbers_are_rejected(image_2d, tmp_path):
    path, _ = image_2d
    tracks = division_tracks()
    tracks["t"] = tracks["t"].astype(float)
    extract_patches(path, tracks, tmp_path / "ok", PatchSpec(size=16))  # integer-valued floats are fine
    tracks.loc[0, "t"] = 1.5
    with pytest.raises(InputError, match="integer"):
        extract_patches(path, tracks, tmp_path / "p", PatchSpec(size=16))


def test_2d_image_with_a_z_window_is_an_input_error(image_2d, tmp_path):
    path, _ = image_2d
    with pytest.raises(InputError, match=r"dataset 'ds'.*image is 2D but the patch z window is 5"):
        extract_patches(path, division_tracks(), tmp_path / "p", PatchSpec(size=16, z_window=5), dataset="ds")


def test_patch_spec_rejects_bad_geometry():
    for kwargs in ({"size": 1}, {"z_window": 0}, {"border": "wrap"}, {"downsample_yx": 0}):
        with pytest.raises(ValueError):
            PatchSpec(**kwargs)


def test_chunked_writes_give_the_manual_crops(tmp_path):
    data = random_image((6, 1, 1, 30, 30), seed=9)
    rng = np.random.default_rng(0)
    rows = []  # tracks of different lengths: 0-3 cells per frame (none at t=2), 12 in all, all interior
    for track, (first, last) in enumerate([(0, 1), (0, 0), (3, 5), (3, 4), (0, 1), (4, 5)], start=1):
        y, x = rng.uniform(6, 23, size=2)
        rows += [(t, track, -1, 0.0, y, x) for t in range(first, last + 1)]
    tracks = pd.DataFrame(rows, columns=["t", "track_id", "parent_track_id", "z", "y", "x"])
    assert len(tracks) == 12
    path = write_image(tmp_path / "img.ome.zarr", data)
    for chunk in (5, 7, 100):
        index = extract_patches(path, tracks, tmp_path / f"c{chunk}", PatchSpec(size=12), chunk_patches=chunk)
        store = PatchStore(tmp_path / f"c{chunk}")
        assert store.array.chunks[0] == min(chunk, 12)
        expected = np.stack([manual_crop(data, r.t, r.z, r.y, r.x, 12) for r in index.itertuples()])
        np.testing.assert_array_equal(store.read(np.arange(12)), expected)


def test_patch_store_reads_any_rows_in_any_order_from_disk_or_memory(extracted_2d):
    out, index, _ = extracted_2d
    store = PatchStore(out)
    every = np.stack([np.asarray(store.array[i]) for i in range(len(store))])
    rows = np.array([5, 1, 5, 0, len(store) - 1, 1])
    np.testing.assert_array_equal(store.read(rows), every[rows])
    store.load_into_memory()
    np.testing.assert_array_equal(store.read(rows), every[rows])
    np.testing.assert_array_equal(store.read(np.arange(len(store))), every)

    norm = Normalization()  # timepoint median / IQR, by hand from normalization.json
    stats = json.loads((out / "normalization.json").read_text())
    out_rows = store.read_normalized(rows, norm)
    for k, r in enumerate(rows):
        for c, name in enumerate(NAMES):
            s = stats[name]["timepoint_statistics"][str(index.t[r])]
            expected = (every[r, c].astype(np.float64) - s["median"]) / (s["iqr"] + 1e-8)
            np.testing.assert_allclose(out_rows[k, c], expected, rtol=1e-5, atol=1e-5)


def test_patch_store_checks_its_folder(extracted_2d, tmp_path):
    out, index, _ = extracted_2d
    with pytest.raises(InputError, match="lacks patches.zarr"):
        PatchStore(tmp_path, dataset="ds")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("patches.zarr", "normalization.json"):
        (broken / name).symlink_to(out / name)
    index.iloc[:-1].to_parquet(broken / "index.parquet")
    with pytest.raises(InputError, match=f"index has {len(index) - 1} rows for {len(index)} patches"):
        PatchStore(broken)


def test_downsampling_averages_blocks_and_keeps_the_cell_centred():
    """downsample_yx=f reads f * size pixels around the cell and averages f x f blocks."""
    frame = np.random.default_rng(3).integers(0, 1000, size=(1, 1, 64, 64)).astype(np.uint16)
    spec = PatchSpec(size=8, border="pad", downsample_yx=2)
    patches, shifts, padded = cut_patches(frame, np.array([[0.0, 30.0, 33.0]]), spec)
    region = frame[0, 0, 22:38, 25:41].astype(np.float64)  # 16 x 16 pixels centred on (30, 33)
    expected = np.rint(region.reshape(8, 2, 8, 2).mean(axis=(1, 3)))
    np.testing.assert_array_equal(patches[0, 0, 0], expected)
    assert patches.dtype == np.uint16 and not padded[0] and (shifts == 0).all()
