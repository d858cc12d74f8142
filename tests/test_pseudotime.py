"""DTW pseudo-time: subsequence alignment on known warps, DBA templates, the end-to-end table, errors, figures."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from celltrails.analysis.pseudotime import (
    PseudotimeSettings,
    align_track,
    align_tracks,
    build_template,
    embed_for_alignment,
    estimate_onset,
    medoid_index,
    plot_aligned_examples,
    plot_pseudotime_components,
    reference_sequences,
)
from scipy.stats import spearmanr
from tslearn.metrics import dtw_path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEMPLATE_LENGTH, TEMPLATE_ONSET = 21, 10  # template positions 0..20, transition at position 10


@pytest.fixture(scope="module", autouse=True)
def _compiled_dtw():
    """Compile tslearn's numba kernels once, so the one-off cost is not charged to whichever test runs first."""
    rng = np.random.default_rng(0)
    build_template([rng.normal(size=(5, 2)), rng.normal(size=(5, 2))])
    align_track(rng.normal(size=(5, 2)), rng.normal(size=(8, 2)))


def curve(tau: np.ndarray, onset: float = TEMPLATE_ONSET) -> np.ndarray:
    """A 2-D trajectory through a transition at ``tau = onset``: a sigmoid switch and a transient bump.

    Far before the onset it is the constant state (0, 0), far after it (1, 0).
    """
    u = np.asarray(tau, dtype=np.float64) - onset
    return np.column_stack([1 / (1 + np.exp(-u / 1.5)), np.exp(-(u / 2.5) ** 2)])


def template_curve() -> np.ndarray:
    return curve(np.arange(TEMPLATE_LENGTH))


def warped_track(transition_frame: int, speed: float, n_frames: int, noise: float = 0.0,
                 seed: int = 0) -> np.ndarray:
    """The template's trajectory run at ``speed`` template positions per frame, crossing its onset at
    ``transition_frame``; frames far from it sit in the constant before/after states (padding)."""
    frames = np.arange(n_frames)
    track = curve(TEMPLATE_ONSET + (frames - transition_frame) * speed)
    return track + np.random.default_rng(seed).normal(scale=noise, size=track.shape)


def test_exact_copy_with_padding_is_matched_exactly():
    template = template_curve()
    before, after = np.zeros((7, 2)), np.tile([1.0, 0.0], (5, 1))
    track = np.vstack([before, template, after])
    alignment = align_track(template, track)
    assert (alignment.start, alignment.end) == (7, 7 + TEMPLATE_LENGTH - 1)
    assert alignment.cost == pytest.approx(0.0, abs=1e-9)
    assert alignment.length_normalized_cost == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(alignment.pseudotime[7:7 + TEMPLATE_LENGTH],
                               np.arange(TEMPLATE_LENGTH) / (TEMPLATE_LENGTH - 1), atol=1e-12)
    assert list(alignment.region) == ["pre"] * 7 + ["aligned"] * TEMPLATE_LENGTH + ["post"] * 5
    assert estimate_onset(alignment, TEMPLATE_ONSET) == 7 + TEMPLATE_ONSET


@pytest.mark.parametrize(("speed", "transition_frame", "n_frames"), [
    (1.0, 12, 40),   # same speed, different padding
    (0.6, 20, 55),   # stretched: the track is slower than the template
    (0.4, 30, 70),   # strongly stretched
    (1.5, 8, 25),    # compressed: several template positions per frame
    (2.0, 15, 30),   # strongly compressed, the matched part is shorter than the template
])
def test_known_time_warps_recover_the_transition_frame(speed, transition_frame, n_frames):
    template = template_curve()
    track = warped_track(transition_frame, speed, n_frames, noise=0.01, seed=transition_frame)
    alignment = align_track(template, track)
    assert abs(estimate_onset(alignment, TEMPLATE_ONSET) - transition_frame) <= 1

    pt, region = alignment.pseudotime, alignment.region
    assert np.all(np.diff(pt) >= 0), "pseudotime must be non-decreasing along the track"
    assert np.all((pt >= 0) & (pt <= 1))
    assert np.all(pt[region == "pre"] == 0) and np.all(pt[region == "post"] == 1)
    # Regions come in order pre* aligned+ post*, and the aligned rows are exactly start..end.
    codes = np.array([{"pre": 0, "aligned": 1, "post": 2}[r] for r in region])
    assert np.all(np.diff(codes) >= 0)
    assert np.flatnonzero(codes == 1).tolist() == list(range(alignment.start, alignment.end + 1))
    # The transition frame sits at the template's transition in pseudo-time (within two template steps).
    assert abs(pt[transition_frame] - TEMPLATE_ONSET / (TEMPLATE_LENGTH - 1)) <= 2 / (TEMPLATE_LENGTH - 1)
    # Every template position takes part in the path, which has one step at a time in each index.
    path = alignment.path
    assert path[0, 0] == 0 and path[-1, 0] == TEMPLATE_LENGTH - 1
    assert set(np.diff(path, axis=0).ravel()) <= {0, 1}
    assert alignment.length_normalized_cost == pytest.approx(alignment.cost / len(path))


