"""Snakemake adapter: link the frame pairs of one block (rule `link_block`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

import pandas as pd
from celltrails.atomic import atomic_path
from celltrails.linking import link_frames, link_params_from_config, with_candidates
from celltrails.logs import script_logging
from celltrails.ome_zarr_io import read_image_meta

with script_logging(snakemake.log[0]) as log:
    detections = with_candidates(pd.read_parquet(snakemake.input.detections),
                                 pd.read_parquet(snakemake.input.candidates))  # cell ids: see with_candidates
    params = link_params_from_config(snakemake.params.link, read_image_meta(snakemake.input.image).voxel_size)
    start, stop = int(snakemake.wildcards.start), int(snakemake.wildcards.stop)
    edges = link_frames(detections, start, stop, params)
    with atomic_path(snakemake.output[0]) as tmp:
        edges.to_parquet(tmp, index=False)
    log.info("pairs %d..%d: %d candidate edges, %d chosen, %d divisions", start, stop - 1, len(edges),
             int(edges.chosen.sum()), int(edges.second_successor.sum()))
