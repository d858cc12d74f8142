"""Linear cell-state classifiers on DynaCLR embeddings, trained from sparse annotations.

A user annotates a few cells (``track_id, t, <label columns>``, one column per task such as
``division_state`` or ``infection_state``); we fit a linear classifier on the embeddings of those cells,
measure how well it generalises, and predict the state of every cell in every frame (the paper's
"infection curve" is the per-frame fraction of cells in each predicted state).

Design, and why:

- **Model**: ``Pipeline([StandardScaler, (PCA), LogisticRegression(class_weight="balanced")])`` as in
  VisCy's linear classifier, with scikit-learn's default lbfgs solver (multinomial for > 2 classes).
  Balanced class weights because annotations are rarely balanced (mitoses are rare).
- **No leakage**: VisCy fits the scaler (and PCA) on all labelled cells before splitting. Here every
  cross-validation fold clones the whole pipeline and fits it on that fold's training rows only, then
  predicts the held-out rows (what ``cross_val_predict`` does with a pipeline, written out so the fold
  models can be inspected and tested: ``ClassifierResult.fold_pipelines``).
- **Folds grouped by track**: frames of one track are nearly identical in a smooth embedding, so a random
  split would score memorisation. Folds never split a track (``groups`` = track ids).
  ``StratifiedGroupKFold(n_splits)`` when every class was annotated in at least ``n_splits`` tracks;
  otherwise ``GroupKFold`` with as many splits as the scarcest class has tracks. If a training fold would
  lack a class, the other splitter is tried; a class needs at least 2 annotated tracks (one to train on
  while the other is held out), else an :class:`~celltrails.errors.InputError` says how many are needed.
- **Metrics** come from the out-of-fold predictions (every annotated cell predicted by a model that never
  saw its track): per-class and macro precision/recall/F1, weighted F1, accuracy, AUROC (binary: on the
  probability of the second class in sorted order; multiclass: one-vs-rest macro), confusion matrix
  (rows true, columns predicted, in ``classes`` order), support, number of annotated cells and tracks.
- The reported model is then **refitted on all annotated cells**; it predicts every row of an embeddings
  table, and can be saved with joblib (pipeline, classes, task, feature columns, metrics, scikit-learn
  version) to be applied to another dataset. Prediction checks that the feature columns match.
- **Annotations**: labels are strings; empty, NaN (pandas' NA spellings) and "unknown" (any case) are
  missing, per task. Duplicate ``(track_id, t)`` rows are merged unless they disagree (an error).

Figures (confusion matrix, state fractions over time) use ``matplotlib.figure.Figure`` objects, so no
global matplotlib state changes, and are written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import sklearn
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from celltrails.atomic import atomic_path
from celltrails.dynaclr.quality import feature_columns, feature_matrix
from celltrails.errors import InputError
from celltrails.figures import save_png
from celltrails.serialize import plain_data

log = logging.getLogger(__name__)

KEY_COLUMNS = ("track_id", "t")
# Columns of an annotation CSV that describe the cell, not a label (VisCy's CSVs carry these too).
METADATA_COLUMNS = frozenset({"dataset", "dataset_name", "fov_name", "id", "cell_id", "parent_id",
                              "parent_track_id", "lineage_id", "z", "y", "x"})
MISSING_LABELS = frozenset({"", "unknown"})
MIN_GROUPS_PER_CLASS = 2
_SAVE_FORMAT = "celltrails-classifier"
_SAVE_VERSION = 1
_EXAMPLES = 5


# --------------------------------------------------------------------------------------------------------
# Annotations


def _integer_column(values: pd.Series, name: str, dataset: str, path: object) -> np.ndarray:
    """Whole numbers ("3" or "3.0") as int64; anything else is an InputError naming the first bad rows."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(numbers)
    bad[~bad] = numbers[~bad] != np.round(numbers[~bad])
    if bad.any():
        rows = np.flatnonzero(bad)
        examples = ", ".join(f"line {r + 2}: {values.iloc[r]!r}" for r in rows[:_EXAMPLES])
        raise InputError(f"column '{name}' must hold whole numbers; {rows.size} row(s) do not ({examples})",
                         dataset=dataset, path=path)
    return numbers.astype(np.int64)


