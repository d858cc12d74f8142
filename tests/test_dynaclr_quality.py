"""DynaCLR embedding quality: adjacent/random cosine distances, KDE peaks, smoothness and the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from celltrails.dynaclr.quality import (
    _is_categorical,
    _random_pairs,
    distribution_peak,
    embedding_pca,
    pair_distances,
    plot_distance_distributions,
    plot_embedding_pca,
    smoothness_metrics,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def circle_tracks(n_tracks: int, n_frames: int, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points on the unit circle turning by ``step`` radians per frame, tracks evenly spaced in phase.

    With >= 3 evenly spaced phases both columns have mean 0 and the same variance at every frame, so
    z-scoring only scales all points by one factor and cosines are unchanged: adjacent distance 1 - cos(step).
    """
    track = np.repeat(np.arange(n_tracks), n_frames)
    t = np.tile(np.arange(n_frames), n_tracks)
    angle = 2 * np.pi * track / n_tracks + step * t
    return np.column_stack([np.cos(angle), np.sin(angle)]), track, t


def random_walk_tracks(n_tracks: int, n_frames: int, dims: int, step: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    start = rng.normal(size=(n_tracks, 1, dims))
    walk = start + np.cumsum(rng.normal(scale=step, size=(n_tracks, n_frames, dims)), axis=1)
    track = np.repeat(np.arange(n_tracks), n_frames)
    t = np.tile(np.arange(n_frames), n_tracks)
    return walk.reshape(-1, dims), track, t


def test_circle_adjacent_distance_is_known_analytically():
    step = 0.1
    features, track, t = circle_tracks(n_tracks=6, n_frames=12, step=step)
    adjacent, random = pair_distances(features, track, t)
    assert adjacent.shape == (6 * 11,)
    assert random.shape == adjacent.shape
    np.testing.assert_allclose(adjacent, 1 - np.cos(step), atol=1e-12)


def test_adjacent_distances_match_numpy_zscore_and_rows_may_come_in_any_order():
    features, track, t = random_walk_tracks(n_tracks=4, n_frames=8, dims=5, step=0.3)
    order = np.random.default_rng(1).permutation(len(t))
    features, track, t = features[order], track[order], t[order]

    scaled = (features - features.mean(axis=0)) / features.std(axis=0)
    expected = {}
    for i in range(len(t)):
        for j in range(len(t)):
            if track[i] == track[j] and t[j] == t[i] + 1:
                a, b = scaled[i], scaled[j]
                expected[(track[i], t[i])] = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    adjacent, _ = pair_distances(features, track, t)
    assert len(adjacent) == len(expected) == 4 * 7
    np.testing.assert_allclose(np.sort(adjacent), np.sort(list(expected.values())), atol=1e-12)


def test_smooth_embedding_scores_better_than_the_same_cells_shuffled_in_time():
    features, track, t = random_walk_tracks(n_tracks=10, n_frames=20, dims=8, step=0.05)
    smooth = smoothness_metrics(features, track, t)
    rng = np.random.default_rng(3)
    shuffled_t = np.concatenate([rng.permutation(t[track == k]) for k in range(10)])
    shuffled = smoothness_metrics(features, track, shuffled_t)
    assert smooth["smoothness"] < 0.5 * shuffled["smoothness"]
    assert smooth["dynamic_range"] > shuffled["dynamic_range"]
    assert smooth["n_adjacent"] == smooth["n_random"] == 10 * 19


def test_constant_features_within_a_track_give_zero_adjacent_distance_and_smoothness():
    rng = np.random.default_rng(0)
    per_track = rng.normal(size=(5, 4))
    track = np.repeat(np.arange(5), 6)
    t = np.tile(np.arange(6), 5)
    metrics = smoothness_metrics(per_track[track], track, t)
    adjacent, random = pair_distances(per_track[track], track, t)
    np.testing.assert_allclose(adjacent, 0.0, atol=1e-12)
    assert metrics["smoothness"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["adjacent_mean"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["random_mean"] == pytest.approx(random.mean()) and metrics["random_mean"] > 0
    assert set(metrics) == {"smoothness", "dynamic_range", "adjacent_mean", "random_mean", "adjacent_peak",
                            "random_peak", "n_adjacent", "n_random"}
    assert metrics["dynamic_range"] == pytest.approx(metrics["random_peak"] - metrics["adjacent_peak"])


def test_frames_two_apart_are_not_an_adjacent_pair():
    features, _, _ = circle_tracks(n_tracks=4, n_frames=1, step=0.0)
    track = np.array(["a", "a", "b", "b"])
    t = np.array([0, 2, 5, 6])
    adjacent, _ = pair_distances(features, track, t)
    assert adjacent.size == 1  # only b at 5 -> 6
    # b's two points are a quarter turn apart: cosine 0, distance 1.
    assert adjacent[0] == pytest.approx(1.0)


def test_track_keys_may_be_rows_of_several_columns():
    features, _, _ = random_walk_tracks(n_tracks=1, n_frames=4, dims=3, step=1.0)
    keys = np.array([["ds1", 7], ["ds2", 7], ["ds1", 7], ["ds2", 7]], dtype=object)
    t = np.array([0, 1, 1, 2])
    adjacent, _ = pair_distances(features, keys, t)
    assert adjacent.size == 2  # (ds1, 7): 0 -> 1 and (ds2, 7): 1 -> 2, never across datasets


def test_random_pairs_never_pair_a_row_with_itself():
    first, second = _random_pairs(2, 500, np.random.default_rng(0))
    assert np.all(first != second)
    assert set(zip(first.tolist(), second.tolist())) == {(0, 1), (1, 0)}
    first, second = _random_pairs(7, 5000, np.random.default_rng(1))
    assert np.all(first != second)
    assert set(first.tolist()) == set(second.tolist()) == set(range(7))


def test_random_distances_are_positive_and_reproducible_with_the_seed():
    # Every row points in its own direction, so only a row paired with itself could be at distance 0.
    features, track, t = circle_tracks(n_tracks=5, n_frames=10, step=0.05)
    _, random_a = pair_distances(features, track, t, seed=7)
    _, random_b = pair_distances(features, track, t, seed=7)
    _, random_c = pair_distances(features, track, t, seed=8)
    assert np.all(random_a > 1e-6)
    np.testing.assert_array_equal(random_a, random_b)
    assert not np.array_equal(random_a, random_c)


def test_peak_of_a_normal_sample():
    sample = np.random.default_rng(0).normal(0.3, 0.05, size=2000)
    assert distribution_peak(sample) == pytest.approx(0.3, abs=0.02)


def test_peak_of_a_bimodal_sample_is_the_higher_mode():
    rng = np.random.default_rng(1)
    sample = np.concatenate([rng.normal(0.2, 0.05, 1400), rng.normal(0.8, 0.05, 600)])
    assert distribution_peak(sample) == pytest.approx(0.2, abs=0.03)


def test_peak_of_degenerate_input():
    assert np.isnan(distribution_peak(np.array([])))
    assert distribution_peak(np.array([0.4])) == 0.4
    assert distribution_peak(np.full(10, 0.25)) == 0.25
    assert distribution_peak(np.array([np.nan, 0.5, np.inf])) == 0.5


@pytest.mark.parametrize(("change", "message"), [
    ("nan", "NaN"),
    ("short_t", "lengths differ"),
    ("short_keys", "lengths differ"),
    ("no_pairs", "no adjacent pair"),
    ("duplicate", "more than one row"),
])
def test_errors_name_their_cause(change, message):
    features, track, t = circle_tracks(n_tracks=3, n_frames=4, step=0.1)
    if change == "nan":
        features[5, 1] = np.nan
    elif change == "short_t":
        t = t[:-1]
    elif change == "short_keys":
        track = track[1:]
    elif change == "no_pairs":
        t = t * 2
    elif change == "duplicate":
        t[1] = 0
    with pytest.raises(ValueError, match=message):
        pair_distances(features, track, t)


def test_embedding_pca_shapes_and_dominant_direction():
    rng = np.random.default_rng(0)
    line = rng.normal(size=(200, 1)) @ np.array([[1.0, 2.0, -1.0]]) + rng.normal(scale=0.01, size=(200, 3))
    coords, _ = embedding_pca(line, n_components=2)
    assert coords.shape == (200, 2)
    assert coords[:, 0].var() > 100 * coords[:, 1].var()
    np.testing.assert_array_equal(coords, embedding_pca(line, n_components=2)[0])

    narrow, _ = embedding_pca(rng.normal(size=(10, 1)), n_components=3)
    assert narrow.shape == (10, 3) and np.all(narrow[:, 1:] == 0) and np.any(narrow[:, 0] != 0)
    assert np.array_equal(embedding_pca(rng.normal(size=(1, 5)))[0], np.zeros((1, 2)))
    with pytest.raises(ValueError, match="NaN"):
        embedding_pca(np.array([[0.0, np.nan], [1.0, 2.0]]))


@pytest.mark.parametrize(("values", "expected"), [
    (np.array(["G1", "S", "G1"]), True),
    (np.array([True, False, True]), True),
    (np.array([0, 1, 2, 1]), True),
    (np.arange(30), False),
    (np.array([0.0, 1.0, 0.5]), False),
])
def test_categorical_or_continuous_colouring(values, expected):
    assert _is_categorical(values) is expected


def _assert_only_png(folder: Path, name: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == [name]
    assert (folder / name).read_bytes()[:8] == PNG_MAGIC


def test_distance_distribution_figure_is_written_atomically(tmp_path):
    features, track, t = random_walk_tracks(n_tracks=6, n_frames=15, dims=4, step=0.1)
    adjacent, random = pair_distances(features, track, t)
    plot_distance_distributions(adjacent, random, tmp_path / "distances.png", "random walk")
    _assert_only_png(tmp_path, "distances.png")
    # Degenerate input (all-zero adjacent distances) still draws; the existing file is replaced.
    plot_distance_distributions(np.zeros(5), random[:5], tmp_path / "distances.png", "constant")
    _assert_only_png(tmp_path, "distances.png")


def test_pca_figure_with_continuous_and_categorical_colours(tmp_path):
    features, track, t = random_walk_tracks(n_tracks=6, n_frames=15, dims=4, step=0.1)
    coords, _ = embedding_pca(features)
    state = np.where(t < 7, "early", "late")
    plot_embedding_pca(coords, {"time (frame)": t, "state": state, "track": track},
                       tmp_path / "pca.png", "random walk", explained=[0.6, 0.3])
    _assert_only_png(tmp_path, "pca.png")
    with pytest.raises(ValueError, match="colour_by"):
        plot_embedding_pca(coords, {"time (frame)": t[:-1]}, tmp_path / "bad.png", "bad")
    _assert_only_png(tmp_path, "pca.png")
