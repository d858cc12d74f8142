"""One dataset's DTW pseudo-time: pick the transition, build the template, align every trajectory,
and say how well the alignment recovers what is known (the ``pseudotime`` rule).

* ``state`` transition: reference onsets are annotated switches when there are enough, else the
  tracks whose *predicted* state switches cleanly (:mod:`celltrails.analysis.transitions`). Where
  the true onsets are known (synthetic ground truth), the summary reports the Spearman
  correlation of the estimated with the true onsets and the median absolute error in frames.
* ``division`` transition: trajectories are mother -> daughter paths, the references their
  division frames; the summary reports where the true division frames land in pseudo-time
  (their spread: the tighter, the better the cells are synchronised).

Outputs: ``pseudotime.parquet`` (one row per cell per frame of every aligned trajectory:
``track_id, t, pseudotime, alignment_region, dtw_cost, length_normalized_cost, onset_estimate,
response_group``, plus ``trajectory_id`` for division paths), ``pseudotime_summary.json`` and the
two figures of :mod:`celltrails.analysis.pseudotime`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from celltrails.analysis.classify import load_annotations
from celltrails.analysis.pseudotime import (
    PseudotimeSettings,
    align_tracks,
    plot_aligned_examples,
    plot_pseudotime_components,
)
from celltrails.analysis.transitions import (
    annotated_switch_onsets,
    choose_onsets,
    division_trajectories,
    predicted_switch_onsets,
)
from celltrails.atomic import atomic_path
from celltrails.errors import InputError
from celltrails.lineage_labels import dividing_tracks
from celltrails.serialize import plain_data

OUTPUT_COLUMNS = ["track_id", "t", "pseudotime", "alignment_region", "dtw_cost", "length_normalized_cost",
                  "onset_estimate", "response_group"]


def choose_transition(requested: str, task: str, predictions: pd.DataFrame, embeddings: pd.DataFrame) -> str:
    """``state``, ``division`` or ``none``: what ``auto`` means for this dataset."""
    if requested != "auto":
        return requested
    if f"predicted_{task}" in predictions.columns:
        return "state"
    if len(dividing_tracks(embeddings)):
        return "division"
    return "none"


def onset_accuracy(aligned: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """Estimated vs true onsets of the tracks observed on both sides of their switch.

    ``truth``: ``track_id, t, true_onset`` (-1 / NaN = never switches). A daughter born after its
    lineage switched (it inherits the onset) shows no transition to find and is left out.
    """
    known = truth.dropna(subset=["true_onset"]).query("true_onset >= 0")
    per_track = known.groupby("track_id").agg(true_onset=("true_onset", lambda s: s.mode().iloc[0]),
                                              first=("t", "min"), last=("t", "max"))
    through = per_track[(per_track["first"] < per_track["true_onset"]) & (per_track["true_onset"] <= per_track["last"])]
    true = through["true_onset"]
    estimated = aligned.groupby("track_id")["onset_estimate"].first().dropna()
    both = pd.concat([estimated, true], axis=1, join="inner").dropna()
    if len(both) < 3:
        return {"n_tracks": len(both)}
    error = (both["onset_estimate"] - both["true_onset"]).abs()
    return {"n_tracks": len(both), "spearman": float(spearmanr(both["onset_estimate"], both["true_onset"])[0]),
            "median_abs_error_frames": float(error.median()), "mean_abs_error_frames": float(error.mean())}


def division_spread(aligned: pd.DataFrame, onsets: Mapping[int, int]) -> dict:
    """Pseudo-time of each path's true division frame (its daughter's first frame): median and spread."""
    at_division = []
    for trajectory, onset in onsets.items():
        rows = aligned[(aligned["trajectory_id"] == trajectory) & (aligned["t"] == onset)]
        if len(rows) and rows["alignment_region"].iloc[0] == "aligned":
            at_division.append(float(rows["pseudotime"].iloc[0]))
    if not at_division:
        return {"n_paths": 0}
    values = np.array(at_division)
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return {"n_paths": len(values), "median_pseudotime": float(q50), "iqr": float(q75 - q25),
            "std": float(values.std())}


def analyse_pseudotime(embeddings_path: str | Path, predictions_path: str | Path, out_table: str | Path,
                       out_summary: str | Path, components_png: str | Path, examples_png: str | Path, *,
                       settings: Mapping, annotations_path: str | Path | None = None,
                       truth_path: str | Path | None = None, dataset: str = "", seed: int = 42,
                       logger: logging.Logger | None = None) -> dict:
    """Align a dataset's trajectories to a template through its transition; write table, summary, figures."""
    logger = logger or logging.getLogger(__name__)
    embeddings = pd.read_parquet(embeddings_path)
    predictions = pd.read_parquet(predictions_path)
    task, from_class, to_class = settings["task"], settings["from_class"], settings["to_class"]
    transition = choose_transition(settings["transition"], task, predictions, embeddings)
    summary: dict = {"dataset": dataset, "transition": transition}
    table, onsets, track_column = embeddings, {}, "track_id"
    if transition == "state":
        if f"predicted_{task}" not in predictions.columns:
            raise InputError(f"analyze.pseudotime.task {task!r} has no predictions; the predicted tasks are "
                             f"{[c[len('predicted_'):] for c in predictions.columns if c.startswith('predicted_')]}",
                             dataset=dataset, path=predictions_path)
        annotated = {}
        if annotations_path:
            annotations = load_annotations(annotations_path, dataset=dataset)
            if task in annotations.columns:
                annotated = annotated_switch_onsets(annotations, task, from_class, to_class)
        known = set(embeddings["track_id"])
        unknown = sorted(set(annotated) - known)
        if unknown:
            logger.warning("%s: annotated switches of tracks %s match no embedded track; not used", dataset, unknown[:5])
        annotated = {track: onset for track, onset in annotated.items() if track in known}
        onsets, source = choose_onsets(annotated, predicted_switch_onsets(predictions, task, from_class, to_class))
        summary |= {"task": task, "from_class": from_class, "to_class": to_class, "reference_source": source}
    elif transition == "division":
        table, onsets = division_trajectories(embeddings)
        track_column = "trajectory_id"
        summary["reference_source"] = "lineage"
    summary["n_references"] = len(onsets)

    pt_settings = PseudotimeSettings(n_components=settings["n_components"], window=settings["window"], seed=seed)
    reference = settings.get("reference_track")
    if reference is not None and transition != "none":
        if reference not in set(table[track_column]):
            raise InputError(f"analyze.pseudotime.reference_track {reference} is not a {track_column} of the "
                             "embeddings", dataset=dataset, path=embeddings_path)
        references = {"reference_track": reference, "reference_track_onset": settings.get("reference_onset")}
        summary |= {"reference_source": f"{track_column} {reference}", "n_references": 1}
    else:
        references = {"reference_onsets": onsets}
    aligned = None
    if onsets or reference is not None:
        try:
            aligned, template = align_tracks(table, pt_settings, track_column=track_column, logger=logger,
                                             **references)
            summary["template_length"] = len(template)
        except ValueError as err:  # e.g. no reference track long enough around its onset
            summary["note"] = str(err)
    else:
        summary["note"] = f"no reference transition found ({transition})"
    if aligned is None:
        aligned = pd.DataFrame({c: pd.Series(dtype=float) for c in [*OUTPUT_COLUMNS, "pc_0", "pc_1"]})
        track_column = "track_id"  # the figures then say that nothing was aligned
        logger.warning("%s: no pseudo-time alignment: %s", dataset, summary["note"])
    else:
        if track_column == "trajectory_id":
            aligned["track_id"] = table.loc[aligned.index, "source_track_id"].to_numpy()
            summary["true_division"] = division_spread(aligned, onsets)
        per_track = aligned.drop_duplicates(track_column)
        summary["n_aligned"] = int((per_track["alignment_region"] != "too_short").sum())
        summary["response_groups"] = per_track["response_group"].value_counts().to_dict()
        if truth_path and transition == "state":
            truth = pd.read_parquet(truth_path)
            if "true_onset" in truth.columns:
                summary["true_onset"] = onset_accuracy(aligned, truth)
    title = f"{dataset}: {transition} transition"
    plot_pseudotime_components(aligned, components_png, title=title, track_column=track_column)
    plot_aligned_examples(aligned, examples_png, title=title, track_column=track_column)
    columns = OUTPUT_COLUMNS + (["trajectory_id"] if "trajectory_id" in aligned.columns else [])
    with atomic_path(out_table) as tmp:
        aligned[columns].to_parquet(tmp, index=False)
    with atomic_path(out_summary) as tmp:
        tmp.write_text(json.dumps(plain_data(summary), indent=2) + "\n")
    logger.info("%s pseudo-time: %s", dataset, {k: v for k, v in summary.items() if k != "response_groups"})
    return summary
