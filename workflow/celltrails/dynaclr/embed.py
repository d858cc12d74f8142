"""Embeddings of every patch of a dataset with a trained encoder: ``embeddings.parquet``.

Patches are read chunk by chunk from the patch store, normalized as the checkpoint says,
centre-cropped to the model input and encoded without augmentation; memory holds one batch at
a time. The table has the patch index columns (``t, track_id, parent_track_id, lineage_id, z, y,
x`` and extras such as the synthetic ``state``), features ``f_0..f_{F-1}`` and projections
``p_0..p_{P-1}`` (float32), in the patch store's row order (t, then track).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
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
    if size < patch["crop"]:
        raise InputError(f"patches of {size} px are smaller than the encoder input {patch['crop']} px",
                         dataset=dataset, path=store.folder)


def embed_store(store: PatchStore, model: ContrastiveEncoder, meta: Mapping, device: str = "cpu",
                batch_size: int = 256, logger: logging.Logger | None = None) -> pd.DataFrame:
    """Features and projections of every patch of ``store``, with the index columns."""
    logger = logger or logging.getLogger(__name__)
    device = torch.device(device)
    normalization, crop = meta["normalization"], int(meta["patch"]["crop"])
    n = len(store)
    features = projections = None
    progress = ProgressLog(logger, n, "patches embedded")
    model = model.to(device).eval()
    with torch.no_grad():
        for start in range(0, n, batch_size):
            rows = np.arange(start, min(start + batch_size, n))
            batch = torch.from_numpy(store.read_normalized(rows, normalization)).to(device)
            f, p = model(center_crop_yx(batch, crop))
            if features is None:
                features = np.empty((n, f.shape[1]), np.float32)
                projections = np.empty((n, p.shape[1]), np.float32)
            features[rows] = f.float().cpu().numpy()
            projections[rows] = p.float().cpu().numpy()
            progress.advance(len(rows))
    if features is None:
        raise InputError("the patch store is empty: no cells to embed", path=store.folder)
    table = store.index.reset_index(drop=True)
    columns = {f"f_{i}": features[:, i] for i in range(features.shape[1])}
    columns |= {f"p_{i}": projections[:, i] for i in range(projections.shape[1])}
    return pd.concat([table, pd.DataFrame(columns)], axis=1)


def embed_with_checkpoint(patches: str | Path, checkpoint: str | Path, out: str | Path, *, dataset: str = "",
                          device: str = "cpu", batch_size: int = 256, threads: int | None = None,
                          logger: logging.Logger | None = None) -> pd.DataFrame:
    """Embed a patch folder with a checkpoint and write ``out`` (parquet) atomically."""
    logger = logger or logging.getLogger(__name__)
    previous_threads = torch.get_num_threads()
    if device == "cpu" and threads:
        torch.set_num_threads(int(threads))
    try:
        table = _embed(patches, checkpoint, dataset, device, batch_size, logger)
    finally:
        torch.set_num_threads(previous_threads)
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    logger.info("%d embeddings (%d features, %d projections) of %s with %s -> %s", len(table),
                sum(c.startswith("f_") for c in table.columns), sum(c.startswith("p_") for c in table.columns),
                dataset or patches, checkpoint, out)
    return table


def _embed(patches, checkpoint, dataset: str, device: str, batch_size: int, logger: logging.Logger) -> pd.DataFrame:
    store = PatchStore(patches, dataset=dataset)
    model, meta = load_checkpoint(checkpoint, device=device)
    check_compatible(store, meta, dataset)
    meta["normalization"].check(store.statistics, store.channel_names, dataset)
    if list(meta["channels"]) != store.channel_names:
        logger.warning("channel names differ: the encoder was trained on %s, the patches have %s (used in order)",
                       meta["channels"], store.channel_names)
    return embed_store(store, model, meta, device=device, batch_size=batch_size, logger=logger)
