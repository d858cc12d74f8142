"""Single-cell patches around track positions, in a chunked store that training reads lazily.

For every row of a track table (one cell in one frame), a ``(C, z_window, size, size)`` patch
of the raw image centred on the cell is written to ``patches.zarr`` (row ``i`` of the index
table = patch ``i``), next to ``index.parquet`` and the normalization statistics
(``normalization.json``, :mod:`celltrails.dynaclr.normalization`). The three live in one folder
that appears only when complete.

Design choices and why
----------------------
* **Raw pixels, normalized on read.** Patches keep the image dtype; the normalization chosen in
  the config is applied when they are read (training, embedding), so changing it does not
  require re-extraction, and statistics stay those of the whole frame, not of the patch.
* **Border cells are kept** (VisCy v0.4.1 drops every cell within half a patch of the edge,
  VisCy#338). ``border="pad"`` (default) keeps the cell centred and fills outside the image by
  reflection; ``border="shift"`` moves the window inward so it lies in the image and records the
  shift (the cell sits at the patch centre minus the shift). Padding is the default because the
  encoder sees only the centre crop of a patch: a cell shifted by up to half a patch would fall
  outside it (measured on synthetic 3D data, where half the cells are within a patch of an edge:
  a linear probe of the state went from F1 0.71 with shifted patches to the value in
  ``benchmarks/results/dynaclr_sampling_synthetic3d.json`` with padded ones). An image smaller than the patch
  along an axis is always padded. Columns ``shift_z, shift_y, shift_x`` and ``padded`` say
  which happened to each patch.
* **Extraction size vs model size.** Patches are cut larger than the encoder's input
  (``size`` > the model's crop) so that rotations and zooms during training have real pixels
  in the corners; the model input is a centre crop.
* **Large cells**: ``downsample_yx`` reads f times the patch size and averages f x f blocks, so
  a nucleus 50 pixels wide (Fluo-N2DH-SIM+) fits a small patch (VisCy main rescales to a
  reference pixel size for the same reason).
* **One frame in memory at a time**, patches written in whole chunks of ``chunk_patches``
  rows: memory is flat in the number of frames and cells.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from celltrails.atomic import atomic_path
from celltrails.dynaclr.normalization import Normalization, StatisticsAccumulator
from celltrails.errors import InputError
from celltrails.logs import ProgressLog
from celltrails.ome_zarr_io import open_image

BORDER_MODES = ("shift", "pad")
TRACK_COLUMNS = ["t", "track_id", "parent_track_id", "z", "y", "x"]
INDEX_COLUMNS = ["t", "track_id", "parent_track_id", "lineage_id", "z", "y", "x",
                 "shift_z", "shift_y", "shift_x", "padded"]
STORE_NAME, INDEX_NAME, STATS_NAME = "patches.zarr", "index.parquet", "normalization.json"


@dataclass(frozen=True)
class PatchSpec:
    """Patch geometry: ``size`` pixels in y and x, ``z_window`` slices (1 for 2D), border handling,
    and an integer ``downsample_yx`` (block mean) for cells many pixels wide."""

    size: int = 48
    z_window: int = 1
    border: str = "pad"
    downsample_yx: int = 1

    def __post_init__(self) -> None:
        if self.size < 2 or self.z_window < 1 or self.downsample_yx < 1:
            raise ValueError(f"patch size {self.size}, z window {self.z_window} and downsampling "
                             f"{self.downsample_yx} must be >= 2, >= 1 and >= 1")
        if self.border not in BORDER_MODES:
            raise ValueError(f"patch border mode {self.border!r} is not one of {BORDER_MODES}")

    @property
    def read_size(self) -> int:
        """Edge in y and x of the image region a patch covers (image pixels)."""
        return self.size * self.downsample_yx


# --- track tables -----------------------------------------------------------------------------------

def tracks_from_ground_truth(points: pd.DataFrame) -> pd.DataFrame:
    """A ground-truth points table as a track table: ``track_id`` = ``cell_id`` (a CTC track label),
    ``parent_track_id`` = ``parent_id``; extra columns (e.g. synthetic ``state``) are kept."""
    tracks = points.rename(columns={"parent_id": "parent_track_id"}).copy()
    tracks["track_id"] = tracks["cell_id"]
    return tracks


def lineage_ids(track_id: np.ndarray, parent_track_id: np.ndarray) -> np.ndarray:
    """The root ancestor of each row's track (following ``parent_track_id``; -1 = root)."""
    parents = dict(zip(track_id.tolist(), parent_track_id.tolist()))
    root: dict[int, int] = {}

    def find(track: int) -> int:
        path = []
        while track not in root:
            parent = parents.get(track, -1)
            if parent < 0 or parent not in parents or parent in path or parent == track:
                root[track] = track
                break
            path.append(track)
            track = parent
        for visited in path:
            root[visited] = root[track]
        return root[track]

    return np.array([find(t) for t in track_id.tolist()], dtype=np.int64)


