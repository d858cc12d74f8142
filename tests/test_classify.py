"""Cell-state classifiers from sparse annotations: no leakage, grouped folds, metrics, prediction, I/O."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from celltrails.analysis.classify import (
    ClassifierResult,
    annotated_rows,
    classify_tasks,
    fit_classifier,
    grouped_folds,
    load_annotations,
    load_classifier,
    plot_confusion,
    plot_state_fractions,
    predict_table,
    save_classifier,
    state_fractions,
    write_metrics,
)
from celltrails.errors import InputError
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BINARY = ("uninfected", "infected")
THREE = ("early", "mid", "late")


def make_embeddings(n_tracks: int = 30, n_frames: int = 20, dims: int = 16, states: tuple[str, ...] = BINARY,
                    separation: float = 6.0, seed: int = 0) -> pd.DataFrame:
    """An embeddings table whose cells progress through ``states`` in order, one Gaussian cluster per state.

    Each track switches state at random frames (so a track holds several states, like an infection);
    features are the state's centre + a small per-track offset + unit noise. ``state`` is the hidden truth.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(states), dims))
    centres *= separation / np.linalg.norm(centres - centres.mean(axis=0), axis=1, keepdims=True)
    rows = []
    for track in range(n_tracks):
        switches = np.sort(rng.integers(1, n_frames, size=len(states) - 1))
        offset = rng.normal(scale=0.3, size=dims)
        for t in range(n_frames):
            state = int(np.searchsorted(switches, t, side="right"))
            rows.append((t, track + 1, state, centres[state] + offset + rng.normal(size=dims)))
    t, track_id, state, feats = zip(*rows, strict=True)
    table = pd.DataFrame({"t": t, "track_id": track_id, "parent_track_id": -1, "lineage_id": track_id,
                          "z": 0.0, "y": rng.uniform(0, 100, len(t)), "x": rng.uniform(0, 100, len(t)),
                          "state": np.asarray(states, dtype=object)[list(state)]})
    feats = np.asarray(feats)
    features = pd.DataFrame(feats, columns=[f"f_{i}" for i in range(dims)])
    projections = pd.DataFrame(feats[:, :4] * 2, columns=[f"p_{i}" for i in range(4)])
    return pd.concat([table, features, projections], axis=1)


def features_of(table: pd.DataFrame) -> np.ndarray:
    return table[[c for c in table.columns if c.startswith("f_")]].to_numpy(np.float64)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------------------
# Cross-validation: no leakage, tracks kept together


