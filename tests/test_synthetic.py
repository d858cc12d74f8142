"""Tests of the synthetic data generator: reproducibility, ground-truth consistency, biology
(divisions, fade gaps, state switches), optics and recipe validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from celltrails.ctc import check_track_consistency, labels_per_frame, mask_name, read_track_table
from celltrails.errors import InputError
from celltrails.ome_zarr_io import open_image, read_image_meta
from celltrails.synthetic import SyntheticParams, generate_series, load_params
from celltrails.synthetic.params import load_schema
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]

TINY_3D = {
    "seed": 3, "n_frames": 12, "shape": [10, 64, 64], "voxel_size": [2.0, 0.5, 0.5], "margin": 8.0,
    "n_cells": 14, "speed": 0.5, "deformation_amplitude": 0.4, "entry_rate": 0.5, "capacity": 2.0,
    "cell_cycle_mean": 10.0, "cell_cycle_sd": 2.0, "mitosis_frames": 2,
    "death_probability": 0.01, "fade_probability": 0.04, "fade_duration": [2, 3],
    "state_fraction": 0.7, "state_onset": [3, 6], "transition_frames": 2,
    "psf_sigma_z": 1.5, "psf_sigma_xy": 0.25,
}
TINY_2D = {**TINY_3D, "seed": 5, "shape": [1, 96, 96], "voxel_size": [1.0, 0.5, 0.5], "n_cells": 24}


def _recipe(folder: Path, name: str, data: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _generate(folder: Path, name: str, data: dict, **kwargs) -> tuple[SyntheticParams, Path]:
    params = load_params(_recipe(folder, name, data))
    out = folder / name
    generate_series(params, out, **kwargs)
    return params, out


@pytest.fixture(scope="module")
def series_3d(tmp_path_factory) -> tuple[SyntheticParams, Path]:
    return _generate(tmp_path_factory.mktemp("synthetic"), "tiny3d", TINY_3D)


@pytest.fixture(scope="module")
def series_2d(tmp_path_factory) -> tuple[SyntheticParams, Path]:
    return _generate(tmp_path_factory.mktemp("synthetic"), "tiny2d", TINY_2D)


@pytest.fixture(params=["3d", "2d"])
def series(request, series_3d, series_2d) -> tuple[SyntheticParams, Path]:
    return series_3d if request.param == "3d" else series_2d


def _cells(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "cells.parquet")


def _tracks(out: Path) -> pd.DataFrame:
    return read_track_table(out / "GT" / "TRA" / "man_track.txt")


def _markers(out: Path, t: int, n_frames: int) -> np.ndarray:
    return tifffile.imread(out / "GT" / "TRA" / mask_name("man_track", t, n_frames))


def _microns(rows: pd.DataFrame, params: SyntheticParams) -> np.ndarray:
    return rows[["z", "y", "x"]].to_numpy() * np.array(params.voxel_size)


def _children(tracks: pd.DataFrame) -> dict[int, list[int]]:
    linked = tracks[tracks.parent > 0]
    return {int(p): sorted(group.label.tolist()) for p, group in linked.groupby("parent")}


# -- reproducibility ---------------------------------------------------------------------------

def _assert_same_series(a: Path, b: Path, n_frames: int) -> None:
    image_a, _ = open_image(a / "image.ome.zarr")
    image_b, _ = open_image(b / "image.ome.zarr")
    assert np.array_equal(image_a[:], image_b[:])
    for t in range(n_frames):
        assert np.array_equal(_markers(a, t, n_frames), _markers(b, t, n_frames))
    assert (a / "GT/TRA/man_track.txt").read_text() == (b / "GT/TRA/man_track.txt").read_text()
    pd.testing.assert_frame_equal(_cells(a), _cells(b))


def test_same_seed_gives_identical_series_whatever_the_threads(series_3d, tmp_path):
    params, first = series_3d
    _, again = _generate(tmp_path, "again", TINY_3D, workers=2)
    _assert_same_series(first, again, params.n_frames)
    assert load_params(first / "params.yaml") == params  # provenance round-trips


def test_different_seed_gives_different_series(series_3d, tmp_path):
    _, first = series_3d
    _, other = _generate(tmp_path, "other", {**TINY_3D, "seed": TINY_3D["seed"] + 1})
    image_a, _ = open_image(first / "image.ome.zarr")
    image_b, _ = open_image(other / "image.ome.zarr")
    assert not np.array_equal(image_a[0], image_b[0])
    assert not _cells(first)[["z", "y", "x"]].head(10).equals(_cells(other)[["z", "y", "x"]].head(10))


# -- ground truth ------------------------------------------------------------------------------

def test_seg_ground_truth_is_the_whole_nuclei_of_every_frame(series):
    params, out = series
    seg = sorted((out / "GT" / "SEG").glob("man_seg*.tif"))
    assert [p.name for p in seg] == [mask_name("man_seg", t, params.n_frames) for t in range(params.n_frames)]
    for t, path in enumerate(seg):
        assert np.array_equal(tifffile.imread(path), _markers(out, t, params.n_frames))


def test_table_agrees_with_ctc_ground_truth(series):
    params, out = series
    cells, tracks = _cells(out), _tracks(out)
    assert check_track_consistency(tracks, labels_per_frame(out / "GT" / "TRA")) == []
    for t, rows in cells.groupby("t"):
        markers = _markers(out, int(t), params.n_frames)
        assert markers.ndim == (3 if params.is_3d else 2)
        centre = np.rint(rows[["z", "y", "x"]].to_numpy()).astype(int)
        at_centre = markers[tuple(centre.T)] if params.is_3d else markers[centre[:, 1], centre[:, 2]]
        assert np.array_equal(at_centre, rows.cell_id.to_numpy())
        assert set(rows.cell_id) == set(np.unique(markers).tolist()) - {0}
    assert set(cells.t) == set(range(params.n_frames))
    per_track = cells.groupby("cell_id").agg(begin=("t", "min"), end=("t", "max"), n=("t", "size"),
                                             parent=("parent_id", "first"), parents=("parent_id", "nunique"))
    assert (per_track.parents == 1).all()
    assert (per_track.n == per_track.end - per_track.begin + 1).all()
    expected = tracks.set_index("label").loc[per_track.index]
    assert np.array_equal(per_track.begin, expected.begin) and np.array_equal(per_track.end, expected.end)
    assert np.array_equal(per_track.parent.to_numpy(), np.where(expected.parent > 0, expected.parent, -1))
    assert set(per_track.index) == set(tracks.label)


def test_divisions_put_two_daughters_next_to_the_mother(series):
    params, out = series
    cells, tracks = _cells(out), _tracks(out)
    ends = tracks.set_index("label").end
    divisions = {p: kids for p, kids in _children(tracks).items()
                 if len(kids) == 2 and all(tracks.set_index("label").begin[k] == ends[p] + 1 for k in kids)}
    assert len(divisions) >= 2
    for mother, daughters in divisions.items():
        last = cells[(cells.cell_id == mother) & (cells.t == ends[mother])]
        mother_at, radius = _microns(last, params)[0], last.radius.iloc[0] * params.voxel_size[2]
        first = [_microns(cells[(cells.cell_id == d)].nsmallest(1, "t"), params)[0] for d in daughters]
        for position in first:
            assert np.linalg.norm(position - mother_at) < 2 * radius
        assert np.linalg.norm(first[0] - first[1]) > 0.5 * radius  # on either side of the mother


def test_fade_gaps_link_the_same_cell_across_the_gap(series):
    params, out = series
    cells, tracks = _cells(out), _tracks(out)
    indexed = tracks.set_index("label")
    gaps = [(p, kids[0]) for p, kids in _children(tracks).items()
            if len(kids) == 1 and indexed.begin[kids[0]] > indexed.end[p] + 1]
    assert gaps, "no fade gap in the series"
    for before, after in gaps:
        last = cells[(cells.cell_id == before)].nlargest(1, "t")
        first = cells[(cells.cell_id == after)].nsmallest(1, "t")
        elapsed = int(first.t.iloc[0] - last.t.iloc[0])
        assert np.linalg.norm(_microns(first, params)[0] - _microns(last, params)[0]) < 2.0 * elapsed + 1.0
        assert first.onset.iloc[0] == last.onset.iloc[0]


def test_entries_and_exits(series):
    params, out = series
    tracks = _tracks(out)
    has_children = set(_children(tracks))
    assert ((tracks.begin > 0) & (tracks.parent == 0)).any()  # cells entering the field
    assert (~tracks.label.isin(has_children) & (tracks.end < params.n_frames - 1)).any()  # leaving/dying


# -- cell states -------------------------------------------------------------------------------

def test_state_follows_onset_and_is_inherited(series):
    _, out = series
    cells, tracks = _cells(out), _tracks(out)
    switched = (cells.onset >= 0) & (cells.t >= cells.onset)
    assert np.array_equal(cells.state.to_numpy(), switched.astype(int).to_numpy())
    assert cells.state.any() and (cells.state == 0).any()
    onset = cells.groupby("cell_id").onset.agg(["first", "nunique"])
    assert (onset["nunique"] == 1).all()
    linked = tracks[tracks.parent > 0]
    assert len(linked)
    assert np.array_equal(onset["first"][linked.label].to_numpy(), onset["first"][linked.parent].to_numpy())


def _reporter_means(image, out: Path, params: SyntheticParams, cell: pd.Series) -> tuple[float, float]:
    """Mean reporter intensity in the nucleus and in a 2-4 pixel ring around it (2D)."""
    t = int(cell.t)
    markers = _markers(out, t, params.n_frames)
    nucleus = markers == cell.cell_id
    ring = ndimage.binary_dilation(nucleus, iterations=4) & ~ndimage.binary_dilation(nucleus, iterations=1)
    ring &= ~ndimage.binary_dilation(markers > 0, iterations=1)
    reporter = image[t][1, 0].astype(float)
    return reporter[nucleus].mean(), reporter[ring].mean() if ring.any() else np.nan


def test_reporter_leaves_the_nucleus_for_the_cytoplasm_after_onset(series_2d):
    params, out = series_2d
    image, _ = open_image(out / "image.ome.zarr")
    cells = _cells(out)
    changes = {"switching": [], "steady": []}
    for cell_id, rows in cells.groupby("cell_id"):
        onset = rows.onset.iloc[0]
        if onset >= 0:
            before = rows[rows.t < onset]
            after = rows[rows.t >= onset + params.transition_frames]
        else:
            before, after = rows.iloc[:1], rows.iloc[-1:]
        if len(before) and len(after) and after.t.iloc[-1] > before.t.iloc[0]:
            nucleus_0, shell_0 = _reporter_means(image, out, params, before.iloc[0])
            nucleus_1, shell_1 = _reporter_means(image, out, params, after.iloc[-1])
            kind = "switching" if onset >= 0 else "steady"
            ratio_change = shell_1 / nucleus_1 - shell_0 / nucleus_0
            changes[kind].append((nucleus_1 - nucleus_0, shell_1 - shell_0, ratio_change))
    switching = np.array(changes["switching"])
    steady = np.array(changes["steady"])
    assert len(switching) >= 3 and len(steady) >= 3
    assert np.median(switching[:, 0]) < 0 and np.median(switching[:, 1]) > 0
    assert np.mean(switching[:, 0] < 0) >= 0.75 and np.nanmean(switching[:, 1] > 0) >= 0.75
    # Cells that never switch keep their shell/nucleus ratio; switching cells raise it clearly.
    assert np.nanmedian(switching[:, 2]) > 0.2 > abs(np.nanmedian(steady[:, 2]))


# -- optics and image metadata -----------------------------------------------------------------

def _correlation_at(image: np.ndarray, axis: int, lag: int) -> float:
    """Autocorrelation of a (z, y, x) stack at ``lag`` voxels along ``axis`` (white noise adds none)."""
    centred = image.astype(float) - image.mean()
    a = np.moveaxis(centred, axis, 0)
    return float((a[lag:] * a[:-lag]).mean() / (a * a).mean())


def test_3d_image_is_anisotropic_with_stronger_axial_blur(series_3d, tmp_path):
    params, out = series_3d
    meta = read_image_meta(out / "image.ome.zarr")
    assert meta.shape == (params.n_frames, 2, *params.shape)
    assert meta.voxel_size == params.voxel_size
    assert meta.time_interval == params.time_interval
    assert meta.channel_names == ("nuclei", "state")
    assert meta.dtype == np.uint16

    lag_z, lag_x = 1, round(params.voxel_size[0] / params.voxel_size[2])  # both 2 µm

    def z_over_x(path: Path) -> float:
        image, _ = open_image(path / "image.ome.zarr")
        frames = [image[t][0] for t in range(0, params.n_frames, 3)]
        return np.mean([_correlation_at(f, 0, lag_z) / _correlation_at(f, 2, lag_x) for f in frames])

    # Same cells with an isotropic PSF: at equal physical lag, z and x correlate alike.
    _, isotropic = _generate(tmp_path, "isotropic", {**TINY_3D, "psf_sigma_z": TINY_3D["psf_sigma_xy"]})
    assert z_over_x(out) > 1.2 * z_over_x(isotropic)


def test_2d_recipe_gives_single_plane_images(series_2d):
    params, out = series_2d
    meta = read_image_meta(out / "image.ome.zarr")
    assert meta.shape == (params.n_frames, 2, 1, *params.shape[1:])
    assert (_cells(out).z == 0).all()


# -- recipes -----------------------------------------------------------------------------------

def test_schema_documents_every_parameter():
    schema = load_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {f.name for f in dataclasses.fields(SyntheticParams)}
    for name, prop in schema["properties"].items():
        assert "default" in prop and prop.get("description"), name


def test_missing_keys_take_schema_defaults(tmp_path):
    params = load_params(_recipe(tmp_path, "partial", {"n_frames": 5}))
    defaults = {name: prop["default"] for name, prop in load_schema()["properties"].items()}
    assert params.to_dict() == {**defaults, "n_frames": 5}


@pytest.mark.parametrize("bad, key", [
    ({"n_frame": 5}, "n_frame"),
    ({"n_frames": "ten"}, "n_frames"),
    ({"voxel_size": [2.0, 0.5]}, "voxel_size"),
    ({"speed": -1.0}, "speed"),
    ({"state_onset": [9, 3]}, "state_onset"),
])
def test_invalid_recipe_names_key_and_file(tmp_path, bad, key):
    path = _recipe(tmp_path, "bad", bad)
    with pytest.raises(InputError) as err:
        load_params(path)
    assert f"'{key}'" in str(err.value) and str(path) in str(err.value)


def test_failure_mid_write_leaves_no_output(tmp_path, monkeypatch):
    from celltrails.synthetic import write

    real = write.write_label_frame

    def failing(labels, folder, prefix, t, n_frames):
        if t == 3:
            raise OSError("disk full")
        return real(labels, folder, prefix, t, n_frames)

    monkeypatch.setattr(write, "write_label_frame", failing)
    params = load_params(_recipe(tmp_path, "recipe", TINY_2D))
    out = tmp_path / "series"
    with pytest.raises(OSError, match="disk full"):
        generate_series(params, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_recipe_with_too_many_tracks_is_refused_before_writing(tmp_path, monkeypatch):
    from celltrails.synthetic import write

    monkeypatch.setattr(write, "MAX_LABEL", 20)  # stands for CTC's 65535, at a testable scale
    params = load_params(_recipe(tmp_path, "recipe", TINY_2D))
    with pytest.raises(InputError, match="ground-truth tracks"):
        generate_series(params, tmp_path / "series")
    assert not (tmp_path / "series").exists()


@pytest.mark.parametrize("name", ["demo3d", "demo2d"])
def test_shipped_recipes_have_what_tracking_needs(tmp_path, name):
    params = load_params(REPO / "config" / "synthetic" / f"{name}.yaml")
    out = tmp_path / name
    generate_series(params, out)
    cells, tracks = _cells(out), _tracks(out)
    visible = cells.groupby("t").size()
    assert visible.iloc[0] >= 20 and visible.max() <= 60
    ends = tracks.set_index("label").end
    begins = tracks.set_index("label").begin
    kids = _children(tracks)
    assert sum(len(k) == 2 for k in kids.values()) >= 3
    assert any(len(k) == 1 and begins[k[0]] > ends[p] + 1 for p, k in kids.items())
    assert cells.state.any()
    # Nuclei stand out of the noise, but not trivially: contrast of a few noise sigmas.
    image, _ = open_image(out / "image.ome.zarr")
    frame = image[0][0].astype(float)
    markers = _markers(out, 0, params.n_frames) > 0
    if not params.is_3d:
        markers = markers[None]
    far = ~ndimage.binary_dilation(markers, iterations=6)
    noise = np.std(frame[far] - ndimage.uniform_filter(frame, 5)[far])
    snr = (np.median(frame[markers]) - np.median(frame[far])) / noise
    assert 2 < snr < 15


def _unannotated_blob_fraction(out: Path) -> float:
    """Fraction of bright blobs in the max projections with no ground-truth centre inside."""
    image, meta = open_image(out / "image.ome.zarr")
    cells = _cells(out)
    blobs = unannotated = 0
    for t in range(meta.n_frames):
        projection = ndimage.gaussian_filter(np.asarray(image[t, 0], float), (0.5, 1.5, 1.5)).max(0)
        labels, n = ndimage.label(projection > np.median(projection) + 3 * projection.std())
        sizes = ndimage.sum_labels(np.ones_like(projection), labels, np.arange(1, n + 1))
        rows = cells[cells.t == t]
        annotated = set(labels[rows.y.round().astype(int), rows.x.round().astype(int)].tolist())
        big = [i for i in range(1, n + 1) if sizes[i - 1] >= 15]
        blobs += len(big)
        unannotated += sum(i not in annotated for i in big)
    return unannotated / max(blobs, 1)


def test_cells_stay_in_the_stack_unless_a_z_margin_is_asked_for(tmp_path):
    recipe = {**TINY_3D, "n_frames": 6, "fade_probability": 0.0, "margin_z": 0.0}
    _, inside = _generate(tmp_path, "inside", recipe)
    _, deep = _generate(tmp_path, "deep", {**recipe, "margin_z": 10.0})
    confined, spilling = _unannotated_blob_fraction(inside), _unannotated_blob_fraction(deep)
    # With the sample inside the stack, (almost) every nucleus one can see has its marker;
    # with a band above and below, nuclei centred outside the stack show through the z blur.
    assert confined < 0.08
    assert spilling > confined + 0.05
