"""Snakemake adapter: classifiers from sparse annotations, predictions for every cell (rule `classify`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

from celltrails.analysis.states import analyse_states
from celltrails.logs import script_logging
from celltrails.ome_zarr_io import read_image_meta

with script_logging(snakemake.log[0]) as log:
    params = snakemake.params
    meta = read_image_meta(snakemake.input.image)
    analyse_states(
        snakemake.input.embeddings,
        snakemake.output.predictions,
        snakemake.output.metrics,
        snakemake.output.figures,
        annotations_path=snakemake.input.annotations or None,
        truth_path=snakemake.input.labels or None,
        classifier_path=params.classifier,
        derived=params.derived,
        settings={"pca_components": params.pca_components, "n_splits": params.n_splits},
        dataset=snakemake.wildcards.dataset,
        time_interval=meta.time_interval if params.time_known else None,  # else frames on the time axis
        seed=params.seed,
        logger=log,
    )
