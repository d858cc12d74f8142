"""Snakemake adapter: montage of max projections with ground-truth centres (rule `qc_overview`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

import pandas as pd
from celltrails.figures import overview_montage
from celltrails.logs import script_logging

with script_logging(snakemake.log[0]):
    points = pd.read_parquet(snakemake.input.ground_truth) if snakemake.input.ground_truth else None
    overview_montage(snakemake.input.image, snakemake.output[0], n_frames=snakemake.params.n_frames,
                     points=points, title=f"dataset '{snakemake.wildcards.dataset}'")
