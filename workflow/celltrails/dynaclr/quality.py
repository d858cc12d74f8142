"""Quality of DynaCLR embeddings: how smoothly a cell's embedding changes over time.

A time-aware contrastive embedding (DynaCLR, arXiv 2410.11281; reference code in VisCy) should place a cell
close to itself one frame later and, on average, far from an arbitrary other cell. We measure this as VisCy
does, so numbers are comparable with the paper:

1. Features are z-scored over all cells first (``StandardScaler`` on the whole (N, D) matrix).
2. Adjacent pairs: within each track (any hashable per-row key, e.g. dataset + track id), rows sorted by t;
   a pair is two rows of the same track at consecutive frames, i.e. t differs by exactly 1. Unlike VisCy,
   which pairs consecutive rows of a track, we check for gaps: rows at t=3 and t=5 are not a pair.
   Distance is the cosine distance 1 - cos (clipped to [0, 2]); a zero vector (a cell exactly at the
   feature mean) is at distance 0 from an identical vector and 1 from any other.
3. Random pairs: as many pairs (i, j), i != j, over all rows as there are adjacent pairs, drawn with
   ``numpy.random.default_rng(seed)``.
4. peak(D): ``gaussian_kde(D)`` evaluated on 1000 points evenly spaced over [min(D), max(D)]; the highest
   peak found by ``scipy.signal.find_peaks`` with height >= 10 % of the maximum density, the argmax of the
   density if there is none. Non-finite values are ignored; no values give NaN, all-equal values that value.
5. smoothness = mean(adjacent) / mean(random), lower is smoother; dynamic_range = peak(random) -
   peak(adjacent), higher is better.

Figures (distance distributions, PCA of the embedding) use ``matplotlib.figure.Figure`` objects, so no
global matplotlib state changes, and are written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from scipy.signal import find_peaks
from scipy.stats import gaussian_kde
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from celltrails.atomic import atomic_path
from celltrails.figures import save_png
from celltrails.serialize import plain_data

_KDE_POINTS = 1000
_PEAK_MIN_HEIGHT = 0.1  # fraction of the maximum density
_MAX_CATEGORIES = 10  # an integer colour array with at most this many values is drawn as categories
_ADJACENT_COLOUR = "#1f77b4"
_RANDOM_COLOUR = "#ff7f0e"


def _check_features(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D (cells, dimensions) array, got shape {features.shape}")
    bad = ~np.isfinite(features)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(f"features contain NaN or infinite values in {rows.size} row(s), first row {rows[0]}")
    return features


def _track_codes(track_keys: np.ndarray) -> np.ndarray:
    """One integer per row, equal for rows of the same track; a 2-D key array is read row-wise."""
    keys = np.asarray(track_keys)
    if keys.ndim == 2:
        keys = np.fromiter(map(tuple, keys.tolist()), dtype=object, count=len(keys))
    codes, _ = pd.factorize(keys, use_na_sentinel=False)
    return codes


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise 1 - cos between (n, D) arrays; see the module docstring for zero vectors."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    cos = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    cos[(norms == 0) & np.all(a == b, axis=1)] = 1.0
    return np.clip(1.0 - cos, 0.0, 2.0)


def _adjacent_pairs(codes: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (first, second) of same-track rows exactly one frame apart."""
    order = np.lexsort((t, codes))
    same_track = codes[order[1:]] == codes[order[:-1]]
    step = t[order[1:]] - t[order[:-1]]
    duplicate = same_track & (step == 0)
    if duplicate.any():
        row = order[1:][duplicate][0]
        raise ValueError(f"track of row {row} has more than one row at t={t[row]}; track keys must identify "
                         "one cell per frame (e.g. dataset + track id)")
    adjacent = same_track & (step == 1)
    return order[:-1][adjacent], order[1:][adjacent]


