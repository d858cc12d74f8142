"""DTW pseudo-time: align asynchronous cell trajectories to a template transition ("digital synchronization").

Cells in a time-lapse go through the same transition (infection, mitosis, ...) at different times and speeds.
Following DynaCLR (arXiv 2410.11281; reference code VisCy ``applications/dynaclr/.../dtw_alignment.py``), each
cell's trajectory of embeddings is aligned by dynamic time warping (DTW) to a template trajectory through the
transition; the alignment gives every frame a pseudo-time and every cell an estimate of when its transition
happened. Design, with the reasons for each choice:

1. Preprocessing (:func:`embed_for_alignment`): z-score every feature, PCA to ``n_components`` (8), then
   L2-normalise each row, fitted on all rows given, as VisCy does. Z-scoring stops a few large-scale features
   from dominating; PCA drops noise dimensions that would otherwise add to every DTW distance; the row
   normalisation makes distances depend on direction only, matching the cosine geometry of contrastive
   embeddings. The fitted objects come back as an sklearn ``Pipeline`` so new cells can be projected the same
   way. Align one dataset (experiment) at a time: VisCy z-scores per experiment, and the per-cell key
   (``track_column``, default ``track_id``; e.g. ``trajectory_id`` for the mother -> daughter paths of
   :mod:`celltrails.analysis.transitions`) must be unique per cell, so duplicate ``(key, t)`` rows are refused.
2. Template (:func:`reference_sequences`, :func:`build_template`): either
   a) annotated transitioning cells (``reference_onsets``: track id -> onset frame), each cropped to the
      ``2 * window + 1`` rows centred on the onset (rows in time order; the onset row is the first with
      ``t >= onset``; a gap in the track is treated as consecutive observations, as DTW is tolerant of this),
      averaged by DTW barycenter averaging (DBA, tslearn, ``max_iter`` 30 and ``tol`` 1e-5 as VisCy)
      initialised from their medoid, the sequence with the smallest summed DTW distance to the others (at
      most ``medoid_candidates`` candidates, drawn with ``seed``, as VisCy). Because every crop has its onset
      at index ``window`` and DBA keeps the medoid's length, the template's transition index is ``window``.
      Tracks too short on either side of their onset are skipped with a logged note;
   b) or one named reference track, used whole (no averaging); its transition index comes from
      ``reference_track_onset`` when given, otherwise no onset can be estimated (see 5).
3. Alignment (:func:`align_track`): subsequence DTW (``tslearn.metrics.dtw_subsequence_path(template,
   track)``): every template position takes part and is matched to a contiguous part of the track, whose
   start and end are free. A track thus may dwell before or after the transition for any length of time
   without being penalised, which is the point of asynchronous cells. DTW cost is tslearn's
   ``sqrt(sum ||x_i - y_j||^2)`` along the path; ``length_normalized_cost`` = cost / path length, so costs of
   long and short matches compare (VisCy).
4. Pseudo-time per frame: template index / (T - 1) of the template positions the frame is matched to. A frame
   matched to several positions (a track faster than the template) gets the *mean* of their pseudo-times, the
   centre of the stretch it stands for; VisCy keeps the last one, which biases such frames late. Because a DTW
   path is monotone in both indices, this stays non-decreasing along the track. Frames before the match get 0
   (region ``pre``), after it 1 (``post``), matched frames are ``aligned``.
5. Onset estimate (:func:`estimate_onset`): the mean frame (``t``) of the track rows matched to the template's
   transition index. NaN when the template has no known transition (single reference track without onset).
6. Response groups, per track: ``non_responder`` when the length-normalised cost is above the
   ``cost_quantile`` (0.75) quantile over all aligned tracks: the track does not follow the template well.
   The others are split at the median onset estimate: ``early_responder`` for onset <= median, else
   ``late_responder``. VisCy splits on the mean warping speed instead; the onset is the quantity this module
   is built to estimate and is directly interpretable (when did the cell respond). Without a known template
   transition, the split uses the first matched frame (when the track starts to follow the template).
   Note that with the quantile rule about a quarter of the tracks are ``non_responder`` by construction,
   whether or not any cell truly failed to respond: it flags the worst fits, not a tested hypothesis.
   Tracks with fewer than 2 frames are not aligned: NaN values, region and group ``too_short``.

DTW comes from tslearn (numba-compiled, without an on-disk cache: the first DTW call in a process pays
several seconds of compilation, 3-12 s measured on a loaded 2-core machine; later calls take milliseconds).
Figures use ``matplotlib.figure.Figure`` objects (no pyplot global state) and are written atomically.
Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from tslearn.barycenters import dtw_barycenter_averaging
from tslearn.metrics import dtw_path, dtw_subsequence_path

from celltrails.dynaclr.quality import feature_matrix
from celltrails.figures import save_png

__all__ = [
    "REGION_ALIGNED",
    "REGION_POST",
    "REGION_PRE",
    "TOO_SHORT",
    "Alignment",
    "PseudotimeSettings",
    "align_track",
    "align_tracks",
    "build_template",
    "embed_for_alignment",
    "estimate_onset",
    "medoid_index",
    "plot_aligned_examples",
    "plot_pseudotime_components",
    "reference_sequences",
]

REGION_PRE, REGION_ALIGNED, REGION_POST = "pre", "aligned", "post"
TOO_SHORT = "too_short"  # region and response group of tracks with fewer than MIN_TRACK_FRAMES rows
NON_RESPONDER, EARLY_RESPONDER, LATE_RESPONDER = "non_responder", "early_responder", "late_responder"
MIN_TRACK_FRAMES = 2
PC_PREFIX = "pc_"

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PseudotimeSettings:
    """Parameters of the DTW pseudo-time alignment; defaults follow VisCy where it has one."""

    n_components: int = 20  # PCA components after z-scoring (rows are then L2-normalised)
    window: int = 6  # reference tracks are cropped to [onset - window, onset + window] (rows)
    max_iter: int = 30  # DBA iterations (tslearn default, as VisCy)
    tol: float = 1e-5  # DBA convergence tolerance (tslearn default, as VisCy)
    cost_quantile: float = 0.75  # length-normalised cost above this quantile -> "non_responder"
    medoid_candidates: int = 50  # at most this many sequences are tried as the DBA initialisation (VisCy)
    seed: int = 42

    def __post_init__(self) -> None:
        if self.n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1 frame, got {self.window}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if not self.tol >= 0:
            raise ValueError(f"tol must be >= 0, got {self.tol}")
        if not 0 < self.cost_quantile <= 1:
            raise ValueError(f"cost_quantile must be in (0, 1], got {self.cost_quantile}")
        if self.medoid_candidates < 1:
            raise ValueError(f"medoid_candidates must be >= 1, got {self.medoid_candidates}")


@dataclass(frozen=True, eq=False)
class Alignment:
    """Subsequence-DTW alignment of one track (``n`` rows, in time order) to a template of ``T`` positions.

    Positions (``start``, ``end``, the second column of ``path``) index the track's rows, not frame numbers.
    """

    path: np.ndarray = field(repr=False)  # (L, 2) int pairs (template index, track row), monotone
    pseudotime: np.ndarray = field(repr=False)  # (n,) in [0, 1], non-decreasing
    region: np.ndarray = field(repr=False)  # (n,) "pre" / "aligned" / "post"
    cost: float  # tslearn DTW: sqrt of the summed squared distances along the path
    length_normalized_cost: float  # cost / path length
    start: int  # first matched track row
    end: int  # last matched track row (inclusive)
    template_length: int


def _as_sequence(values: np.ndarray, name: str) -> np.ndarray:
    """A C-contiguous float64 (length, dims) array: one numba signature for every tslearn call."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"{name} must be a (length, dims) array, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(values)


