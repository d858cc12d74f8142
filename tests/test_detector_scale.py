"""The detector's working scale: binning large nuclei down to the size the network learned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from celltrails.detector.checkpoint import load_checkpoint
from celltrails.detector.infer import detect_block, detect_with_checkpoint, inference_binning
from celltrails.detector.metrics import match_detections
from celltrails.detector.sampling import Source, TrainingDataset
from celltrails.detector.scale import binned_image, binning_factor, to_image, to_working
from celltrails.ome_zarr_io import create_image_store, open_image
from celltrails.synthetic import generate_series, load_params
from test_detector_inference import Oracle, blob_frame

REPO = Path(__file__).resolve().parents[1]
SHIPPED_2D = REPO / "workflow" / "models" / "detector_2d.pt"


def upsampled_store(path: Path, frames: np.ndarray, factor: int, voxel_size=(1.0, 0.5, 0.5)) -> Path:
    """(t, z, y, x) frames enlarged ``factor`` times in y, x by pixel repetition, as a 1-channel store."""
    big = frames.repeat(factor, axis=-2).repeat(factor, axis=-1)
    store = create_image_store(path, (big.shape[0], 1, *big.shape[1:]), big.dtype,
                               (voxel_size[0], voxel_size[1] / factor, voxel_size[2] / factor), 1.0, ("nuclei",))
    store[:] = big[:, None]
    return path


def test_binning_factor_brings_nuclei_nearest_the_working_radius():
    assert binning_factor(25.0, 5.0) == 5
    assert binning_factor(24.6, 5.0) == 5
    assert binning_factor(5.3, 5.0) == 1
    assert binning_factor(2.0, 5.0) == 1  # never enlarges
    with pytest.raises(ValueError, match="positive"):
        binning_factor(float("nan"), 5.0)


def test_binned_view_is_the_block_mean_with_the_far_edge_trimmed(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, size=(3, 2, 2, 23, 17)).astype(np.uint16)
    store = create_image_store(tmp_path / "a.ome.zarr", data.shape, np.uint16, (2.0, 0.5, 0.5), 1.0, ("a", "b"))
    store[:] = data
    array, _ = open_image(tmp_path / "a.ome.zarr")
    view = binned_image(array, 4)
    expected = data[..., :20, :16].reshape(3, 2, 2, 5, 4, 4, 4).mean(axis=(4, 6))
    assert view.shape == (3, 2, 2, 5, 4)
    np.testing.assert_allclose(np.asarray(view[1, 0]), expected[1, 0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(view[2, 1, :, 1:3, ::2]), expected[2, 1, :, 1:3, ::2], rtol=1e-6)
    assert binned_image(array, 1) is array
    with pytest.raises(ValueError, match="cannot be binned"):
        binned_image(array, 20)


def test_points_go_to_working_coordinates_and_back():
    points = pd.DataFrame({"t": [0, 1], "z": [0.0, 2.0], "y": [2.0, 41.5], "x": [7.0, 0.0], "radius": [25.0, 10.0],
                           "ridge_distance": [30.0, np.nan]})
    working = to_working(points, 5)
    # image pixels 0..4 form working pixel 0, whose centre is image pixel 2
    assert working.y.tolist() == pytest.approx([0.0, 7.9]) and working.x.tolist() == pytest.approx([1.0, -0.4])
    assert working.radius.tolist() == pytest.approx([5.0, 2.0]) and working.z.tolist() == [0.0, 2.0]
    assert working.ridge_distance.tolist() == pytest.approx([6.0, np.nan], nan_ok=True), "a length, like the radius"
    pd.testing.assert_frame_equal(to_image(working, 5), points)


def test_detections_on_an_enlarged_image_are_the_small_image_ones_scaled(tmp_path):
    rng = np.random.default_rng(3)
    centres = [[(0, 10, 12), (0, 30, 40), (0, 52, 20)], [(0, 11, 13), (0, 31, 42), (0, 50, 22)]]
    frames = np.stack([blob_frame((1, 64, 64), c, rng) for c in centres])
    small = upsampled_store(tmp_path / "small.ome.zarr", frames, 1)
    large = upsampled_store(tmp_path / "large.ome.zarr", frames, 3)
    settings = {"channel": 0, "normalization": {"low": 1.0, "high": 99.8}}
    options = {"tile": (1, 64, 64), "overlap": (0, 16, 16), "min_distance": 4.0, "batch_size": 2}
    ref = detect_block(small, Oracle(), settings, 0, 2, **options)
    found = detect_block(large, Oracle(), settings, 0, 2, binning=3, **options)
    assert len(ref) == 6 and len(found) == len(ref)
    np.testing.assert_allclose(found[["y", "x"]].to_numpy(), ref[["y", "x"]].to_numpy() * 3 + 1)
    np.testing.assert_allclose(found.radius.to_numpy(), ref.radius.to_numpy() * 3, rtol=1e-5)
    np.testing.assert_allclose(found.score.to_numpy(), ref.score.to_numpy(), rtol=1e-5)


def test_training_source_reads_the_binned_image_with_its_points_scaled(tmp_path):
    rng = np.random.default_rng(4)
    frames = np.stack([blob_frame((1, 40, 40), [(0, 10, 10), (0, 25, 30)], rng) for _ in range(3)])
    large = upsampled_store(tmp_path / "large.ome.zarr", frames, 4)
    points = pd.DataFrame({"t": [0, 0, 1, 1, 2, 2], "z": 0.0, "y": [41.5, 101.5] * 3, "x": [41.5, 121.5] * 3,
                           "cell_id": [1, 2] * 3, "parent_id": -1, "radius": 8.0})
    source = Source(TrainingDataset(large, points, "large"), working_radius=2.0)
    assert source.binning == 4 and source.shape == (1, 40, 40)
    assert source.voxel_size == pytest.approx((1.0, 0.5, 0.5))
    assert source.frame_points(1).zyx[:, 1:].tolist() == [[10.0, 10.0], [25.0, 30.0]]
    assert source.default_radius == pytest.approx(2.0)
    crop = source.read(2, (0, 5, 6), (1, 16, 16))
    small = Source(TrainingDataset(upsampled_store(tmp_path / "small.ome.zarr", frames, 1),
                                   to_working(points, 4), "small"))
    np.testing.assert_allclose(crop, small.read(2, (0, 5, 6), (1, 16, 16)), atol=2e-3)
    unbinned = Source(TrainingDataset(large, points, "large", nucleus_radius=3.0), working_radius=2.0)
    assert unbinned.binning == 2  # the sheet's nucleus_radius wins over the annotations' radii


def test_inference_binning_follows_the_dataset_nucleus_radius_else_the_training_images():
    trained_here = {"working_radius": 4.9, "binning": 5}
    assert inference_binning(trained_here) == 5
    assert inference_binning(trained_here, nucleus_radius=10.0) == 2
    assert inference_binning({}) == 1
    assert inference_binning({}, nucleus_radius=25.0) == 5


@pytest.fixture(scope="module")
def large_synthetic(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A small synthetic 2D series with nuclei 4x larger than the shipped detector was trained on."""
    folder = tmp_path_factory.mktemp("large")
    recipe = {"seed": 77, "n_frames": 4, "shape": [1, 96, 96], "voxel_size": [1.0, 0.5, 0.5], "margin": 10.0,
              "n_cells": 14, "nucleus_radius_mean": 3.0, "nucleus_radius_sd": 0.3}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    generate_series(load_params(folder / "recipe.yaml"), folder / "series")
    frames, _ = open_image(folder / "series" / "image.ome.zarr")
    store = upsampled_store(folder / "large.ome.zarr", np.asarray(frames[:, 0]), 4)
    truth = to_image(pd.read_parquet(folder / "series" / "cells.parquet"), 4)
    return store, truth


def test_shipped_detector_finds_large_nuclei_once_told_their_size(large_synthetic):
    store, truth = large_synthetic
    _, settings = load_checkpoint(SHIPPED_2D)
    radius = float(truth.radius.median())
    assert inference_binning(settings, radius) == 4
    options = {"tile": (1, 256, 256), "overlap": (1, 32, 32), "threads": 1}
    told = detect_with_checkpoint(store, SHIPPED_2D, 0, 4, nucleus_radius=radius, **options)
    scored = match_detections(told, truth, voxel_size=(1.0, 0.125, 0.125))
    assert scored["tp"] + scored["fn"] >= 40 and scored["f1"] >= 0.9, scored
    assert told.radius.median() == pytest.approx(radius, rel=0.25)
    blind = detect_with_checkpoint(store, SHIPPED_2D, 0, 4, **options)  # at image scale: nuclei too large
    assert match_detections(blind, truth, voxel_size=(1.0, 0.125, 0.125))["f1"] < scored["f1"] - 0.3
