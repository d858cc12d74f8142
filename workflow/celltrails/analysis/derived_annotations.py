"""Cell-state labels taken from a dataset's ground truth, moved onto the tracks that were embedded.

Datasets with ground truth but no hand-made annotations (the synthetic series, the Cell Tracking
Challenge sequences) can still exercise and score the classifiers: every ground-truth cell gets
labels from what the truth knows, each row of the embedded track table inherits the labels of
the ground-truth cell it matches in the same frame, and a **sparse** subset of rows becomes the
annotation table a user would otherwise write by hand; the full labels stay available to
measure how well the predictions agree with the truth.

Tasks:

* ``reporter_state`` (synthetic data, from its ``state`` column): ``nuclear`` before a cell's
  switch, ``cytoplasmic`` from the switch on (the synthetic reporter relocates from the nucleus
  to the cytoplasm, like an infection reporter in the DynaCLR paper);
* ``division_state`` (any lineage): ``mitosis`` / ``interphase`` from the distance to a division
  (:func:`celltrails.lineage_labels.division_labels`).

Matching is one-to-one per frame within each ground-truth cell's radius (the median tracked
radius for a points table without radii; :func:`celltrails.detector.metrics.match_detections`);
unmatched rows carry no label.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from celltrails.atomic import atomic_path
from celltrails.detector.metrics import match_detections, reach_without_radii
from celltrails.lineage_labels import division_labels

REPORTER_CLASSES = {0: "nuclear", 1: "cytoplasmic"}
TASKS = ("reporter_state", "division_state")


def ground_truth_labels(points: pd.DataFrame) -> pd.DataFrame:
    """Per ground-truth row (points table: ``t, z, y, x, cell_id, parent_id`` [+ ``state, onset``]),
    the labels of every task the truth supports (missing where undefined)."""
    tracks = points.rename(columns={"cell_id": "track_id", "parent_id": "parent_track_id"})
    labels = pd.DataFrame(index=points.index)
    if "state" in points.columns:
        labels["reporter_state"] = points["state"].map(REPORTER_CLASSES)
        labels["true_onset"] = points["onset"] if "onset" in points.columns else np.nan
    labels["division_state"] = division_labels(tracks).to_numpy()
    return labels


def transfer_labels(tracks: pd.DataFrame, points: pd.DataFrame,
                    voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> pd.DataFrame:
    """``tracks`` (``t, track_id, z, y, x``) with the ground-truth labels of the cell each row matches."""
    labels = ground_truth_labels(points)
    reach = reach_without_radii(points, tracks, voxel_size)  # a points table may have no radii
    pairs = match_detections(tracks, points, voxel_size=voxel_size, max_distance=reach)["pairs"]
    out = tracks[["t", "track_id"]].copy()
    for column in labels.columns:
        values = pd.Series(pd.NA, index=tracks.index, dtype=object)
        values.loc[pairs["pred"].to_numpy()] = labels.loc[pairs["gt"].to_numpy(), column].to_numpy()
        out[column] = values
    return out


def sparse_annotations(labelled: pd.DataFrame, task: str, max_cells: int, seed: int = 0) -> pd.DataFrame:
    """At most ``max_cells`` labelled rows of one task, ``track_id, t, <task>``, as balanced over the
    classes as the data allow (a rare class such as mitosis would otherwise be missed)."""
    rows = labelled.dropna(subset=[task])
    if rows.empty or max_cells < 1:
        return pd.DataFrame(columns=["track_id", "t", task])
    rng = np.random.default_rng(seed)
    classes = sorted(rows[task].unique())
    per_class = {c: rows.index[rows[task] == c].to_numpy() for c in classes}
    budget = {c: 0 for c in classes}
    remaining = max_cells
    while remaining > 0 and any(budget[c] < len(per_class[c]) for c in classes):  # fill round robin
        for c in classes:
            if remaining and budget[c] < len(per_class[c]):
                budget[c] += 1
                remaining -= 1
    chosen = np.concatenate([rng.choice(per_class[c], budget[c], replace=False) for c in classes])
    return rows.loc[np.sort(chosen), ["track_id", "t", task]].reset_index(drop=True)


def derive_annotations(tracks: pd.DataFrame, points: pd.DataFrame, voxel_size: Sequence[float], *,
                       fraction: float, max_cells: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sparse annotation table ``track_id, t, <tasks>``, full labels of every track row).

    Each task annotates at most ``min(max_cells, fraction * rows)`` rows; a row annotated for one
    task has the other tasks empty unless it was drawn for them too.
    """
    labelled = transfer_labels(tracks, points, voxel_size)
    budget = max(1, min(int(max_cells), int(fraction * len(tracks))))
    tasks = [task for task in TASKS if task in labelled.columns and labelled[task].notna().any()]
    parts = [sparse_annotations(labelled, task, budget, seed + i) for i, task in enumerate(tasks)]
    annotations = pd.DataFrame(columns=["track_id", "t"])
    for part in parts:
        annotations = annotations.merge(part, on=["track_id", "t"], how="outer")
    annotations = annotations.sort_values(["t", "track_id"]).reset_index(drop=True)
    return annotations, labelled


def write_derived_annotations(tracks: pd.DataFrame, points: pd.DataFrame, voxel_size: Sequence[float],
                              annotations_path, labels_path, *, fraction: float, max_cells: int, seed: int = 0,
                              dataset: str = "", logger: logging.Logger | None = None) -> pd.DataFrame:
    """:func:`derive_annotations` on a track table (predicted, or a ground-truth points table) and write
    the annotation CSV and the full labels (parquet), both atomically. When no tracked cell matches
    a labelled ground-truth cell the CSV has only its header (the analysis then has nothing to fit)."""
    logger = logger or logging.getLogger(__name__)
    if "track_id" not in tracks.columns:  # a ground-truth points table was embedded
        tracks = tracks.rename(columns={"cell_id": "track_id"})
    annotations, labelled = derive_annotations(tracks, points, voxel_size, fraction=fraction, max_cells=max_cells,
                                               seed=seed)
    if annotations.empty:  # e.g. a points table of a few cells the tracker did not find: nothing to derive
        logger.warning("%s: no tracked cell matches a labelled ground-truth cell; no annotations derived", dataset)
    with atomic_path(annotations_path) as tmp:
        annotations.to_csv(tmp, index=False)
    with atomic_path(labels_path) as tmp:
        labelled.to_parquet(tmp, index=False)
    counts = {task: annotations[task].value_counts().to_dict() for task in annotations.columns[2:]}
    logger.info("%s: %d of %d tracked cells annotated from the ground truth: %s", dataset, len(annotations),
                len(tracks), counts)
    return annotations