def embed_for_alignment(table: pd.DataFrame, settings: PseudotimeSettings = PseudotimeSettings(),
                        prefix: str = "f_") -> tuple[np.ndarray, Pipeline]:
    """(N, k) aligned-space coordinates of the table's ``f_*`` features and the fitted pipeline.

    z-score -> PCA -> row L2 normalisation, fitted on all rows given (see the module docstring for why).
    ``k = min(n_components, N, D)``: PCA cannot have more components than rows or features.
    """
    if len(table) == 0:
        raise ValueError("the embeddings table is empty: nothing to align")
    features = feature_matrix(table, prefix=prefix)
    bad = ~np.isfinite(features)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(f"features contain NaN or infinite values in {rows.size} row(s), first row "
                         f"{rows[0]}: drop or fix those cells before aligning")
    k = min(settings.n_components, *features.shape)
    pipeline = Pipeline([("scale", StandardScaler()),
                         ("pca", PCA(n_components=k, random_state=settings.seed)),
                         ("normalize", Normalizer(norm="l2"))])
    coords = pipeline.fit_transform(features)
    return np.ascontiguousarray(coords, dtype=np.float64), pipeline


def _track_rows(table: pd.DataFrame, track_column: str = "track_id") -> dict[Hashable, np.ndarray]:
    """Track id -> positional row indices of that track in time order; tracks sorted by id."""
    missing = [c for c in (track_column, "t") if c not in table.columns]
    if missing:
        raise ValueError(f"the embeddings table lacks column(s) {missing}")
    keys = table[[track_column, "t"]].reset_index(drop=True)
    duplicated = keys.duplicated()
    if duplicated.any():
        first = keys[duplicated].iloc[0]
        raise ValueError(f"{int(duplicated.sum())} duplicate ({track_column}, t) row(s), first "
                         f"{first[track_column]!r} at t={first['t']}: align one dataset at a time, with one "
                         "row per cell per frame")
    t = keys["t"].to_numpy()
    return {track: rows[np.argsort(t[rows], kind="stable")]
            for track, rows in keys.groupby(track_column, sort=True).indices.items()}


