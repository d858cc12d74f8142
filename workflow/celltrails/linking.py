"""Frame-pair linking: candidate edges between frames t and t+1, then one global assignment per pair.

Each detection carries a centre, a radius, a division probability and an embedding vector
(CELLECT style). A candidate edge joins a cell at t to a cell at t+1 within a search radius that
scales with the cell's size; its cost adds an embedding distance (identity), a displacement term
(motion relative to size) and a size-change term. Per pair, one minimum-cost assignment lets each
cell at t take up to two successors (the second one is a division) and each cell at t+1 at most one
predecessor; cells may also disappear or appear at a cost. A second pass then completes divisions
from the daughters' geometry: a cell with one successor and a newborn cell beside it become mother
and daughters when the two sit symmetrically about the mother's centre. Pairs are independent of
each other, so blocks of frames can be linked in parallel and their edge tables concatenated.

All distances are in xy-pixel-equivalent units: z and y are rescaled by voxel_size / voxel_size_x,
so a radius given in xy pixels is comparable with any displacement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

REQUIRED_COLUMNS = ("t", "z", "y", "x", "radius", "division_prob")
EDGE_COLUMNS = ["t", "source", "target", "distance", "embedding_distance", "cost", "division_cost",
                "chosen", "second_successor"]
_EMBEDDING_COLUMN = re.compile(r"^emb_(\d+)$")
_PROB_FLOOR = 1e-6


@dataclass(frozen=True)
class LinkParams:
    """Costs and gates of the linker. Defaults are generic: every term is dimensionless.

    Attributes:
        voxel_size: (z, y, x) voxel size (any unit); only the ratios to x matter.
        embedding_metric: "euclidean" (what a triplet loss like CELLECT's trains) or "cosine".
        embedding_weight: cost per unit of normalised embedding distance; 0 links by position only.
        embedding_scale: embedding distance that counts as 1. None estimates it per frame pair
            (over the whole movie for gap closing) as the median embedding distance between
            spatially nearest neighbours within a frame, i.e. the typical distance between two
            *different* neighbouring cells.
        position_weight: cost per (displacement / radius)^2, a Gaussian motion model in units of
            cell size (the larger radius of the two cells, so that a cell growing into view or a
            noisy small radius does not inflate the cost).
        size_weight: cost per |log(radius_{t+1} / radius_t)|.
        search_factor: candidates lie within max(min_search_radius, search_factor * radius).
        min_search_radius: lower bound of the search radius, xy pixels.
        max_candidates: at most this many nearest cells at t+1 per cell at t.
        min_radius: radii below this (xy pixels, also NaN) are raised to it before normalising.
        appear_cost: cost of a cell at t+1 without a predecessor.
        disappear_cost: cost of a cell at t without a successor. A 1-to-1 link is kept when its
            cost is below appear_cost + disappear_cost.
        division_weight: weight of the division log-likelihood terms: a cell at t that does not
            divide pays -log(1 - p_mother); its second successor (a division) pays its link cost
            plus -log(sqrt(p_mother * p_daughter)). With p = 0.5 both are 0.69, so a division is
            taken when the daughter's link cost beats a birth, as with no division information.
        daughter_offset: where a second successor (a daughter) is expected, in daughter radii from
            the mother's centre: the two daughters of a dividing nucleus sit side by side where it
            was, so a daughter's displacement counts only beyond this distance. 0 expects daughters
            at the mother's centre, like any successor.
        complete_divisions: after the assignment, give a cell with one successor A a second one
            B (a cell left without predecessor) when A and B look like sisters, whatever the
            division probabilities say (see ``complete_divisions``).
        sister_symmetry_weight: cost per (|midpoint(A, B) - mother| / mother radius)^2, times
            position_weight, in that completion: sisters sit on either side of where their
            mother was.
        dense_limit: connected components of the candidate graph with more rows + columns than
            this are solved with the sparse solver instead of a dense matrix (same optimum).
    """

    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    embedding_metric: Literal["euclidean", "cosine"] = "euclidean"
    embedding_weight: float = 1.0
    embedding_scale: float | None = None
    position_weight: float = 1.0
    size_weight: float = 1.0
    search_factor: float = 3.0
    min_search_radius: float = 10.0
    max_candidates: int = 10
    min_radius: float = 1.0
    appear_cost: float = 2.0
    disappear_cost: float = 2.0
    division_weight: float = 1.0
    daughter_offset: float = 1.0
    complete_divisions: bool = True
    sister_symmetry_weight: float = 4.0
    dense_limit: int = 2000

    def __post_init__(self) -> None:
        if self.embedding_metric not in ("euclidean", "cosine"):
            raise ValueError(f"embedding_metric must be 'euclidean' or 'cosine', "
                             f"not {self.embedding_metric!r}")
        if len(self.voxel_size) != 3 or min(self.voxel_size) <= 0:
            raise ValueError(f"voxel_size must be three positive numbers (z, y, x), not {self.voxel_size}")
        if min(self.appear_cost, self.disappear_cost, self.division_weight, self.daughter_offset,
               self.sister_symmetry_weight) < 0:
            raise ValueError("appear_cost, disappear_cost, division_weight, daughter_offset and "
                             "sister_symmetry_weight must be >= 0")


def embedding_columns(detections: pd.DataFrame) -> list[str]:
    """The ``emb_0..emb_{D-1}`` columns, in numeric order (empty when there are none)."""
    found = [(int(m.group(1)), c) for c in detections.columns if (m := _EMBEDDING_COLUMN.match(str(c)))]
    return [c for _, c in sorted(found)]


def with_candidates(detections: pd.DataFrame, candidates: pd.DataFrame) -> pd.DataFrame:
    """The cells to link: the detections (ids = their row numbers) and then the candidates (ids
    numbered on after the detections'), with a boolean ``candidate`` column."""
    cells = detections.reset_index(drop=True).assign(candidate=False)
    if len(candidates) == 0:
        return cells
    numbered = candidates.set_axis(pd.RangeIndex(len(detections), len(detections) + len(candidates)))
    return pd.concat([cells, numbered.assign(candidate=True)])


def check_detections(detections: pd.DataFrame) -> None:
    """Raise ValueError when required detection columns are missing."""
    missing = [c for c in REQUIRED_COLUMNS if c not in detections.columns]
    if missing:
        raise ValueError(f"detections lack columns {missing}; expected {list(REQUIRED_COLUMNS)} + emb_*")


def scaled_positions(cells: pd.DataFrame, voxel_size: tuple[float, float, float]) -> np.ndarray:
    """(n, 3) z, y, x centres in xy-pixel-equivalent units (z and y rescaled by voxel size / x)."""
    scale = np.asarray(voxel_size, dtype=float) / float(voxel_size[2])
    return cells[["z", "y", "x"]].to_numpy(dtype=float) * scale


def radii(cells: pd.DataFrame, min_radius: float) -> np.ndarray:
    """Radii in xy pixels, NaN or small values raised to ``min_radius``."""
    r = cells["radius"].to_numpy(dtype=float)
    return np.where(np.isfinite(r), np.maximum(r, min_radius), min_radius)


def division_probability(cells: pd.DataFrame) -> np.ndarray:
    """division_prob kept inside (0, 1) so its logs are finite; NaN (unknown) becomes 0.5."""
    p = np.nan_to_num(cells["division_prob"].to_numpy(float), nan=0.5)
    return np.clip(p, _PROB_FLOOR, 1 - _PROB_FLOOR)


def paired_embedding_distance(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Distance between rows a[i] and b[i] (Euclidean, or 1 - cosine similarity)."""
    if metric == "cosine":
        norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return 1.0 - np.einsum("ij,ij->i", a, b) / np.maximum(norm, 1e-12)
    return np.linalg.norm(a - b, axis=1)


def embedding_scale(frames: list[pd.DataFrame], params: LinkParams) -> float | None:
    """Embedding distance that counts as 1: ``params.embedding_scale`` or the median distance
    between spatially nearest neighbours within each frame (two different cells).

    None when it cannot be estimated (no embeddings, fewer than two cells per frame, all embeddings
    equal): the embedding then carries no information and its term is left out.
    """
    if params.embedding_scale is not None:
        return float(params.embedding_scale)
    distances = []
    for cells in frames:
        columns = embedding_columns(cells)
        if len(cells) < 2 or not columns:
            continue
        positions = scaled_positions(cells, params.voxel_size)
        _, nearest = cKDTree(positions).query(positions, k=2)
        emb = cells[columns].to_numpy(dtype=float)
        distances.append(paired_embedding_distance(emb, emb[nearest[:, 1]], params.embedding_metric))
    if not distances:
        return None
    scale = float(np.median(np.concatenate(distances)))
    return scale if np.isfinite(scale) and scale > 0 else None


def transition_cost(distance: np.ndarray, radius_from: np.ndarray, radius_to: np.ndarray,
                    embedding_distance: np.ndarray, params: LinkParams, frames: np.ndarray | int = 1,
                    ) -> np.ndarray:
    """Cost of one cell becoming another ``frames`` later (linking: 1; gap closing: > 1).

    Displacement variance grows linearly with elapsed frames (random walk), hence the division by
    ``frames`` in the position term. ``embedding_distance`` is already normalised (NaN = unknown,
    contributes 0).
    """
    position = params.position_weight * (distance / np.maximum(radius_from, radius_to)) ** 2 / frames
    size = params.size_weight * np.abs(np.log(radius_to / radius_from))
    embedding = params.embedding_weight * np.nan_to_num(embedding_distance, nan=0.0)
    return position + size + embedding


def solve_assignment(rows: np.ndarray, cols: np.ndarray, costs: np.ndarray, row_skip: np.ndarray,
                     col_skip: np.ndarray, dense_limit: int = 2000) -> np.ndarray:
    """Minimum-cost partial matching: which candidate edges (rows[k], cols[k]) to take.

    Each row and column is matched at most once; leaving row i (column j) unmatched costs
    row_skip[i] (col_skip[j]). Returns a boolean mask over the edges. Edges must be unique pairs.

    Exact: the standard augmentation (Jaqaman et al. 2008) turns the partial matching into a
    perfect one on [[C, diag(row_skip)], [diag(col_skip), B]] where B lets every dummy row pair
    with every dummy column at cost 0, so every feasible partial matching has a perfect completion
    with the same cost. The problem splits into connected components of the candidate graph, which
    are solved independently (still exact); each goes to ``linear_sum_assignment`` as a dense
    matrix, or, when larger than ``dense_limit`` rows + columns, to the sparse LAPJVsp solver with
    B restricted to the transpose of C's pattern (enough for a perfect completion: a dummy row of
    matched column j takes the dummy column of j's matched row).
    """
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    costs = np.asarray(costs, dtype=float)
    chosen = np.zeros(len(costs), dtype=bool)
    if len(costs) == 0:
        return chosen
    n_rows = len(row_skip)
    n_nodes = n_rows + len(col_skip)
    graph = coo_matrix((np.ones(len(rows)), (rows, n_rows + cols)), shape=(n_nodes, n_nodes))
    _, component = connected_components(graph, directed=False)
    edge_component = component[rows]
    order = np.argsort(edge_component, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_component[order])) + 1
    for edges in np.split(order, bounds):
        row_ids, r = np.unique(rows[edges], return_inverse=True)
        col_ids, c = np.unique(cols[edges], return_inverse=True)
        solve = _solve_dense if len(row_ids) + len(col_ids) <= dense_limit else _solve_sparse
        taken = solve(r, c, costs[edges], np.asarray(row_skip, float)[row_ids],
                      np.asarray(col_skip, float)[col_ids])
        chosen[edges[taken]] = True
    return chosen


def _solve_dense(r: np.ndarray, c: np.ndarray, costs: np.ndarray, row_skip: np.ndarray,
                 col_skip: np.ndarray) -> np.ndarray:
    n_r, n_c = len(row_skip), len(col_skip)
    matrix = np.full((n_r + n_c, n_c + n_r), np.inf)
    matrix[r, c] = costs
    matrix[np.arange(n_r), n_c + np.arange(n_r)] = row_skip
    matrix[n_r + np.arange(n_c), np.arange(n_c)] = col_skip
    matrix[n_r:, n_c:] = 0.0
    row_of, col_of = linear_sum_assignment(matrix)
    match = np.full(n_r, -1)
    real = (row_of < n_r) & (col_of < n_c)
    match[row_of[real]] = col_of[real]
    return match[r] == c


def _solve_sparse(r: np.ndarray, c: np.ndarray, costs: np.ndarray, row_skip: np.ndarray,
                  col_skip: np.ndarray) -> np.ndarray:
    n_r, n_c = len(row_skip), len(col_skip)
    ar_r, ar_c = np.arange(n_r), np.arange(n_c)
    i = np.concatenate([r, ar_r, n_r + ar_c, n_r + c])
    j = np.concatenate([c, n_c + ar_r, ar_c, n_c + r])
    w = np.concatenate([costs, row_skip, col_skip, np.zeros(len(r))])
    # The sparse solver treats zero weights as missing edges; a constant shift keeps the optimum
    # (every perfect matching has the same number of edges) and makes all weights positive.
    w = w - w.min() + 1.0
    n = n_r + n_c
    row_of, col_of = min_weight_full_bipartite_matching(csr_matrix((w, (i, j)), shape=(n, n)))
    match = np.full(n, -1)
    match[row_of] = col_of
    return match[r] == c


def _empty_edges() -> pd.DataFrame:
    dtypes = ["int64"] * 3 + ["float64"] * 4 + ["bool"] * 2
    return pd.DataFrame({c: pd.Series(dtype=d) for c, d in zip(EDGE_COLUMNS, dtypes)})


def candidate_pairs(positions_from: np.ndarray, positions_to: np.ndarray, search_radius: np.ndarray,
                    max_candidates: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) for the up to ``max_candidates`` nearest j within search_radius[i]."""
    if len(positions_from) == 0 or len(positions_to) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    k = min(max_candidates, len(positions_to))
    dist, idx = cKDTree(positions_to).query(positions_from, k=k,
                                            distance_upper_bound=float(search_radius.max()))
    dist, idx = dist.reshape(len(positions_from), k), idx.reshape(len(positions_from), k)
    keep = dist <= search_radius[:, None]
    i = np.broadcast_to(np.arange(len(positions_from))[:, None], keep.shape)[keep]
    return i, idx[keep], dist[keep]


def link_pair(source: pd.DataFrame, target: pd.DataFrame, params: LinkParams) -> pd.DataFrame:
    """Candidate and chosen edges from the cells of one frame (``source``) to the next (``target``).

    The index of each table holds the cell ids. Returns one row per candidate edge (columns
    ``EDGE_COLUMNS``): ``cost`` is the 1-to-1 link cost (for an edge chosen as a second successor,
    its cost as a daughter, see ``LinkParams.daughter_offset``, plus ``division_cost``; for one
    added by ``complete_divisions``, its sister cost),
    ``division_cost`` the division log-likelihood term of the second-successor (division) slot,
    ``chosen`` marks the selected edges and ``second_successor`` the chosen edge that filled that slot.
    """
    check_detections(source)
    check_detections(target)
    if len(source) == 0 or len(target) == 0:
        return _empty_edges()
    p_from, p_to = scaled_positions(source, params.voxel_size), scaled_positions(target, params.voxel_size)
    r_from, r_to = radii(source, params.min_radius), radii(target, params.min_radius)
    search = np.maximum(params.min_search_radius, params.search_factor * r_from)
    i, j, distance = candidate_pairs(p_from, p_to, search, params.max_candidates)
    if len(i) == 0:
        return _empty_edges()

    scale = embedding_scale([source, target], params) if params.embedding_weight > 0 else None
    emb_distance = np.full(len(i), np.nan)
    columns = embedding_columns(source)
    if scale is not None:
        emb_distance = paired_embedding_distance(source[columns].to_numpy(float)[i],
                                                 target[columns].to_numpy(float)[j],
                                                 params.embedding_metric) / scale
    cost = transition_cost(distance, r_from[i], r_to[j], emb_distance, params)
    daughter_cost = transition_cost(np.maximum(0.0, distance - params.daughter_offset * r_to[j]), r_from[i],
                                    r_to[j], emb_distance, params)
    p_mother, p_daughter = division_probability(source), division_probability(target)
    no_division = params.division_weight * -np.log1p(-p_mother)
    division = params.division_weight * -(np.log(p_mother[i]) + np.log(p_daughter[j])) / 2

    # Rows 0..n-1 are each source's first successor, rows n..2n-1 its second one (a division).
    # An empty first slot costs disappear_cost, an empty second slot -log(1 - p_mother) ("did not
    # divide"); every column is a target cell, unmatched at appear_cost. Any assignment is a valid
    # "<= 2 successors, <= 1 predecessor" solution and vice versa, so solving it exactly solves
    # the pair. Approximations: (1) the daughter's probability enters only for the daughter in
    # the second slot (a linear assignment cannot charge a term that depends on both daughters);
    # (2) a single successor may sit in the second slot with the first one empty when that is
    # cheaper (disappear_cost < log(p / (1 - p))): the same edges, read as "divided, one daughter
    # lost", so the single link of a likely mother costs the cheaper of the two readings.
    n = len(source)
    # A division needs a detected mother and detected daughters; a candidate only continues a cell.
    from_candidate, to_candidate = _is_candidate(source)[i], _is_candidate(target)[j]
    divisible = np.flatnonzero(~(from_candidate | to_candidate))
    chosen = solve_assignment(
        rows=np.concatenate([i, n + i[divisible]]), cols=np.concatenate([j, j[divisible]]),
        costs=np.concatenate([cost, (daughter_cost + division)[divisible]]),
        row_skip=np.concatenate([np.full(n, params.disappear_cost), no_division]),
        col_skip=np.full(len(target), params.appear_cost), dense_limit=params.dense_limit)
    first, second = chosen[: len(i)], np.zeros(len(i), dtype=bool)
    second[divisible] = chosen[len(i):]
    first &= ~(to_candidate & np.isin(i, i[second]))  # nor is it the other daughter of a division
    link_cost, cost = cost, np.where(second, daughter_cost + division, cost)
    if params.complete_divisions:
        # A mother whose one successor is a candidate is not completed: the candidate would be a daughter.
        completable = divisible[~np.isin(i[divisible], i[first & to_candidate])]
        completed, sister_cost = complete_divisions(i, j, first | second, p_from, p_to, r_from, r_to,
                                                    emb_distance, params, completable, from_candidate)
        first &= ~(from_candidate & np.isin(j, j[completed]))  # a daughter's link from a candidate gives way
        # A mother whose one successor sat in the second slot gains a second one: that one moves to
        # the first slot, so second_successor still marks one edge per division.
        moved = second & np.isin(i, i[completed])
        first, second = first | moved, (second & ~moved) | completed
        cost = np.where(moved, link_cost, np.where(completed, sister_cost, cost))
    edges = pd.DataFrame({
        "t": np.full(len(i), int(source["t"].iloc[0]), dtype=np.int64),
        "source": source.index.to_numpy(np.int64)[i], "target": target.index.to_numpy(np.int64)[j],
        "distance": distance, "embedding_distance": emb_distance,
        "cost": cost, "division_cost": division,
        "chosen": first | second, "second_successor": second})
    return edges.sort_values(["source", "target"], ignore_index=True)


def _is_candidate(cells: pd.DataFrame) -> np.ndarray:
    """Which cells are candidates (``with_candidates``); none without a ``candidate`` column."""
    return cells["candidate"].to_numpy(bool) if "candidate" in cells else np.zeros(len(cells), dtype=bool)


def complete_divisions(i: np.ndarray, j: np.ndarray, chosen: np.ndarray, p_from: np.ndarray,
                       p_to: np.ndarray, r_from: np.ndarray, r_to: np.ndarray,
                       embedding_distance: np.ndarray, params: LinkParams,
                       divisible: np.ndarray | None = None, yielding: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Second successors added from the daughters' geometry: (mask over the candidate edges, cost).

    Edges qualify that join a cell M with exactly one chosen successor A to a cell B at t+1 left
    without a predecessor; with ``divisible`` (edge indices) only those, and a chosen edge marked in
    ``yielding`` (a link from a candidate peak) leaves B free: it gives way to the division.
    Sisters sit on either side of where their mother was, about one of their radii from it, and
    have similar sizes, so the cost is ``sister_symmetry_weight * position_weight *
    (|(a + b) / 2 - m| / r_M)^2`` plus, for A and B, ``position_weight`` times their displacement
    beyond ``daughter_offset`` radii (as in the assignment's daughter cost), plus ``size_weight *
    |log(r_A / r_B)| + embedding_weight * d(M, B)``; one assignment (each mother one more
    daughter, each B one mother) keeps those cheaper than B's birth (``appear_cost``).

    Written here because it is what the per-pair linear assignment cannot express (a term over
    both daughters), and it leaves the division head out: a head trained on one movie can miss
    another's mitoses entirely (Fluo-N2DH-SIM+ 02 with a detector trained on 01: mothers at median
    p 0.005), and then vetoes every division in the assignment.
    """
    mask, cost = np.zeros(len(i), dtype=bool), np.full(len(i), np.nan)
    n_successors = np.bincount(i[chosen], minlength=len(p_from))
    successor = np.full(len(p_from), -1)
    successor[i[chosen]] = j[chosen]
    has_predecessor = np.zeros(len(p_to), dtype=bool)
    has_predecessor[j[chosen if yielding is None else chosen & ~yielding]] = True
    k = np.flatnonzero((n_successors[i] == 1) & ~has_predecessor[j])
    if divisible is not None:
        k = np.intersect1d(k, divisible)
    if len(k) == 0:
        return mask, cost
    mother, sister, daughter = i[k], successor[i[k]], j[k]
    midpoint = np.linalg.norm((p_to[sister] + p_to[daughter]) / 2 - p_from[mother], axis=1) / r_from[mother]

    def beyond_expected(cell: np.ndarray) -> np.ndarray:
        """(displacement from the mother beyond daughter_offset daughter radii / radius)^2."""
        excess = np.linalg.norm(p_to[cell] - p_from[mother], axis=1) - params.daughter_offset * r_to[cell]
        return (np.maximum(0.0, excess) / np.maximum(r_from[mother], r_to[cell])) ** 2

    cost[k] = (params.sister_symmetry_weight * params.position_weight * midpoint ** 2
               + params.position_weight * (beyond_expected(sister) + beyond_expected(daughter))
               + params.size_weight * np.abs(np.log(r_to[sister] / r_to[daughter]))
               + params.embedding_weight * np.nan_to_num(embedding_distance[k], nan=0.0))
    mothers, rows = np.unique(mother, return_inverse=True)
    daughters, cols = np.unique(daughter, return_inverse=True)
    taken = solve_assignment(rows, cols, cost[k], np.zeros(len(mothers)),
                             np.full(len(daughters), params.appear_cost), params.dense_limit)
    mask[k[taken]] = True
    return mask, cost


def link_frames(detections: pd.DataFrame, t_start: int, t_stop: int,
                params: LinkParams | None = None) -> pd.DataFrame:
    """Link every frame pair (t, t+1) with t_start <= t < t_stop (frames t_start..t_stop).

    Blocks [a, b), [b, c), ... cover disjoint pairs, so their edge tables concatenate to the
    result of one call over [a, c). Cell ids are the detection table's index.
    """
    params = params or LinkParams()
    check_detections(detections)
    frames = {int(t): cells for t, cells in detections.groupby("t", sort=True)}
    pairs = [link_pair(frames[t], frames[t + 1], params)
             for t in range(t_start, t_stop) if t in frames and t + 1 in frames]
    pairs = [p for p in pairs if len(p)]
    return pd.concat(pairs, ignore_index=True) if pairs else _empty_edges()


def link_params_from_config(settings: dict, voxel_size: tuple[float, float, float]) -> LinkParams:
    """LinkParams from the workflow's ``link`` config section and the image's voxel size."""
    fields = {f for f in LinkParams.__dataclass_fields__ if f != "voxel_size"}
    return LinkParams(voxel_size=tuple(voxel_size), **{k: v for k, v in settings.items() if k in fields})
