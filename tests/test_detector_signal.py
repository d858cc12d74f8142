"""The frame signal test: noise alone has no nuclei, a faint nucleus in a large noisy frame does."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from celltrails.detector.signal import MIN_SIGNIFICANCE, _block_means, noise_sigma, signal_significance


def noisy(shape, sigma=10.0, seed=0):
    return np.random.default_rng(seed).normal(100.0, sigma, shape).astype(np.float32)


def add_disk(frame, centre, radius, height, z_radius=None):
    grid = np.indices(frame.shape)
    z_radius = z_radius or radius
    inside = (((grid[0] - centre[0]) / z_radius) ** 2 + ((grid[1] - centre[1]) / radius) ** 2
              + ((grid[2] - centre[2]) / radius) ** 2) <= 1
    frame[inside] += height
    return frame


@pytest.mark.parametrize("shape", [(1, 96, 96), (1, 1024, 1024), (24, 256, 256)])
def test_noise_alone_is_below_the_threshold(shape):
    for seed in range(3):
        assert signal_significance(noisy(shape, seed=seed), 5.0, (2.0, 1.0, 1.0)) < MIN_SIGNIFICANCE - 1.5


def test_one_faint_nucleus_in_a_large_frame_is_signal():
    """Radius 5, two noise sigmas above the background, in a megapixel of noise."""
    frame = add_disk(noisy((1, 1024, 1024)), (0, 500, 300), 5, 20.0)
    assert signal_significance(frame, 5.0, (1.0, 1.0, 1.0)) > MIN_SIGNIFICANCE + 1.5
    # ... and a dimmer one (half a sigma) is not told from the noise.
    assert signal_significance(add_disk(noisy((1, 1024, 1024)), (0, 500, 300), 5, 5.0), 5.0,
                               (1.0, 1.0, 1.0)) < MIN_SIGNIFICANCE


def test_a_3d_nucleus_is_signal_and_3d_noise_is_not():
    """A 3D nucleus of radius 6 px (3 um: 1.5 slices of 2 um) two sigmas above the noise."""
    frame = add_disk(noisy((30, 200, 200)), (15, 100, 100), 6, 20.0, z_radius=1.5)
    assert signal_significance(frame, 6.0, (2.0, 0.5, 0.5)) > MIN_SIGNIFICANCE
    assert signal_significance(noisy((30, 200, 200)), 6.0, (2.0, 0.5, 0.5)) < MIN_SIGNIFICANCE


def test_noise_level_ignores_the_nuclei():
    frame = noisy((1, 512, 512), sigma=7.0)
    for k in range(40):
        add_disk(frame, (0, 30 + 12 * k, 40 + 11 * k), 6, 500.0)
    assert noise_sigma(frame) == pytest.approx(7.0, rel=0.05)


def test_constant_and_noise_free_frames():
    assert signal_significance(np.full((1, 64, 64), 5.0, np.float32), 5.0, (1.0, 1.0, 1.0)) == 0.0
    clean = add_disk(np.zeros((1, 64, 64), np.float32), (0, 30, 30), 5, 1.0)
    assert signal_significance(clean, 5.0, (1.0, 1.0, 1.0)) == np.inf


def test_block_means_tile_from_either_end():
    frame = np.random.default_rng(0).normal(size=(7, 23, 31)).astype(np.float32)
    expected = frame[:6, :20, :30].reshape(3, 2, 4, 5, 6, 5).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(_block_means(frame, (2, 5, 5)), expected, atol=1e-6)
    expected = frame[1:, 3:, 1:].reshape(3, 2, 4, 5, 6, 5).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(_block_means(frame, (2, 5, 5), from_end=True), expected, atol=1e-6)


def test_a_nucleus_in_the_last_slices_of_a_stack_is_seen():
    """Isotropic 9-slice stack, blocks 5 deep: slices 5-8 are the remainder of blocks tiled from
    the first slice; a nucleus centred in slice 8 lies in whole blocks tiled from the last one."""
    frame = add_disk(noisy((9, 128, 128)), (8, 60, 60), 5, 50.0)
    assert signal_significance(frame, 5.0, (1.0, 1.0, 1.0)) > 4 * MIN_SIGNIFICANCE
    for seed in range(3):  # noise with deep blocks stays below
        assert signal_significance(noisy((9, 128, 128), seed=seed), 5.0, (1.0, 1.0, 1.0)) < MIN_SIGNIFICANCE - 1.5


def test_uint16_frames_score_as_their_float_copy():
    frame = add_disk(noisy((1, 256, 256)), (0, 100, 100), 5, 30.0)
    assert signal_significance(frame.astype(np.uint16), 5.0, (1.0, 1.0, 1.0)) == pytest.approx(
        signal_significance(np.floor(frame).astype(np.float32), 5.0, (1.0, 1.0, 1.0)), rel=1e-6)


def test_the_test_makes_no_copy_of_the_frame():
    """It runs on every frame inside detection, whose memory request is 16 bytes per voxel."""
    frame = noisy((40, 512, 512))
    tracemalloc.start()
    signal_significance(frame, 5.0, (2.0, 0.5, 0.5))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * frame.size  # one float32 copy would be 4 bytes per voxel
