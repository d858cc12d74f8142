"""Snakemake adapter: sparse annotations and full labels from a dataset's ground truth (rule `derive_annotations`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

import pandas as pd
from celltrails.analysis.derived_annotations import write_derived_annotations
from celltrails.logs import script_logging
from celltrails.ome_zarr_io import read_image_meta

with script_logging(snakemake.log[0]) as log:
    write_derived_annotations(
        pd.read_parquet(snakemake.input.tracks),
        pd.read_parquet(snakemake.input.ground_truth),
        read_image_meta(snakemake.input.image).voxel_size,
        snakemake.output.annotations,
        snakemake.output.labels,
        fraction=snakemake.params.fraction,
        max_cells=snakemake.params.max_cells,
        seed=snakemake.params.seed,
        dataset=snakemake.wildcards.dataset,
        logger=log,
    )