def _onset_row(times: np.ndarray, onset: float) -> int:
    """Index of the first row at or after ``onset`` in a sorted time array (len(times) if none)."""
    return int(np.searchsorted(times, onset, side="left"))


def reference_sequences(table: pd.DataFrame, X: np.ndarray, onsets: Mapping[Hashable, float], window: int,
                        logger: logging.Logger | None = None, track_column: str = "track_id") -> list[np.ndarray]:
    """Rows of ``X`` for each reference track, cropped to the ``2 * window + 1`` rows centred on its onset.

    ``X`` is row-aligned with ``table`` (e.g. from :func:`embed_for_alignment`). Rows are taken in time order
    and the onset row is the first with ``t >= onset``, so every crop has its onset at index ``window``.
    Tracks without ``window`` rows on either side of the onset are skipped with a logged note; an unknown track
    id, or no track left, is an error. ``track_column`` names the per-cell key (default ``track_id``).
    """
    logger = logger or _logger
    X = np.asarray(X, dtype=np.float64)
    if len(X) != len(table):
        raise ValueError(f"X has {len(X)} rows for a table of {len(table)}")
    if not onsets:
        raise ValueError("no reference onsets given")
    rows_by_track = _track_rows(table, track_column)
    unknown = [track for track in onsets if track not in rows_by_track]
    if unknown:
        raise ValueError(f"reference track id(s) {unknown[:5]} not in the table")
    t = table["t"].to_numpy()
    sequences, skipped = [], []
    for track, onset in onsets.items():
        rows = rows_by_track[track]
        centre = _onset_row(t[rows], onset)
        if centre - window < 0 or centre + window >= len(rows):
            skipped.append(f"{track} (onset {onset}, {centre} row(s) before, {len(rows) - centre - 1} after)")
            continue
        sequences.append(np.ascontiguousarray(X[rows[centre - window: centre + window + 1]]))
    if skipped:
        logger.info("skipped %d reference track(s) without %d rows on both sides of the onset: %s",
                    len(skipped), window, ", ".join(skipped))
    if not sequences:
        raise ValueError(f"no reference track has {window} rows before and after its onset (window {window}): "
                         "annotate longer tracks or use a smaller window")
    return sequences


def _dtw_distance(a: np.ndarray, b: np.ndarray) -> float:
    # dtw_path shares its compiled kernel with DBA, so the medoid search adds no compilation time.
    return float(dtw_path(a, b)[1])


