"""Snakemake adapter: convert a registered source to results/{dataset}/image.ome.zarr (rule `convert`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

from pathlib import Path

from celltrails.convert import convert_to_ome_zarr
from celltrails.logs import script_logging
from celltrails.sources import open_source

with script_logging(snakemake.log[0]):
    dataset = snakemake.params.dataset
    if dataset.is_synthetic:
        # The generator already wrote OME-Zarr with its voxel size, interval and channel names.
        source = open_source(Path(snakemake.input[0]) / "image.ome.zarr", "ome-zarr", dataset.name)
    else:
        source = open_source(dataset.path, dataset.layout, dataset.name)
    convert_to_ome_zarr(
        source,
        snakemake.output[0],
        voxel_size=dataset.voxel_size,
        time_interval=dataset.time_interval,
        channel_names=dataset.channels,
        tile_yx=snakemake.params.tile_yx,
        threads=snakemake.threads,
    )
