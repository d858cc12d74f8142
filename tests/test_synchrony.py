"""A dataset's pseudo-time end to end: references from predicted switches or divisions, scored against truth."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from celltrails.analysis.synchrony import analyse_pseudotime

SETTINGS = {"transition": "auto", "task": "state", "from_class": "off", "to_class": "on", "window": 4,
            "n_components": 4}


def switching_cells(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """30 tracks x 30 frames; 24 switch at a random onset (a smooth sigmoid in the features), 6 never."""
    rng = np.random.default_rng(seed)
    rows, predictions, truth = [], [], []
    for track in range(30):
        onset = int(rng.integers(8, 22)) if track < 24 else -1
        for t in range(30):
            level = 1 / (1 + np.exp(-(t - onset) / 1.5)) if onset >= 0 else 0.0
            features = rng.normal(scale=0.15, size=6) + level * np.array([3.0, -2.0, 1.0, 0, 0, 0])
            rows.append({"t": t, "track_id": track, "parent_track_id": -1,
                         **{f"f_{i}": v for i, v in enumerate(features)}})
            state = "on" if onset >= 0 and t >= onset else "off"
            predictions.append({"t": t, "track_id": track, "predicted_state": state})
            truth.append({"t": t, "track_id": track, "true_onset": onset})
    return pd.DataFrame(rows), pd.DataFrame(predictions), pd.DataFrame(truth)


def test_state_switch_onsets_are_recovered(tmp_path):
    embeddings, predictions, truth = switching_cells()
    embeddings.to_parquet(tmp_path / "emb.parquet")
    predictions.to_parquet(tmp_path / "pred.parquet")
    truth.to_parquet(tmp_path / "truth.parquet")
    summary = analyse_pseudotime(tmp_path / "emb.parquet", tmp_path / "pred.parquet", tmp_path / "pt.parquet",
                                 tmp_path / "summary.json", tmp_path / "c.png", tmp_path / "e.png",
                                 settings=SETTINGS, truth_path=tmp_path / "truth.parquet", dataset="toy")
    assert summary["transition"] == "state" and summary["reference_source"] == "predicted"
    assert summary["true_onset"]["spearman"] >= 0.9
    assert summary["true_onset"]["median_abs_error_frames"] <= 1.0
    table = pd.read_parquet(tmp_path / "pt.parquet")
    assert len(table) == len(embeddings) and table["pseudotime"].between(0, 1).all()
    assert json.loads((tmp_path / "summary.json").read_text())["n_references"] == 24
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_division_paths_are_aligned_around_the_division(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for lineage in range(12):  # a mother (frames 0..d-1) and two daughters (d..19); features jump at d
        division = int(rng.integers(6, 14))
        mother, daughters = 100 * lineage, (100 * lineage + 1, 100 * lineage + 2)
        for t in range(20):
            for track, parent in ([(mother, -1)] if t < division else [(d, mother) for d in daughters]):
                level = 1 / (1 + np.exp(-(t - division)))
                features = rng.normal(scale=0.1, size=4) + level * np.array([2.0, 1.0, 0, 0])
                rows.append({"t": t, "track_id": track, "parent_track_id": parent,
                             **{f"f_{i}": v for i, v in enumerate(features)}})
    embeddings = pd.DataFrame(rows)
    embeddings.to_parquet(tmp_path / "emb.parquet")
    embeddings[["t", "track_id"]].to_parquet(tmp_path / "pred.parquet")  # no predicted task: auto -> division
    summary = analyse_pseudotime(tmp_path / "emb.parquet", tmp_path / "pred.parquet", tmp_path / "pt.parquet",
                                 tmp_path / "summary.json", tmp_path / "c.png", tmp_path / "e.png",
                                 settings=SETTINGS, dataset="toy")
    assert summary["transition"] == "division" and summary["n_references"] == 12
    spread = summary["true_division"]
    assert spread["n_paths"] >= 10 and spread["iqr"] <= 0.15  # divisions land at one pseudo-time
    table = pd.read_parquet(tmp_path / "pt.parquet")
    assert {"trajectory_id", "track_id"} <= set(table.columns)


def test_a_named_reference_track_is_the_template(tmp_path):
    embeddings, predictions, truth = switching_cells(seed=2)
    embeddings.to_parquet(tmp_path / "emb.parquet")
    predictions.to_parquet(tmp_path / "pred.parquet")
    truth.to_parquet(tmp_path / "truth.parquet")
    reference = int(truth.query("true_onset >= 10 and true_onset <= 20").track_id.iloc[0])
    onset = int(truth.query("track_id == @reference").true_onset.iloc[0])
    settings = SETTINGS | {"reference_track": reference, "reference_onset": onset}
    summary = analyse_pseudotime(tmp_path / "emb.parquet", tmp_path / "pred.parquet", tmp_path / "pt.parquet",
                                 tmp_path / "summary.json", tmp_path / "c.png", tmp_path / "e.png",
                                 settings=settings, truth_path=tmp_path / "truth.parquet", dataset="toy")
    assert summary["reference_source"] == f"track_id {reference}" and summary["template_length"] == 30
    assert summary["true_onset"]["spearman"] >= 0.8
