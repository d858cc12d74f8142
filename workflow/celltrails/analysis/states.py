"""One dataset's cell states: classifiers from its sparse annotations (or a classifier trained
elsewhere), predictions for every cell in every frame, and the figures and numbers behind them.

Outputs (the ``classify`` rule): ``predictions.parquet`` (the embedding index columns plus
``predicted_<task>`` and ``prob_<task>_<class>`` per task), ``classifier_metrics.json`` (per
task: cross-validated scores on the annotated cells and, where the full truth is known, the
agreement of the predictions for *all* cells with it, annotated ones excluded), and a folder of
figures and fitted classifiers: ``state_fraction_<task>.png``, ``confusion_<task>.png``,
``pca_predicted_<task>.png``, ``classifier_<task>.joblib``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from celltrails.analysis.classify import (
    ClassifierResult,
    annotated_rows,
    fit_classifier,
    label_tasks,
    load_annotations,
    load_classifier,
    plot_confusion,
    plot_state_fractions,
    predict_table,
    save_classifier,
    state_fractions,
)
from celltrails.atomic import atomic_path
from celltrails.dynaclr.quality import embedding_pca, feature_columns, feature_matrix, plot_embedding_pca
from celltrails.errors import InputError
from celltrails.serialize import plain_data


def agreement_with_truth(predictions: pd.DataFrame, truth: pd.DataFrame, task: str,
                         annotations: pd.DataFrame | None) -> dict:
    """Macro F1, accuracy and count of predictions vs the true labels of the cells nobody annotated."""
    if task not in truth.columns:
        return {}
    merged = predictions[["track_id", "t", f"predicted_{task}"]].merge(
        truth[["track_id", "t", task]].dropna(subset=[task]), on=["track_id", "t"])
    if annotations is not None and task in annotations.columns:
        seen = annotations.dropna(subset=[task])[["track_id", "t"]].assign(_seen=True)
        merged = merged.merge(seen, on=["track_id", "t"], how="left")
        merged = merged[merged["_seen"].isna()]
    if merged.empty:
        return {}
    true, predicted = merged[task].astype(str), merged[f"predicted_{task}"].astype(str)
    return {"macro_f1": float(f1_score(true, predicted, average="macro")),
            "accuracy": float((true == predicted).mean()), "n_cells": len(merged)}


class TooFewAnnotations(InputError):
    """A task's annotations cannot be cross-validated (one class, or a class in too few groups)."""


def fit_task(embeddings: pd.DataFrame, annotations: pd.DataFrame, task: str, settings: Mapping, seed: int,
             dataset: str) -> ClassifierResult:
    """One task's classifier, folds grouped by lineage (a mother and her daughters, whose frames
    around a division look alike, stay in one fold) or, with too few lineages, by track."""
    rows, labels = annotated_rows(embeddings, annotations, task, dataset=dataset)  # no match at all: raises
    columns = feature_columns(embeddings)
    X = embeddings[columns].to_numpy(np.float64)[rows]
    problems = []
    for group_by in [c for c in ("lineage_id", "track_id") if c in embeddings.columns]:
        try:
            result = fit_classifier(X, labels, embeddings[group_by].to_numpy()[rows],
                                    pca_components=settings.get("pca_components"),
                                    n_splits=settings.get("n_splits", 5), seed=seed, task=task,
                                    feature_columns=columns)
        except InputError as err:
            problems.append(f"grouped by {group_by}: {err}")
            continue
        result.metrics["folds_grouped_by"] = group_by
        return result
    raise TooFewAnnotations("; ".join(problems), dataset=dataset)


