"""Snakemake adapter: per-block detections -> results/{dataset}/detections.parquet, above the
series' centre threshold, and candidates.parquet, the peaks just below it (rule `merge_detections`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

from celltrails.detector.checkpoint import load_checkpoint
from celltrails.detector.infer import frame_ranges, merge_detection_blocks, require_cells, write_detections
from celltrails.detector.threshold import apply_threshold
from celltrails.figures import threshold_histogram
from celltrails.logs import script_logging
from celltrails.serialize import write_metrics

with script_logging(snakemake.log[0]) as log:
    settings = snakemake.params.settings
    _, checkpoint = load_checkpoint(snakemake.input.model)
    merged = merge_detection_blocks(list(snakemake.input.blocks))
    detections, candidates, choice = apply_threshold(
        merged, settings["threshold"], settings["adaptive_threshold"], checkpoint["threshold"],
        settings["candidate_fraction"])
    log.info("dataset %r: centre threshold %.3f (%s; calibrated %.2f, valley of %d peak scores: %s): "
             "%d of %d peaks kept", snakemake.wildcards.dataset, choice["threshold"], choice["source"],
             choice["calibrated"], choice["peaks"],
             "none" if choice["valley"] is None else f"{choice['valley']:.3f}", len(detections), len(merged))
    if choice["candidate_floor"] is not None:
        log.info("%d candidates between %.3f and the threshold: a track may take them (lineage)",
                 len(candidates), choice["candidate_floor"])
    require_cells(detections, snakemake.wildcards.dataset, snakemake.params.image, snakemake.params.block_logs)
    write_detections(detections, snakemake.output.detections)
    write_detections(candidates, snakemake.output.candidates)
    write_metrics({"dataset": snakemake.wildcards.dataset, **choice,
                   "frames_without_signal": frame_ranges(merged.attrs["frames_without_signal"])},
                  snakemake.output.threshold)
    threshold_histogram(merged["score"].to_numpy(), choice, snakemake.output.histogram,
                        f"{snakemake.wildcards.dataset}: {len(detections)} of {len(merged)} peaks kept")
