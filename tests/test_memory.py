"""The memory requests of `detect_block`, `lineage` and `evaluate_tracking` (celltrails.memory)
against what the code allocates: tracemalloc's peak (numpy arrays) at two frame sizes (series
lengths for evaluate). The request must cover it, and be less than twice what it needs, so that
jobs do not queue for memory they never use."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from celltrails.ctc_export import write_ctc
from celltrails.detector.infer import detect_block
from celltrails.detector.model import CellDetector, DetectorConfig
from celltrails.evaluate import evaluate_ctc, segmentation_score
from celltrails.foreground import series_foreground
from celltrails.memory import (
    DETECT_BYTES_PER_VOXEL,
    EVALUATE_BYTES_PER_SERIES_VOXEL,
    EVALUATE_FIXED_MB,
    EVALUATE_SEG_BYTES_PER_FRAME_VOXEL,
    LINEAGE_BYTES_PER_VOXEL,
    detect_memory_mb,
    evaluate_memory_mb,
    lineage_memory_mb,
)
from celltrails.ome_zarr_io import ImageMeta, create_image_store

VOXEL = (2.0, 0.5, 0.5)


def nuclei_store(path, shape: tuple[int, int, int], n_frames: int = 1) -> pd.DataFrame:
    """An image of bright nuclei (radius 8 px) 24 px apart on a noisy background; their tracks."""
    rng = np.random.default_rng(0)
    frame = rng.integers(100, 120, shape).astype(np.float32)
    dz, dy, dx = np.ogrid[:shape[0], -12:13, -12:13]
    z = shape[0] // 2
    nucleus = 500.0 * ((dy ** 2 + dx ** 2) / 9.6 ** 2 + ((dz - z) * 4.0) ** 2 / 9.6 ** 2 < 1)
    rows = []
    for k, (y, x) in enumerate((y, x) for y in range(20, shape[1] - 13, 24) for x in range(20, shape[2] - 13, 24)):
        frame[:, y - 12:y + 13, x - 12:x + 13] += nucleus
        rows += [(t, k, k, -1, float(z), float(y), float(x), 8.0) for t in range(n_frames)]
    store = create_image_store(path, (n_frames, 1, *shape), np.uint16, VOXEL, 1.0, ["nuclei"])
    for t in range(n_frames):
        store[t, 0] = frame.astype(np.uint16)
    return pd.DataFrame(rows, columns=["t", "cell_id", "track_id", "parent_track_id", "z", "y", "x", "radius"])


def peak_bytes(prepare: Callable[[tuple[int, int, int]], object], run: Callable[[object], None],
               shape: tuple[int, int, int]) -> int:
    """tracemalloc's peak during ``run(prepare(shape))`` (the preparation is not counted)."""
    prepared = prepare(shape)
    tracemalloc.start()
    try:
        run(prepared)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_covered(prepare, run, shapes, bytes_per_voxel: float) -> None:
    """At each size the peak stays within the per-voxel part of the request plus 16 MiB (the
    request's fixed part is far larger), and at the largest it needs at least half of it."""
    for shape in shapes:
        voxels = int(np.prod(shape))
        peak = peak_bytes(prepare, run, shape)
        assert peak <= bytes_per_voxel * voxels + 16 * 2 ** 20, (shape, peak / voxels)
    assert peak > bytes_per_voxel / 2 * voxels, (shape, peak / voxels)


SIZES = {False: ((1, 1024, 1024), (1, 2048, 2048)), True: ((8, 256, 256), (32, 256, 256))}


@pytest.mark.parametrize("is_3d", [False, True])
def test_detect_request_covers_its_bytes_per_voxel(tmp_path, is_3d):
    torch.manual_seed(0)
    model = CellDetector(DetectorConfig(spatial_dims=3 if is_3d else 2, base_channels=4, depth=2, embedding_dim=4))
    settings = {"normalization": {"low": 1.0, "high": 99.8}}

    # One tile per batch: the batch (bounded by the tile size) then does not grow with the frame.
    tile, overlap = ((8, 256, 256), (0, 16, 16)) if is_3d else ((1, 256, 256), (0, 16, 16))

    def prepare(shape):
        store = tmp_path / f"{'x'.join(map(str, shape))}.ome.zarr"
        nuclei_store(store, shape, n_frames=2)
        return store

    def run(store):
        detect_block(store, model, settings, 0, 2, tile=tile, overlap=overlap, threshold=0.99, batch_size=1)

    assert_covered(prepare, run, SIZES[is_3d], DETECT_BYTES_PER_VOXEL)


