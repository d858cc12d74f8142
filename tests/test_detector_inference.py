"""Chunked detection with an oracle network whose centre map is a smoothed copy of frame t.

The oracle follows the CellDetector output contract, and every output voxel depends only on the
frames within two voxels of it (zero padding at tile edges), summed in a fixed order: with an
overlap of at least twice (smoothing + peak neighbourhood), any tiling must give bit-identical
detections, which is what these tests check, together with seams, padding, pairs and blocks.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from celltrails.detector.infer import (
    DETECTION_COLUMNS,
    PeakSettings,
    axis_tiles,
    detect_series,
    detect_with_checkpoint,
    find_peaks,
    frame_ranges,
    merge_detection_blocks,
    pick_device,
    plan_tiles,
    require_cells,
    separable_max_filter,
    suppress_close,
    write_detections,
)
from celltrails.errors import InputError
from celltrails.ome_zarr_io import create_image_store

GAIN = 10.0
EMB = 4


def _shift_sum(x: torch.Tensor, half: tuple[int, int, int]) -> torch.Tensor:
    """Gaussian-weighted sum of shifted copies (zero outside), in a fixed order per voxel."""
    hz, hy, hx = half
    padded = F.pad(x, (hx, hx, hy, hy, hz, hz))
    z, y, xx = x.shape[-3:]
    total = torch.zeros_like(x)
    weights = 0.0
    for dz in range(-hz, hz + 1):
        for dy in range(-hy, hy + 1):
            for dx in range(-hx, hx + 1):
                w = float(np.exp(-(dz * dz + dy * dy + dx * dx) / 2.0))
                weights += w
                total = total + w * padded[..., hz + dz:hz + dz + z, hy + dy:hy + dy + y, hx + dx:hx + dx + xx]
    return total / weights


class Oracle(torch.nn.Module):
    """Contract-following stand-in: centre = smoothed frame t, division ch0 = what vanishes by t+1,
    ch1 = what appears at t+1, embedding = (smoothed t, smoothed t+1, t, t+1)."""

    size_multiple = 8

    def __init__(self, z_multiple: int = 1, smooth_z: int = 0):
        super().__init__()
        self.z_multiple = z_multiple
        self.half = (smooth_z, 2, 2)
        self.identical_pairs = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        assert x.shape[1] == 2 and x.shape[-1] % 8 == 0 and x.shape[-2] % 8 == 0
        assert x.shape[-3] % self.z_multiple == 0
        x0, x1 = x[:, :1], x[:, 1:]
        self.identical_pairs += int(torch.equal(x0, x1))
        s0, s1 = _shift_sum(x0, self.half), _shift_sum(x1, self.half)
        gone, new = _shift_sum(x0 - x1, self.half), _shift_sum(x1 - x0, self.half)
        return {"center": GAIN * (s0 - 0.25), "foreground": s0, "radius": 3.0 + s0,
                "division": torch.cat([GAIN * (gone - 0.25), GAIN * (new - 0.25)], dim=1),
                "embedding": torch.cat([s0, s1, x0, x1], dim=1)}


def blob_frame(shape: tuple[int, int, int], centres: list[tuple[int, int, int]], rng: np.random.Generator,
               sigma: tuple[float, float, float] = (1.0, 2.0, 2.0)) -> np.ndarray:
    """uint16 (z, y, x): noise around 100 plus Gaussian blobs of height 1000 centred on voxels."""
    grid = np.indices(shape).astype(float)
    frame = 100.0 + rng.integers(0, 20, size=shape)
    for centre in centres:
        d2 = sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, sigma))
        frame += 1000.0 * np.exp(-d2 / 2)
    return frame.astype(np.uint16)


def write_series(path: Path, frames: list[np.ndarray], voxel_size=(1.0, 1.0, 1.0)) -> Path:
    """A 2-channel store: channel 1 the blob frames, channel 0 the same mirrored in x."""
    shape = (len(frames), 2, *frames[0].shape)
    array = create_image_store(path, shape, np.uint16, voxel_size, 1.0, ("mirrored", "nuclei"))
    for t, frame in enumerate(frames):
        array[t] = np.stack([frame[..., ::-1], frame])
    return path


SETTINGS = {"channel": 1, "normalization": {"low": 1.0, "high": 99.8}}


def run(path: Path, model: torch.nn.Module, t_start: int = 0, t_stop: int | None = None, **options) -> pd.DataFrame:
    options = {"tile": (64, 64, 64), "overlap": (0, 0, 0), "min_distance": 4.0, "batch_size": 2} | options
    return detect_series(path, model, SETTINGS, t_start=t_start, t_stop=t_stop, **options)


def positions(table: pd.DataFrame) -> set[tuple[int, ...]]:
    return set(map(tuple, table[["t", "z", "y", "x"]].astype(int).to_numpy()))


# --- tiling -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length,tile,overlap,multiple", [(64, 32, 8, 8), (100, 30, 10, 8), (12, 6, 4, 4),
                                                          (50, 64, 8, 8), (1, 64, 0, 1), (37, 16, 6, 1)])
def test_axis_tiles_cover_the_axis_once(length, tile, overlap, multiple):
    starts, size, valid, owned = axis_tiles(length, tile, overlap, multiple)
    assert size % multiple == 0 and valid == min(size, length)
    assert owned[0][0] == 0 and owned[-1][1] == length
    assert all(a[1] == b[0] for a, b in itertools.pairwise(owned)), "cores must partition the axis"
    for start, (lo, hi) in zip(starts, owned):
        assert start <= lo < hi <= start + valid
    if len(starts) > 1:  # every core keeps half the overlap away from internal tile edges
        assert all(lo - s >= overlap // 2 for s, (lo, _) in zip(starts[1:], owned[1:]))
        assert all(s + valid - hi >= overlap // 2 for s, (_, hi) in zip(starts[:-1], owned[:-1]))


def test_each_peak_is_kept_only_by_the_tile_that_owns_it():
    grid = plan_tiles((1, 64, 64), (1, 32, 32), (0, 8, 8), (1, 8, 8))  # starts 0, 16, 32; seams 24, 40
    center = torch.full((1, 1, 64, 64), -5.0)
    center[0, 0, 24, 40] = 5.0  # inside four tiles, owned by the one starting at (16, 32)
    coords = torch.from_numpy(np.indices((1, 64, 64)).astype(np.float32))
    maps = {"center": center, "radius": center, "division": torch.cat([center, center]), "embedding": coords}
    out = {key: torch.stack([value[:, :, y:y + 32, x:x + 32] for _, y, x in grid.starts])
           for key, value in maps.items()}
    peaks = find_peaks(out, grid, range(len(grid)), PeakSettings.make(0.5, 4.0, (1.0, 1.0, 1.0), is_3d=False))
    assert peaks.position.tolist() == [[0, 24, 40]]
    assert peaks.embedding.tolist() == [[0.0, 24.0, 40.0]], "values must be read at the peak voxel"


def ridges_of(blobs, shape=(64, 64), radius=None, tile=None, overlap=0, voxel=(1.0, 1.0, 1.0), is_3d=False,
              min_distance: float = 3.0):
    """{(z, y, x): (ridge, ridge_distance)} of the peaks found (and then suppressed, as in inference)
    on a map of ``blobs`` (a function of z, y, x grids), whole or in tiles of ``tile`` px."""
    grids = np.indices(shape if len(shape) == 3 else (1, *shape), dtype=np.float64)
    prob = np.clip(blobs(*grids), 1e-4, 0.99)
    center = torch.from_numpy(np.log(prob / (1 - prob)).astype(np.float32))[None, None]
    radius = torch.full_like(center, 4.0) if radius is None else torch.from_numpy(radius.astype(np.float32))[None, None]
    maps = {"center": center, "radius": radius, "division": torch.cat([center, center], 1),
            "embedding": torch.zeros(1, 2, *center.shape[2:])}
    full = center.shape[2:]
    size = full if tile is None else (full[0], tile, tile)
    grid = plan_tiles(full, size, (0, overlap, overlap), (1, 8, 8))
    out = {key: torch.cat([value[:, :, z:z + size[0], y:y + size[1], x:x + size[2]] for z, y, x in grid.starts])
           for key, value in maps.items()}
    peaks = find_peaks(out, grid, range(len(grid)), PeakSettings.make(0.3, min_distance, voxel, is_3d=is_3d))
    table = suppress_close(pd.DataFrame({"z": peaks.position[:, 0], "y": peaks.position[:, 1],
                                         "x": peaks.position[:, 2], "score": peaks.score, "ridge": peaks.ridge,
                                         "ridge_distance": peaks.ridge_distance}), min_distance, voxel)
    return {(int(r.z), int(r.y), int(r.x)): (float(r.ridge), float(r.ridge_distance)) for r in table.itertuples()}


def gaussians(*blobs, scale=(1.0, 1.0, 1.0)):
    """Sum of Gaussians (z, y, x, sigma, peak) in physical units (z scaled)."""
    return lambda z, y, x: sum(p * np.exp(-((scale[0] * (z - bz)) ** 2 + (y - by) ** 2 + (x - bx) ** 2) / (2 * s * s))
                               for bz, by, bx, s, p in blobs)


def test_the_ridge_tells_two_peaks_of_one_nucleus_from_two_cells():
    # Peaks 6 px apart, radius 4 (closer than 4 + 4): broad Gaussians (sigma 2.5) are joined by a
    # ridge, narrow ones (sigma 1.2) have a valley near 0.1 of the peaks; a pair 10 px apart is
    # farther than its radii and has no ridge however broad; a lone peak has none.
    blobs = gaussians((0, 16, 21, 2.5, 0.6), (0, 16, 27, 2.5, 0.5), (0, 16, 45, 1.2, 0.9), (0, 16, 51, 1.2, 0.9),
                      (0, 48, 10, 3.0, 0.9), (0, 48, 20, 3.0, 0.9), (0, 48, 50, 1.2, 0.9))
    whole = ridges_of(blobs)
    ridge = {p[1:]: r for p, (r, _) in whole.items()}
    partner = {p[1:]: d for p, (_, d) in whole.items()}
    assert len(ridge) == 7

    def expected(a: tuple[int, int], b: tuple[int, int]) -> float:  # on the continuous map, densely
        s = np.linspace(0, 1, 4001)
        values = np.clip(blobs(0.0, a[0] + s * (b[0] - a[0]), a[1] + s * (b[1] - a[1])), 1e-4, 0.99)
        return values.min() / min(values[0], values[-1])

    (broad_a, broad_b), (narrow_a, narrow_b) = sorted(p for p in ridge if p[0] == 16)[:2], sorted(
        p for p in ridge if p[0] == 16)[2:]
    assert ridge[broad_a] == ridge[broad_b] == pytest.approx(expected(broad_a, broad_b), abs=0.02)
    assert expected(broad_a, broad_b) > 0.5
    assert ridge[narrow_a] == ridge[narrow_b] == pytest.approx(expected(narrow_a, narrow_b), abs=0.02)
    assert expected(narrow_a, narrow_b) < 0.15
    assert [r for p, r in ridge.items() if p[0] == 48] == [0.0, 0.0, 0.0]
    for a, b in ((broad_a, broad_b), (narrow_a, narrow_b)):  # each ridge says whom it joins
        assert partner[a] == partner[b] == pytest.approx(np.hypot(a[0] - b[0], a[1] - b[1]))
    assert all(np.isnan(d) for p, d in partner.items() if p[0] == 48)
    # Tiles whose seam (x = 24) runs between the broad pair: each half is owned by another tile
    # and still finds its partner in the overlap.
    tiled = ridges_of(blobs, tile=32, overlap=16)
    assert {p: r for p, (r, _) in tiled.items()} == pytest.approx({p: r for p, (r, _) in whole.items()})


def test_the_ridge_gate_is_the_sum_of_the_two_radii():
    radius = np.where(np.indices((1, 64, 64))[2] < 24, 2.0, 6.0)  # 2 px left of x = 24, 6 px right
    found = ridges_of(gaussians((0, 16, 20, 2.5, 0.6), (0, 16, 27, 2.5, 0.5)), radius=radius)
    assert [d for _, d in found.values()] == [7.0, 7.0], "7 px apart, radii 2 + 6"


def test_in_3d_the_ridge_distance_is_physical():
    # Voxels 3 x 1 x 1: two halves 2 slices apart are 6 px apart, inside radii 4 + 4.
    blobs = gaussians((3, 16, 16, 2.5, 0.5), (5, 16, 16, 2.5, 0.5), scale=(3.0, 1.0, 1.0))
    found = ridges_of(blobs, shape=(8, 32, 32), voxel=(3.0, 1.0, 1.0), is_3d=True)
    assert sorted(found) == [(3, 16, 16), (5, 16, 16)]
    assert all(r > 0.8 and d == pytest.approx(6.0) for r, d in found.values())


def test_a_ridge_skips_a_twin_peak_that_suppression_drops():
    # A plateau gives one nucleus two equal maxima 1 px apart; the kept one's ridge must still
    # join it to the nucleus' other half, not to its dropped twin.
    halves = gaussians((0, 16, 20, 2.5, 0.6), (0, 16, 29, 2.5, 0.5))

    def twins(z, y, x):
        return np.where((y == 16) & ((x == 20) | (x == 21)), 0.62, halves(z, y, x))

    found = ridges_of(twins, radius=np.full((1, 64, 64), 5.0))  # 9 px apart, radii 5 + 5
    assert sorted(found) == [(0, 16, 20), (0, 16, 29)]
    assert [d for _, d in found.values()] == [9.0, 9.0]


def test_a_ridge_never_joins_a_peak_to_a_tile_edge():
    # 12 px apart, radii 8 + 8: with 32-px tiles overlapping by 8 the peak at x = 22 does not see
    # its partner (beyond its tile) but sees a false maximum where the tile edge cuts the slope.
    blobs = gaussians((0, 16, 22, 3.5, 0.6), (0, 16, 34, 3.5, 0.5))
    radius = np.full((1, 64, 64), 8.0)
    whole = ridges_of(blobs, radius=radius)
    tiled = ridges_of(blobs, radius=radius, tile=32, overlap=8)
    assert [d for _, d in whole.values()] == [12.0, 12.0]
    assert all(d == 12.0 or np.isnan(d) for _, d in tiled.values())

# --- 2D and 3D detection ----------------------------------------------------------------------------------

SEAM = (0, 24, 40)  # with 32-px tiles overlapping by 16 on 64 px, the core seams are at 24 and 40
CENTRES_2D = [SEAM, (0, 10, 12), (0, 50, 20), (0, 33, 52)]


@pytest.fixture(scope="module")
def series_2d(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    frames = [blob_frame((1, 64, 64), CENTRES_2D, rng) for _ in range(3)]
    return write_series(tmp_path_factory.mktemp("img2d") / "image.ome.zarr", frames)


def test_seam_blob_detected_once_whatever_the_tiling(series_2d):
    single = run(series_2d, Oracle())
    assert list(single.columns) == [*DETECTION_COLUMNS, *(f"emb_{k}" for k in range(EMB))]
    assert positions(single) == {(t, *c) for t in range(3) for c in CENTRES_2D}
    for tile, overlap, batch in [((1, 32, 32), (0, 8, 8), 1), ((1, 24, 24), (0, 8, 8), 3),
                                 ((1, 40, 16), (0, 12, 8), 4)]:
        tiled = run(series_2d, Oracle(), tile=tile, overlap=overlap, batch_size=batch)
        pd.testing.assert_frame_equal(tiled, single, check_exact=True)


def test_channel_argument_overrides_the_checkpoint_channel(series_2d):
    mirrored = run(series_2d, Oracle(), channel=0)
    assert positions(mirrored) == {(t, z, y, 63 - x) for t in range(3) for z, y, x in CENTRES_2D}


class LeaningOracle(Oracle):
    """An Oracle whose centre map leans 2 px towards +y and +x: a network with a directional bias
    (``torch.roll`` wraps at the tile's edges: keep the cells away from them)."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(x)
        return out | {"center": torch.roll(out["center"], shifts=(2, 2), dims=(-2, -1))}


CENTRES_PADDED = [(0, 30, 28), (0, 10, 12), (0, 47, 20), (0, 33, 50)]


@pytest.fixture(scope="module")
def padded_series(tmp_path_factory) -> Path:
    """64 x 60 frames: a 64-wide tile is reflect-padded by 4 px at its far end in x."""
    rng = np.random.default_rng(0)
    frames = [blob_frame((1, 64, 60), CENTRES_PADDED, rng) for _ in range(3)]
    return write_series(tmp_path_factory.mktemp("padded") / "image.ome.zarr", frames)


@pytest.mark.parametrize("fixture, centres", [("series_2d", CENTRES_2D), ("padded_series", CENTRES_PADDED)])
def test_flip_averaging_cancels_a_directional_bias(request, fixture, centres):
    series = request.getfixturevalue(fixture)
    leaning = run(series, LeaningOracle())
    assert positions(leaning) == {(t, z, y + 2, x + 2) for t in range(3) for z, y, x in centres}
    averaged = run(series, LeaningOracle(), flip_average=True)
    assert positions(averaged) == {(t, *c) for t in range(3) for c in centres}


def test_flip_averaging_leaves_a_symmetric_network_as_it_was(padded_series):
    """The Oracle is mirror-symmetric, so averaging its flips, on padded and overlapping tiles,
    changes no detection and no value (up to rounding; the embedding is scaled to unit length)."""
    options = {"tile": (1, 32, 32), "overlap": (0, 8, 8)}
    plain = run(padded_series, Oracle(), **options)
    averaged = run(padded_series, Oracle(), flip_average=True, **options)
    assert positions(averaged) == positions(plain) == {(t, *c) for t in range(3) for c in CENTRES_PADDED}
    values = ["score", "radius", "division_prob", "ridge", "ridge_distance"]
    np.testing.assert_allclose(averaged[values], plain[values], rtol=1e-5, atol=1e-5)
    embedding = plain[[f"emb_{k}" for k in range(EMB)]].to_numpy()
    np.testing.assert_allclose(averaged[[f"emb_{k}" for k in range(EMB)]],
                               embedding / np.linalg.norm(embedding, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("width", [64, 60])
def test_flip_averaged_detections_mirror_with_the_image(tmp_path, width):
    """Averaged over the flips, any network (here an untrained, lopsided one) finds the mirrored
    cells of a mirrored frame that fits one tile (channel 0 is channel 1 mirrored in x), with the
    same values and unit-length embeddings, padded or not; a single pass does not."""
    model_module = pytest.importorskip("celltrails.detector.model")
    rng = np.random.default_rng(0)
    frames = [blob_frame((1, 64, width), CENTRES_PADDED, rng) for _ in range(3)]
    series = write_series(tmp_path / "image.ome.zarr", frames)
    torch.manual_seed(0)
    model = model_module.CellDetector(model_module.DetectorConfig(spatial_dims=2, base_channels=4, depth=2,
                                                                  embedding_dim=6))

    def found(channel: int, flip_average: bool) -> pd.DataFrame:
        table = run(series, model, channel=channel, threshold=0.01, flip_average=flip_average)
        if channel == 0:
            table = table.assign(x=width - 1 - table["x"])
        return table.sort_values(["t", "z", "y", "x"], ignore_index=True)

    image, mirror = found(1, True), found(0, True)
    assert len(image) > 10
    pd.testing.assert_frame_equal(image[["t", "z", "y", "x"]], mirror[["t", "z", "y", "x"]])
    values = ["score", "radius", "division_prob", *(f"emb_{k}" for k in range(6))]
    np.testing.assert_allclose(image[values], mirror[values], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(image[values[3:]], axis=1), 1.0, rtol=1e-5)
    one_pass, one_pass_mirror = found(1, False), found(0, False)
    assert not (len(one_pass) == len(one_pass_mirror)
                and np.allclose(one_pass[["x", "score"]], one_pass_mirror[["x", "score"]], rtol=1e-4))


def test_odd_frame_is_padded_to_the_model_multiple(tmp_path):
    rng = np.random.default_rng(2)
    centres = [(0, 10, 10), (0, 40, 36)]
    path = write_series(tmp_path / "odd.ome.zarr", [blob_frame((1, 50, 45), centres, rng) for _ in range(2)])
    found = run(path, Oracle(), tile=(1, 64, 64))  # one tile per frame, padded to 56 x 48
    assert positions(found) == {(t, *c) for t in range(2) for c in centres}


CENTRES_3D = [(4, 12, 12), (6, 24, 20), (7, 30, 33)]  # (6, 24, 20) lies on the z and y seams


@pytest.mark.parametrize("z_multiple", [1, 4])
def test_anisotropic_3d_tiling_matches_single_tile(tmp_path, z_multiple):
    rng = np.random.default_rng(3)
    frames = [blob_frame((12, 40, 40), CENTRES_3D, rng, sigma=(0.7, 2.0, 2.0)) for _ in range(2)]
    path = write_series(tmp_path / "img3d.ome.zarr", frames, voxel_size=(3.0, 1.0, 1.0))
    single = run(path, Oracle(z_multiple, smooth_z=1), tile=(16, 40, 40))
    assert positions(single) == {(t, *c) for t in range(2) for c in CENTRES_3D}
    tiled = run(path, Oracle(z_multiple, smooth_z=1), tile=(6, 24, 24), overlap=(4, 8, 8))
    pd.testing.assert_frame_equal(tiled, single, check_exact=True)


def test_close_peaks_keep_the_higher_score_with_z_scaled():
    table = pd.DataFrame({"t": 0, "z": [0.0, 0.0, 1.0, 0.0], "y": [10.0, 10.0, 10.0, 30.0],
                          "x": [10.0, 13.0, 10.0, 30.0], "score": [0.8, 0.9, 0.95, 0.6]})
    kept = suppress_close(table, 4.0, voxel_size=(5.0, 1.0, 1.0))
    # (0,10,13) beats (0,10,10) at 3 px; (1,10,10) is 5 px away in z and (0,30,30) far from all.
    assert sorted(kept.index) == [1, 2, 3]
    assert len(suppress_close(table, 4.0, voxel_size=(1.0, 1.0, 1.0))) == 2


@pytest.mark.parametrize("radius", [(1, 2, 2), (0, 3, 1), (2, 0, 0)])
def test_separable_max_filter_equals_the_box_max_pool(radius):
    maps = torch.randn(2, 1, 7, 19, 23, generator=torch.Generator().manual_seed(0))
    box = F.max_pool3d(maps, kernel_size=[2 * r + 1 for r in radius], stride=1, padding=list(radius))
    assert torch.equal(separable_max_filter(maps, radius), box)


# --- frame pairs, division readout, blocks -------------------------------------------------------------

STAY, VANISH, APPEAR = (0, 16, 16), (0, 16, 44), (0, 44, 30)


@pytest.fixture(scope="module")
def division_series(tmp_path_factory) -> Path:
    """5 frames: STAY always, VANISH in frames 0-1 (a mother at t=1), APPEAR from frame 2 (born)."""
    rng = np.random.default_rng(4)
    frames = [blob_frame((1, 64, 64), [STAY, *([VANISH] if t < 2 else []), *([APPEAR] if t >= 2 else [])], rng)
              for t in range(5)]
    return write_series(tmp_path_factory.mktemp("div") / "image.ome.zarr", frames)


def division_at(table: pd.DataFrame, t: int, centre: tuple[int, int, int]) -> float:
    row = table[(table.t == t) & (table.z == centre[0]) & (table.y == centre[1]) & (table.x == centre[2])]
    assert len(row) == 1, f"expected one detection at t={t} {centre}"
    return float(row["division_prob"].iloc[0])


def test_division_prob_combines_mother_and_previous_daughter_maps(division_series):
    found = run(division_series, Oracle())
    assert division_at(found, 1, VANISH) > 0.9  # ch0 of pass (1, 2)
    assert division_at(found, 2, APPEAR) > 0.9  # ch1 of pass (1, 2), read at frame 2
    assert division_at(found, 0, VANISH) < 0.2 and division_at(found, 3, APPEAR) < 0.2
    assert all(division_at(found, t, STAY) < 0.2 for t in range(5))


def test_block_starting_later_runs_the_extra_daughter_pass(division_series):
    whole = run(division_series, Oracle())
    late = run(division_series, Oracle(), t_start=2)
    pd.testing.assert_frame_equal(late, whole[whole.t >= 2].reset_index(drop=True), check_exact=True)
    assert division_at(late, 2, APPEAR) > 0.9


def test_last_frame_is_paired_with_itself(division_series):
    oracle = Oracle()
    found = run(division_series, oracle, t_start=4)
    assert positions(found) == {(4, *STAY), (4, *APPEAR)}
    assert oracle.identical_pairs == 1  # the one tile of pass (4, 4); the extra pass (3, 4) differs


@pytest.mark.parametrize("block", [1, 2, 3])
def test_blocks_give_the_same_table_as_one_block(division_series, block):
    whole = run(division_series, Oracle(), tile=(1, 32, 32), overlap=(0, 8, 8))
    blocks = run(division_series, Oracle(), tile=(1, 32, 32), overlap=(0, 8, 8), block_frames=block)
    pd.testing.assert_frame_equal(blocks, whole, check_exact=True)
    assert set(blocks.attrs["timings"]) == {"read", "model", "peaks"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp32_matches_cpu(series_2d):
    cpu = run(series_2d, Oracle(), tile=(1, 32, 32), overlap=(0, 8, 8))
    cuda = run(series_2d, Oracle(), tile=(1, 32, 32), overlap=(0, 8, 8), device="cuda", precision="fp32")
    pd.testing.assert_frame_equal(cuda, cpu, check_exact=False, rtol=1e-4, atol=1e-5)


# --- files, device, the real network ------------------------------------------------------------------------

def test_write_and_merge_blocks(tmp_path, division_series):
    paths = []
    for first in (3, 0):
        block = run(division_series, Oracle(), t_start=first, t_stop=first + 2 if first == 0 else 5)
        paths.append(tmp_path / f"block{first}.parquet")
        write_detections(block, paths[-1])
    merged = merge_detection_blocks(paths)
    write_detections(merged, tmp_path / "detections.parquet")
    expected = run(division_series, Oracle(), t_stop=2)
    assert merged.t.is_monotonic_increasing and set(merged.t) == {0, 1, 3, 4}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "detections.parquet"), merged)
    pd.testing.assert_frame_equal(merged[merged.t < 2], expected, check_exact=True)
    with pytest.raises(ValueError, match="frame 0 is in both"):
        merge_detection_blocks([paths[1], paths[1]])
    with pytest.raises(ValueError, match="score"):
        write_detections(merged.drop(columns="score"), tmp_path / "bad.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["block0.parquet", "block3.parquet", "detections.parquet"]


def test_frames_of_noise_have_no_cells(tmp_path, caplog, monkeypatch):
    """Frames 0, 2 and 3 are noise only: the oracle, whose centre map is the smoothed frame
    normalised to its own range, finds peaks there, but only frame 1's nuclei are reported, and
    the log names the other frames."""
    rng = np.random.default_rng(0)
    frames = [blob_frame((1, 64, 64), centres, rng) for centres in ([], CENTRES_2D, [], [])]
    path = write_series(tmp_path / "image.ome.zarr", frames)
    with caplog.at_level(logging.WARNING):
        found = run(path, Oracle())
    assert positions(found) == {(1, *c) for c in CENTRES_2D}
    assert any("3 frame(s) show nothing brighter than their noise" in r.message and r.message.endswith(": 0, 2-3")
               for r in caplog.records)
    assert found.attrs["frames_without_signal"] == [0, 2, 3]
    # Blocks keep their frames without signal through their files to the merged table.
    for first, stop in ((2, 4), (0, 2)):
        write_detections(run(path, Oracle(), t_start=first, t_stop=stop), tmp_path / f"block{first}.parquet")
    merged = merge_detection_blocks([tmp_path / "block2.parquet", tmp_path / "block0.parquet"])
    assert merged.attrs["frames_without_signal"] == [0, 2, 3]
    assert frame_ranges(merged.attrs["frames_without_signal"]) == "0, 2-3" and frame_ranges([]) == ""
    monkeypatch.setattr("celltrails.detector.infer.MIN_SIGNIFICANCE", -np.inf)  # without the test
    assert set(run(path, Oracle()).t) == {0, 1, 2, 3}


def test_the_signal_test_uses_the_datasets_nucleus_size(series_2d, monkeypatch):
    """Blocks of the dataset's nucleus radius at the network's scale (image radius / binning),
    else of the checkpoint's working radius."""
    radii = []

    def spy(frame, radius, voxel_size):
        radii.append(radius)
        return np.inf

    monkeypatch.setattr("celltrails.detector.infer.signal_significance", spy)
    run(series_2d, Oracle(), t_stop=1)
    run(series_2d, Oracle(), t_stop=1, nucleus_radius=2.0)
    run(series_2d, Oracle(), t_stop=1, nucleus_radius=6.0, binning=2, tile=(1, 32, 32))
    assert radii == [5.0, 2.0, 3.0]


def test_a_series_without_cells_is_an_error_naming_dataset_and_image(division_series):
    found = run(division_series, Oracle())
    require_cells(found, "cells", "results/cells/image.ome.zarr", "logs/detect_block/cells/")
    with pytest.raises(InputError, match=r"dataset 'empty', file 'results/empty/image.ome.zarr': no cell was "
                                         r"detected in any frame.*nucleus_radius"):
        require_cells(found.iloc[:0], "empty", "results/empty/image.ome.zarr", "logs/detect_block/empty/")


def test_pick_device_falls_back_to_cpu(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO):
        assert pick_device(0) == "cpu"
        assert pick_device(1) == "cpu"
    assert any(r.levelno == logging.WARNING and "runs on the CPU" in r.message for r in caplog.records)


def test_real_network_from_a_checkpoint(tmp_path, division_series):
    model_module = pytest.importorskip("celltrails.detector.model")
    checkpoint = pytest.importorskip("celltrails.detector.checkpoint")
    normalize = pytest.importorskip("celltrails.detector.normalize")
    torch.manual_seed(0)
    model = model_module.CellDetector(model_module.DetectorConfig(spatial_dims=2, base_channels=4, depth=2,
                                                                  embedding_dim=6))
    path = tmp_path / "detector.pt"
    checkpoint.save_checkpoint(path, model, trained_on=[], channel=1, training={}, metrics={},
                               normalization=normalize.normalization_settings())
    found = detect_with_checkpoint(division_series, path, 3, 5, tile=(1, 32, 32), overlap=(0, 8, 8),
                                   threshold=0.01)
    assert list(found.columns) == [*DETECTION_COLUMNS, *(f"emb_{k}" for k in range(6))]
    assert set(found.t) <= {3, 4} and len(found) > 0
    assert found["division_prob"].between(0, 1).all() and (found["radius"] >= 0).all()


def test_detection_leaves_the_callers_model_as_it_was(division_series):
    model_module = pytest.importorskip("celltrails.detector.model")
    torch.manual_seed(0)
    model = model_module.CellDetector(model_module.DetectorConfig(spatial_dims=2, base_channels=4, depth=2,
                                                                  embedding_dim=6)).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    run(division_series, model, tile=(1, 32, 32), overlap=(0, 8, 8), threshold=0.01)
    assert model.training  # not switched to eval
    for name, p in model.named_parameters():  # same values, still channels-first (training layout)
        assert torch.equal(p, before[name]) and p.is_contiguous(), name
