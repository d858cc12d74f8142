"""The series' centre threshold: calibrated, or the valley between background and cell peaks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from celltrails.detector.threshold import (
    LOWEST_THRESHOLD,
    SCORE_FLOOR,
    apply_threshold,
    block_threshold,
    series_threshold,
)


def bimodal_scores(cells_at: float, n_cells: int = 600, n_background: int = 900, seed: int = 0) -> np.ndarray:
    """Background peaks piled up at the floor, cells around ``cells_at``."""
    rng = np.random.default_rng(seed)
    background = SCORE_FLOOR + rng.exponential(0.04, n_background)
    cells = np.clip(rng.normal(cells_at, 0.08, n_cells), 0, 0.999)
    return np.concatenate([background, cells])


def test_valley_lowers_the_threshold_of_a_less_confident_series():
    scores = bimodal_scores(cells_at=0.6)
    choice = series_threshold(scores, calibrated=0.7)
    assert 0.2 < choice["valley"] < 0.45, "the valley lies between the two populations"
    assert choice["threshold"] == choice["valley"] < 0.7
    background = scores[:900]
    kept = scores > choice["threshold"]
    assert kept[900:].mean() > 0.99 and kept[:900].mean() < 0.05 and background.max() > 0.2


def test_calibrated_threshold_kept_when_lower_than_the_valley():
    choice = series_threshold(bimodal_scores(cells_at=0.9), calibrated=0.3)
    assert choice["valley"] > 0.3 and choice["threshold"] == 0.3


def test_too_few_or_one_population_keeps_the_calibrated_threshold():
    assert series_threshold(bimodal_scores(0.6, n_cells=50, n_background=50), 0.7)["valley"] is None
    one_mode = np.random.default_rng(1).normal(0.8, 0.05, 1000)
    choice = series_threshold(one_mode, calibrated=0.55)
    assert choice["valley"] is None and choice["threshold"] == 0.55
    flat = np.random.default_rng(0).uniform(SCORE_FLOOR, 1.0, 1000)   # no dip for the valley to sit in
    assert series_threshold(flat, calibrated=0.5)["valley"] is None


def test_valley_never_below_the_guard():
    rng = np.random.default_rng(2)
    scores = np.concatenate([SCORE_FLOOR + rng.exponential(0.005, 800), rng.uniform(0.07, 0.99, 800)])
    assert series_threshold(scores, calibrated=0.5)["threshold"] >= LOWEST_THRESHOLD


def test_blocks_and_merge_agree_on_who_thresholds():
    assert block_threshold(0.35, adaptive=True) == 0.35
    assert block_threshold(None, adaptive=True) == SCORE_FLOOR
    assert block_threshold(None, adaptive=False) is None
    table = pd.DataFrame({"score": bimodal_scores(0.6), "t": 0})
    kept, candidates, choice = apply_threshold(table, None, True, calibrated=0.7)
    assert choice["source"] == "valley" and (kept["score"] > choice["threshold"]).all()
    assert list(kept.index) == list(range(len(kept))) and 590 < len(kept) < 650
    assert len(candidates) == 0 and choice["candidate_floor"] is None
    above = table[table["score"] > 0.35]
    fixed, _, choice = apply_threshold(above, 0.35, True, calibrated=0.7)
    assert len(fixed) == len(above) and choice == pytest.approx(
        {"threshold": 0.35, "calibrated": 0.7, "valley": None, "peaks": len(above), "source": "config",
         "candidate_floor": None})


def test_candidates_are_the_peaks_between_a_fraction_of_the_threshold_and_it():
    assert block_threshold(0.4, adaptive=True, candidate_fraction=0.5) == pytest.approx(0.2)
    assert block_threshold(None, adaptive=False, candidate_fraction=0.5) == SCORE_FLOOR
    table = pd.DataFrame({"score": bimodal_scores(0.6), "t": 0})
    kept, candidates, choice = apply_threshold(table, None, True, calibrated=0.7, candidate_fraction=0.5)
    threshold = choice["threshold"]
    assert choice["candidate_floor"] == pytest.approx(threshold / 2)
    score = table["score"]
    assert len(kept) == (score > threshold).sum()
    assert len(candidates) == ((score > threshold / 2) & (score <= threshold)).sum() > 10
    assert candidates["score"].between(threshold / 2, threshold, inclusive="right").all()
    assert list(candidates.index) == list(range(len(candidates)))
    # A peak at the threshold is a candidate, one at the floor is neither.
    edges = pd.DataFrame({"score": [0.2, 0.2001, 0.4, 0.4001], "t": 0})
    kept, candidates, _ = apply_threshold(edges, 0.4, True, calibrated=0.7, candidate_fraction=0.5)
    assert kept["score"].tolist() == [0.4001] and candidates["score"].tolist() == [0.2001, 0.4]
    # Calibrated only (not adaptive): the blocks ran at the floor, the split is at the calibrated value.
    kept, candidates, choice = apply_threshold(table, None, False, calibrated=0.7, candidate_fraction=0.5)
    assert choice["source"] == "calibrated" and (kept["score"] > 0.7).all()
    assert candidates["score"].between(0.35, 0.7, inclusive="right").all() and len(candidates) > 10
    # The blocks found nothing below SCORE_FLOOR, so the floor reported is never lower.
    _, _, choice = apply_threshold(table, None, False, calibrated=0.06, candidate_fraction=0.5)
    assert choice["candidate_floor"] == SCORE_FLOOR


def test_histogram_figure_is_written(tmp_path):
    from celltrails.figures import threshold_histogram

    scores = bimodal_scores(0.6)
    threshold_histogram(scores, series_threshold(scores, 0.7), tmp_path / "qc.png", "demo")
    assert (tmp_path / "qc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "qc.png").stat().st_size > 10_000
