"""Embeddings of every patch of a dataset with a trained encoder: ``embeddings.parquet``.

Patches are read chunk by chunk from the patch store, normalized as the checkpoint says,
centre-cropped to the model input and encoded without augmentation; memory holds one batch at
a time, and each batch is written as a parquet row group as soon as it is encoded. The table has the patch index columns (``t, track_id, parent_track_id, lineage_id, z, y,
x`` and extras such as the synthetic ``state``), features ``f_0..f_{F-1}`` and projections
``p_0..p_{P-1}`` (float32), in the patch store's row order (t, then track).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from celltrails.atomic import atomic_path
from celltrails.dynaclr.augment import center_crop_yx
from celltrails.dynaclr.checkpoint import load_checkpoint
from celltrails.dynaclr.model import ContrastiveEncoder
from celltrails.dynaclr.patches import PatchStore
from celltrails.errors import InputError
from celltrails.logs import ProgressLog


def check_compatible(store: PatchStore, meta: Mapping, dataset: str = "") -> None:
    """Clear errors when the patches cannot feed the checkpoint's encoder."""
    channels, z_window, size, _ = store.patch_shape
    patch = meta["patch"]
    if len(meta["channels"]) != channels:
        raise InputError(f"the encoder was trained on {len(meta['channels'])} channels {meta['channels']}, the patches "
                         f"have {channels} {store.channel_names}; set dynaclr.channels or train on this data",
                         dataset=dataset, path=store.folder)
    if patch["z_window"] != z_window:
        raise InputError(f"the encoder takes a z window of {patch['z_window']} slices, the patches have {z_window}; "
                         "use a checkpoint of the right dimensionality or set dynaclr.patch.z_window",
                         dataset=dataset, path=store.folder)
    if int(store.attrs.get("downsample_yx", 1)) != int(patch.get("downsample_yx", 1)):
        raise InputError(f"the encoder was trained on patches downsampled {patch.get('downsample_yx', 1)}x, these "
                         f"are downsampled {store.attrs.get('downsample_yx', 1)}x: set dynaclr.patch.downsample_yx to "
                         "match (cells must look the same size)", dataset=dataset, path=store.folder)
    if size < patch["crop"]:
        raise InputError(f"patches of {size} px are smaller than the encoder input {patch['crop']} px",
                         dataset=dataset, path=store.folder)


def iter_embeddings(store: PatchStore, model: ContrastiveEncoder, meta: Mapping, device: str = "cpu",
                    batch_size: int = 256, logger: logging.Logger | None = None) -> Iterator[pd.DataFrame]:
    """Index columns + features + projections of the store's patches, one batch of rows at a time."""
    if len(store) == 0:
        raise InputError("the patch store is empty: no cells to embed", path=store.folder)
    logger = logger or logging.getLogger(__name__)
    device = torch.device(device)
    normalization, crop = meta["normalization"], int(meta["patch"]["crop"])
    index = store.index.reset_index(drop=True)
    progress = ProgressLog(logger, len(store), "patches embedded")
    model = model.to(device).eval()
    with torch.no_grad():
        for start in range(0, len(store), batch_size):
            rows = np.arange(start, min(start + batch_size, len(store)))
            batch = torch.from_numpy(store.read_normalized(rows, normalization)).to(device)
            features, projections = (out.float().cpu().numpy() for out in model(center_crop_yx(batch, crop)))
            columns = {f"f_{i}": features[:, i] for i in range(features.shape[1])}
            columns |= {f"p_{i}": projections[:, i] for i in range(projections.shape[1])}
            yield pd.concat([index.iloc[rows].reset_index(drop=True), pd.DataFrame(columns)], axis=1)
            progress.advance(len(rows))


def embed_with_checkpoint(patches: str | Path, checkpoint: str | Path, out: str | Path, *, dataset: str = "",
                          device: str = "cpu", batch_size: int = 256, threads: int | None = None,
                          logger: logging.Logger | None = None) -> int:
    """Embed a patch folder with a checkpoint into ``out`` (parquet, atomic); returns the number of rows.

    Batches are written as parquet row groups as they come, so memory holds one batch, not the
    dataset's embeddings.
    """
    logger = logger or logging.getLogger(__name__)
    previous_threads = torch.get_num_threads()
    if device == "cpu" and threads:
        torch.set_num_threads(int(threads))
    try:
        store = PatchStore(patches, dataset=dataset)
        model, meta = load_checkpoint(checkpoint, device=device)
        check_compatible(store, meta, dataset)
        meta["normalization"].check(store.statistics, store.channel_names, dataset)
        if list(meta["channels"]) != store.channel_names:
            logger.warning("channel names differ: the encoder was trained on %s, the patches have %s (used in "
                           "order)", meta["channels"], store.channel_names)
        n_rows = 0
        with atomic_path(out) as tmp:
            writer = None
            try:
                for part in iter_embeddings(store, model, meta, device, batch_size, logger):
                    table = pa.Table.from_pandas(part, preserve_index=False)
                    writer = writer or pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
                    n_rows += len(part)
            finally:
                if writer is not None:
                    writer.close()
    finally:
        torch.set_num_threads(previous_threads)
    logger.info("%d embeddings (%d features, %d projections) of %s with %s -> %s", n_rows,
                meta["config"].dims[-1], meta["config"].projection_dim, dataset or patches, checkpoint, out)
    return n_rows