def _clean_labels(values: pd.Series) -> pd.Series:
    """Labels as stripped strings (object dtype); empty, NaN and "unknown" become NaN."""
    text = values.astype(object)
    missing = text.isna().to_numpy().copy()
    stripped = np.array([None if m else str(v).strip() for v, m in zip(text, missing, strict=True)], dtype=object)
    missing |= np.array([s is None or s.lower() in MISSING_LABELS for s in stripped], dtype=bool)
    stripped[missing] = np.nan
    return pd.Series(stripped, index=values.index, dtype=object)


def load_annotations(path: str | os.PathLike, dataset: str = "",
                     label_columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a sparse annotation CSV: ``track_id, t`` and one label column per task.

    Label columns are every column except ``track_id``, ``t``, cell metadata (``fov_name, id, x, y, ...``)
    and pandas index leftovers (``Unnamed: 0``), or exactly ``label_columns``. Returns one row per
    ``(track_id, t)`` with int64 keys and object label columns (strings, NaN where missing); rows with no
    label at all are dropped, and so (with a warning) are label columns with no label at all.
    ``attrs`` records ``dataset`` and ``path`` for later messages.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("annotation file not found", dataset=dataset, path=path)
    try:
        table = pd.read_csv(path, dtype=str)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the annotation CSV: {error}", dataset=dataset, path=path) from error
    table.columns = [str(c).strip() for c in table.columns]
    missing_keys = [c for c in KEY_COLUMNS if c not in table.columns]
    if missing_keys:
        raise InputError(f"the annotation CSV lacks column(s) {', '.join(missing_keys)}; it needs track_id, t "
                         f"and one or more label columns (found: {', '.join(table.columns)})",
                         dataset=dataset, path=path)
    if label_columns is None:
        tasks = [c for c in table.columns
                 if c not in KEY_COLUMNS and c not in METADATA_COLUMNS and not c.startswith("Unnamed:")]
    else:
        tasks = list(label_columns)
        absent = [c for c in tasks if c not in table.columns]
        if absent:
            raise InputError(f"label column(s) {', '.join(absent)} not in the annotation CSV "
                             f"(found: {', '.join(table.columns)})", dataset=dataset, path=path)
    if not tasks:
        raise InputError("the annotation CSV has no label column: add one column per task next to track_id "
                         "and t, e.g. division_state with values mitosis / interphase",
                         dataset=dataset, path=path)
    clean = pd.DataFrame({"track_id": _integer_column(table["track_id"], "track_id", dataset, path),
                          "t": _integer_column(table["t"], "t", dataset, path)})
    for task in tasks:
        clean[task] = _clean_labels(table[task])
    empty = [task for task in tasks if clean[task].isna().all()]
    for task in empty:
        log.warning("dataset '%s', file '%s': label column '%s' has no label (all empty, NaN or unknown); "
                    "ignored", dataset, path, task)
    tasks = [task for task in tasks if task not in empty]
    if not tasks:
        raise InputError("the annotation CSV has no usable label: every label is empty, NaN or 'unknown'",
                         dataset=dataset, path=path)
    clean = clean[["track_id", "t", *tasks]]
    clean = clean[clean[tasks].notna().any(axis=1)]

    grouped = clean.groupby(list(KEY_COLUMNS), sort=True)
    for task in tasks:
        distinct = grouped[task].nunique(dropna=True)
        conflicts = distinct[distinct > 1]
        if len(conflicts):
            examples = []
            for key in conflicts.index[:_EXAMPLES]:
                values = sorted(set(grouped.get_group(key)[task].dropna()))
                examples.append(f"track_id {key[0]}, t {key[1]}: {' / '.join(values)}")
            raise InputError(f"{len(conflicts)} (track_id, t) pair(s) are annotated more than once with "
                             f"different '{task}' labels ({'; '.join(examples)})", dataset=dataset, path=path)
    merged = grouped[tasks].first().reset_index()  # first() skips NaN: agreeing duplicates merge
    for task in tasks:
        merged[task] = merged[task].astype(object).where(merged[task].notna(), np.nan)
    merged.attrs = {"dataset": dataset, "path": str(path)}
    return merged


def label_tasks(annotations: pd.DataFrame) -> list[str]:
    """The label columns (tasks) of an annotations table from :func:`load_annotations`."""
    return [c for c in annotations.columns if c not in KEY_COLUMNS]


def annotated_rows(embeddings: pd.DataFrame, annotations: pd.DataFrame, task: str,
                   dataset: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positional row indices into ``embeddings`` of the cells labelled for ``task``, and their labels.

    Joined on ``(track_id, t)``. Annotations that match no embedding row are logged (count and examples);
    if none matches, an InputError. Rows are returned in embeddings order.
    """
    dataset = dataset if dataset is not None else annotations.attrs.get("dataset", "")
    path = annotations.attrs.get("path")
    if task not in annotations.columns or task in KEY_COLUMNS:
        raise ValueError(f"task '{task}' is not a label column of the annotations "
                         f"(tasks: {', '.join(label_tasks(annotations))})")
    missing = [c for c in KEY_COLUMNS if c not in embeddings.columns]
    if missing:
        raise ValueError(f"the embeddings table lacks column(s) {', '.join(missing)}")
    labelled = annotations.loc[annotations[task].notna(), ["track_id", "t", task]]
    keys = embeddings[list(KEY_COLUMNS)]
    valid = keys.notna().all(axis=1).to_numpy()
    rows = pd.DataFrame({"track_id": keys["track_id"].to_numpy()[valid].astype(np.int64),
                         "t": keys["t"].to_numpy()[valid].astype(np.int64),
                         "_row": np.flatnonzero(valid)})
    duplicated = rows.duplicated(list(KEY_COLUMNS), keep=False)
    if duplicated.any():
        first = rows[duplicated].iloc[0]
        raise ValueError(f"the embeddings table has {int(duplicated.sum())} rows with repeated (track_id, t), "
                         f"e.g. track_id {first['track_id']}, t {first['t']}: annotations cannot be joined")
    merged = labelled.astype({"track_id": np.int64, "t": np.int64}).merge(rows, on=list(KEY_COLUMNS),
                                                                          how="left")
    unmatched = merged[merged["_row"].isna()]
    if len(unmatched) == len(merged):
        raise InputError(f"none of the {len(merged)} '{task}' annotations matches a cell of the embeddings "
                         "table by (track_id, t): are they from this dataset's tracking run?",
                         dataset=dataset, path=path)
    if len(unmatched):
        examples = ", ".join(f"({r.track_id}, {r.t})" for r in unmatched.head(_EXAMPLES).itertuples())
        log.warning("dataset '%s': %d of %d '%s' annotations match no embedded cell (track_id, t), e.g. %s; "
                    "they are ignored", dataset, len(unmatched), len(merged), task, examples)
    matched = merged[merged["_row"].notna()].sort_values("_row")
    return matched["_row"].to_numpy(np.int64), matched[task].astype(str).to_numpy(dtype=object)


# --------------------------------------------------------------------------------------------------------
# Classifier


@dataclass
class ClassifierResult:
    """A fitted classifier for one task, its cross-validated metrics and (after fitting) the CV details.

    ``pipeline`` is refitted on all annotated cells. ``oof_proba``/``oof_predicted`` are the out-of-fold
    predictions for ``y`` (columns in ``classes`` order), ``folds`` the (train, test) row indices and
    ``fold_pipelines`` the models fitted on each training fold; these are not saved.
    """

    task: str
    classes: list[str]
    pipeline: Pipeline
    metrics: dict
    feature_columns: list[str] | None = None
    n_features: int = 0
    sklearn_version: str = sklearn.__version__
    cv: str = ""
    y: np.ndarray | None = None
    groups: np.ndarray | None = None
    oof_proba: np.ndarray | None = None
    oof_predicted: np.ndarray | None = None
    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    fold_pipelines: list[Pipeline] = field(default_factory=list)


def make_pipeline(pca_components: float | None = None, seed: int = 42) -> Pipeline:
    """StandardScaler -> optional PCA -> LogisticRegression(class_weight="balanced", max_iter=1000)."""
    steps: list[tuple[str, object]] = [("scaler", StandardScaler())]
    if pca_components is not None:
        steps.append(("pca", PCA(n_components=pca_components, random_state=seed)))
    steps.append(("classifier", LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed)))
    return Pipeline(steps)


def _groups_per_class(y: np.ndarray, groups: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    return {c: int(pd.unique(groups[y == c]).size) for c in classes}


def _folds_complete(folds: list[tuple[np.ndarray, np.ndarray]], y: np.ndarray, n_classes: int) -> bool:
    """True when every training fold holds every class."""
    return all(np.unique(y[train]).size == n_classes for train, _ in folds)


def grouped_folds(y: np.ndarray, groups: np.ndarray, n_splits: int = 5, seed: int = 42,
                  task: str = "") -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Cross-validation folds that keep each group (track) whole, and a description of the splitter.

    See the module docstring for the choice of splitter. Raises InputError when a class was annotated in
    fewer than 2 groups.
    """
    y, groups = np.asarray(y), np.asarray(groups)
    if n_splits < 2:
        raise ValueError(f"n_splits must be >= 2, got {n_splits}")
    classes = sorted(pd.unique(y).tolist())
    per_class = _groups_per_class(y, groups, classes)
    scarce = {c: n for c, n in per_class.items() if n < MIN_GROUPS_PER_CLASS}
    what = f"task '{task}': " if task else ""
    if scarce:
        listed = ", ".join(f"'{c}' in {n} track" for c, n in scarce.items())
        raise InputError(f"{what}too few annotated tracks: class {listed}. Cross-validation keeps each track in "
                         f"one fold, so every class needs annotated cells in at least {MIN_GROUPS_PER_CLASS} "
                         f"different tracks ({n_splits} for {n_splits}-fold); annotate a few cells of more "
                         f"tracks (annotated tracks per class: {per_class})")
    k = min(n_splits, min(per_class.values()))
    stratified = (StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed),
                  f"StratifiedGroupKFold(n_splits={k})")
    plain = (GroupKFold(n_splits=k), f"GroupKFold(n_splits={k})")
    candidates = [stratified, plain] if k == n_splits else [plain, stratified]
    x_dummy = np.zeros((len(y), 1))
    tried = []
    for splitter, name in candidates:
        folds = [(np.asarray(tr), np.asarray(te)) for tr, te in splitter.split(x_dummy, y, groups)]
        if _folds_complete(folds, y, len(classes)):
            return folds, name
        tried.append((folds, name))
    folds, name = tried[0]
    log.warning("%sa training fold of %s lacks a class (too few annotated tracks); that class gets "
                "probability 0 in the fold's predictions", what, name)
    return folds, name


def _check_matrix(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D (cells, features) array, got shape {X.shape}")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise ValueError(f"features contain NaN or infinite values in {int(bad.sum())} row(s), "
                         f"first row {int(np.flatnonzero(bad)[0])}")
    return X


def _proba_in_order(pipeline: Pipeline, X: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """predict_proba with columns in ``classes`` order; classes the model never saw get probability 0."""
    proba = pipeline.predict_proba(X)
    out = np.zeros((len(X), len(classes)))
    position = {c: i for i, c in enumerate(classes)}
    for j, c in enumerate(pipeline.classes_):
        out[:, position[str(c)]] = proba[:, j]
    return out


def classification_metrics(y: np.ndarray, proba: np.ndarray, classes: Sequence[str],
                           groups: np.ndarray | None = None) -> dict:
    """Metrics of predicted probabilities (columns in ``classes`` order) against true labels ``y``."""
    y = np.asarray(y).astype(str)
    classes = [str(c) for c in classes]
    predicted = np.asarray(classes, dtype=object)[np.argmax(proba, axis=1)].astype(str)
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, labels=classes,
                                                                     zero_division=0)
    present = [c for c in classes if (y == c).any()]
    per_class_auroc = {}
    for i, c in enumerate(classes):
        positive = y == c
        per_class_auroc[c] = (float(roc_auc_score(positive, proba[:, i]))
                              if 0 < positive.sum() < len(y) else float("nan"))
    if len(present) < 2:
        auroc = float("nan")
    elif len(classes) == 2:
        auroc = per_class_auroc[classes[1]]
    else:
        auroc = float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes))
    return {
        "classes": classes,
        "n_annotated": len(y),
        "n_tracks": int(pd.unique(np.asarray(groups)).size) if groups is not None else None,
        "accuracy": float(np.mean(predicted == y)),
        "macro_f1": float(np.mean(f1)),
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "weighted_f1": float(f1_score(y, predicted, labels=classes, average="weighted", zero_division=0)),
        "auroc": auroc,
        "auroc_positive_class": classes[1] if len(classes) == 2 else None,
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i]), "auroc": per_class_auroc[c]}
                      for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(y, predicted, labels=classes).tolist(),
        "confusion_matrix_axes": "rows: true class, columns: predicted class, both in 'classes' order",
    }


