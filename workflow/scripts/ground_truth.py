"""Snakemake adapter: registered ground truth -> results/{dataset}/ground_truth.parquet."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

from pathlib import Path

from celltrails.atomic import atomic_path
from celltrails.ground_truth import check_points_fit_image, load_ground_truth, points_from_table
from celltrails.logs import script_logging
from celltrails.ome_zarr_io import read_image_meta

with script_logging(snakemake.log[0]) as log:
    dataset = snakemake.params.dataset
    meta = read_image_meta(snakemake.input.image)
    if dataset.is_synthetic:
        points = points_from_table(Path(snakemake.input.source) / "cells.parquet", dataset.name)
    else:
        points = load_ground_truth(snakemake.input.source, meta.voxel_size, dataset.name)
    check_points_fit_image(points, meta.shape, dataset.name, snakemake.input.source)
    with atomic_path(snakemake.output[0]) as tmp:
        points.to_parquet(tmp, index=False)
    log.info("dataset '%s': %d ground-truth cells in %d frames, %d tracks", dataset.name, len(points),
             points.t.nunique(), points.cell_id.nunique())
