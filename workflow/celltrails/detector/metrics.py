"""Detection quality against point ground truth: matching scores and embedding successor accuracy.

Positions are voxel indices (``t, z, y, x``) in both tables and are compared in physical units
(times ``voxel_size`` (z, y, x)), so anisotropic stacks are scored by real distances. Ground truth
is the standard points table of :mod:`celltrails.ground_truth` (``radius`` in xy pixels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from celltrails.linking import embedding_columns

PAIR_COLUMNS = ["t", "pred", "gt", "distance"]


def _positions(table: pd.DataFrame, voxel_size: Sequence[float]) -> np.ndarray:
    return table[["z", "y", "x"]].to_numpy(dtype=float) * np.asarray(voxel_size, dtype=float)


def match_reach(gt: pd.DataFrame, voxel_size: Sequence[float], max_distance: float | None) -> np.ndarray:
    """Largest physical distance at which a prediction matches each GT cell: its radius, or
    ``max_distance`` when given."""
    if max_distance is not None:
        return np.full(len(gt), float(max_distance))
    reach = gt["radius"].to_numpy(dtype=float) * float(voxel_size[2])
    if not np.isfinite(reach).all():
        raise ValueError("ground truth without a radius: give max_distance")
    return reach


DEFAULT_RADIUS_PX = 5.0


def reach_without_radii(gt: pd.DataFrame, pred: pd.DataFrame, voxel_size: Sequence[float]) -> float | None:
    """``max_distance`` for ground truth without radii (a points table): the median predicted radius
    (``DEFAULT_RADIUS_PX`` when nothing was predicted or predictions have none), in physical units;
    None when every ground-truth cell has its radius."""
    if "radius" in gt.columns and gt["radius"].notna().all():
        return None
    radii = pred["radius"].dropna() if "radius" in pred.columns else pd.Series(dtype=float)
    typical_px = float(radii.median()) if len(radii) else DEFAULT_RADIUS_PX
    return typical_px * float(voxel_size[2])


def _assign(g: np.ndarray, p: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Indices into the candidate edges (g, p, d) of a maximum-cardinality, then minimum-distance
    one-to-one matching (Hungarian, solved per connected component of the candidate graph)."""
    g_ids, g_local = np.unique(g, return_inverse=True)
    p_ids, p_local = np.unique(p, return_inverse=True)
    n_g = len(g_ids)
    graph = coo_matrix((np.ones(len(g)), (g_local, n_g + p_local)), shape=(n_g + len(p_ids),) * 2)
    _, component = connected_components(graph, directed=False)
    edge_component = component[g_local]
    chosen = []
    for c in np.unique(edge_component):
        edges = np.flatnonzero(edge_component == c)
        rows, r = np.unique(g_local[edges], return_inverse=True)
        cols, k = np.unique(p_local[edges], return_inverse=True)
        # A non-edge costs more than all edges of the component together: fewest non-edges first.
        big = (d[edges].max() + 1.0) * (min(len(rows), len(cols)) + 1)
        cost = np.full((len(rows), len(cols)), big)
        cost[r, k] = d[edges]
        slot = np.full(cost.shape, -1)
        slot[r, k] = edges
        picked = slot[linear_sum_assignment(cost)]
        chosen.append(picked[picked >= 0])
    return np.concatenate(chosen)


def match_frame(pred_pos: np.ndarray, gt_pos: np.ndarray, reach: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred indices, gt indices, distances) of the one-to-one matching of one frame, where a
    prediction may match a GT cell no farther than that cell's ``reach``."""
    empty = (np.zeros(0, int), np.zeros(0, int), np.zeros(0))
    if not len(pred_pos) or not len(gt_pos):
        return empty
    near = cKDTree(pred_pos).query_ball_point(gt_pos, r=reach)
    g = np.repeat(np.arange(len(gt_pos)), [len(n) for n in near])
    p = np.fromiter((j for n in near for j in n), dtype=int, count=len(g))
    if not len(g):
        return empty
    d = np.linalg.norm(pred_pos[p] - gt_pos[g], axis=1)
    keep = _assign(g, p, d)
    return p[keep], g[keep], d[keep]


def _ratio(num: int, den: int) -> float:
    """num / den, and 1.0 when den is 0 (nothing to find, or nothing predicted: nothing wrong)."""
    return num / den if den else 1.0