@pytest.mark.parametrize("mask_shape", ["foreground", "disk"])
@pytest.mark.parametrize("is_3d", [False, True])
def test_lineage_request_covers_the_mask_export(tmp_path, mask_shape, is_3d):
    def prepare(shape):
        store = tmp_path / f"{'x'.join(map(str, shape))}.ome.zarr"
        return store, nuclei_store(store, shape), shape

    def run(prepared):
        store, tracks, shape = prepared
        foreground = None
        if mask_shape == "foreground":
            foreground, _ = series_foreground(store, 0, tracks["radius"].to_numpy(float), 0.12)
        write_ctc(tracks, tmp_path / f"ctc_{store.stem}", shape=shape, n_frames=1, voxel_size=VOXEL,
                  foreground=foreground, local_level=0.2)  # the default ctc_masks.local_level

    assert_covered(prepare, run, SIZES[is_3d], LINEAGE_BYTES_PER_VOXEL[mask_shape, is_3d])


def copy_masks(result: Path, folder: Path, prefix: str) -> None:
    """The result's maskTTT.tif as ground-truth frames {prefix}TTT.tif in ``folder``."""
    folder.mkdir(parents=True)
    for mask in result.glob("mask*.tif"):
        (folder / mask.name.replace("mask", prefix)).write_bytes(mask.read_bytes())


@pytest.mark.parametrize("is_3d", [False, True])
def test_evaluate_request_covers_both_mask_series(tmp_path, is_3d):
    """traccuracy loads the ground-truth and result masks of the whole series: the request is per
    voxel of the series (here a result scored against itself, 4 and 12 frames)."""
    frame = (8, 256, 256) if is_3d else (1, 512, 512)

    def prepare(shape):
        n_frames = shape[0] // frame[0]
        folder = tmp_path / f"{n_frames}"
        tracks = nuclei_store(folder / "image.ome.zarr", frame, n_frames)
        write_ctc(tracks, folder / "res", shape=frame, n_frames=n_frames, voxel_size=VOXEL)
        copy_masks(folder / "res", folder / "gt", "man_track")
        (folder / "gt" / "man_track.txt").write_bytes((folder / "res" / "res_track.txt").read_bytes())
        return folder

    def run(folder):
        assert evaluate_ctc(folder / "gt", folder / "res")["TRA"] == 1.0

    # The series as one tall "frame" of n_frames x frame voxels, so assert_covered counts its voxels.
    series = [(n * frame[0], *frame[1:]) for n in (4, 12)]
    assert_covered(prepare, run, series, EVALUATE_BYTES_PER_SERIES_VOXEL)


@pytest.mark.parametrize("is_3d", [False, True])
def test_seg_request_covers_one_frame(tmp_path, is_3d):
    """SEG reads one annotated frame at a time (its masks and their contingency table)."""

    def prepare(shape):
        folder = tmp_path / "x".join(map(str, shape))
        tracks = nuclei_store(folder / "image.ome.zarr", shape, n_frames=2)
        write_ctc(tracks, folder / "res", shape=shape, n_frames=2, voxel_size=VOXEL)
        copy_masks(folder / "res", folder / "gt" / "TRA", "man_track")
        copy_masks(folder / "res", folder / "gt" / "SEG", "man_seg")
        return folder

    def run(folder):
        assert segmentation_score(folder / "gt", folder / "res")["SEG"] == 1.0

    assert_covered(prepare, run, SIZES[is_3d], EVALUATE_SEG_BYTES_PER_FRAME_VOXEL)


def test_requests_grow_with_the_frame_not_the_series():
    def meta(shape):
        return ImageMeta(shape, np.dtype(np.uint16), VOXEL, 1.0, ("nuclei",))

    small, large = meta((10, 1, 50, 2048, 2048)), meta((10, 1, 200, 2048, 2048))
    for estimate in (detect_memory_mb, lambda m: lineage_memory_mb(m, "foreground")):
        assert estimate(meta((500, 2, 50, 2048, 2048))) == estimate(small)
        assert estimate(large) - estimate(small) == pytest.approx(3 * (estimate(small) - estimate(meta((10, 1, 1, 1, 1)))),
                                                                  abs=2)
    assert lineage_memory_mb(large, "foreground") > 30_000 > lineage_memory_mb(large, "disk")
    assert evaluate_memory_mb(meta((500, 2, 50, 2048, 2048)), masks=True) > 100 * evaluate_memory_mb(small, masks=False)
    assert evaluate_memory_mb(meta((500, 2, 50, 2048, 2048)), masks=False) == evaluate_memory_mb(small, masks=False)
    short = meta((2, 1, 50, 2048, 2048))  # two frames: SEG's one frame needs more than both series
    assert evaluate_memory_mb(short, masks=True) * 1e6 > (EVALUATE_FIXED_MB * 1e6
                                                          + EVALUATE_SEG_BYTES_PER_FRAME_VOXEL * 50 * 2048 * 2048)
    with pytest.raises(ValueError, match="unknown CTC mask shape 'ellipse'"):
        lineage_memory_mb(small, "ellipse")
