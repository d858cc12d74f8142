"""A dataset's state analysis end to end: sparse annotations -> classifier -> predictions, scores, figures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from celltrails.analysis.states import agreement_with_truth, analyse_states
from celltrails.errors import InputError


def embeddings_with_truth(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """40 tracks x 20 frames; half switch from 'off' to 'on' at a random frame; features show the state."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for track in range(40):
        onset = rng.integers(4, 16) if track % 2 else 99
        for t in range(20):
            state = "on" if t >= onset else "off"
            features = rng.normal(size=8) + (4.0 if state == "on" else 0.0) * np.eye(8)[0]
            rows.append({"t": t, "track_id": track, **{f"f_{i}": v for i, v in enumerate(features)}})
            truth.append({"t": t, "track_id": track, "state": state})
    return pd.DataFrame(rows), pd.DataFrame(truth)


def test_sparse_annotations_predict_every_cell_and_are_scored_against_the_rest(tmp_path):
    embeddings, truth = embeddings_with_truth()
    embeddings.to_parquet(tmp_path / "emb.parquet")
    truth.to_parquet(tmp_path / "truth.parquet")
    annotated = truth.sample(frac=0.05, random_state=1)  # 40 of 800 cells
    annotated.to_csv(tmp_path / "annotations.csv", index=False)

    metrics = analyse_states(tmp_path / "emb.parquet", tmp_path / "pred.parquet", tmp_path / "metrics.json",
                             tmp_path / "states", annotations_path=tmp_path / "annotations.csv",
                             truth_path=tmp_path / "truth.parquet", dataset="toy", time_interval=5.0)
    predictions = pd.read_parquet(tmp_path / "pred.parquet")
    assert len(predictions) == len(embeddings) and not any(c.startswith("f_") for c in predictions.columns)
    assert np.allclose(predictions[["prob_state_off", "prob_state_on"]].sum(axis=1), 1.0)
    agreement = metrics["state"]["agreement_with_truth"]
    assert agreement["n_cells"] == len(embeddings) - len(annotated)  # annotated cells are not scored twice
    assert agreement["macro_f1"] >= 0.9
    assert json.loads((tmp_path / "metrics.json").read_text())["state"]["n_annotated"] == len(annotated)
    for name in ("state_fraction_state.png", "confusion_state.png", "pca_predicted_state.png"):
        assert (tmp_path / "states" / name).read_bytes()[:4] == b"\x89PNG"

    # The saved classifier applies to another dataset without annotations.
    other, other_truth = embeddings_with_truth(seed=5)
    other.to_parquet(tmp_path / "other.parquet")
    other_truth.to_parquet(tmp_path / "other_truth.parquet")
    applied = analyse_states(tmp_path / "other.parquet", tmp_path / "pred2.parquet", tmp_path / "m2.json",
                             tmp_path / "states2", classifier_path=tmp_path / "states" / "classifier_state.joblib",
                             truth_path=tmp_path / "other_truth.parquet", dataset="other")
    assert applied["state"]["agreement_with_truth"]["macro_f1"] >= 0.9


def test_agreement_without_the_task_in_the_truth_is_empty():
    predictions = pd.DataFrame({"t": [0], "track_id": [1], "predicted_state": ["on"]})
    assert agreement_with_truth(predictions, pd.DataFrame({"t": [0], "track_id": [1]}), "state", None) == {}


def test_empty_derived_annotations_classify_nothing_but_a_user_file_must_have_labels(tmp_path):
    embeddings, _ = embeddings_with_truth()
    embeddings.to_parquet(tmp_path / "emb.parquet")
    (tmp_path / "derived.csv").write_text("track_id,t\n")
    metrics = analyse_states(tmp_path / "emb.parquet", tmp_path / "pred.parquet", tmp_path / "m.json",
                             tmp_path / "states", annotations_path=tmp_path / "derived.csv", derived=True)
    assert "skipped" in metrics["all"]
    predictions = pd.read_parquet(tmp_path / "pred.parquet")
    assert len(predictions) == len(embeddings) and not [c for c in predictions if c.startswith("predicted_")]
    with pytest.raises(InputError, match="dataset 'mine'"):
        analyse_states(tmp_path / "emb.parquet", tmp_path / "p2.parquet", tmp_path / "m2.json", tmp_path / "s2",
                       annotations_path=tmp_path / "derived.csv", dataset="mine")
