"""Linking benchmark: celltrails' linker vs laptrack on SIM+ 01 GT detections, and throughput.

Not a test. Detections come from the SIM+ 01 ground-truth markers (centroid, equivalent radius),
so DET is ~1 and the scores measure *linking* only. Division probabilities are derived from the GT
lineage plus noise, and embeddings are synthetic (a random vector per track + noise, daughters near
their mother): this measures the linker given informative inputs, not the network that would
produce them. Variants without embeddings and without division information show what each input
contributes; laptrack sees positions only.

Run from the repository root: ``python benchmarks/bench_linking.py``. Writes
``benchmarks/results/linking.json``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import laptrack
import numpy as np
import pandas as pd
from laptrack import LapTrack

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from celltrails.ctc_export import write_ctc
from celltrails.evaluate import evaluate_ctc, evaluate_points, gt_points_from_ctc
from celltrails.lineage import assemble_tracks
from celltrails.linking import LinkParams, link_frames
from detections_factory import EMB_DIM, ctc_detections

OTHER_SEQUENCES = (("Fluo-N2DH-SIM+", "02"), ("Fluo-N2DH-GOWT1", "01"), ("Fluo-N2DH-GOWT1", "02"))
CUTOFF_PX = 30.0  # laptrack cutoffs (squared distances), as in the peers reference
KEYS = ("TRA", "DET", "LNK", "division_f1", "tp_divisions", "fp_divisions", "fn_divisions", "gt_divisions",
        "fp_edges", "fn_edges", "ws_edges", "fp_nodes", "fn_nodes")


def run_ours(det: pd.DataFrame, params: LinkParams) -> tuple[pd.DataFrame, float]:
    start = time.perf_counter()
    edges = link_frames(det, int(det["t"].min()), int(det["t"].max()), params)
    tracks = assemble_tracks(det, edges, params)
    return tracks, time.perf_counter() - start


def run_laptrack(det: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """laptrack on positions (z, y, x), splitting on, gap closing off; converted to a tracks table."""
    df = det[["t", "z", "y", "x", "radius"]].assign(cell_id=det.index.to_numpy())
    start = time.perf_counter()
    lt = LapTrack(cutoff=CUTOFF_PX**2, splitting_cutoff=CUTOFF_PX**2, gap_closing_cutoff=False)
    track_df, split_df, _ = lt.predict_dataframe(df, ["z", "y", "x"], frame_col="t",
                                                 only_coordinate_cols=False)
    elapsed = time.perf_counter() - start
    parent = (dict(zip(split_df["child_track_id"], split_df["parent_track_id"])) if len(split_df) else {})
    track_df = track_df.reset_index(drop=True)
    tracks = pd.DataFrame({"t": track_df["t"], "cell_id": track_df["cell_id"],
                           "track_id": track_df["track_id"] + 1,
                           "parent_track_id": track_df["track_id"].map(lambda k: parent.get(k, -2) + 1),
                           **{c: track_df[c] for c in ("z", "y", "x", "radius")}})
    tracks.loc[tracks["parent_track_id"] < 0, "parent_track_id"] = -1
    return tracks, elapsed


def score(tracks: pd.DataFrame, tra: Path, shape: tuple, n_frames: int) -> dict:
    """traccuracy scores: CTCMatcher on rendered disks vs GT masks, PointMatcher on centres."""
    with tempfile.TemporaryDirectory() as tmp:
        write_ctc(tracks, Path(tmp) / "RES", shape, n_frames)
        masks = evaluate_ctc(tra, Path(tmp) / "RES")
    points = evaluate_points(tra, tracks, threshold=5.0)
    return {"ctc_masks": {k: masks[k] for k in KEYS}, "points": {k: points[k] for k in KEYS},
            "notes": sorted(set(masks["notes"] + points["notes"]))}


def synthetic_detections(n_per_frame: int, n_frames: int, seed: int = 0) -> pd.DataFrame:
    """Random cells (radius 10 px, spacing like SIM+: ~2.6 radii to the nearest neighbour) that
    drift ~2 px per frame, with synthetic per-cell embeddings; no divisions."""
    rng = np.random.default_rng(seed)
    side = np.sqrt(n_per_frame) * 26.0
    pos = rng.uniform(0, side, (n_per_frame, 2))
    base = rng.standard_normal((n_per_frame, EMB_DIM))
    frames = []
    for t in range(n_frames):
        pos = pos + rng.normal(0, 2.0, pos.shape)
        frame = pd.DataFrame({"t": t, "z": 0.0, "y": pos[:, 0], "x": pos[:, 1], "score": 1.0, "radius": 10.0,
                              "division_prob": rng.uniform(0.01, 0.1, n_per_frame)})
        emb = pd.DataFrame(base + 0.2 * rng.standard_normal(base.shape),
                           columns=[f"emb_{k}" for k in range(EMB_DIM)])
        frames.append(pd.concat([frame, emb], axis=1))
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    results: dict = {
        "setup": {
            "data": "Fluo-N2DH-SIM+ 01, detections = GT TRA marker centroids + equivalent radius "
                    "(all 65 frames)",
            "inputs": "division_prob from the GT lineage + noise; embeddings SYNTHETIC (per-track random "
                      f"{EMB_DIM}-d vector + noise, daughters near the mother): this measures the linker, "
                      "not a network",
            "metrics": "traccuracy CTCMatcher on disks rendered at the detection radius vs GT masks, and "
                       "PointMatcher(5 px) on centres; division F1 with frame buffer 1",
            "laptrack": f"laptrack {laptrack.__version__}, positions only, cutoff = splitting_cutoff = "
                        f"{CUTOFF_PX:g}^2, gap closing off",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU used, "
                       f"Python {platform.python_version()}",
        },
        "sim_plus_01": {}, "other_sequences_points": {}, "throughput": {}}

    det, _, shape, tra = ctc_detections("Fluo-N2DH-SIM+", "01", seed=0)
    n_frames = int(det["t"].max()) + 1
    default = LinkParams()
    variants = {
        "celltrails (embeddings + division_prob)": (det, default),
        "celltrails, position only (embedding_weight=0)": (det, replace(default, embedding_weight=0.0)),
        "celltrails, no division info (division_prob=0.5)": (det.assign(division_prob=0.5), default),
        "celltrails, positions only, no division info": (det.assign(division_prob=0.5),
                                                        replace(default, embedding_weight=0.0)),
    }
    for name, (d, params) in variants.items():
        tracks, seconds = run_ours(d, params)
        results["sim_plus_01"][name] = {"seconds": round(seconds, 3), **score(tracks, tra, shape, n_frames)}
    tracks, seconds = run_laptrack(det)
    results["sim_plus_01"]["laptrack"] = {"seconds": round(seconds, 3), **score(tracks, tra, shape, n_frames)}

    for dataset, sequence in OTHER_SEQUENCES:
        det, _, _, tra = ctc_detections(dataset, sequence, seed=0)
        gt = gt_points_from_ctc(tra)
        for name, run in (("celltrails", lambda d: run_ours(d, default)), ("laptrack", run_laptrack)):
            tracks, seconds = run(det)
            m = evaluate_points(gt, tracks, threshold=5.0)
            results["other_sequences_points"][f"{dataset} {sequence} {name}"] = {
                "seconds": round(seconds, 3), **{k: m[k] for k in KEYS}, "notes": m["notes"]}

    for n in (1_000, 10_000):
        synthetic = synthetic_detections(n, n_frames=5)
        _, ours = run_ours(synthetic, default)
        _, lap = run_laptrack(synthetic)
        results["throughput"][f"{n} cells/frame x 5 frames"] = {
            "celltrails_s": round(ours, 3), "laptrack_s": round(lap, 3),
            "celltrails_cells_per_s": round(len(synthetic) / ours),
            "laptrack_cells_per_s": round(len(synthetic) / lap)}

    out = REPO / "benchmarks" / "results" / "linking.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for name, r in results["sim_plus_01"].items():
        m, p = r["ctc_masks"], r["points"]
        print(f"{name:52s} TRA {m['TRA']:.5f} DET {m['DET']:.4f} LNK {m['LNK']:.5f} "
              f"divF1 {m['division_f1']} (points: TRA {p['TRA']:.5f} LNK {p['LNK']:.5f} "
              f"divF1 {p['division_f1']}) "
              f"{r['seconds']:.2f} s")
    for name, r in results["other_sequences_points"].items():
        print(f"{name:40s} TRA {r['TRA']:.5f} LNK {r['LNK']:.5f} divF1 {r['division_f1']} {r['seconds']:.2f} s")
    for name, r in results["throughput"].items():
        print(f"{name}: celltrails {r['celltrails_s']:.2f} s, laptrack {r['laptrack_s']:.2f} s")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
