"""Tracking scores with traccuracy: CTC masks (CTCMatcher) or centre points (PointMatcher).

Returns TRA, DET, LNK (CTC definitions), division F1 with a one-frame buffer, and the error counts
behind them; with masks also the challenge's segmentation measure SEG where the ground truth has
``SEG`` annotations (:func:`segmentation_score`). Undefined scores (e.g. division F1 when neither
side has a division) come back as None (null in JSON) with a note saying why, instead of NaN,
which JSON cannot hold.
"""

from __future__ import annotations

import gc
import math
import re
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import skimage
import tifffile
import traccuracy
from skimage.metrics import contingency_table
from traccuracy import TrackingGraph, run_metrics
from traccuracy.loaders import load_ctc_data
from traccuracy.matchers import CTCMatcher, IOUMatcher, PointMatcher
from traccuracy.metrics import CTCMetrics, DivisionMetrics

POINT_COLUMNS = ("t", "z", "y", "x", "cell_id", "parent_id")
_COUNTS = ("fp_nodes", "fn_nodes", "ns_nodes", "fp_edges", "fn_edges", "ws_edges")
_DIVISION_COUNTS = {"tp_divisions": "True Positive Divisions", "fp_divisions": "False Positive Divisions",
                    "fn_divisions": "False Negative Divisions", "gt_divisions": "Total GT Divisions",
                    "pred_divisions": "Total Predicted Divisions"}


DIVISION_IOU = 0.3  # one-to-one mask matching for division scores when CTC's matching is not one-to-one


def _score(gt: TrackingGraph, pred: TrackingGraph, matcher, matcher_name: str) -> dict:
    """CTC metrics, and division metrics with a one-to-one matching.

    traccuracy's DivisionMetrics accepts only one-to-one matchings. CTCMatcher's is not one-to-one
    as soon as one predicted mask covers most of two ground-truth markers (two touching nuclei
    detected as one, in a single frame of a long series), and traccuracy then refuses division
    scores altogether. For masks the division scores then come from a one-to-one IoU matching
    (linear assignment, IoU >= ``DIVISION_IOU``) of the same masks, with a note saying so; for
    points (already one-to-one) or without masks they are null with the reason.
    """
    results, matched = run_metrics(gt_data=gt, pred_data=pred, matcher=matcher, metrics=[CTCMetrics()])
    refused, note = None, None
    try:
        results.append(DivisionMetrics(max_frame_buffer=1).compute(matched).to_dict())
    except TypeError as err:
        refused = f"traccuracy refused division metrics for this matching ({err})"
        if gt.segmentation is not None and pred.segmentation is not None:
            division, _ = run_metrics(gt_data=gt, pred_data=pred,
                                      matcher=IOUMatcher(iou_threshold=DIVISION_IOU, one_to_one=True),
                                      metrics=[DivisionMetrics(max_frame_buffer=1)])
            results.extend(division)
            refused, note = None, (f"division scores use IOUMatcher(iou_threshold={DIVISION_IOU}, one_to_one=True): "
                                   f"the {matcher_name} matching is not one-to-one, which traccuracy's "
                                   "division metrics require")
    summary = _summarise(results, matcher_name, refused)
    if note:
        summary["notes"].append(note)
        summary["division_matcher"] = f"IOUMatcher(iou_threshold={DIVISION_IOU}, one_to_one=True)"
    return summary