def test_onset_estimate_is_reported_in_frames_when_given():
    template = template_curve()
    track = warped_track(transition_frame=14, speed=0.8, n_frames=35, noise=0.01)
    alignment = align_track(template, track)
    in_rows = estimate_onset(alignment, TEMPLATE_ONSET)
    frames = 100 + 2 * np.arange(len(track))  # every other frame observed, starting at 100
    assert estimate_onset(alignment, TEMPLATE_ONSET, frames) == pytest.approx(100 + 2 * in_rows)
    with pytest.raises(ValueError, match="outside the template"):
        estimate_onset(alignment, TEMPLATE_LENGTH)


def test_a_track_that_never_switches_costs_more_than_one_that_does():
    template = template_curve()
    switching = align_track(template, warped_track(15, 0.8, 30, noise=0.02))
    flat = align_track(template, np.random.default_rng(1).normal(scale=0.02, size=(30, 2)))
    assert flat.length_normalized_cost > 5 * switching.length_normalized_cost


def shifted_orthogonal_copies(offsets: list[float]) -> list[np.ndarray]:
    """The template curve with a third coordinate fixed at each offset: DTW(a, b) = |a - b| * sqrt(T) exactly,
    since the diagonal path matches the curve perfectly and every path has at least T steps."""
    base = template_curve()
    return [np.column_stack([base, np.full(len(base), offset)]) for offset in offsets]


def test_medoid_is_the_sequence_with_the_smallest_summed_distance():
    offsets = [3.0, 10.0, 0.0, 2.0, 1.0]  # summed |differences|: 13, 34, 16, 12, 13 -> offset 2 at index 3
    sequences = shifted_orthogonal_copies(offsets)
    assert float(dtw_path(sequences[0], sequences[2])[1]) == pytest.approx(3.0 * np.sqrt(TEMPLATE_LENGTH))
    assert medoid_index(sequences) == 3
    assert medoid_index(sequences, max_candidates=len(sequences)) == 3
    subset = medoid_index(sequences, max_candidates=2, seed=7)
    assert subset == medoid_index(sequences, max_candidates=2, seed=7)  # deterministic given the seed


def test_dba_of_warped_noisy_copies_is_closer_to_the_curve_than_the_copies():
    rng = np.random.default_rng(5)
    truth = template_curve()
    copies = []
    for shift, speed in zip([-2, -1, 0, 1, 2, 0], [0.8, 1.2, 1.0, 0.9, 1.1, 1.25], strict=True):
        tau = TEMPLATE_ONSET + (np.arange(TEMPLATE_LENGTH) - TEMPLATE_ONSET - shift) * speed
        copies.append(curve(tau) + rng.normal(scale=0.05, size=(TEMPLATE_LENGTH, 2)))
    template = build_template(copies, PseudotimeSettings())
    assert template.shape == (TEMPLATE_LENGTH, 2)
    to_truth = float(dtw_path(template, truth)[1])
    copies_to_truth = np.mean([float(dtw_path(c, truth)[1]) for c in copies])
    assert to_truth < 0.8 * copies_to_truth
    np.testing.assert_array_equal(template, build_template(copies, PseudotimeSettings()))


def test_template_of_one_sequence_is_that_sequence_and_dimensions_must_agree():
    sequence = template_curve()
    template = build_template([sequence])
    np.testing.assert_array_equal(template, sequence)
    assert template is not sequence
    with pytest.raises(ValueError, match="different dimensions"):
        build_template([sequence, np.zeros((5, 3))])
    with pytest.raises(ValueError, match="no reference sequences"):
        build_template([])


# ---------------------------------------------------------------- end to end on an embeddings table

