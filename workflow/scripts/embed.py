"""Snakemake adapter: embed every patch of a dataset with the DynaCLR encoder (rule `embed`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

from celltrails.detector.infer import pick_device
from celltrails.dynaclr.embed import embed_with_checkpoint
from celltrails.logs import script_logging

with script_logging(snakemake.log[0]) as log:
    embed_with_checkpoint(
        snakemake.input.patches,
        snakemake.input.model,
        snakemake.output[0],
        dataset=snakemake.wildcards.dataset,
        device=pick_device(snakemake.resources.get("gpu", 0), log),
        batch_size=snakemake.params.batch_size,
        threads=snakemake.threads,
        logger=log,
    )
