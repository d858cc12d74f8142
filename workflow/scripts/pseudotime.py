"""Snakemake adapter: DTW pseudo-time of a dataset's trajectories (rule `pseudotime`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

from celltrails.analysis.synchrony import analyse_pseudotime
from celltrails.logs import script_logging

with script_logging(snakemake.log[0]) as log:
    analyse_pseudotime(
        snakemake.input.embeddings,
        snakemake.input.predictions,
        snakemake.output.table,
        snakemake.output.summary,
        snakemake.output.components,
        snakemake.output.examples,
        settings=snakemake.params.settings,
        annotations_path=snakemake.input.annotations or None,
        truth_path=snakemake.input.labels or None,
        dataset=snakemake.wildcards.dataset,
        seed=snakemake.params.seed,
        logger=log,
    )
