"""Snakemake adapter: cut a patch around every tracked cell of a dataset (rule `patches`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

import pandas as pd
from celltrails.dynaclr.patches import PatchSpec, extract_patches, tracks_from_ground_truth
from celltrails.logs import script_logging
from celltrails.ome_zarr_io import read_image_meta

with script_logging(snakemake.log[0]) as log:
    patch, dataset = snakemake.params.patch, snakemake.wildcards.dataset
    tracks = pd.read_parquet(snakemake.input.tracks)
    if "track_id" not in tracks.columns:  # a ground-truth points table
        tracks = tracks_from_ground_truth(tracks)
    z_window = patch["z_window"] if read_image_meta(snakemake.input.image).is_3d else 1
    extract_patches(
        snakemake.input.image,
        tracks,
        snakemake.output[0],
        PatchSpec(size=patch["size"], z_window=z_window, border=patch["border"],
                  downsample_yx=patch["downsample_yx"]),
        channels=snakemake.params.channels,
        chunk_patches=patch["chunk_patches"],
        stats_stride=patch["stats_stride"],
        seed=snakemake.params.seed,
        dataset=dataset,
        tracks_path=snakemake.input.tracks,
        logger=log,
    )
