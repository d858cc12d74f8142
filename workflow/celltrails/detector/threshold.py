"""The centre threshold of one series: the checkpoint's calibrated one, or lower where the series'
own centre peaks separate lower.

Training calibrates the threshold on validation frames of its own sequence, where F1 holds a
plateau between background peaks below and missed cells above; the calibration keeps the middle
of that plateau (:func:`celltrails.detector.train.plateau_threshold`). On another sequence the
network is less sure of itself and the upper cliff moves down, so the calibrated value can drop
real cells. Measured with detectors trained on the ``01`` sequences
(CTC TRA of the ``02`` sequences, celltrails' linking): Fluo-N2DH-GOWT1 calibrated 0.70 gave TRA
0.809, 0.44 gave 0.888; Fluo-N2DH-SIM+ 0.30 gave 0.939, 0.28 gave 0.948.

A series' peak scores (detection at a low floor) fall into two populations: background peaks
piled up near 0 and cells piled up near 1, with a sparse valley between. The valley is found with
scikit-image's ``threshold_minimum`` (smooth the histogram until two maxima remain, take the
minimum between them). The threshold is the lower of the calibrated value and the valley: a series
like the training one keeps the calibrated threshold; one the network is less confident on gets
the valley. Too few peaks, or no second mode, keeps the calibrated threshold.

Peaks between ``candidate_fraction`` of the threshold and the threshold are kept apart as
candidates: the tracker admits one only into a track that also holds a detection (hysteresis in
time), so a cell that dims as it leaves the field, enters or fades stays tracked without the
series' false peaks (see ``celltrails.lineage``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.filters import threshold_minimum

SCORE_FLOOR = 0.05      # the threshold blocks detect at when the series' threshold is chosen later
LOWEST_THRESHOLD = 0.1  # a guard: never let a degenerate histogram flood the series with background
MIN_PEAKS = 200         # fewer peaks make too thin a histogram for a valley
MIN_SIDE_FRACTION = 0.1  # share of the peaks each population must hold
MAX_DIP_RATIO = 0.5     # the valley's density over the lower of the two populations' peak densities


def series_threshold(scores: np.ndarray, calibrated: float) -> dict:
    """The centre threshold for a series whose peaks above ``SCORE_FLOOR`` have ``scores``.

    Returns ``threshold`` (the one to use), ``calibrated``, ``valley`` (None when there is none)
    and ``peaks`` (how many scores the valley was sought in), for the log and the metrics file.
    """
    scores = np.asarray(scores, dtype=float)
    scores = scores[np.isfinite(scores) & (scores >= SCORE_FLOOR)]
    valley = None
    if len(scores) >= MIN_PEAKS:
        try:
            valley = max(LOWEST_THRESHOLD, float(threshold_minimum(scores)))
        except RuntimeError:  # the smoothed histogram never had two maxima: no valley
            pass
    # threshold_minimum also splits one noisy population: a valley needs a population on each side
    # and must be a dip, sparser than the densest part of either side.
    if valley is not None and not _separates(scores, valley):
        valley = None
    threshold = calibrated if valley is None else min(calibrated, valley)
    return {"threshold": float(threshold), "calibrated": float(calibrated), "valley": valley,
            "peaks": len(scores)}


def _separates(scores: np.ndarray, valley: float) -> bool:
    """Whether ``valley`` splits ``scores`` into two populations with a sparse dip between them
    (densities in bins of 0.05 from the floor: on the series measured, the dip held 7-25 % of
    the lower peak; one uniform population holds ~100 %)."""
    below, above = scores < valley, scores >= valley
    if min(below.mean(), above.mean()) < MIN_SIDE_FRACTION:
        return False
    edges = np.arange(SCORE_FLOOR, 1.0 + 1e-9, 0.05)
    counts, _ = np.histogram(scores, bins=edges)
    at = int(np.clip(np.searchsorted(edges, valley, side="right") - 1, 0, len(counts) - 1))
    left, right = counts[: at + 1].max(), counts[at:].max()
    return counts[at] <= MAX_DIP_RATIO * min(left, right)


def block_threshold(configured: float | None, adaptive: bool, candidate_fraction: float | None = None
                    ) -> float | None:
    """The threshold a detection block runs at: ``candidate_fraction`` of the configured one (all of it
    without candidates); ``SCORE_FLOOR`` when the series' threshold is chosen after all blocks
    (``adaptive`` and none configured) or candidates are kept below the calibrated one; else None,
    the checkpoint's calibrated threshold."""
    if configured is not None:
        return float(configured) * (candidate_fraction or 1.0)
    return SCORE_FLOOR if adaptive or candidate_fraction else None


def apply_threshold(detections: pd.DataFrame, configured: float | None, adaptive: bool, calibrated: float,
                    candidate_fraction: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The detections of a whole series above its threshold, the candidates between
    ``candidate_fraction`` of it and it (each table's row ids renumbered), and the choice.

    ``detections`` come from blocks run at :func:`block_threshold`. The choice also holds
    ``candidate_floor`` (None without candidates).
    """
    if configured is not None or not adaptive:
        used = float(configured) if configured is not None else float(calibrated)
        choice = {"threshold": used, "calibrated": float(calibrated), "valley": None,
                  "peaks": len(detections), "source": "config" if configured is not None else "calibrated"}
    else:
        choice = series_threshold(detections["score"].to_numpy(), calibrated)
        choice["source"] = "calibrated" if choice["threshold"] == calibrated else "valley"
    score, threshold = detections["score"].to_numpy(), choice["threshold"]
    floor = candidate_fraction * threshold if candidate_fraction else None
    if floor is not None and configured is None:  # the blocks found no peak below SCORE_FLOOR
        floor = max(floor, SCORE_FLOOR)
    below = (score > floor) & (score <= threshold) if floor is not None else np.zeros(len(score), bool)
    kept = detections[score > threshold].reset_index(drop=True)
    return kept, detections[below].reset_index(drop=True), {**choice, "candidate_floor": floor}
