"""Snakemake adapter: tracks, napari table and CTC result from detections and links (rule `lineage`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

import pandas as pd
from celltrails.atomic import atomic_path
from celltrails.ctc_export import write_ctc_of_image
from celltrails.lineage import LineageParams, assemble_tracks, write_tracks
from celltrails.linking import link_params_from_config, with_candidates
from celltrails.logs import ProgressLog, script_logging
from celltrails.ome_zarr_io import read_image_meta

with script_logging(snakemake.log[0]) as log:
    meta = read_image_meta(snakemake.input.image)
    detections = with_candidates(pd.read_parquet(snakemake.input.detections),
                                 pd.read_parquet(snakemake.input.candidates))  # cell ids: see with_candidates
    edges = [pd.read_parquet(path) for path in snakemake.input.edges]
    edges = pd.concat(edges, ignore_index=True) if edges else pd.DataFrame(
        {"source": [], "target": [], "chosen": pd.Series([], dtype=bool)})
    tracks = assemble_tracks(detections, edges, link_params_from_config(snakemake.params.link, meta.voxel_size),
                             LineageParams(**snakemake.params.lineage))
    write_tracks(tracks, snakemake.output.tracks)
    with atomic_path(snakemake.output.napari) as tmp:
        # napari: viewer.add_tracks(df[["track_id", "t", "z", "y", "x"]], graph=parents), see README.
        tracks.sort_values(["track_id", "t"])[["track_id", "t", "z", "y", "x", "parent_track_id"]].to_csv(
            tmp, index=False)
    masks = snakemake.params.masks
    sigma = write_ctc_of_image(tracks, snakemake.output.ctc, snakemake.input.image, channel=snakemake.params.channel,
                               **masks, progress=ProgressLog(log, meta.n_frames, "CTC mask frames").advance)
    if sigma is not None:
        log.info("CTC masks: disks grown into the foreground of channel %d (sigma %.2f px, reach %.2f radii, "
                 "local level %s)", snakemake.params.channel, sigma, masks["reach"], masks["local_level"])
    divisions = tracks.drop_duplicates("track_id").parent_track_id.value_counts()
    log.info("%d cells in %d tracks, %d divisions", len(tracks), tracks.track_id.nunique(),
             int((divisions[divisions.index >= 0] >= 2).sum()))