def analyse_states(embeddings_path: str | Path, out_predictions: str | Path, out_metrics: str | Path,
                   figures_dir: str | Path, *, annotations_path: str | Path | None = None,
                   truth_path: str | Path | None = None, classifier_path: str | Path | None = None,
                   derived: bool = False,
                   settings: Mapping | None = None, dataset: str = "", time_interval: float | None = None,
                   seed: int = 42, logger: logging.Logger | None = None) -> dict:
    """Fit (or load) the classifiers, predict every cell, score, draw; returns the metrics per task.

    A task with too few annotated tracks (or one class) to cross-validate is skipped with a warning
    (and a ``skipped`` entry in the metrics) rather than stopping the other tasks; annotations
    that match no cell at all are an error, unless they were ``derived`` from the ground truth and
    came out empty (then nothing is classified).
    """
    logger = logger or logging.getLogger(__name__)
    settings = dict(settings or {})
    embeddings = pd.read_parquet(embeddings_path)
    annotations, skipped = None, {}
    results: dict[str, ClassifierResult] = {}
    if classifier_path:
        loaded = load_classifier(classifier_path)
        results[loaded.task] = loaded
        logger.info("applying the classifier %s (task %s) to %s", classifier_path, loaded.task, dataset)
    elif derived and pd.read_csv(annotations_path).drop(columns=["track_id", "t"], errors="ignore").empty:
        logger.warning("%s: the annotations derived from the ground truth are empty: nothing to classify", dataset)
        skipped["all"] = {"skipped": "no tracked cell matched a labelled ground-truth cell"}
    else:
        annotations = load_annotations(annotations_path, dataset=dataset)
        for task in label_tasks(annotations):
            try:
                results[task] = fit_task(embeddings, annotations, task, settings, seed, dataset)
            except TooFewAnnotations as err:  # this task cannot be cross-validated: the others still run
                logger.warning("%s: task %s skipped: %s", dataset, task, err)
                skipped[task] = {"skipped": str(err)}
    truth = pd.read_parquet(truth_path) if truth_path else None

    predictions = embeddings[[c for c in embeddings.columns if not c.startswith(("f_", "p_"))]]
    metrics = dict(skipped)
    figures_dir = Path(figures_dir)
    with atomic_path(figures_dir) as tmp_dir:
        tmp_dir.mkdir()
        coords, explained = embedding_pca(feature_matrix(embeddings), seed=seed)
        for task, result in results.items():
            table = predict_table(result, embeddings, task)
            predictions = predictions.join(
                table[[c for c in table.columns if c.startswith((f"predicted_{task}", f"prob_{task}_"))]])
            metrics[task] = dict(result.metrics)
            if truth is not None:
                metrics[task]["agreement_with_truth"] = agreement_with_truth(table, truth, task, annotations)
            plot_state_fractions(state_fractions(table, task), task, tmp_dir / f"state_fraction_{task}.png",
                                 f"{dataset}: predicted {task} over time", time_interval=time_interval)
            if getattr(result, "oof_proba", None) is not None:
                plot_confusion(result, tmp_dir / f"confusion_{task}.png", f"{dataset}: {task}")
            plot_embedding_pca(coords, {f"predicted {task}": table[f"predicted_{task}"].astype(str).to_numpy()},
                               tmp_dir / f"pca_predicted_{task}.png", f"{dataset}: embedding PCA by predicted {task}",
                               explained=explained)
            save_classifier(result, tmp_dir / f"classifier_{task}.joblib")
            agreement = metrics[task].get("agreement_with_truth", {})
            logger.info("%s %s: cross-validated macro F1 %s on %s annotated cells%s", dataset, task,
                        _fmt(metrics[task].get("macro_f1")), metrics[task].get("n_annotated", "?"),
                        f"; agreement with the truth on {agreement['n_cells']} other cells: macro F1 "
                        f"{agreement['macro_f1']:.3f}" if agreement else "")
    with atomic_path(out_predictions) as tmp:
        predictions.to_parquet(tmp, index=False)
    with atomic_path(out_metrics) as tmp:
        tmp.write_text(json.dumps(plain_data(metrics), indent=2) + "\n")
    return metrics


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) and np.isfinite(value) else str(value)
