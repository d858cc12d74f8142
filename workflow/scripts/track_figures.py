"""Snakemake adapter: tracks over the image and the largest lineage trees (rule `track_figures`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

import pandas as pd
from celltrails.lineage_figures import plot_lineage_trees, plot_track_montage
from celltrails.logs import script_logging

with script_logging(snakemake.log[0]) as log:
    dataset = snakemake.wildcards.dataset
    tracks = pd.read_parquet(snakemake.input.tracks)
    plot_track_montage(snakemake.input.image, tracks, snakemake.output.montage, frames=snakemake.params.frames,
                       title=f"{dataset}: tracked cells")
    plot_lineage_trees(tracks, snakemake.output.trees, n=snakemake.params.trees, title=f"{dataset}: largest lineages")
    log.info("%s: track figures from %d cells in %d tracks", dataset, len(tracks), tracks["track_id"].nunique())