def scores(tp: int, fp: int, fn: int) -> dict:
    """Counts with precision, recall and F1 (= 2 TP / (2 TP + FP + FN))."""
    return {"tp": tp, "fp": fp, "fn": fn, "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn)}


def match_detections(pred: pd.DataFrame, gt: pd.DataFrame, *,
                     voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
                     max_distance: float | None = None) -> dict:
    """One-to-one matching of predicted and GT centres, frame by frame.

    A prediction may match a GT cell within that cell's radius (physical distance; ``max_distance``,
    in the units of ``voxel_size``, replaces the radius); among all one-to-one matchings the one
    with the most pairs, then the smallest total distance, is taken. Returns overall ``tp, fp, fn,
    precision, recall, f1``, ``per_frame`` (a table with those per t) and ``pairs`` (``t, pred, gt,
    distance``: index labels of the two tables).
    """
    reach_all = pd.Series(match_reach(gt, voxel_size, max_distance), index=gt.index)
    pred_by_t, gt_by_t = dict(list(pred.groupby("t"))), dict(list(gt.groupby("t")))
    rows, pairs = [], []
    for t in sorted(set(pred_by_t) | set(gt_by_t)):
        p_frame = pred_by_t.get(t, pred.iloc[:0])
        g_frame = gt_by_t.get(t, gt.iloc[:0])
        pi, gi, dist = match_frame(_positions(p_frame, voxel_size), _positions(g_frame, voxel_size),
                                   reach_all.loc[g_frame.index].to_numpy())
        pairs.append(pd.DataFrame({"t": t, "pred": p_frame.index[pi], "gt": g_frame.index[gi], "distance": dist}))
        rows.append({"t": int(t), **scores(len(pi), len(p_frame) - len(pi), len(g_frame) - len(pi))})
    per_frame = pd.DataFrame(rows, columns=["t", "tp", "fp", "fn", "precision", "recall", "f1"])
    totals = scores(*(int(per_frame[k].sum()) for k in ("tp", "fp", "fn")))
    matched = pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame(columns=PAIR_COLUMNS)
    return {**totals, "per_frame": per_frame, "pairs": matched}


def true_successors(gt: pd.DataFrame) -> pd.DataFrame:
    """(source, target, division) index pairs of GT cells at t and their successors at t+1: the same
    cell_id, or the daughters (parent_id = cell_id) of a track ending at t."""
    cells = gt[["t", "cell_id", "parent_id"]].reset_index(names="source")
    later = cells.assign(t=cells["t"] - 1).rename(columns={"source": "target"})
    same = cells.merge(later[["t", "cell_id", "target"]], on=["t", "cell_id"])
    daughters = cells.merge(later[["t", "parent_id", "target"]], left_on=["t", "cell_id"],
                            right_on=["t", "parent_id"], suffixes=("", "_daughter"))
    return pd.concat([same[["source", "target"]].assign(division=False),
                      daughters[["source", "target"]].assign(division=True)], ignore_index=True)


def _fraction(hits: pd.Series) -> float | None:
    return float(hits.mean()) if len(hits) else None


def embedding_successor_accuracy(detections: pd.DataFrame, gt: pd.DataFrame, *,
                                 voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
                                 search_radius_factor: float = 3.0,
                                 max_distance: float | None = None) -> dict:
    """How often the embedding alone finds a cell's successor in the next frame.

    For every GT cell at t whose detection and whose true successor's detection (same cell_id at
    t+1, or a daughter) are both matched (:func:`match_detections`), look among the detections at
    t+1 within ``search_radius_factor`` x the matching reach of the cell's detection and take the
    nearest in embedding space (Euclidean): a hit if it is the detection of a true successor (either
    daughter for a mother). Returns ``n``, ``hits``, ``fraction`` (None when n = 0), the same for
    ``continuing`` and ``division`` sources, and ``out_of_reach`` (misses whose successor lay
    outside the search radius).
    """
    columns = embedding_columns(detections)
    if not columns:
        raise ValueError("detections have no emb_* columns")
    search = pd.Series(search_radius_factor * match_reach(gt, voxel_size, max_distance), index=gt.index)
    pairs = match_detections(detections, gt, voxel_size=voxel_size, max_distance=max_distance)["pairs"]
    row_of = pd.Series(detections.index.get_indexer(pairs["pred"]), index=pairs["gt"].to_numpy())
    links = true_successors(gt)
    links = links[links["source"].isin(row_of.index) & links["target"].isin(row_of.index)]
    src, dst = row_of.loc[links["source"]].to_numpy(), row_of.loc[links["target"]].to_numpy()
    radius = search.loc[links["source"]].to_numpy()
    position, embedding = _positions(detections, voxel_size), detections[columns].to_numpy(float)
    frame = detections["t"].to_numpy()
    nearest = embedding_nearest(frame, position, embedding, src, radius)
    links = links.assign(hit=nearest == dst,
                         reachable=np.linalg.norm(position[src] - position[dst], axis=1) <= radius)
    per_source = links.groupby("source").agg(division=("division", "any"), hit=("hit", "any"),
                                             reachable=("reachable", "any"))
    summary = {"n": len(per_source), "hits": int(per_source["hit"].sum()), "fraction": _fraction(per_source["hit"]),
               "out_of_reach": int((~per_source["hit"] & ~per_source["reachable"]).sum())}
    for name, part in (("continuing", per_source[~per_source["division"]]),
                       ("division", per_source[per_source["division"]])):
        summary[name] = {"n": len(part), "fraction": _fraction(part["hit"])}
    return summary


def embedding_nearest(frame: np.ndarray, position: np.ndarray, embedding: np.ndarray, sources: np.ndarray,
                      radius: np.ndarray) -> np.ndarray:
    """For each source row, the row of the detection in the next frame within ``radius`` (physical)
    that is nearest in embedding space (ties: the lower row); -1 when none is within reach."""
    nearest = np.full(len(sources), -1)
    for t in np.unique(frame[sources]):
        following = np.flatnonzero(frame == t + 1)
        queries = np.flatnonzero(frame[sources] == t)
        near = cKDTree(position[following]).query_ball_point(position[sources[queries]], r=radius[queries])
        for query, candidates in zip(queries, near):
            if candidates:
                rows = following[np.sort(candidates)]
                gap = np.linalg.norm(embedding[rows] - embedding[sources[query]], axis=1)
                nearest[query] = rows[int(np.argmin(gap))]
    return nearest