def medoid_index(sequences: Sequence[np.ndarray], max_candidates: int | None = None, seed: int = 42) -> int:
    """Index of the sequence with the smallest summed DTW distance to all sequences.

    With more than ``max_candidates`` sequences only a random subset (``numpy.random.default_rng(seed)``) is
    tried, each against all sequences. Ties go to the lower index.
    """
    seqs = [_as_sequence(s, f"sequence {k}") for k, s in enumerate(sequences)]
    n = len(seqs)
    if n == 0:
        raise ValueError("no sequences given")
    if n == 1:
        return 0
    if max_candidates is not None and n > max_candidates:
        candidates = np.sort(np.random.default_rng(seed).choice(n, size=max_candidates, replace=False))
    else:
        candidates = np.arange(n)
    cache: dict[tuple[int, int], float] = {}
    totals = np.zeros(len(candidates))
    for slot, c in enumerate(candidates):
        for other in range(n):
            if other != c:
                key = (min(c, other), max(c, other))
                if key not in cache:
                    cache[key] = _dtw_distance(seqs[key[0]], seqs[key[1]])
                totals[slot] += cache[key]
    return int(candidates[int(np.argmin(totals))])


def build_template(sequences: Sequence[np.ndarray],
                   settings: PseudotimeSettings = PseudotimeSettings()) -> np.ndarray:
    """DBA template (T, d) of the reference sequences, initialised from their medoid (VisCy); T = medoid length.

    One sequence is returned as is (a copy): there is nothing to average.
    """
    seqs = [_as_sequence(s, f"sequence {k}") for k, s in enumerate(sequences)]
    if not seqs:
        raise ValueError("no reference sequences to build a template from")
    dims = {s.shape[1] for s in seqs}
    if len(dims) != 1:
        raise ValueError(f"reference sequences have different dimensions {sorted(dims)}")
    if len(seqs) == 1:
        return seqs[0].copy()
    medoid = seqs[medoid_index(seqs, settings.medoid_candidates, settings.seed)]
    template = dtw_barycenter_averaging(seqs, init_barycenter=medoid, max_iter=settings.max_iter,
                                        tol=settings.tol)
    return np.ascontiguousarray(template, dtype=np.float64)


def align_track(template: np.ndarray, sequence: np.ndarray) -> Alignment:
    """Subsequence DTW of the whole ``template`` (T, d) against a contiguous part of ``sequence`` (n, d).

    Per track row: pseudo-time = mean template index / (T - 1) of the positions it is matched to; 0 before
    the match (region "pre"), 1 after it ("post"). See the module docstring for the reasons.
    """
    template = _as_sequence(template, "template")
    sequence = _as_sequence(sequence, "sequence")
    if len(template) < 2:
        raise ValueError(f"the template needs >= 2 positions to define a pseudo-time, got {len(template)}")
    if len(sequence) < 1:
        raise ValueError("the sequence is empty")
    if template.shape[1] != sequence.shape[1]:
        raise ValueError(f"template has {template.shape[1]} dimensions, sequence {sequence.shape[1]}")
    raw_path, cost = dtw_subsequence_path(template, sequence)
    path = np.asarray(raw_path, dtype=np.int64).reshape(-1, 2)
    positions, rows = path[:, 0], path[:, 1]
    start, end, n = int(rows[0]), int(rows[-1]), len(sequence)
    span = end - start + 1
    # Every row between start and end is on the path (DTW steps are at most one in each index).
    sums = np.bincount(rows - start, weights=positions, minlength=span)
    counts = np.bincount(rows - start, minlength=span)
    pseudotime = np.zeros(n)
    pseudotime[start: end + 1] = sums / counts / (len(template) - 1)
    pseudotime[end + 1:] = 1.0
    region = np.full(n, REGION_ALIGNED, dtype=object)
    region[:start] = REGION_PRE
    region[end + 1:] = REGION_POST
    cost = float(cost)
    return Alignment(path=path, pseudotime=pseudotime, region=region, cost=cost,
                     length_normalized_cost=cost / len(path), start=start, end=end,
                     template_length=len(template))


