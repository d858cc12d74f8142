"""The detector network, its checkpoints and the per-frame normalisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from celltrails.detector.checkpoint import load_checkpoint, save_checkpoint
from celltrails.detector.infer import FrameCache
from celltrails.detector.model import CellDetector, DetectorConfig, count_parameters
from celltrails.detector.normalize import (
    apply_percentiles,
    frame_percentiles,
    normalize_frame,
    percentiles_from_store,
    sample_strides,
    series_frames,
    series_percentiles,
)
from celltrails.detector.sampling import Source, TrainingDataset
from celltrails.ome_zarr_io import create_image_store

torch.set_num_threads(2)

SMALL_2D = DetectorConfig(spatial_dims=2, base_channels=8, depth=2, embedding_dim=6)
SMALL_3D = DetectorConfig(spatial_dims=3, base_channels=8, depth=2, z_downsample_levels=0, embedding_dim=6)


def _check_outputs(out: dict, shape: tuple[int, ...], embedding_dim: int) -> None:
    b, _, z, y, x = shape
    expected = {"center": 1, "foreground": 1, "radius": 1, "division": 2, "embedding": embedding_dim}
    assert set(out) == set(expected)
    for name, channels in expected.items():
        assert out[name].shape == (b, channels, z, y, x), name
        assert out[name].dtype == torch.float32, name
        assert torch.isfinite(out[name]).all(), name
    assert (out["radius"] >= 0).all()
    norms = out["embedding"].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


@pytest.mark.parametrize("config, shape", [
    (SMALL_2D, (2, 2, 1, 32, 48)),
    (SMALL_3D, (1, 2, 5, 16, 24)),  # anisotropic: z is never downsampled, any Z works
    (DetectorConfig(3, base_channels=8, depth=2, z_downsample_levels=1, embedding_dim=4), (1, 2, 4, 16, 16)),
])
def test_output_shapes_and_dtypes(config, shape):
    model = CellDetector(config).eval()
    with torch.no_grad():
        out = model(torch.randn(shape))
    _check_outputs(out, shape, config.embedding_dim)
    assert model.size_multiple == 2 ** config.depth


def test_size_multiple_is_enforced_with_a_helpful_message():
    model = CellDetector(SMALL_2D)
    assert model.size_multiple == 4
    with pytest.raises(ValueError, match=r"multiples of size_multiple=4.*Y=30.*pad the tile to Y=32, X=32"):
        model(torch.zeros(1, 2, 1, 30, 32))
    with pytest.raises(ValueError, match=r"expects Z = 1"):
        model(torch.zeros(1, 2, 2, 32, 32))
    with pytest.raises(ValueError, match=r"expects input \(B, 2, Z, Y, X\)"):
        model(torch.zeros(1, 3, 1, 32, 32))
    pooled_z = CellDetector(DetectorConfig(3, base_channels=8, depth=2, z_downsample_levels=1))
    with pytest.raises(ValueError, match=r"Z must be a multiple of 2.*pad the tile to Z=6"):
        pooled_z(torch.zeros(1, 2, 5, 16, 16))
    with pytest.raises(ValueError, match="z_downsample_levels"):
        DetectorConfig(2, z_downsample_levels=1)
    with pytest.raises(ValueError, match="spatial_dims"):
        DetectorConfig(4)


def test_parameter_counts_are_cpu_friendly():
    n2 = count_parameters(CellDetector(DetectorConfig(2)))
    n3 = count_parameters(CellDetector(DetectorConfig(3)))
    assert 2e5 <= n2 <= 2e6, n2
    assert 5e5 <= n3 <= 5e6, n3


def test_config_round_trip():
    config = DetectorConfig(3, in_frames=2, base_channels=12, depth=4, z_downsample_levels=1, embedding_dim=8)
    assert DetectorConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown detector config keys"):
        DetectorConfig.from_dict({**config.to_dict(), "width": 3})


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = CellDetector(SMALL_3D)
    with torch.no_grad():  # move off the initialisation so that a lost tensor would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    x = torch.randn(1, 2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "models" / "detector.pt"
    save_checkpoint(path, model, trained_on=["a", "b"], channel=1,
                    normalization={"method": "percentile", "low": 1.0, "high": 99.8},
                    training={"steps": 3, "voxel_size": (2.0, 0.5, 0.5), "crop": np.array([4, 16, 16])},
                    metrics={"val_f1": np.float32(0.75), "nan": float("nan")})
    assert sorted(p.name for p in path.parent.iterdir()) == ["detector.pt"]  # no temporary left
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    assert meta["config"] == SMALL_3D
    assert meta["trained_on"] == ["a", "b"] and meta["channel"] == 1
    assert meta["normalization"]["low"] == 1.0 and meta["training"]["crop"] == [4, 16, 16]
    assert meta["metrics"]["val_f1"] == pytest.approx(0.75) and meta["metrics"]["nan"] is None
    assert meta["voxel_size_trained"] == (2.0, 0.5, 0.5)
    with torch.no_grad():
        got = loaded(x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_normalize_frame_is_tile_independent(tmp_path):
    rng = np.random.default_rng(1)
    frame = rng.gamma(2.0, 100.0, size=(6, 400, 500)).astype(np.uint16)  # 1.2 M voxels: strided sample
    frame[:, 100:140, 200:260] += 3000  # a bright object inside one tile only
    assert sample_strides(frame.shape) == (2, 2, 2)
    whole = normalize_frame(frame)
    assert whole.dtype == np.float32 and whole.shape == frame.shape
    lo, hi = frame_percentiles(frame)
    tile = (slice(1, 5), slice(90, 154), slice(190, 318))
    np.testing.assert_array_equal(apply_percentiles(frame[tile], lo, hi), whole[tile])
    # Not the tile's own statistics: the bright tile and a dull one share the frame's scale.
    assert not np.isclose(frame_percentiles(frame[tile])[1], hi)
    # Streamed from an OME-Zarr store (what training reads): the same numbers.
    store = tmp_path / "img.ome.zarr"
    array = create_image_store(store, (1, 1, *frame.shape), np.uint16, (2.0, 0.5, 0.5), 1.0, ["nuclei"],
                               chunks=(1, 1, 3, 128, 128))
    array[0, 0] = frame
    assert percentiles_from_store(array, 0, 0) == (lo, hi)
    points = {"t": [0], "z": [3.0], "y": [120.0], "x": [230.0], "cell_id": [1], "parent_id": [-1],
              "radius": [5.0]}
    source = Source(TrainingDataset(store, pd.DataFrame(points), "n"))
    np.testing.assert_array_equal(source.read(0, (1, 90, 190), (4, 64, 128)), whole[tile])
    # Outside the image: zeros (the normalised background level), no error.
    region = source.read(0, (0, -10, 490), (2, 20, 20))
    np.testing.assert_array_equal(region[:, 10:, :10], whole[:2, :10, 490:])
    assert not region[:, :10].any() and not region[:, :, 10:].any()
    flat = normalize_frame(np.full((10, 10), 7, np.uint16))
    assert np.isfinite(flat).all() and (flat == 0).all()


def _bright_then_dim_series() -> np.ndarray:
    """(t, c, z, y, x): background ~N(100, 3); frame 0 holds bright nuclei, frame 1 one faint one."""
    rng = np.random.default_rng(3)
    series = rng.normal(100.0, 3.0, size=(2, 1, 1, 96, 96))
    series[0, 0, 0, 10:30, 10:30] = 400.0
    series[0, 0, 0, 50:70, 40:60] = 380.0
    series[1, 0, 0, 40:46, 40:46] = 115.0
    return series.astype(np.float32)


def test_series_normalisation_keeps_dim_frames_dim():
    """Per-frame percentiles stretch a dim frame's noise to nucleus brightness (false detections on
    Fluo-N2DH-SIM+ 02); one range for the series keeps the noise at its level."""
    assert series_frames(3) == [0, 1, 2]
    frames = series_frames(150)
    assert len(frames) == 16 and frames[0] == 0 and frames[-1] == 149
    series = _bright_then_dim_series()
    lo, hi = series_percentiles(series, 0)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(series[:, 0].astype(np.float64), [1.0, 99.8])))
    noise = (slice(None), slice(70, 96), slice(70, 96))  # background of the dim frame
    per_series = FrameCache(series, 0, {"method": "percentile", "low": 1.0, "high": 99.8, "scope": "series"})
    per_frame = FrameCache(series, 0, {"method": "percentile", "low": 1.0, "high": 99.8})  # no scope: frame
    dim_series, dim_frame = per_series.pair(0, 1)[1], per_frame.pair(0, 1)[1]
    assert dim_series[noise].max() < 0.15  # noise stays noise
    assert dim_frame[noise].max() > 0.5  # stretched towards the brightness of a nucleus
    np.testing.assert_allclose(per_series.pair(0, 1)[0], apply_percentiles(series[0, 0], lo, hi))


def test_training_source_normalises_with_one_range_per_series(tmp_path):
    series = _bright_then_dim_series()
    store = tmp_path / "img.ome.zarr"
    array = create_image_store(store, series.shape, np.float32, (1.0, 1.0, 1.0), 1.0, ["nuclei"])
    array[:] = series
    points = pd.DataFrame({"t": [0, 1], "z": [0.0, 0.0], "y": [20.0, 43.0], "x": [20.0, 43.0],
                           "cell_id": [1, 2], "parent_id": [-1, -1], "radius": [8.0, 3.0]})
    source = Source(TrainingDataset(store, points, "dim"))
    assert source.percentiles(0) == source.percentiles(1) == series_percentiles(array, 0)
    frame_scoped = Source(TrainingDataset(store, points, "dim"), scope="frame")
    assert frame_scoped.percentiles(1) == percentiles_from_store(array, 1, 0)
    assert frame_scoped.percentiles(1)[1] < source.percentiles(1)[1]
    with pytest.raises(ValueError, match="scope"):
        Source(TrainingDataset(store, points, "dim"), scope="tile")
