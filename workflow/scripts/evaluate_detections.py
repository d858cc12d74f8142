"""Snakemake adapter: detection F1 and embedding successor accuracy against the ground truth."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

import pandas as pd
from celltrails.detector.metrics import embedding_successor_accuracy, match_detections, reach_without_radii
from celltrails.logs import script_logging
from celltrails.ome_zarr_io import read_image_meta
from celltrails.serialize import write_metrics

with script_logging(snakemake.log[0]) as log:
    voxel_size = read_image_meta(snakemake.input.image).voxel_size
    detections = pd.read_parquet(snakemake.input.detections)
    truth = pd.read_parquet(snakemake.input.ground_truth)
    # Matching reach: each ground-truth cell's radius; a points table without radii gets the median
    # detected radius, in micrometres.
    reach = reach_without_radii(truth, detections, voxel_size)
    if reach is not None:
        log.warning("ground truth has no radius: detections match within %.3g µm (median detected radius)", reach)
    matched = match_detections(detections, truth, voxel_size=voxel_size, max_distance=reach)
    successor = embedding_successor_accuracy(detections, truth, voxel_size=voxel_size, max_distance=reach)
    metrics = {"dataset": snakemake.wildcards.dataset,
               **{k: matched[k] for k in ("tp", "fp", "fn", "precision", "recall", "f1")},
               "embedding_successor_accuracy": successor,
               "matching": "one-to-one (Hungarian), a detection matches a ground-truth centre within "
                           + (f"{reach:.3g} µm (no radius in the ground truth)" if reach else "its radius")}
    write_metrics(metrics, snakemake.output[0])
    log.info("dataset '%s': detection F1 %.4f (precision %.4f, recall %.4f); embedding successor accuracy %s",
             snakemake.wildcards.dataset, matched["f1"], matched["precision"], matched["recall"],
             successor.get("fraction"))
