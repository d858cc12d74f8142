"""Snakemake adapter: tracking metrics against the ground truth (rule `evaluate_tracking`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

from pathlib import Path

import pandas as pd
from celltrails.evaluate import evaluate_ctc, evaluate_points
from celltrails.logs import script_logging
from celltrails.ome_zarr_io import read_image_meta
from celltrails.serialize import write_metrics

with script_logging(snakemake.log[0]) as log:
    truth = Path(snakemake.input.truth)
    if (truth / "GT" / "TRA").is_dir():  # a synthetic series: the generator's CTC ground truth
        truth = truth / "GT" / "TRA"
    if truth.is_dir():  # CTC TRA masks: the official matching of masks
        metrics = evaluate_ctc(truth, snakemake.input.ctc)
    else:  # a points table: centres matched within the typical cell radius
        meta = read_image_meta(snakemake.input.image)
        points = pd.read_parquet(truth)
        radius_um = float(points.radius.median()) * meta.voxel_size[2] if points.radius.notna().any() else 5.0
        metrics = evaluate_points(points, pd.read_parquet(snakemake.input.tracks), threshold=radius_um,
                                  scale=meta.voxel_size)
    metrics["dataset"] = snakemake.wildcards.dataset
    write_metrics(metrics, snakemake.output[0])
    log.info("dataset '%s': TRA %s DET %s LNK %s division F1 %s", snakemake.wildcards.dataset,
             metrics.get("TRA"), metrics.get("DET"), metrics.get("LNK"), metrics.get("division_f1"))
