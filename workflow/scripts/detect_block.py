"""Snakemake adapter: detect the cells of one block of frames (rule `detect_block`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

from celltrails.detector.infer import detect_with_checkpoint, pick_device, write_detections
from celltrails.detector.threshold import block_threshold
from celltrails.logs import script_logging

with script_logging(snakemake.log[0]) as log:
    settings = snakemake.params.settings
    detections = detect_with_checkpoint(
        snakemake.input.image,
        snakemake.input.model,
        int(snakemake.wildcards.start),
        int(snakemake.wildcards.stop),
        device=pick_device(snakemake.resources.get("gpu", 0), log),
        nucleus_radius=snakemake.params.nucleus_radius,
        channel=settings["channel"],
        tile=(settings["tile_z"], settings["tile_yx"], settings["tile_yx"]),
        overlap=(settings["overlap_z"], settings["overlap_yx"], settings["overlap_yx"]),
        threshold=block_threshold(settings["threshold"], settings["adaptive_threshold"],
                                  settings["candidate_fraction"]),
        min_distance=settings["min_distance"],
        batch_size=settings["batch_size"],
        flip_average=settings["flip_average"],
        threads=snakemake.threads,
        logger=log,
    )
    write_detections(detections, snakemake.output[0])
