"""Snakemake adapter: smoothness, dynamic range and PCA of a dataset's embeddings (rule `embedding_quality`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

from celltrails.dynaclr.quality import write_embedding_quality
from celltrails.logs import script_logging

with script_logging(snakemake.log[0]) as log:
    write_embedding_quality(
        snakemake.input[0],
        snakemake.output.metrics,
        snakemake.output.distances,
        snakemake.output.pca,
        dataset=snakemake.wildcards.dataset,
        seed=snakemake.params.seed,
        logger=log,
    )