def _summarise(results: list[dict], matcher: str, division_refused: str | None = None) -> dict:
    ctc = next(r["results"] for r in results if r["metric"]["name"] == "CTCMetrics")
    out: dict = {"tool": f"traccuracy {traccuracy.__version__}", "matcher": matcher,
                 "division_frame_buffer": 1, "notes": []}
    for key in ("TRA", "DET", "LNK"):
        out[key] = _finite(ctc[key], key, "no ground-truth cells or links", out["notes"])
    out.update({k: int(ctc[k]) for k in _COUNTS})
    out["AOGM"] = float(ctc["AOGM"])
    if division_refused:
        out["division_f1"] = None
        out["notes"].append(f"division_f1 and division counts are null: {division_refused}")
        out.update({k: None for k in _DIVISION_COUNTS})
        return out
    div = next(r["results"] for r in results if r["metric"]["name"] == "DivisionMetrics")["Frame Buffer 1"]
    out["division_f1"] = _finite(
        div["Division F1"], "division_f1",
        f"precision or recall is 0/0 ({div['Total GT Divisions']} ground-truth and "
        f"{div['Total Predicted Divisions']} predicted divisions)", out["notes"])
    out.update({k: int(div[v]) for k, v in _DIVISION_COUNTS.items()})
    return out


def _nothing_predicted(gt: TrackingGraph, matcher: str) -> dict:
    """Scores of an empty result, which traccuracy cannot load: every cell and link is missed, so
    AOGM equals the cost of building the ground truth from nothing and TRA = DET = LNK = 0."""
    n_nodes, n_edges = gt.graph.number_of_nodes(), gt.graph.number_of_edges()
    divisions = sum(1 for n in gt.graph.nodes if gt.graph.out_degree(n) >= 2)
    out = {"tool": f"traccuracy {traccuracy.__version__}", "matcher": matcher, "division_frame_buffer": 1,
           "notes": ["no cell was predicted: every ground-truth cell and link counts as missed"],
           "TRA": 0.0, "DET": 0.0, "LNK": 0.0, "division_f1": 0.0 if divisions else None,
           "fp_nodes": 0, "fn_nodes": n_nodes, "ns_nodes": 0, "fp_edges": 0, "fn_edges": n_edges, "ws_edges": 0,
           "AOGM": None, "tp_divisions": 0, "fp_divisions": 0, "fn_divisions": divisions,
           "gt_divisions": divisions, "pred_divisions": 0}
    if not divisions:
        out["notes"].append("division_f1 is undefined: no ground-truth and no predicted divisions")
    return out


def _finite(value: float, name: str, reason: str, notes: list[str]) -> float | None:
    if value is None or math.isnan(value):
        notes.append(f"{name} is undefined (NaN in traccuracy), reported as null: {reason}")
        return None
    return float(value)


def evaluate_ctc(gt_tra_folder: str | Path, res_folder: str | Path) -> dict:
    """Score a CTC result folder against a CTC ``TRA`` ground-truth folder (CTCMatcher), and its
    masks' SEG against the ``SEG`` folder beside ``TRA`` (:func:`segmentation_score`)."""
    gt_tra_folder, res_folder = Path(gt_tra_folder), Path(res_folder)
    gt = load_ctc_data(str(gt_tra_folder), str(gt_tra_folder / "man_track.txt"), name="gt", run_checks=False)
    if not (res_folder / "res_track.txt").read_text().strip():
        scores = _nothing_predicted(gt, "CTCMatcher")
    else:
        pred = load_ctc_data(str(res_folder), str(res_folder / "res_track.txt"), name="pred")
        scores = _score(gt, pred, CTCMatcher(), "CTCMatcher")
        del pred
    del gt  # both mask series, held in reference cycles (hence the collection): SEG needs one frame
    gc.collect()
    seg = segmentation_score(gt_tra_folder.parent, res_folder)
    scores["notes"].extend(seg.pop("notes"))
    return scores | seg