def fit_classifier(X: np.ndarray, y: Sequence, groups: Sequence, *, pca_components: float | None = None,
                   n_splits: int = 5, seed: int = 42, task: str = "",
                   feature_columns: Sequence[str] | None = None) -> ClassifierResult:
    """Cross-validate (folds grouped by ``groups``) and refit a linear classifier on all rows.

    Each fold fits a fresh pipeline (scaler, PCA, logistic regression) on its training rows only; metrics
    come from the out-of-fold probabilities. ``y`` is cast to strings.
    """
    X = _check_matrix(X)
    y = np.asarray(y).astype(str)
    groups = np.asarray(groups)
    if not (len(y) == len(groups) == len(X)):
        raise ValueError(f"X, y and groups differ in length: {len(X)}, {len(y)}, {len(groups)}")
    classes = sorted(pd.unique(y).tolist())
    if len(classes) < 2:
        what = f"task '{task}': " if task else ""
        raise InputError(f"{what}all {len(y)} annotated cells have the same label "
                         f"{classes[0] if classes else '(none)'!r}; a classifier needs at least 2 classes")
    if feature_columns is not None and len(feature_columns) != X.shape[1]:
        raise ValueError(f"{len(feature_columns)} feature columns named for {X.shape[1]} features")
    folds, cv_name = grouped_folds(y, groups, n_splits=n_splits, seed=seed, task=task)
    if isinstance(pca_components, int | np.integer):
        smallest = min(len(train) for train, _ in folds)
        if not 1 <= pca_components <= min(X.shape[1], smallest):
            raise ValueError(f"pca_components={pca_components} must be between 1 and min(features "
                             f"{X.shape[1]}, smallest training fold {smallest})")
    template = make_pipeline(pca_components, seed)
    oof = np.zeros((len(y), len(classes)))
    fold_pipelines = []
    for train, test in folds:
        model = clone(template).fit(X[train], y[train])  # scaler and PCA see the training rows only
        oof[test] = _proba_in_order(model, X[test], classes)
        fold_pipelines.append(model)
    metrics = classification_metrics(y, oof, classes, groups)
    metrics.update({"task": task, "cv": cv_name, "n_folds": len(folds), "n_features": int(X.shape[1]),
                    "pca_components": pca_components, "seed": seed})
    final = clone(template).fit(X, y)
    log.info("task '%s': %d annotated cells in %d tracks, %s: macro F1 %.3f, AUROC %.3f", task, len(y),
             metrics["n_tracks"], cv_name, metrics["macro_f1"], metrics["auroc"])
    return ClassifierResult(
        task=task, classes=classes, pipeline=final, metrics=metrics,
        feature_columns=list(feature_columns) if feature_columns is not None else None,
        n_features=int(X.shape[1]), cv=cv_name, y=y, groups=groups, oof_proba=oof,
        oof_predicted=np.asarray(classes, dtype=object)[np.argmax(oof, axis=1)].astype(str),
        folds=folds, fold_pipelines=fold_pipelines)