def estimate_onset(alignment: Alignment, template_onset_index: int, frames: np.ndarray | None = None) -> float:
    """The track frame aligned to the template's transition position; the mean if several rows map to it.

    ``frames`` are the track rows' ``t`` values (time order); without them the result is a row position.
    A template built by :func:`build_template` from onset-centred crops has its transition at ``window``.
    """
    if not 0 <= template_onset_index < alignment.template_length:
        raise ValueError(f"template_onset_index {template_onset_index} outside the template "
                         f"(0..{alignment.template_length - 1})")
    rows = alignment.path[alignment.path[:, 0] == template_onset_index, 1]
    if frames is None:
        return float(rows.mean())
    frames = np.asarray(frames, dtype=np.float64)
    if len(frames) != len(alignment.pseudotime):
        raise ValueError(f"{len(frames)} frames for an alignment of {len(alignment.pseudotime)} rows")
    return float(frames[rows].mean())


def _response_groups(costs: pd.Series, timing: pd.Series, quantile: float) -> pd.Series:
    """Per aligned track: non_responder above the cost quantile, else early/late by the median timing."""
    groups = pd.Series(NON_RESPONDER, index=costs.index, dtype=object)
    if costs.empty:
        return groups
    responders = costs <= np.quantile(costs.to_numpy(), quantile)
    median = timing[responders].median()
    groups[responders] = np.where(timing[responders] <= median, EARLY_RESPONDER, LATE_RESPONDER)
    return groups


