"""Snakemake adapter: generate a synthetic series from its recipe (rule `synthesize`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

from celltrails.logs import script_logging
from celltrails.synthetic import generate_series, load_params

with script_logging(snakemake.log[0]) as log:
    params = load_params(snakemake.input.recipe)
    generate_series(params, snakemake.output[0], logger=log, workers=snakemake.threads)