def test_scaler_and_pca_are_fitted_on_training_folds_only() -> None:
    rng = np.random.default_rng(1)
    n_groups, per_group = 10, 12
    groups = np.repeat(np.arange(n_groups), per_group)
    y = np.where(np.arange(len(groups)) % per_group < per_group // 2, "a", "b")
    X = rng.normal(size=(len(groups), 6))
    X[y == "b", 1] += 3.0
    X[groups == 0, 0] += 1000.0  # one track far away: its fold's training mean must not include it

    result = fit_classifier(X, y, groups, pca_components=3, n_splits=5, seed=0)
    assert len(result.folds) == len(result.fold_pipelines) == 5
    global_mean = X.mean(axis=0)
    offset_fold_seen = False
    for (train, test), model in zip(result.folds, result.fold_pipelines, strict=True):
        scaler = model.named_steps["scaler"]
        np.testing.assert_allclose(scaler.mean_, X[train].mean(axis=0), rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(scaler.var_, X[train].var(axis=0), rtol=1e-9)
        assert scaler.n_samples_seen_ == len(train)
        pca = model.named_steps["pca"]
        assert pca.n_samples_ == len(train)
        np.testing.assert_allclose(pca.mean_, 0.0, atol=1e-9)  # scaled *training* rows have mean 0
        if 0 in set(groups[test]):
            offset_fold_seen = True
            assert abs(scaler.mean_[0] - global_mean[0]) > 50  # a leaky scaler would have the global mean
            # The same fold fitted by hand on its training rows gives the same out-of-fold probabilities.
            manual = Pipeline([("scaler", StandardScaler()), ("pca", PCA(n_components=3, random_state=0)),
                               ("classifier", LogisticRegression(class_weight="balanced", max_iter=1000,
                                                                 random_state=0))]).fit(X[train], y[train])
            np.testing.assert_allclose(result.oof_proba[test], manual.predict_proba(X[test]), atol=1e-10)
    assert offset_fold_seen
    # The final model is refitted on every annotated row.
    np.testing.assert_allclose(result.pipeline.named_steps["scaler"].mean_, global_mean)


def test_folds_keep_tracks_together_and_cover_every_row_once() -> None:
    table = make_embeddings(n_tracks=25, n_frames=12, seed=2)
    y, groups = table["state"].to_numpy(), table["track_id"].to_numpy()
    folds, name = grouped_folds(y, groups, n_splits=5, seed=3)
    assert name == "StratifiedGroupKFold(n_splits=5)"
    assert len(folds) == 5
    seen = np.concatenate([test for _, test in folds])
    assert np.array_equal(np.sort(seen), np.arange(len(y)))
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert set(y[train]) == set(BINARY)
        assert len(train) + len(test) == len(y)


def test_fewer_tracks_than_splits_falls_back_to_fewer_grouped_folds() -> None:
    # Class "b" is annotated in only 3 tracks: 3 folds, still grouped, each training fold with both classes.
    groups = np.repeat(np.arange(12), 5)
    y = np.where(groups < 3, "b", "a")
    folds, name = grouped_folds(y, groups, n_splits=5)
    assert "n_splits=3" in name
    assert len(folds) == 3
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert set(y[train]) == {"a", "b"}


def test_too_few_annotated_tracks_says_how_many_are_needed() -> None:
    groups = np.repeat(np.arange(6), 4)
    y = np.where(groups == 0, "mitosis", "interphase")  # mitosis in a single track
    X = np.random.default_rng(0).normal(size=(len(y), 4))
    with pytest.raises(InputError, match=r"'mitosis' in 1 track.*at least 2 different tracks"):
        fit_classifier(X, y, groups, task="division_state")
    with pytest.raises(InputError, match="at least 2 classes"):
        fit_classifier(X, np.full(len(y), "interphase"), groups)


# ---------------------------------------------------------------------------------------------------------
# Metrics


def test_separable_binary_states_are_classified_and_metrics_match_sklearn() -> None:
    table = make_embeddings(n_tracks=30, n_frames=10, seed=4)
    X, y, groups = features_of(table), table["state"].to_numpy(), table["track_id"].to_numpy()
    result = fit_classifier(X, y, groups, task="infection_state")
    m = result.metrics
    assert result.classes == sorted(BINARY)
    assert m["macro_f1"] >= 0.95 and m["auroc"] >= 0.98
    # Metrics recomputed here from the out-of-fold predictions.
    assert m["macro_f1"] == pytest.approx(f1_score(y, result.oof_predicted, average="macro"))
    positive = result.classes.index("uninfected")  # second in sorted order
    assert m["auroc"] == pytest.approx(roc_auc_score(y == "uninfected", result.oof_proba[:, positive]))
    assert m["n_annotated"] == len(y) and m["n_tracks"] == 30
    assert np.asarray(m["confusion_matrix"]).sum() == len(y)
    for c in BINARY:
        assert m["per_class"][c]["support"] == int((y == c).sum())
        assert np.asarray(m["confusion_matrix"])[result.classes.index(c)].sum() == (y == c).sum()
    np.testing.assert_allclose(result.oof_proba.sum(axis=1), 1.0)


def test_shuffled_labels_give_chance_level_metrics() -> None:
    table = make_embeddings(n_tracks=40, n_frames=10, seed=5)
    X, groups = features_of(table), table["track_id"].to_numpy()
    y = np.random.default_rng(6).permutation(table["state"].to_numpy())
    m = fit_classifier(X, y, groups).metrics
    assert 0.3 <= m["macro_f1"] <= 0.65
    assert 0.35 <= m["auroc"] <= 0.65


def test_three_states_with_pca() -> None:
    table = make_embeddings(n_tracks=30, n_frames=12, states=THREE, seed=7)
    X, y, groups = features_of(table), table["state"].to_numpy(), table["track_id"].to_numpy()
    result = fit_classifier(X, y, groups, pca_components=5, task="phase")
    m = result.metrics
    assert result.classes == sorted(THREE)
    assert result.oof_proba.shape == (len(y), 3)
    assert m["macro_f1"] >= 0.95 and m["auroc"] >= 0.98
    assert m["auroc"] == pytest.approx(roc_auc_score(y, result.oof_proba, multi_class="ovr",
                                                     labels=result.classes))
    assert np.asarray(m["confusion_matrix"]).shape == (3, 3)
    assert result.pipeline.named_steps["pca"].n_components_ == 5


# ---------------------------------------------------------------------------------------------------------
# Annotations


def test_sparse_annotations_predict_every_cell(tmp_path: Path) -> None:
    table = make_embeddings(n_tracks=40, n_frames=25, separation=3.0, seed=8)  # clusters overlap a little
    rng = np.random.default_rng(9)
    # ~5 % of cells: 8 of 40 tracks, 6 frames each, in a CSV with extra metadata and an "unknown".
    tracks = rng.choice(table["track_id"].unique(), size=8, replace=False)
    picked = pd.concat([table[table["track_id"] == tr].sample(6, random_state=int(tr)) for tr in tracks])
    csv = picked[["track_id", "t", "x", "y"]].assign(fov_name="A/1/0", infection_state=picked["state"])
    csv.iloc[0, csv.columns.get_loc("infection_state")] = "unknown"
    path = tmp_path / "annotations.csv"
    csv.to_csv(path, index=False)
    assert len(picked) / len(table) <= 0.05

    annotations = load_annotations(path, dataset="sparse")
    assert list(annotations.columns) == ["track_id", "t", "infection_state"]
    results = classify_tasks(table, annotations, n_splits=5)
    result = results["infection_state"]
    assert result.metrics["n_annotated"] == len(picked) - 1
    predictions = predict_table(result, table)
    assert len(predictions) == len(table)
    assert f1_score(table["state"], predictions["predicted_infection_state"], average="macro") >= 0.9
    # The infection curve follows the hidden truth.
    fractions = state_fractions(predictions, "infection_state")
    truth = table.groupby("t")["state"].apply(lambda s: (s == "infected").mean()).to_numpy()
    assert np.abs(fractions["fraction_infected"].to_numpy() - truth).mean() < 0.05


def test_load_annotations_missing_labels_duplicates_and_metadata(tmp_path: Path, caplog) -> None:
    path = write_csv(tmp_path / "labels.csv",
                     "fov_name,track_id,t,x,y,division_state,infection_state,death_state\n"
                     "A,1,0,1,1,mitosis,,unknown\n"
                     "A,1,1,1,1, interphase ,1,\n"
                     "A,2,0,1,1,unknown,0,\n"
                     "A,2,1,1,1,Unknown ,NaN,\n"
                     "A,3,4.0,1,1,,,\n"
                     "A,1,1,1,1,interphase,,\n"
                     "A,4,2,1,1,mitosis,UNKNOWN,\n")
    with caplog.at_level(logging.WARNING, logger="celltrails.analysis.classify"):
        annotations = load_annotations(path, dataset="ds")
    assert "death_state" in caplog.text and "no label" in caplog.text
    assert list(annotations.columns) == ["track_id", "t", "division_state", "infection_state"]
    assert annotations.attrs == {"dataset": "ds", "path": str(path)}
    assert annotations["track_id"].dtype == np.int64 and annotations["t"].dtype == np.int64
    # Rows with no label at all (2,1) and (3,4) are dropped; the agreeing duplicate (1,1) is merged.
    keys = list(zip(annotations["track_id"], annotations["t"], strict=True))
    assert keys == [(1, 0), (1, 1), (2, 0), (4, 2)]
    division = dict(zip(keys, annotations["division_state"], strict=True))
    infection = dict(zip(keys, annotations["infection_state"], strict=True))
    assert division[(1, 0)] == "mitosis" and division[(1, 1)] == "interphase" and pd.isna(division[(2, 0)])
    assert infection[(1, 1)] == "1" and infection[(2, 0)] == "0"  # numeric labels are strings
    assert pd.isna(infection[(1, 0)]) and pd.isna(infection[(4, 2)])
    assert all(isinstance(v, str) for v in annotations["division_state"].dropna())


@pytest.mark.parametrize(("text", "message"), [
    (None, "annotation file not found"),
    ("", "cannot read"),
    ("track_id,label\n1,a\n", "lacks column.*t"),
    ("track_id,t,x,y\n1,0,2,3\n", "no label column"),
    ("track_id,t,state\n1,0,a\n1.5,1,b\n", "'track_id' must hold whole numbers.*'1.5'"),
    ("track_id,t,state\n1,zero,a\n", "'t' must hold whole numbers.*'zero'"),
    ("track_id,t,state\n1,0,\n2,0,unknown\n", "no usable label"),
    ("track_id,t,state\n1,0,mitosis\n1,0,interphase\n2,3,a\n", r"different 'state' labels.*track_id 1, t 0"),
])
def test_load_annotations_errors_name_dataset_and_file(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / "bad.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError, match=message) as error:
        load_annotations(path, dataset="screen")
    assert "dataset 'screen'" in str(error.value) and "bad.csv" in str(error.value)


def test_annotated_rows_joins_on_track_and_time_and_reports_unmatched(tmp_path: Path, caplog) -> None:
    table = make_embeddings(n_tracks=5, n_frames=6, seed=10).sample(frac=1.0, random_state=0)
    path = write_csv(tmp_path / "a.csv", "track_id,t,state\n2,3,x\n5,0,y\n99,0,x\n1,77,y\n4,5,x\n")
    annotations = load_annotations(path, dataset="join")
    with caplog.at_level(logging.WARNING, logger="celltrails.analysis.classify"):
        rows, labels = annotated_rows(table, annotations, "state")
    assert "2 of 5" in caplog.text and "(99, 0)" in caplog.text and "(1, 77)" in caplog.text
    assert np.all(np.diff(rows) > 0)  # embeddings order
    found = {(int(tr), int(t)): lab for tr, t, lab in zip(table["track_id"].to_numpy()[rows],
                                                          table["t"].to_numpy()[rows], labels, strict=True)}
    assert found == {(2, 3): "x", (5, 0): "y", (4, 5): "x"}

    nothing = load_annotations(write_csv(tmp_path / "b.csv", "track_id,t,state\n99,0,x\n"), dataset="join")
    with pytest.raises(InputError, match=r"dataset 'join'.*b\.csv.*none of the 1 'state' annotations"):
        annotated_rows(table, nothing, "state")
    with pytest.raises(ValueError, match="not a label column"):
        annotated_rows(table, annotations, "infection_state")


def test_classify_tasks_fits_one_classifier_per_label_column(tmp_path: Path) -> None:
    table = make_embeddings(n_tracks=20, n_frames=8, seed=11)
    lines = ["track_id,t,infection_state,division_state"]
    for tr, t, state in table[["track_id", "t", "state"]].itertuples(index=False):
        if t % 2 == 0:
            lines.append(f"{tr},{t},{state},{'mitosis' if tr % 3 == 0 else 'interphase'}")
    annotations = load_annotations(write_csv(tmp_path / "two.csv", "\n".join(lines) + "\n"), dataset="two")
    results = classify_tasks(table, annotations, n_splits=3)
    assert set(results) == {"infection_state", "division_state"}
    assert results["infection_state"].metrics["macro_f1"] >= 0.95
    assert results["division_state"].classes == ["interphase", "mitosis"]
    assert results["division_state"].feature_columns == [f"f_{i}" for i in range(16)]


# ---------------------------------------------------------------------------------------------------------
# Prediction, fractions, saving


@pytest.fixture(scope="module")
def fitted() -> tuple[pd.DataFrame, ClassifierResult]:
    table = make_embeddings(n_tracks=20, n_frames=10, states=THREE, seed=12)
    X, y, groups = features_of(table), table["state"].to_numpy(), table["track_id"].to_numpy()
    return table, fit_classifier(X, y, groups, task="phase", feature_columns=[f"f_{i}" for i in range(16)])


def test_predict_table_columns_and_probabilities(fitted) -> None:
    table, result = fitted
    predictions = predict_table(result, table)
    prob_columns = [f"prob_phase_{c}" for c in sorted(THREE)]
    assert list(predictions.columns) == [*[c for c in table.columns if not c.startswith(("f_", "p_"))],
                                         "predicted_phase", *prob_columns]
    assert predictions.index.equals(table.index)
    proba = predictions[prob_columns].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert np.array_equal(predictions["predicted_phase"].to_numpy(),
                          np.asarray(sorted(THREE))[np.argmax(proba, axis=1)])
    # A bare pipeline works too, with the task named.
    bare = predict_table(result.pipeline, table, "phase")
    pd.testing.assert_frame_equal(bare, predictions)


def test_state_fractions_sum_to_one_per_frame(fitted) -> None:
    table, result = fitted
    predictions = predict_table(result, table)
    fractions = state_fractions(predictions, "phase")
    assert fractions["t"].tolist() == sorted(table["t"].unique())
    assert fractions["n_cells"].tolist() == table.groupby("t").size().tolist()
    np.testing.assert_allclose(fractions[[f"fraction_{c}" for c in THREE]].sum(axis=1), 1.0)
    counts = fractions[[f"count_{c}" for c in THREE]].sum(axis=1)
    assert counts.tolist() == fractions["n_cells"].tolist()
    # A class nobody is predicted in still has its (zero) column.
    late_free = predictions[predictions["predicted_phase"] != "late"]
    assert (state_fractions(late_free, "phase")["fraction_late"] == 0).all()


def test_save_load_round_trip_and_feature_dimension_check(fitted, tmp_path: Path) -> None:
    _, result = fitted
    path = tmp_path / "models" / "phase.joblib"
    save_classifier(result, path)
    loaded = load_classifier(path)
    assert loaded.task == "phase" and loaded.classes == result.classes
    assert loaded.feature_columns == result.feature_columns and loaded.n_features == 16
    assert loaded.metrics["macro_f1"] == pytest.approx(result.metrics["macro_f1"])
    # Applied to another dataset (same embedding model): identical predictions from both objects.
    other = make_embeddings(n_tracks=6, n_frames=5, states=THREE, seed=13)
    pd.testing.assert_frame_equal(predict_table(loaded, other), predict_table(result, other))
    assert sorted(p.name for p in path.parent.iterdir()) == ["phase.joblib"]

    smaller = make_embeddings(n_tracks=3, n_frames=4, dims=8, states=THREE, seed=14)
    with pytest.raises(ValueError, match="trained on 16 features .*has 8"):
        predict_table(loaded, smaller)
    with pytest.raises(ValueError, match="expects 16 features .* has 8"):
        predict_table(loaded.pipeline, smaller, "phase")
    with pytest.raises(InputError, match="not a celltrails classifier"):
        import joblib
        joblib.dump({"something": 1}, tmp_path / "other.joblib")
        load_classifier(tmp_path / "other.joblib")


def test_figures_and_metrics_are_written_atomically(fitted, tmp_path: Path) -> None:
    table, result = fitted
    out = tmp_path / "figures"
    plot_confusion(result, out / "confusion.png", "phase, synthetic")
    fractions = state_fractions(predict_table(result, table), "phase")
    plot_state_fractions(fractions, "phase", out / "fractions.png", "phase over time")
    plot_state_fractions(fractions, "phase", out / "fractions_hours.png", "phase over time", time_interval=30)
    write_metrics(result, out / "metrics.json")
    for name in ("confusion.png", "fractions.png", "fractions_hours.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    import json
    assert json.loads((out / "metrics.json").read_text())["classes"] == sorted(THREE)
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "fractions.png", "fractions_hours.png",
                                                     "metrics.json"]