def align_tracks(table: pd.DataFrame, settings: PseudotimeSettings = PseudotimeSettings(), *,
                 reference_onsets: Mapping[Hashable, float] | None = None,
                 reference_track: Hashable | None = None, reference_track_onset: float | None = None,
                 track_column: str = "track_id",
                 logger: logging.Logger | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Pseudo-time of every cell at every frame, aligned to a template transition; and the (T, k) template.

    Give exactly one of ``reference_onsets`` (annotated transitioning tracks: id -> onset frame; DBA template
    of their onset-centred crops) or ``reference_track`` (one track used whole as the template, with its onset
    frame in ``reference_track_onset`` when known). Every track with >= 2 rows is aligned.
    ``track_column`` names the per-cell key: ``track_id``, or e.g. ``trajectory_id`` for mother -> daughter
    paths (:func:`celltrails.analysis.transitions.division_trajectories`); the output keeps that name.

    Returns a table with one row per input row, in input order and with the input index:
    ``track_id``, ``t`` (input dtypes); ``pseudotime``, ``dtw_cost``, ``length_normalized_cost``,
    ``onset_estimate`` (per track, in frames) as float64; ``alignment_region`` ("pre"/"aligned"/"post"/
    "too_short") and ``response_group`` ("early_responder"/"late_responder"/"non_responder"/"too_short") as
    str; and ``pc_0..pc_{k-1}``, the aligned-space coordinates (:func:`embed_for_alignment`) for the figures.
    """
    logger = logger or _logger
    if (reference_onsets is None) == (reference_track is None):
        raise ValueError("give exactly one of reference_onsets (annotated transitioning tracks) or "
                         "reference_track (one track used whole as the template)")
    if reference_track_onset is not None and reference_track is None:
        raise ValueError("reference_track_onset needs reference_track")
    if len(table) == 0:
        raise ValueError("the embeddings table is empty: nothing to align")
    rows_by_track = _track_rows(table, track_column)
    X, _ = embed_for_alignment(table, settings)
    t = table["t"].to_numpy()

    if reference_onsets is not None:
        sequences = reference_sequences(table, X, reference_onsets, settings.window, logger, track_column)
        template = build_template(sequences, settings)
        onset_index: int | None = settings.window
        logger.info("template: DBA of %d reference track(s), %d positions, transition at %d",
                    len(sequences), len(template), onset_index)
    else:
        if reference_track not in rows_by_track:
            raise ValueError(f"reference track {reference_track!r} not in the table")
        rows = rows_by_track[reference_track]
        if len(rows) < 2:
            raise ValueError(f"reference track {reference_track!r} has {len(rows)} row(s); a template needs >= 2")
        template = np.ascontiguousarray(X[rows])
        onset_index = None
        if reference_track_onset is not None:
            onset_index = _onset_row(t[rows], reference_track_onset)
            if onset_index >= len(rows) or t[rows][0] > reference_track_onset:
                raise ValueError(f"reference_track_onset {reference_track_onset} outside reference track "
                                 f"{reference_track!r} (t {t[rows][0]}..{t[rows][-1]})")
        logger.info("template: reference track %r, %d positions, transition %s", reference_track,
                    len(template), "unknown" if onset_index is None else f"at {onset_index}")

    n = len(table)
    pseudotime = np.full(n, np.nan)
    region = np.full(n, TOO_SHORT, dtype=object)
    cost = np.full(n, np.nan)
    normalized = np.full(n, np.nan)
    onset = np.full(n, np.nan)
    per_track: dict[Hashable, tuple[float, float]] = {}  # id -> (normalised cost, timing for the split)
    for track, rows in rows_by_track.items():
        if len(rows) < MIN_TRACK_FRAMES:
            continue
        alignment = align_track(template, X[rows])
        pseudotime[rows] = alignment.pseudotime
        region[rows] = alignment.region
        cost[rows] = alignment.cost
        normalized[rows] = alignment.length_normalized_cost
        if onset_index is not None:
            onset[rows] = estimate_onset(alignment, onset_index, t[rows])
            timing = onset[rows[0]]
        else:
            timing = float(t[rows][alignment.start])
        per_track[track] = (alignment.length_normalized_cost, timing)
    n_short = len(rows_by_track) - len(per_track)
    if n_short:
        logger.info("%d track(s) with fewer than %d rows were not aligned", n_short, MIN_TRACK_FRAMES)

    summary = pd.DataFrame.from_dict(per_track, orient="index", columns=["cost", "timing"])
    groups = _response_groups(summary["cost"], summary["timing"], settings.cost_quantile)
    response = table[track_column].map(groups).fillna(TOO_SHORT).to_numpy(dtype=object)

    result = pd.DataFrame({track_column: table[track_column].to_numpy(), "t": t, "pseudotime": pseudotime,
                           "alignment_region": region, "dtw_cost": cost, "length_normalized_cost": normalized,
                           "onset_estimate": onset, "response_group": response}, index=table.index)
    for k in range(X.shape[1]):
        result[f"{PC_PREFIX}{k}"] = X[:, k]
    return result, template


def _pc_columns(aligned: pd.DataFrame, wanted: int, track_column: str) -> list[str]:
    columns = [f"{PC_PREFIX}{k}" for k in range(wanted)]
    missing = [c for c in columns + ["pseudotime", "alignment_region", track_column, "t"] if c not in aligned]
    if missing:
        raise ValueError(f"the aligned table lacks column(s) {missing} (use the output of align_tracks)")
    return columns


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9)


def plot_pseudotime_components(aligned: pd.DataFrame, path: str | os.PathLike, n_bins: int = 20,
                               n_components: int = 2, title: str = "", track_column: str = "track_id") -> None:
    """PC1, PC2, ... of the aligned embeddings against pseudo-time: bin mean and interquartile band.

    Only frames in the "aligned" region are used (pre/post frames pile up at 0 and 1 and would hide the
    transition). ``n_bins`` equal-width bins over [0, 1]; empty bins are skipped. Written atomically as PNG.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    available = sum(1 for c in aligned.columns if str(c).startswith(PC_PREFIX) and str(c)[3:].isdigit())
    columns = _pc_columns(aligned, min(n_components, available) if available else n_components, track_column)
    inside = aligned[aligned["alignment_region"] == REGION_ALIGNED]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig = Figure(figsize=(4.2 * len(columns), 3.6))
    for k, column in enumerate(columns):
        ax = fig.add_subplot(1, len(columns), k + 1)
        if inside.empty:
            _note(ax, "no aligned frames")
        else:
            bins = np.clip(np.digitize(inside["pseudotime"].to_numpy(), edges[1:-1]), 0, n_bins - 1)
            # Empty bins (a short template gives only a few distinct pseudo-times) are left out and the
            # curve drawn through the bins that have frames.
            grouped = inside[column].groupby(bins)
            stats = grouped.quantile([0.25, 0.75]).unstack()
            x = centres[stats.index.to_numpy(int)]
            ax.fill_between(x, stats[0.25].to_numpy(float), stats[0.75].to_numpy(float), alpha=0.3,
                            color="#1f77b4", linewidth=0, label="interquartile range")
            ax.plot(x, grouped.mean().to_numpy(float), color="#1f77b4", marker="o", ms=3, label="mean")
            ax.legend(fontsize=7, loc="best")
        ax.set_xlim(0, 1)
        ax.set_xlabel("pseudo-time")
        ax.set_ylabel(f"PC {k + 1} (aligned space)")
    n_tracks = inside[track_column].nunique()
    fig.suptitle(title or f"embedding along pseudo-time ({len(inside)} aligned frames, {n_tracks} tracks)",
                 fontsize=10)
    fig.tight_layout()
    save_png(fig, path)


def _example_tracks(aligned: pd.DataFrame, n: int, track_column: str) -> list[Hashable]:
    """Up to ``n`` aligned tracks spread evenly over the onset estimates (or costs when onsets are NaN)."""
    per_track = (aligned[aligned["alignment_region"] != TOO_SHORT]
                 .groupby(track_column, sort=True)[["onset_estimate", "length_normalized_cost", "response_group"]]
                 .first())
    if per_track.empty:
        return []
    responders = per_track[per_track["response_group"] != NON_RESPONDER]
    pool = responders if len(responders) >= min(n, len(per_track)) else per_track
    key = "onset_estimate" if pool["onset_estimate"].notna().any() else "length_normalized_cost"
    ordered = pool.sort_values([key, "length_normalized_cost"], kind="stable").index.to_list()
    picks = np.unique(np.linspace(0, len(ordered) - 1, min(n, len(ordered))).round().astype(int))
    return [ordered[i] for i in picks]


def plot_aligned_examples(aligned: pd.DataFrame, path: str | os.PathLike, n: int = 6, component: int = 0,
                          title: str = "", track_column: str = "track_id") -> None:
    """A few tracks' PC (``component``) over real time (top) and over pseudo-time (bottom); onsets marked.

    Tracks are spread over the range of onset estimates, preferring responders. In the top panel a dashed
    line marks each track's onset estimate; in the bottom panel a dot marks where the onset falls in
    pseudo-time, which after a good alignment is the same place for every track. Written atomically as PNG.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    column = _pc_columns(aligned, component + 1, track_column)[component]
    tracks = _example_tracks(aligned, n, track_column)
    fig = Figure(figsize=(7.0, 6.0))
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    cmap = colormaps["tab10"]
    if not tracks:
        _note(top, "no aligned tracks")
    for k, track in enumerate(tracks):
        rows = aligned[aligned[track_column] == track].sort_values("t", kind="stable")
        colour = cmap(k % cmap.N)
        t, pc, pt = (rows[c].to_numpy(np.float64) for c in ("t", column, "pseudotime"))
        onset = float(rows["onset_estimate"].iloc[0])
        top.plot(t, pc, color=colour, lw=1.2, label=f"track {track}")
        inside = (rows["alignment_region"] == REGION_ALIGNED).to_numpy()
        bottom.plot(pt[inside], pc[inside], color=colour, lw=1.2)
        if np.isfinite(onset):
            top.axvline(onset, color=colour, ls="--", lw=0.9)
            bottom.plot([np.interp(onset, t, pt)], [np.interp(onset, t, pc)], "o", color=colour, ms=6)
    top.set_xlabel("frame (t)")
    top.set_ylabel(f"PC {component + 1}")
    top.set_title("real time (dashed: onset estimate)", fontsize=9)
    if tracks:
        top.legend(fontsize=7, loc="best", ncol=2)
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("pseudo-time (aligned frames)")
    bottom.set_ylabel(f"PC {component + 1}")
    bottom.set_title("pseudo-time (dot: onset estimate)", fontsize=9)
    fig.suptitle(title or f"aligned examples ({len(tracks)} tracks)", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