def segmentation_score(gt_folder: str | Path, res_folder: str | Path) -> dict:
    """CTC SEG of a result's masks against the ``SEG`` annotations of a CTC ground-truth folder.

    SEG is the challenge's segmentation measure: each annotated nucleus scores the Jaccard index of
    the result mask that covers more than half of it, 0 when none does, averaged over the annotated
    nuclei of the annotated frames. Returns ``SEG`` (None with a note when there are no whole-frame
    annotations ``man_segTTT.tif``), ``seg_frames`` (annotated frames) and ``seg_tool``.

    Computed here from scikit-image's sparse contingency table rather than by py-ctcmetrics, whose
    SEG gives the same values (Fluo-N2DH-SIM+ 02, Fluo-N2DH-GOWT1 02, synthetic 3D) but needed 1.5 kB
    per pixel of a 2048 x 2048 frame of 7200 nuclei (tracemalloc; a dense table over label pairs)
    and adds label offsets in uint16, which wrap when the two images' largest labels add up past
    65535. Memory here: one frame's two label images and their table, 32 bytes per voxel
    (:mod:`celltrails.memory`).
    """
    seg_folder, res_folder = Path(gt_folder) / "SEG", Path(res_folder)
    out: dict = {"SEG": None, "seg_frames": 0, "notes": [],
                 "seg_tool": f"scikit-image {skimage.__version__} contingency table"}
    frames = sorted(seg_folder.glob("man_seg*.tif")) if seg_folder.is_dir() else []
    if not frames:
        out["notes"].append(f"SEG is null: no SEG annotations (man_segTTT.tif) in {seg_folder}")
        return out
    numbers = [re.fullmatch(r"man_seg(\d+)\.tif", path.name) for path in frames]
    if not all(numbers):
        out["notes"].append(f"SEG is null: {seg_folder} annotates single slices (man_seg_TTT_ZZZ.tif), "
                            "which this evaluation does not score")
        return out
    named = (re.fullmatch(r"mask(\d+)\.tif", path.name) for path in res_folder.iterdir())
    results = {int(match[1]): res_folder / match[0] for match in named if match}
    jaccard, nuclei, missing = 0.0, 0, []
    for path, number in zip(frames, numbers):
        reference = tifffile.imread(path)
        t = int(number[1])
        if t not in results:
            missing.append(t)
        result = tifffile.imread(results[t]) if t in results else np.zeros_like(reference)
        if result.shape != reference.shape:
            raise ValueError(f"{results[t]}: mask shape {result.shape} differs from "
                             f"{path}'s {reference.shape}")
        frame_jaccard, frame_nuclei = _frame_jaccard(reference, result)
        jaccard, nuclei = jaccard + frame_jaccard, nuclei + frame_nuclei
    out["seg_frames"] = len(frames)
    out["SEG"] = jaccard / nuclei if nuclei else None
    if missing:
        out["notes"].append(f"SEG: annotated frames {missing[:10]} have no result mask (maskTTT.tif) in "
                            f"{res_folder}; their nuclei score 0")
    if not nuclei:
        out["notes"].append(f"SEG is null: the SEG annotations in {seg_folder} hold no nucleus")
    return out


def _frame_jaccard(reference: np.ndarray, result: np.ndarray) -> tuple[float, int]:
    """Summed SEG Jaccard indices of one frame's annotated nuclei, and their number."""
    table = contingency_table(reference, result, sparse_type="array").tocoo()
    ref_size = np.asarray(table.sum(axis=1)).ravel()  # label sizes from the table, not two more passes
    res_size = np.asarray(table.sum(axis=0)).ravel()
    row, col, overlap = table.row, table.col, table.data
    match = (row > 0) & (col > 0) & (overlap > 0.5 * ref_size[row])  # at most one per nucleus
    row, col, overlap = row[match], col[match], overlap[match]
    jaccard = overlap / (ref_size[row] + res_size[col] - overlap)
    return float(jaccard.sum()), int(np.count_nonzero(ref_size[1:]))


def _graph(nodes: pd.DataFrame, edges: list[tuple[int, int]], keys: tuple[str, ...],
           scale: dict[str, float]) -> TrackingGraph:
    # Built by hand: traccuracy 0.4.3's load_point_data turns float rows into float node ids and
    # fails its own integer-id check. Locations are pre-scaled (physical units) rather than passing
    # PointMatcher(scale_factor=...), which indexes the first node of every frame and so fails on a
    # ground-truth frame without cells.
    graph = nx.DiGraph()
    for row in nodes.itertuples(index=False):
        graph.add_node(int(row.node), t=int(row.t), **{k: float(getattr(row, k)) * scale[k] for k in keys})
    graph.add_edges_from((int(a), int(b)) for a, b in edges)
    return TrackingGraph(graph, frame_key="t", location_keys=keys)