def check_tracks(tracks: pd.DataFrame, image_shape: Sequence[int], dataset: str, path: object) -> None:
    """Clear errors for a track table the patches cannot be cut from."""
    missing = [c for c in TRACK_COLUMNS if c not in tracks.columns]
    if missing:
        raise InputError(f"track table lacks columns {missing}", dataset=dataset, path=path)
    if tracks.empty:
        raise InputError("the track table has no cells: there is nothing to cut patches from",
                         dataset=dataset, path=path)
    positions = tracks[["t", "z", "y", "x"]].to_numpy(np.float64)
    if not np.isfinite(positions).all():
        raise InputError("track table has NaN or infinite positions", dataset=dataset, path=path)
    if (positions[:, 0] != np.round(positions[:, 0])).any():
        raise InputError("track table has non-integer frame numbers t", dataset=dataset, path=path)
    n_frames, _, *space = image_shape
    limits = np.array([n_frames, *space], dtype=np.float64)
    outside = (positions < -0.5) | (positions > limits - 0.5)
    if outside.any():
        row = int(np.flatnonzero(outside.any(axis=1))[0])
        raise InputError(f"row {row} (t, z, y, x = {positions[row].tolist()}) lies outside the image of shape "
                         f"{list(image_shape)} (t, c, z, y, x)", dataset=dataset, path=path)
    if tracks.duplicated(["t", "track_id"]).any():
        raise InputError("a track has two rows in one frame", dataset=dataset, path=path)


# --- cutting ----------------------------------------------------------------------------------------

def window(center: float, size: int, length: int, border: str) -> tuple[int, int, int, int]:
    """Where a patch of ``size`` around ``center`` comes from along an axis of ``length`` pixels.

    Returns ``(start, pad_before, pad_after, shift)``: read ``[start, start + size - pads)`` from
    the image and pad; the cell then sits at the patch centre minus ``shift``.
    """
    start = math.floor(center + 0.5) - size // 2
    if length < size:  # the image is smaller than the patch: read it all, centre the cell by padding
        before = min(max(-start, 0), size - length)  # where the padding cannot centre it, record the shift
        return 0, before, size - length - before, -start - before
    if border == "pad":
        before, after = max(-start, 0), max(start + size - length, 0)
        return max(start, 0), before, after, 0
    shift = 0  # how far the window moved inward (+: towards higher indices)
    if start < 0:
        shift, start = -start, 0
    elif start + size > length:
        shift, start = (length - size) - start, length - size
    return start, 0, 0, shift