def classify_tasks(embeddings: pd.DataFrame, annotations: pd.DataFrame, *, tasks: Sequence[str] | None = None,
                   prefix: str = "f_", group_by: str = "track_id", pca_components: float | None = None,
                   n_splits: int = 5, seed: int = 42, dataset: str | None = None) -> dict[str, ClassifierResult]:
    """One classifier per label column of ``annotations`` (or per name in ``tasks``), keyed by task.

    Features are the ``prefix`` columns; folds are grouped by ``group_by`` (``lineage_id`` keeps a
    mother and her daughters together).
    """
    if group_by not in embeddings.columns:
        raise ValueError(f"the embeddings table has no '{group_by}' column to group folds by")
    columns = feature_columns(embeddings, prefix)
    X = feature_matrix(embeddings, prefix)
    results = {}
    for task in (list(tasks) if tasks is not None else label_tasks(annotations)):
        rows, labels = annotated_rows(embeddings, annotations, task, dataset=dataset)
        results[task] = fit_classifier(X[rows], labels, embeddings[group_by].to_numpy()[rows],
                                       pca_components=pca_components, n_splits=n_splits, seed=seed,
                                       task=task, feature_columns=columns)
    return results


# --------------------------------------------------------------------------------------------------------
# Prediction and state fractions