def _random_pairs(n_rows: int, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random pairs (i, j) with i != j: draw j from the n_rows - 1 rows other than i."""
    first = rng.integers(0, n_rows, size=n_pairs)
    second = rng.integers(0, n_rows - 1, size=n_pairs)
    second += second >= first
    return first, second


def pair_distances(features: np.ndarray, track_keys: np.ndarray, t: np.ndarray,
                   seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances of adjacent-frame pairs within tracks and of as many random pairs, after z-scoring.

    ``features`` is (N, D); ``track_keys`` and ``t`` have one entry per row. Raises ValueError on
    non-finite features, mismatched lengths, several rows of one track at one frame, or no adjacent pair.
    """
    features = _check_features(features)
    t = np.asarray(t)
    n_rows = len(features)
    if len(track_keys) != n_rows or len(t) != n_rows:
        raise ValueError(f"lengths differ: features has {n_rows} rows, track_keys {len(track_keys)}, "
                         f"t {len(t)}")
    first, second = _adjacent_pairs(_track_codes(track_keys), t)
    if first.size == 0:
        raise ValueError(f"no adjacent pair: none of the {n_rows} rows has a row of the same track "
                         "exactly one frame later")
    scaled = StandardScaler().fit_transform(features)
    adjacent = _cosine_distance(scaled[first], scaled[second])
    i, j = _random_pairs(n_rows, first.size, np.random.default_rng(seed))
    return adjacent, _cosine_distance(scaled[i], scaled[j])


def _finite(distances: np.ndarray) -> np.ndarray:
    distances = np.asarray(distances, dtype=np.float64).ravel()
    return distances[np.isfinite(distances)]


def _kde(distances: np.ndarray) -> gaussian_kde | None:
    """The KDE of finite values, or None where it is undefined (fewer than two distinct values)."""
    return gaussian_kde(distances) if distances.size >= 2 and np.ptp(distances) > 0 else None


def distribution_peak(distances: np.ndarray) -> float:
    """Location of the highest KDE peak of ``distances`` (module docstring, point 4)."""
    distances = _finite(distances)
    if distances.size == 0:
        return float("nan")
    kde = _kde(distances)
    if kde is None:
        return float(distances[0])
    grid = np.linspace(distances.min(), distances.max(), _KDE_POINTS)
    density = kde(grid)
    peaks, properties = find_peaks(density, height=_PEAK_MIN_HEIGHT * density.max())
    if peaks.size == 0:
        return float(grid[np.argmax(density)])
    return float(grid[peaks[np.argmax(properties["peak_heights"])]])


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else float("nan")


def summarize_distances(adjacent: np.ndarray, random: np.ndarray) -> dict[str, float]:
    """Smoothness, dynamic range, the means and peaks they come from and the pair counts."""
    adjacent_mean, random_mean = _mean(adjacent), _mean(random)
    adjacent_peak, random_peak = distribution_peak(adjacent), distribution_peak(random)
    return {
        "smoothness": adjacent_mean / random_mean if random_mean > 0 else float("nan"),
        "dynamic_range": random_peak - adjacent_peak,
        "adjacent_mean": adjacent_mean,
        "random_mean": random_mean,
        "adjacent_peak": adjacent_peak,
        "random_peak": random_peak,
        "n_adjacent": int(adjacent.size),
        "n_random": int(random.size),
    }


def smoothness_metrics(features: np.ndarray, track_keys: np.ndarray, t: np.ndarray,
                       seed: int = 42) -> dict[str, float]:
    """Smoothness, dynamic range, the means and peaks they come from and the pair counts."""
    return summarize_distances(*pair_distances(features, track_keys, t, seed=seed))


def plot_distance_distributions(adjacent: np.ndarray, random: np.ndarray, path: str | os.PathLike,
                                title: str) -> None:
    """Density histograms and KDE curves of both distance sets, their peaks marked; written atomically."""
    adjacent, random = _finite(adjacent), _finite(random)
    summary = summarize_distances(adjacent, random)
    both = np.concatenate([adjacent, random])
    low, high = (both.min(), both.max()) if both.size else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    grid = np.linspace(low, high, _KDE_POINTS)
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for key, name, values, colour in (("adjacent", "adjacent frames", adjacent, _ADJACENT_COLOUR),
                                      ("random", "random pairs", random, _RANDOM_COLOUR)):
        if values.size == 0:
            continue
        # Own bins per set: adjacent distances are often far narrower than random ones.
        ax.hist(values, bins=40, density=True, alpha=0.35, color=colour,
                label=f"{name} (n={values.size}, mean {summary[f'{key}_mean']:.3f})")
        kde = _kde(values)
        if kde is not None:
            ax.plot(grid, kde(grid), color=colour, lw=1.5)
        peak = summary[f"{key}_peak"]
        if np.isfinite(peak):
            ax.axvline(peak, color=colour, ls="--", lw=1.2, label=f"{name} peak {peak:.3f}")
    # Invisible entry so the legend carries the two headline numbers.
    ax.plot([], [], " ", label=f"smoothness {summary['smoothness']:.3f} (lower is smoother)\n"
                               f"dynamic range {summary['dynamic_range']:.3f} (higher is better)")
    ax.set_xlabel("cosine distance (z-scored features)")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_png(fig, path)


def embedding_pca(features: np.ndarray, n_components: int = 2, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """(N, n_components) PCA coordinates of the z-scored features and each component's explained variance ratio.

    Components that cannot exist (fewer rows or dimensions than ``n_components``) are zero columns; with
    fewer than two rows every coordinate is zero.
    """
    features = _check_features(features)
    n_rows, n_dims = features.shape
    coords = np.zeros((n_rows, n_components))
    explained = np.zeros(n_components)
    fitted = min(n_components, n_rows, n_dims)
    if n_rows >= 2 and fitted > 0:
        scaled = StandardScaler().fit_transform(features)
        pca = PCA(n_components=fitted, random_state=seed)
        coords[:, :fitted] = pca.fit_transform(scaled)
        explained[:fitted] = pca.explained_variance_ratio_
    return coords, explained


def _is_categorical(values: np.ndarray) -> bool:
    """Non-numeric and boolean arrays are categories, so are integer arrays with few distinct values."""
    values = np.asarray(values)
    if values.dtype.kind in "biu":
        return values.dtype.kind == "b" or np.unique(values).size <= _MAX_CATEGORIES
    return values.dtype.kind not in "f"


def plot_embedding_pca(coords: np.ndarray, colour_by: dict[str, np.ndarray], path: str | os.PathLike,
                       title: str, explained: Sequence[float] | None = None) -> None:
    """Scatter of the first two PCs, one panel per ``colour_by`` entry; written atomically.

    Numeric arrays get a continuous colormap and a colorbar, categorical ones (and integer arrays with at
    most 10 values) discrete colours and a legend. ``explained`` (variance ratios) goes into axis labels.
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ValueError(f"coords must be (N, >= 2), got shape {coords.shape}")
    if not colour_by:
        raise ValueError("colour_by is empty: give at least one array to colour the points by")
    for name, values in colour_by.items():
        if len(values) != len(coords):
            raise ValueError(f"colour_by[{name!r}] has {len(values)} values for {len(coords)} points")
    labels = [f"PC {k + 1}" + (f" ({100 * explained[k]:.1f} %)" if explained is not None else "")
              for k in range(2)]
    size = float(np.clip(3000 / max(len(coords), 1), 2, 20))
    fig = Figure(figsize=(4.6 * len(colour_by), 4.0))
    for index, (name, values) in enumerate(colour_by.items()):
        ax = fig.add_subplot(1, len(colour_by), index + 1)
        values = np.asarray(values)
        if _is_categorical(values):
            codes, categories = pd.factorize(values, sort=True, use_na_sentinel=False)
            cmap = colormaps["tab10" if len(categories) <= 10 else "tab20"]
            for code, category in enumerate(categories):
                chosen = codes == code
                ax.scatter(coords[chosen, 0], coords[chosen, 1], s=size, alpha=0.7, linewidths=0,
                           color=cmap(code % cmap.N), label=str(category))
            ax.legend(title=name, fontsize=7, title_fontsize=8, markerscale=max(1.0, 20 / size), loc="best")
        else:
            points = ax.scatter(coords[:, 0], coords[:, 1], c=values.astype(np.float64), s=size, alpha=0.7,
                                linewidths=0, cmap="viridis")
            fig.colorbar(points, ax=ax, label=name)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, path)


def feature_columns(embeddings: pd.DataFrame, prefix: str = "f_") -> list[str]:
    """The ``f_0..`` (or ``p_0..``) column names of an embeddings table, in numeric order."""
    columns = sorted((c for c in embeddings.columns if c.startswith(prefix) and c[len(prefix):].isdigit()),
                     key=lambda c: int(c[len(prefix):]))
    if not columns:
        raise ValueError(f"the embeddings table has no {prefix}0.. columns")
    return columns


def feature_matrix(embeddings: pd.DataFrame, prefix: str = "f_") -> np.ndarray:
    """The ``f_0..`` (or ``p_0..``) columns of an embeddings table as a float matrix, in numeric order."""
    return embeddings[feature_columns(embeddings, prefix)].to_numpy(np.float64)


def write_embedding_quality(embeddings_path: str | os.PathLike, metrics_path: str | os.PathLike,
                            distances_png: str | os.PathLike, pca_png: str | os.PathLike, *, dataset: str = "",
                            seed: int = 42, logger: logging.Logger | None = None) -> dict:
    """Smoothness and dynamic range of a dataset's features (JSON) with the distance and PCA figures.

    The PCA is coloured by time and, when the table has a ``state`` column (synthetic ground
    truth), by state. A dataset without any adjacent pair gets NaN metrics and a note, not an error.
    """
    logger = logger or logging.getLogger(__name__)
    table = pd.read_parquet(embeddings_path)
    features = feature_matrix(table)
    keys, t = table["track_id"].to_numpy(), table["t"].to_numpy()
    try:
        adjacent, random = pair_distances(features, keys, t, seed=seed)
        metrics: dict = summarize_distances(adjacent, random)
    except ValueError as err:
        if "adjacent" not in str(err):
            raise
        adjacent = random = np.array([])
        metrics = summarize_distances(adjacent, random) | {"note": str(err)}
    metrics |= {"dataset": dataset, "n_cells": len(table), "n_tracks": int(table["track_id"].nunique()),
                "n_features": features.shape[1]}
    plot_distance_distributions(adjacent, random, distances_png,
                                f"{dataset}: embedding distances of the same cell in adjacent frames vs random pairs")
    coords, explained = embedding_pca(features, seed=seed)
    colour_by = {"time (frame)": t}
    if "state" in table.columns:
        colour_by["state"] = table["state"].to_numpy()
    plot_embedding_pca(coords, colour_by, pca_png, f"{dataset}: PCA of DynaCLR features", explained=explained)
    metrics["pca_explained_variance"] = explained.tolist()
    with atomic_path(metrics_path) as tmp:
        tmp.write_text(json.dumps(plain_data(metrics), indent=2))
    logger.info("%s: smoothness %.3f, dynamic range %.3f (%d adjacent pairs)", dataset, metrics["smoothness"],
                metrics["dynamic_range"], metrics["n_adjacent"])
    return metrics