N_SWITCHING, N_FLAT, N_FRAMES, N_FEATURES = 30, 5, 30, 16
SINGLE_ROW_TRACK = 999


def synthetic_embeddings(seed: int = 0) -> tuple[pd.DataFrame, dict[int, int]]:
    """Tracks whose 16 features are a noisy linear mix of a sigmoid switch and a transient bump around each
    track's own onset (random in [5, 20]) and speed (random in [0.7, 1.4]); N_FLAT tracks never switch and
    one track has a single row. Rows are shuffled and the index is not a range, to check order handling."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(2, N_FEATURES))
    frames = np.arange(N_FRAMES)
    parts, onsets = [], {}
    for track in range(N_SWITCHING + N_FLAT):
        if track < N_SWITCHING:
            onsets[track] = int(rng.integers(5, 21))
            u = (frames - onsets[track]) * rng.uniform(0.7, 1.4)
            latent = np.column_stack([1 / (1 + np.exp(-u)), np.exp(-(u / 2) ** 2)])
        else:
            latent = np.zeros((N_FRAMES, 2))
        features = latent @ mixing + rng.normal(scale=0.15, size=(N_FRAMES, N_FEATURES))
        parts.append(pd.DataFrame({"track_id": track, "t": frames, "dataset": "synthetic",
                                   **{f"f_{d}": features[:, d] for d in range(N_FEATURES)}}))
    parts.append(pd.DataFrame({"track_id": SINGLE_ROW_TRACK, "t": [3], "dataset": "synthetic",
                               **{f"f_{d}": [0.0] for d in range(N_FEATURES)}}))
    table = pd.concat(parts, ignore_index=True)
    table = table.iloc[rng.permutation(len(table))]
    table.index = table.index * 10 + 7
    return table, onsets


@pytest.fixture(scope="module")
def synthetic() -> tuple[pd.DataFrame, dict[int, int]]:
    return synthetic_embeddings()


@pytest.fixture(scope="module")
def reference_onsets(synthetic) -> dict[int, int]:
    return {track: onset for track, onset in synthetic[1].items() if track < 8}


@pytest.fixture(scope="module")
def aligned(synthetic, reference_onsets) -> tuple[pd.DataFrame, np.ndarray]:
    return align_tracks(synthetic[0], PseudotimeSettings(), reference_onsets=reference_onsets)


def per_track(result: pd.DataFrame) -> pd.DataFrame:
    return result.groupby("track_id").first()


def test_table_has_one_row_per_input_row_with_the_documented_columns(synthetic, aligned):
    table, _ = synthetic
    result, template = aligned
    settings = PseudotimeSettings()
    k = min(settings.n_components, sum(c.startswith("f_") for c in table.columns))  # no more PCs than features
    assert template.shape == (2 * settings.window + 1, k)
    assert len(result) == len(table)
    assert result.index.equals(table.index)
    np.testing.assert_array_equal(result["track_id"].to_numpy(), table["track_id"].to_numpy())
    np.testing.assert_array_equal(result["t"].to_numpy(), table["t"].to_numpy())
    expected = ["track_id", "t", "pseudotime", "alignment_region", "dtw_cost", "length_normalized_cost",
                "onset_estimate", "response_group"] + [f"pc_{i}" for i in range(k)]
    assert list(result.columns) == expected
    for column in ["pseudotime", "dtw_cost", "length_normalized_cost", "onset_estimate"]:
        assert result[column].dtype == np.float64, column
    for column in ["alignment_region", "response_group"]:
        assert pd.api.types.is_string_dtype(result[column]), column
    assert result["track_id"].dtype == table["track_id"].dtype
    assert set(result["alignment_region"]) <= {"pre", "aligned", "post", "too_short"}
    assert set(result["response_group"]) <= {"early_responder", "late_responder", "non_responder", "too_short"}
    # The pc columns are the aligned-space coordinates: unit rows (z-score -> PCA -> L2 normalise).
    pcs = result[[f"pc_{i}" for i in range(k)]].to_numpy()
    np.testing.assert_allclose(np.linalg.norm(pcs, axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(pcs, embed_for_alignment(table, settings)[0])


def test_onset_estimates_rank_and_locate_the_true_onsets(synthetic, aligned):
    _, onsets = synthetic
    tracks = per_track(aligned[0])
    switching = tracks.loc[list(onsets)]
    true = np.array(list(onsets.values()), dtype=float)
    rho = spearmanr(switching["onset_estimate"], true).statistic
    assert rho >= 0.9
    assert np.median(np.abs(switching["onset_estimate"].to_numpy() - true)) <= 1.0


def test_tracks_that_never_switch_cost_more_and_are_flagged(synthetic, aligned):
    _, onsets = synthetic
    tracks = per_track(aligned[0]).drop(index=SINGLE_ROW_TRACK)
    is_switching = tracks.index.isin(list(onsets))
    flat, switching = tracks[~is_switching], tracks[is_switching]
    assert flat["length_normalized_cost"].mean() > switching["length_normalized_cost"].mean()
    assert (flat["response_group"] == "non_responder").mean() > (switching["response_group"] == "non_responder").mean()
    # Quantile rule: tracks above the cost_quantile quantile of the aligned tracks are non-responders.
    threshold = np.quantile(tracks["length_normalized_cost"], PseudotimeSettings().cost_quantile)
    np.testing.assert_array_equal(tracks["response_group"] == "non_responder",
                                  tracks["length_normalized_cost"] > threshold)
    # Median split of the responders' onsets: every early responder switches no later than any late one.
    early = tracks.loc[tracks["response_group"] == "early_responder", "onset_estimate"]
    late = tracks.loc[tracks["response_group"] == "late_responder", "onset_estimate"]
    assert len(early) and len(late) and early.max() <= late.min()


def test_pseudotime_is_monotone_per_track_and_short_tracks_are_not_aligned(aligned):
    result = aligned[0]
    for track, rows in result.sort_values("t").groupby("track_id"):
        if track == SINGLE_ROW_TRACK:
            continue
        pt = rows["pseudotime"].to_numpy()
        assert np.all(np.diff(pt) >= 0), track
        assert np.all(pt[rows["alignment_region"].to_numpy() == "pre"] == 0)
        assert np.all(pt[rows["alignment_region"].to_numpy() == "post"] == 1)
        assert rows["onset_estimate"].nunique() == 1
    short = result[result["track_id"] == SINGLE_ROW_TRACK].iloc[0]
    assert short["alignment_region"] == "too_short" and short["response_group"] == "too_short"
    assert np.isnan(short[["pseudotime", "dtw_cost", "length_normalized_cost", "onset_estimate"]].to_numpy(float)).all()


def test_alignment_is_deterministic_and_logs_skipped_references(synthetic, reference_onsets, aligned, caplog):
    onsets = dict(reference_onsets)
    short_sided = next(track for track, onset in synthetic[1].items() if onset < PseudotimeSettings().window)
    onsets[short_sided] = synthetic[1][short_sided]
    with caplog.at_level(logging.INFO, logger="celltrails.analysis.pseudotime"):
        result, template = align_tracks(synthetic[0], PseudotimeSettings(), reference_onsets=reference_onsets)
        align_tracks(synthetic[0], PseudotimeSettings(), reference_onsets=onsets)
    pd.testing.assert_frame_equal(result, aligned[0])
    np.testing.assert_array_equal(template, aligned[1])
    assert any("skipped 1 reference track" in message for message in caplog.messages)


def test_a_single_reference_track_can_serve_as_the_template(synthetic):
    table, onsets = synthetic
    reference = max(onsets, key=lambda track: min(onsets[track], N_FRAMES - onsets[track]))  # most central
    result, template = align_tracks(table, reference_track=reference, reference_track_onset=onsets[reference])
    n_features = sum(c.startswith("f_") for c in table.columns)
    assert template.shape == (N_FRAMES, min(PseudotimeSettings().n_components, n_features))
    switching = per_track(result).loc[list(onsets)]
    assert spearmanr(switching["onset_estimate"], list(onsets.values())).statistic >= 0.9
    # Without a known onset there is nothing to estimate, but tracks are still aligned and grouped.
    result, _ = align_tracks(table, reference_track=reference)
    aligned_rows = result["alignment_region"] != "too_short"
    assert result.loc[aligned_rows, "onset_estimate"].isna().all()
    assert result.loc[aligned_rows, "pseudotime"].between(0, 1).all()
    assert set(result.loc[aligned_rows, "response_group"]) == {"early_responder", "late_responder", "non_responder"}


def test_sequences_can_be_keyed_by_another_column(synthetic, tmp_path: Path):
    """Mother -> daughter paths share rows between trajectories: the key is then ``trajectory_id``."""
    table, onsets = synthetic
    table = table[table["track_id"] != SINGLE_ROW_TRACK]
    shared = table[table["track_id"] < 3].assign(trajectory_id=lambda d: d["track_id"] + 100)
    paths = pd.concat([table.assign(trajectory_id=table["track_id"]), shared], ignore_index=True)
    with pytest.raises(ValueError, match="duplicate"):
        align_tracks(paths, reference_onsets={0: onsets[0]})
    reference = {track: onsets[track] for track in range(8)}
    result, _ = align_tracks(paths, reference_onsets=reference, track_column="trajectory_id")
    assert len(result) == len(paths) and result.columns[0] == "trajectory_id"
    tracks = result.groupby("trajectory_id").first()
    # The same rows under another key get the same alignment.
    np.testing.assert_allclose(tracks.loc[[100, 101, 102], "onset_estimate"], tracks.loc[[0, 1, 2], "onset_estimate"])
    plot_aligned_examples(result, tmp_path / "paths.png", n=3, track_column="trajectory_id")
    assert (tmp_path / "paths.png").read_bytes()[:8] == PNG_MAGIC


def test_reference_sequences_are_centred_on_the_onset(synthetic):
    table, onsets = synthetic
    X, _ = embed_for_alignment(table)
    track = next(track for track, onset in onsets.items() if 8 <= onset <= 20)
    (sequence,) = reference_sequences(table, X, {track: onsets[track]}, window=3)
    rows = table.reset_index(drop=True).query("track_id == @track").sort_values("t")
    expected_rows = rows.index[(rows["t"] >= onsets[track] - 3) & (rows["t"] <= onsets[track] + 3)]
    np.testing.assert_array_equal(sequence, X[expected_rows])


# ---------------------------------------------------------------- errors

def test_no_reference_track_long_enough_is_an_error(synthetic):
    table, _ = synthetic
    with pytest.raises(ValueError, match="no reference track has 6 rows before and after"):
        align_tracks(table, reference_onsets={0: 2, 1: 27})


def test_nan_features_are_an_error(synthetic, reference_onsets):
    table = synthetic[0].copy()
    table.iloc[4, table.columns.get_loc("f_3")] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values in 1 row"):
        align_tracks(table, reference_onsets=reference_onsets)


def test_bad_references_and_inputs_are_errors(synthetic, reference_onsets):
    table, _ = synthetic
    with pytest.raises(ValueError, match="not in the table"):
        align_tracks(table, reference_track=12345)
    with pytest.raises(ValueError, match="not in the table"):
        align_tracks(table, reference_onsets={12345: 10})
    with pytest.raises(ValueError, match="exactly one of"):
        align_tracks(table)
    with pytest.raises(ValueError, match="exactly one of"):
        align_tracks(table, reference_onsets=reference_onsets, reference_track=0)
    with pytest.raises(ValueError, match="outside reference track"):
        align_tracks(table, reference_track=0, reference_track_onset=N_FRAMES + 5)
    with pytest.raises(ValueError, match="empty"):
        align_tracks(table.iloc[:0], reference_onsets=reference_onsets)
    with pytest.raises(ValueError, match="duplicate"):
        align_tracks(pd.concat([table, table.iloc[:1]]), reference_onsets=reference_onsets)
    with pytest.raises(ValueError, match="cost_quantile"):
        PseudotimeSettings(cost_quantile=1.5)
    with pytest.raises(ValueError, match="window"):
        PseudotimeSettings(window=0)


# ---------------------------------------------------------------- figures

def test_figures_are_written_atomically(aligned, tmp_path: Path):
    result = aligned[0]
    components, examples = tmp_path / "pseudotime_pcs.png", tmp_path / "examples.png"
    plot_pseudotime_components(result, components)
    plot_aligned_examples(result, examples, n=6)
    for path in (components, examples):
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["examples.png", "pseudotime_pcs.png"]


def test_figures_without_aligned_frames_still_render(aligned, tmp_path: Path):
    nothing = aligned[0][aligned[0]["alignment_region"] == "too_short"]
    plot_pseudotime_components(nothing, tmp_path / "a.png")
    plot_aligned_examples(nothing, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "b.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="lacks column"):
        plot_pseudotime_components(nothing.drop(columns="pc_1"), tmp_path / "c.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]
