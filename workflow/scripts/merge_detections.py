"""Snakemake adapter: concatenate the per-block detections into results/{dataset}/detections.parquet."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

from celltrails.detector.infer import merge_detection_blocks
from celltrails.logs import script_logging

with script_logging(snakemake.log[0]):
    merge_detection_blocks(list(snakemake.input), snakemake.output[0])