def _prediction_inputs(model: ClassifierResult | Pipeline, embeddings: pd.DataFrame,
                       prefix: str) -> tuple[Pipeline, np.ndarray, list[str]]:
    """The pipeline, the feature matrix it expects (checked) and its class names."""
    if isinstance(model, ClassifierResult):
        pipeline, expected = model.pipeline, model.feature_columns
    else:
        pipeline, expected = model, None
    if expected is not None:
        absent = [c for c in expected if c not in embeddings.columns]
        expected_prefix = expected[0].rstrip("0123456789")
        available = [c for c in embeddings.columns
                     if c.startswith(expected_prefix) and c[len(expected_prefix):].isdigit()]
        if absent or len(available) != len(expected):
            raise ValueError(f"the classifier was trained on {len(expected)} features ({expected[0]}.."
                             f"{expected[-1]}) but the embeddings table has {len(available)} such columns"
                             + (f" and lacks {', '.join(absent[:_EXAMPLES])}" if absent else "")
                             + ": embed with the same DynaCLR model the classifier was trained on")
        X = embeddings[expected].to_numpy(np.float64)
    else:
        X = feature_matrix(embeddings, prefix)
    n_expected = getattr(pipeline, "n_features_in_", X.shape[1])
    if X.shape[1] != n_expected:
        raise ValueError(f"the classifier expects {n_expected} features but the embeddings table has "
                         f"{X.shape[1]} ({prefix}0..): embed with the same DynaCLR model it was trained on")
    return pipeline, _check_matrix(X), [str(c) for c in pipeline.classes_]