def gt_points_from_ctc(gt_tra_folder: str | Path) -> pd.DataFrame:
    """Ground-truth points (``POINT_COLUMNS``) from a CTC TRA folder: marker centroids and parents."""
    gt_tra_folder = Path(gt_tra_folder)
    loaded = load_ctc_data(str(gt_tra_folder), str(gt_tra_folder / "man_track.txt"), run_checks=False)
    graph = loaded.graph
    parent = {b: a for a, b in graph.edges}
    rows = [{"t": d["t"], "z": d.get("z", 0.0), "y": d["y"], "x": d["x"], "cell_id": n,
             "parent_id": parent.get(n, -1)} for n, d in graph.nodes(data=True)]
    return pd.DataFrame(rows, columns=list(POINT_COLUMNS)).sort_values(["t", "cell_id"], ignore_index=True)


def evaluate_points(gt_points_or_tra: pd.DataFrame | str | Path, tracks: pd.DataFrame, threshold: float,
                    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> dict:
    """Score point tracks (tracks.parquet columns) against ground-truth points with PointMatcher.

    ``gt_points_or_tra``: a table with ``POINT_COLUMNS`` (parent_id -1 = none; the predecessor in
    the previous frame or the mother) or a CTC TRA folder. ``threshold`` is the largest matching
    distance in the units of ``scale`` (voxel size z, y, x). 2D data (all z == 0) match on y, x.
    """
    gt = (gt_points_or_tra if isinstance(gt_points_or_tra, pd.DataFrame)
          else gt_points_from_ctc(gt_points_or_tra))
    missing = [c for c in POINT_COLUMNS if c not in gt.columns]
    if missing:
        raise ValueError(f"ground-truth points lack columns {missing}")
    planar = np.allclose(gt["z"], 0) and np.allclose(tracks["z"], 0)
    keys = ("y", "x") if planar else ("z", "y", "x")
    factors = dict(zip(("z", "y", "x"), map(float, scale)))
    gt_nodes = gt.rename(columns={"cell_id": "node"})
    gt_edges = [(p, c) for p, c in zip(gt["parent_id"], gt["cell_id"]) if p >= 0]
    # traccuracy wants node ids >= 0; cells filled into gaps have negative cell ids.
    tracks = tracks.assign(cell_id=np.arange(len(tracks)))
    pred_nodes = tracks.rename(columns={"cell_id": "node"})
    scores = _score(_graph(gt_nodes, gt_edges, keys, factors),
                    _graph(pred_nodes, track_edges(tracks), keys, factors), PointMatcher(threshold=threshold),
                    f"PointMatcher(threshold={threshold}, scale={tuple(scale)})")
    scores["notes"].append("SEG is null: scored on centre points, without ground-truth masks")
    return scores | {"SEG": None, "seg_frames": 0}


def track_edges(tracks: pd.DataFrame) -> list[tuple[int, int]]:
    """(cell_id, cell_id) links of a tracks table: consecutive cells of a track, and each
    track's first cell from its parent track's last cell (division or gap closing)."""
    ordered = tracks.sort_values(["track_id", "t"])
    same = ordered["track_id"].to_numpy()
    cells = ordered["cell_id"].to_numpy()
    inner = list(zip(cells[:-1][same[:-1] == same[1:]].tolist(), cells[1:][same[:-1] == same[1:]].tolist()))
    first = ordered.drop_duplicates("track_id", keep="first").set_index("track_id")
    last = ordered.drop_duplicates("track_id", keep="last").set_index("track_id")["cell_id"]
    children = first[first["parent_track_id"] >= 0]
    parent_last = children["parent_track_id"].map(last)
    return inner + [(int(p), int(c)) for p, c in zip(parent_last, children["cell_id"]) if not pd.isna(p)]

