"""Snakemake adapter: classifiers from sparse annotations, predictions for every cell (rule `classify`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

from celltrails.analysis.states import analyse_states
from celltrails.logs import script_logging
from celltrails.ome_zarr_io import read_image_meta

with script_logging(snakemake.log[0]) as log:
    settings = snakemake.params.settings
    analyse_states(
        snakemake.input.embeddings,
        snakemake.output.predictions,
        snakemake.output.metrics,
        snakemake.output.figures,
        annotations_path=snakemake.input.annotations or None,
        truth_path=snakemake.input.labels or None,
        classifier_path=settings["classifier"],
        settings=settings,
        dataset=snakemake.wildcards.dataset,
        time_interval=read_image_meta(snakemake.input.image).time_interval,
        seed=snakemake.params.seed,
        logger=log,
    )