def predict_table(model: ClassifierResult | Pipeline, embeddings: pd.DataFrame, task: str | None = None,
                  prefix: str = "f_") -> pd.DataFrame:
    """The embeddings table without feature columns, plus ``predicted_<task>`` and ``prob_<task>_<class>``.

    ``model`` is a :class:`ClassifierResult` (fitted or loaded; its feature columns are used) or a fitted
    pipeline (reads the ``prefix`` columns). ``task`` defaults to the result's task.
    """
    if task is None:
        if not isinstance(model, ClassifierResult) or not model.task:
            raise ValueError("give the task name: the model does not carry one")
        task = model.task
    pipeline, X, classes = _prediction_inputs(model, embeddings, prefix)
    kept = [c for c in embeddings.columns
            if not any(c.startswith(p) and c[len(p):].isdigit() for p in ("f_", "p_", prefix))]
    out = embeddings[kept].copy()
    proba = pipeline.predict_proba(X) if len(X) else np.zeros((0, len(classes)))
    out[f"predicted_{task}"] = np.asarray(classes, dtype=object)[np.argmax(proba, axis=1)]
    for j, c in enumerate(classes):
        out[f"prob_{task}_{c}"] = proba[:, j]
    return out


def _prediction_classes(predictions: pd.DataFrame, task: str) -> list[str]:
    prob_prefix = f"prob_{task}_"
    classes = [c[len(prob_prefix):] for c in predictions.columns if c.startswith(prob_prefix)]
    if not classes:
        column = f"predicted_{task}"
        if column not in predictions.columns:
            raise ValueError(f"the predictions table has no predicted_{task} column")
        classes = sorted(pd.unique(predictions[column].dropna().astype(str)).tolist())
    return classes


def state_fractions(predictions: pd.DataFrame, task: str) -> pd.DataFrame:
    """Per frame ``t``: ``n_cells``, and ``count_<class>`` and ``fraction_<class>`` of predicted states.

    Classes come from the ``prob_<task>_*`` columns, so a class never predicted still gets a zero column.
    """
    column = f"predicted_{task}"
    if column not in predictions.columns or "t" not in predictions.columns:
        raise ValueError(f"the predictions table needs columns t and {column}")
    classes = _prediction_classes(predictions, task)
    counts = pd.crosstab(predictions["t"], predictions[column].astype(str))
    counts = counts.reindex(columns=classes, fill_value=0).sort_index()
    n_cells = counts.sum(axis=1)
    out = pd.DataFrame({"t": counts.index.to_numpy(), "n_cells": n_cells.to_numpy(np.int64)})
    for c in classes:
        out[f"count_{c}"] = counts[c].to_numpy(np.int64)
    for c in classes:
        out[f"fraction_{c}"] = (counts[c] / n_cells).to_numpy(np.float64)
    return out