def cut_patches(frame: np.ndarray, centers: np.ndarray, spec: PatchSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patches ``(n, C, z_window, size, size)`` of a ``(C, Z, Y, X)`` frame around ``centers`` ``(n, 3)``.

    Returns (patches, shifts ``(n, 3)`` z, y, x in image pixels, padded ``(n,)`` bool). The cell
    lies at the patch centre minus its shift. With ``downsample_yx`` f > 1 a region of f * size
    pixels is read and averaged over f x f blocks (rounded back to the image dtype).
    """
    n = len(centers)
    sizes = (spec.z_window, spec.read_size, spec.read_size)
    patches = np.empty((n, frame.shape[0], spec.z_window, spec.size, spec.size), dtype=frame.dtype)
    shifts = np.zeros((n, 3), np.int64)
    padded = np.zeros(n, bool)
    for i, center in enumerate(centers):
        reads, pads = [], []
        for axis in range(3):
            start, before, after, shift = window(center[axis], sizes[axis], frame.shape[axis + 1], spec.border)
            reads.append(slice(start, start + sizes[axis] - before - after))
            pads.append((before, after))
            shifts[i, axis] = shift
        block = frame[(slice(None), *reads)]
        if any(before or after for before, after in pads):
            padded[i] = True
            block = np.pad(block, [(0, 0), *pads], mode="reflect")  # numpy extends a 1-pixel axis by its edge
        if spec.downsample_yx > 1:
            block = _block_mean_yx(block, spec.downsample_yx, frame.dtype)
        patches[i] = block
    return patches, shifts, padded


def _block_mean_yx(block: np.ndarray, factor: int, dtype: np.dtype) -> np.ndarray:
    c, z, y, x = block.shape
    mean = block.reshape(c, z, y // factor, factor, x // factor, factor).mean(axis=(3, 5))
    return np.rint(mean).astype(dtype) if np.issubdtype(dtype, np.integer) else mean.astype(dtype)


# --- the store --------------------------------------------------------------------------------------

def _channel_indices(names: Sequence[str], wanted: Sequence[str | int], dataset: str) -> list[int]:
    if not wanted:
        return list(range(len(names)))
    indices = []
    for item in wanted:
        if isinstance(item, int) or str(item).isdigit():
            index = int(item)
            if not 0 <= index < len(names):
                raise InputError(f"channel {index} does not exist; the image has {list(names)}", dataset=dataset)
        elif item in names:
            index = names.index(item)
        else:
            raise InputError(f"channel {item!r} does not exist; the image has {list(names)}", dataset=dataset)
        indices.append(index)
    return indices


def extract_patches(image_path: str | Path, tracks: pd.DataFrame, out_dir: str | Path, spec: PatchSpec,
                    channels: Sequence[str | int] = (), chunk_patches: int = 256, stats_stride: int = 32,
                    seed: int = 0, dataset: str = "", tracks_path: object = None,
                    logger: logging.Logger | None = None) -> pd.DataFrame:
    """Cut a patch for every row of ``tracks`` from the image and write the patch folder atomically.

    ``out_dir`` receives ``patches.zarr`` (``(N, C, z_window, size, size)``, image dtype),
    ``index.parquet`` (:data:`INDEX_COLUMNS` plus the track table's extra columns, row ``i`` =
    patch ``i``, sorted by t then track) and ``normalization.json`` (per-channel statistics of the
    whole image). Returns the index.
    """
    logger = logger or logging.getLogger(__name__)
    array, meta = open_image(image_path)
    check_tracks(tracks, meta.shape, dataset, tracks_path)
    if not meta.is_3d and spec.z_window != 1:
        raise InputError(f"the image is 2D but the patch z window is {spec.z_window}; set it to 1", dataset=dataset)
    selected = _channel_indices(meta.channel_names, channels, dataset)
    channel_names = [meta.channel_names[c] for c in selected]

    index = tracks.sort_values(["t", "track_id"], kind="stable").reset_index(drop=True)
    index["lineage_id"] = lineage_ids(index["track_id"].to_numpy(), index["parent_track_id"].to_numpy())
    extras = [c for c in index.columns if c not in INDEX_COLUMNS]
    shifts = np.zeros((len(index), 3), np.int64)
    padded = np.zeros(len(index), bool)
    frame_rows = index.groupby("t").indices
    shape = (len(index), len(selected), spec.z_window, spec.size, spec.size)

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        store = zarr.create_array(str(tmp / STORE_NAME), shape=shape, dtype=meta.dtype, zarr_format=3,
                                  chunks=(min(chunk_patches, len(index)), *shape[1:]), fill_value=0,
                                  dimension_names=["patch", "c", "z", "y", "x"])
        pending, written = [], 0
        statistics = StatisticsAccumulator(channel_names, meta.n_frames, stride=stats_stride, seed=seed,
                                           dataset=dataset)
        progress = ProgressLog(logger, meta.n_frames, "patch extraction, frames")
        for t in range(meta.n_frames):
            frame = np.asarray(array.oindex[t, selected])
            statistics.add(t, frame)
            rows = frame_rows.get(t)
            if rows is not None:
                centers = index.loc[rows, ["z", "y", "x"]].to_numpy(np.float64)
                cut, shifts[rows], padded[rows] = cut_patches(frame, centers, spec)
                pending.append(cut)
                written = _flush(store, pending, written, chunk_patches, final=False)
            progress.advance()
        _flush(store, pending, written, chunk_patches, final=True)

        index[["shift_z", "shift_y", "shift_x"]] = shifts
        index["padded"] = padded
        index = index[INDEX_COLUMNS + extras]
        index.to_parquet(tmp / INDEX_NAME, index=False)
        (tmp / STATS_NAME).write_text(json.dumps(statistics.result(), indent=1))
        store.attrs.update({
            "dataset": dataset, "channels": channel_names, "size": spec.size, "z_window": spec.z_window,
            "border": spec.border, "downsample_yx": spec.downsample_yx, "voxel_size": list(meta.voxel_size), "time_interval": meta.time_interval,
            "is_3d": meta.is_3d,
        })
    n_border = int(((shifts != 0).any(axis=1) | padded).sum())
    logger.info("%d patches of %s (c, z, y, x) from %d frames; %d near the border kept (%s)",
                len(index), shape[1:], meta.n_frames, n_border, spec.border)
    return index


def _flush(store: zarr.Array, pending: list[np.ndarray], written: int, chunk: int, final: bool) -> int:
    """Write whole chunks of the pending patches (all of them if ``final``); returns rows written."""
    held = sum(len(p) for p in pending)
    if held < chunk and not final:
        return written
    block = np.concatenate(pending) if len(pending) > 1 else pending[0] if pending else None
    pending.clear()
    if block is None:
        return written
    n_write = len(block) if final else (len(block) // chunk) * chunk
    store[written:written + n_write] = block[:n_write]
    if n_write < len(block):
        pending.append(block[n_write:])
    return written + n_write


class PatchStore:
    """Read access to a patch folder: the index, the statistics and (normalized) patches by row."""

    def __init__(self, folder: str | Path, dataset: str = ""):
        self.folder = Path(folder)
        self.dataset = dataset
        for name in (STORE_NAME, INDEX_NAME, STATS_NAME):
            if not (self.folder / name).exists():
                raise InputError(f"the patch folder lacks {name}", dataset=dataset, path=self.folder)
        self.array = zarr.open_array(str(self.folder / STORE_NAME), mode="r")
        self.index = pd.read_parquet(self.folder / INDEX_NAME)
        self.statistics = json.loads((self.folder / STATS_NAME).read_text())
        self.attrs = dict(self.array.attrs)
        self.channel_names: list[str] = list(self.attrs["channels"])
        self._in_memory: np.ndarray | None = None
        if len(self.index) != self.array.shape[0]:
            raise InputError(f"index has {len(self.index)} rows for {self.array.shape[0]} patches",
                             dataset=dataset, path=self.folder)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def patch_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.array.shape)) * self.array.dtype.itemsize

    def load_into_memory(self) -> None:
        """Read every patch once and serve later reads from memory (for stores that fit)."""
        self._in_memory = np.asarray(self.array[...])

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Raw patches of ``rows`` (any order, repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._in_memory is not None:
            return self._in_memory[rows]
        unique, inverse = np.unique(rows, return_inverse=True)
        return np.asarray(self.array.get_orthogonal_selection(unique))[inverse]

    def read_normalized(self, rows: np.ndarray, normalization: Normalization) -> np.ndarray:
        """float32 patches of ``rows``, normalized per channel with the stored frame statistics."""
        rows = np.asarray(rows, dtype=np.int64)
        return normalization.apply(self.read(rows), self.statistics, self.channel_names,
                                   self.index["t"].to_numpy()[rows])