# --------------------------------------------------------------------------------------------------------
# Figures


def plot_state_fractions(fractions: pd.DataFrame, task: str, path: str | os.PathLike, title: str,
                         time_interval: float | None = None) -> None:
    """Fraction of cells in each predicted state against time, one line per class; written atomically.

    ``time_interval`` (minutes per frame) puts hours on the x axis, else frames.
    """
    classes = [c[len("fraction_"):] for c in fractions.columns if c.startswith("fraction_")]
    if not classes:
        raise ValueError("the fractions table has no fraction_<class> columns (see state_fractions)")
    t = fractions["t"].to_numpy(np.float64)
    x = t * time_interval / 60.0 if time_interval else t
    colours = colormaps["tab10"]
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for i, c in enumerate(classes):
        ax.plot(x, fractions[f"fraction_{c}"], color=colours(i % 10), lw=1.6, marker="." if len(x) < 40 else None,
                label=c)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("time (h)" if time_interval else "frame")
    ax.set_ylabel(f"fraction of cells ({task})")
    ax.set_title(title, fontsize=10)
    if "n_cells" in fractions.columns and len(fractions):
        ax.plot([], [], " ", label=f"{int(fractions['n_cells'].min())}-{int(fractions['n_cells'].max())} "
                                   "cells per frame")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)


def plot_confusion(result: ClassifierResult, path: str | os.PathLike, title: str) -> None:
    """Cross-validated confusion matrix as a heat map (colour: fraction of the true class), with counts."""
    matrix = np.asarray(result.metrics["confusion_matrix"], dtype=np.int64)
    classes = result.metrics.get("classes", result.classes)
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    size = 2.2 + 0.9 * len(classes)
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]}\n{100 * share[i, j]:.0f} %", ha="center", va="center", fontsize=9,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("annotated")
    m = result.metrics
    ax.set_title(f"{title}\nmacro F1 {m['macro_f1']:.3f}, AUROC {m['auroc']:.3f}, "
                 f"{m['n_annotated']} cells / {m['n_tracks']} tracks ({m.get('cv', '')})", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of annotated class")
    fig.tight_layout()
    save_png(fig, path)


# --------------------------------------------------------------------------------------------------------
# Saving and loading


def write_metrics(result: ClassifierResult, path: str | os.PathLike) -> None:
    """The metrics as JSON (NaN written as null), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(plain_data(result.metrics), indent=2) + "\n")


def save_classifier(result: ClassifierResult, path: str | os.PathLike) -> None:
    """Write the fitted pipeline with what is needed to apply it elsewhere (joblib, atomically).

    Only load such files from sources you trust: joblib files are pickles.
    """
    payload = {"format": _SAVE_FORMAT, "format_version": _SAVE_VERSION, "pipeline": result.pipeline,
               "task": result.task, "classes": list(result.classes),
               "feature_columns": list(result.feature_columns) if result.feature_columns is not None else None,
               "n_features": int(result.n_features), "metrics": plain_data(result.metrics), "cv": result.cv,
               "sklearn_version": sklearn.__version__}
    with atomic_path(path) as tmp:
        joblib.dump(payload, tmp)


def load_classifier(path: str | os.PathLike) -> ClassifierResult:
    """A classifier written by :func:`save_classifier` (no cross-validation details)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("classifier file not found", path=path)
    payload = joblib.load(path)
    if not isinstance(payload, dict) or payload.get("format") != _SAVE_FORMAT:
        raise InputError("not a celltrails classifier (written by save_classifier)", path=path)
    if payload["sklearn_version"] != sklearn.__version__:
        log.warning("classifier '%s' was saved with scikit-learn %s, this is %s; predictions may differ",
                    path, payload["sklearn_version"], sklearn.__version__)
    return ClassifierResult(task=payload["task"], classes=list(payload["classes"]), pipeline=payload["pipeline"],
                            metrics=payload["metrics"], feature_columns=payload["feature_columns"],
                            n_features=payload["n_features"], sklearn_version=payload["sklearn_version"],
                            cv=payload["cv"])
