"""Chunked CELLECT-style detection: a 2-frame network over overlapping tiles, peaks, one table.

For every frame t the network sees the normalised pair (t, t+1) (the last frame of the series is
paired with itself) tile by tile. Each voxel of a frame is *owned* by exactly one tile (its core:
the tile minus half of each internal overlap), and a peak is kept only by the tile that owns it, so
a cell on a tile seam is reported once; a final suppression removes peaks closer than
``min_distance`` (z scaled by the voxel size), keeping the higher score. For a network whose
output is local, an overlap of at least twice its context plus the peak neighbourhood makes the
result independent of the tiling (exactly so in the tests; CellDetector's GroupNorm statistics are
per tile, so its maps still vary slightly with the tile; the ridge below is read inside one tile, so
a peak whose nearest neighbour lies beyond the tile's overlap gets none). Memory is bounded by two
frames, one batch of tiles and the detections found, never by the length of the series.

Each peak also gets its **ridge**: with its nearest peak, when the two are closer than the sum of
their radii, the lowest centre confidence on the segment between them over the lower of the two
peaks, and the distance to that peak, ``ridge_distance`` (xy pixels, z scaled), which tells whom the
ridge joins it to (that peak may be one the threshold drops later); 0 and NaN without such a
neighbour. Partners exclude a peak the suppression below drops and a false maximum where a tile edge
inside the frame cuts a slope. The network is taught one Gaussian per cell, so its map falls towards
0 between two cells and stays up between two peaks inside one nucleus (0.19-0.93 on Fluo-N2DH-GOWT1
02; between distinct nuclei of Fluo-N2DH-SIM+ 02 median 0.01, the top 5 % 0.40-0.65); the lineage
uses it, with persistence over frames, to tell a cell split by the detector from two daughters
(``celltrails.split_cells``).

Output columns (``detections.parquet``): ``t, z, y, x, score, radius, division_prob, ridge,
ridge_distance, emb_0..``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.ndimage import map_coordinates
from scipy.spatial import cKDTree
from tqdm import tqdm

from celltrails.atomic import atomic_path
from celltrails.detector.checkpoint import DEFAULT_THRESHOLD
from celltrails.detector.normalize import SCOPES, apply_percentiles, normalize_frame, series_percentiles
from celltrails.detector.scale import (
    DEFAULT_WORKING_RADIUS,
    binned_image,
    binning_factor,
    to_image,
    working_voxel_size,
)
from celltrails.detector.signal import MIN_SIGNIFICANCE, signal_significance
from celltrails.errors import InputError
from celltrails.linking import embedding_columns, scaled_positions
from celltrails.logs import ProgressLog
from celltrails.ome_zarr_io import open_image

log = logging.getLogger(__name__)

DETECTION_COLUMNS = ("t", "z", "y", "x", "score", "radius", "division_prob", "ridge", "ridge_distance")
SORT_KEYS = ["t", "z", "y", "x"]
PHASES = ("read", "model", "peaks")


# --- tiling ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles of one frame: where they start, what the model sees and what each owns.

    ``size`` is the (padded) tile shape fed to the model, ``valid`` the part of it that lies in the
    frame (the same for every tile), ``starts`` the tiles' frame coordinates and ``core_lo`` /
    ``core_hi`` each tile's owned region in tile coordinates (half-open; cores partition the frame).
    """

    shape: tuple[int, int, int]
    size: tuple[int, int, int]
    valid: tuple[int, int, int]
    starts: np.ndarray  # (n, 3)
    core_lo: np.ndarray  # (n, 3)
    core_hi: np.ndarray  # (n, 3)

    def __len__(self) -> int:
        return len(self.starts)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def axis_tiles(length: int, tile: int, overlap: int, multiple: int
               ) -> tuple[list[int], int, int, list[tuple[int, int]]]:
    """Tiles along one axis: (starts, model size, valid size, owned [lo, hi) in frame coordinates).

    Tiles are ``tile`` rounded up to ``multiple`` and spread evenly so that neighbours overlap by at
    least ``overlap``; a tile that would not fit becomes one tile over the whole axis, padded up to
    ``multiple``. The owned ranges split every overlap in the middle.
    """
    size = _round_up(tile, multiple)
    if size >= length:
        return [0], _round_up(length, multiple), length, [(0, length)]
    if overlap >= size:
        raise ValueError(f"overlap {overlap} must be smaller than the tile {size}")
    n = math.ceil((length - overlap) / (size - overlap))
    starts = [round(i * (length - size) / (n - 1)) for i in range(n)]
    seams = [(starts[i + 1] + starts[i] + size) // 2 for i in range(n - 1)]
    return starts, size, size, list(zip([0, *seams], [*seams, length]))


def plan_tiles(shape: Sequence[int], tile: Sequence[int], overlap: Sequence[int],
               multiples: Sequence[int]) -> TileGrid:
    """The tile grid of a (z, y, x) frame: the product of the per-axis tilings."""
    axes = [axis_tiles(int(n), int(t), int(o), int(m)) for n, t, o, m in zip(shape, tile, overlap, multiples)]
    starts, lo, hi = [], [], []
    for iz, iy, ix in np.ndindex(*(len(a[0]) for a in axes)):
        start = [axes[d][0][i] for d, i in enumerate((iz, iy, ix))]
        owned = [axes[d][3][i] for d, i in enumerate((iz, iy, ix))]
        starts.append(start)
        lo.append([a - s for (a, _), s in zip(owned, start)])
        hi.append([b - s for (_, b), s in zip(owned, start)])
    return TileGrid(shape=tuple(int(n) for n in shape), size=tuple(a[1] for a in axes),
                    valid=tuple(a[2] for a in axes), starts=np.array(starts), core_lo=np.array(lo),
                    core_hi=np.array(hi))


def size_multiples(model: torch.nn.Module) -> tuple[int, int, int]:
    """(z, y, x) multiples the model needs: its ``z_multiple`` (1 if absent) and ``size_multiple``."""
    return (int(getattr(model, "z_multiple", 1)), int(model.size_multiple), int(model.size_multiple))


FLIPS = ((), (1,), (2,), (1, 2))  # spatial axes (0 z, 1 y, 2 x) flipped: none, y, x, both


def tile_batch(frames: tuple[np.ndarray, np.ndarray], grid: TileGrid, indices: Sequence[int],
               flip: tuple[int, ...] = ()) -> np.ndarray:
    """(B, 2, *size) float32 model input for the tiles ``indices``: each tile's frame region, flipped
    along the spatial axes ``flip`` (0 z, 1 y, 2 x), reflect-padded at its far ends."""
    batch = np.empty((len(indices), 2, *grid.size), dtype=np.float32)
    pad = [(0, s - v) for s, v in zip(grid.size, grid.valid)]
    for b, i in enumerate(indices):
        region = tuple(slice(s, s + v) for s, v in zip(grid.starts[i], grid.valid))
        for c, frame in enumerate(frames):
            part = frame[region]
            batch[b, c] = np.pad(np.flip(part, flip) if flip else part, pad, mode="reflect")
    return batch


# --- reading ----------------------------------------------------------------------------------------

class FrameCache:
    """Normalised frames of one channel, read once each and kept only while a pair needs them.

    Normalised as the checkpoint was trained: one (low, high) pair for the series (scope
    "series"), or each frame with its own (scope "frame", also checkpoints that name no scope).
    """

    def __init__(self, array: Any, channel: int, normalization: Mapping[str, Any]):
        method = normalization.get("method", "percentile")
        if method != "percentile":
            raise ValueError(f"unknown normalization method {method!r} (expected 'percentile')")
        scope = normalization.get("scope", "frame")
        if scope not in SCOPES:
            raise ValueError(f"unknown normalization scope {scope!r} (expected one of {SCOPES})")
        self.array = array
        self.channel = channel
        self.percentiles = {k: float(normalization[k]) for k in ("low", "high") if k in normalization}
        self.series_range = series_percentiles(array, channel, **self.percentiles) if scope == "series" else None
        self.frames: dict[int, np.ndarray] = {}

    def _normalized(self, t: int) -> np.ndarray:
        frame = np.asarray(self.array[t, self.channel])
        if self.series_range is None:
            return normalize_frame(frame, **self.percentiles)
        return apply_percentiles(frame, *self.series_range)

    def pair(self, t: int, t_next: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames t and t_next (normalised, float32, (z, y, x)); all others are dropped."""
        for key in [k for k in self.frames if k not in (t, t_next)]:
            del self.frames[key]
        for key in (t, t_next):
            if key not in self.frames:
                self.frames[key] = self._normalized(key)
        return self.frames[t], self.frames[t_next]


# --- running the model --------------------------------------------------------------------------------

class PhaseTimer:
    """Wall time per phase (read, model, peaks); waits for the GPU so the split is honest."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] += time.perf_counter() - start


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Mixed-precision dtype: 'auto' = bf16 (fp16 where bf16 is missing) on CUDA, fp32 on CPU."""
    choices = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision not in choices:
        raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', not {precision!r}")
    return choices[precision]


@contextlib.contextmanager
def inference_layout(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode and channels-last (NDHWC) layout inside the block; its mode and
    layout are restored afterwards, so a caller that goes on training gets its model back as it was.

    Channels-last lets oneDNN spread each convolution over the threads: measured on 2 Intel cores,
    the 3D detector's pass over a 20x160x160 pair took 0.59 s channels-first and 0.35 s
    channels-last (2D, 4 tiles of 256x256: 0.14 vs 0.07 s), the same maps within 4e-4 in logits;
    with one thread both take the same time. A channels-last input with channels-first weights
    was slower (the weights are reordered on every call).
    """
    was_training = model.training
    model.to(memory_format=torch.channels_last_3d).eval()
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format).train(was_training)


OUTPUTS = ("center", "radius", "division", "embedding")


def run_model(model: torch.nn.Module, batch: Callable[[tuple[int, ...]], np.ndarray],
              flips: Sequence[tuple[int, ...]], device: torch.device, amp: torch.dtype | None,
              valid: Sequence[int]) -> dict[str, torch.Tensor]:
    """Model outputs for one batch of tiles, float32 and cropped to the part of the tiles in the frame.

    ``batch(flip)`` is the input with the tiles flipped along the spatial axes ``flip``
    (:func:`tile_batch`), run once per entry of ``flips``; each output is flipped back. Several
    passes are averaged (logits, radius and embedding alike), and the mean embedding is scaled back
    to unit length, as the network gives it.
    """
    context = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    crop = (..., *(slice(0, v) for v in valid))
    total: dict[str, torch.Tensor] = {}
    for flip in flips:
        x = torch.from_numpy(batch(flip)).to(device).contiguous(memory_format=torch.channels_last_3d)
        with context:
            out = model(x)
        for key in OUTPUTS:
            value = out.pop(key)[crop].float()
            if flip:
                value = torch.flip(value, [axis + 2 for axis in flip])
            elif len(flips) > 1:
                value = value.clone()  # summed into in place: a head's output may be a view
            if key in total:
                total[key] += value
            else:
                total[key] = value
        del out, x
    if len(flips) == 1:
        return total
    mean = {key: value / len(flips) for key, value in total.items()}
    mean["embedding"] = F.normalize(mean["embedding"], dim=1)
    return mean


# --- peaks --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PeakSettings:
    """Peak finding: logit threshold, max-filter half-widths (z, y, x) in voxels, voxel size over the
    x voxel size (for distances in x pixels) and the suppression distance (:func:`suppress_close`)."""

    logit_threshold: float
    radius: tuple[int, int, int]
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    min_distance: float = 1.0

    @classmethod
    def make(cls, threshold: float, min_distance: float, voxel_size: Sequence[float], is_3d: bool
             ) -> PeakSettings:
        """Neighbourhood of about half ``min_distance`` (at least one voxel, one slice in 3D)."""
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), not {threshold}")
        if min_distance <= 0:
            raise ValueError(f"min_distance must be positive, not {min_distance}")
        r_xy = max(1, round(min_distance / 2))
        r_z = max(1, round(r_xy * voxel_size[2] / voxel_size[0])) if is_3d else 0
        scale = tuple(float(v) / float(voxel_size[2]) for v in voxel_size)
        return cls(math.log(threshold / (1.0 - threshold)), (r_z, r_xy, r_xy), scale, float(min_distance))


@dataclass(frozen=True)
class Peaks:
    """Peaks of one frame (or one batch): frame voxel positions and the values read there."""

    position: np.ndarray  # (n, 3) int64, z, y, x
    score: np.ndarray
    radius: np.ndarray
    division: np.ndarray
    ridge: np.ndarray
    ridge_distance: np.ndarray
    embedding: np.ndarray  # (n, D)

    @staticmethod
    def concat(parts: Sequence[Peaks]) -> Peaks:
        """One Peaks from the (non-empty) list of per-batch peaks."""
        return Peaks(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                       ("position", "score", "radius", "division", "ridge", "ridge_distance", "embedding")))


def separable_max_filter(maps: torch.Tensor, radius: Sequence[int]) -> torch.Tensor:
    """Max over a (2r+1) box around each voxel of (B, C, Z, Y, X) maps, one axis at a time.

    Equal to one box max-pool, in half the time for a (3, 5, 5) box on a 20x160x160 map
    (a box max is separable; torch's pooling is not).
    """
    for axis, r in enumerate(radius):
        if r > 0:
            kernel, padding = [1, 1, 1], [0, 0, 0]
            kernel[axis], padding[axis] = 2 * r + 1, r
            maps = F.max_pool3d(maps, kernel_size=kernel, stride=1, padding=padding)
    return maps


def find_peaks(out: dict[str, torch.Tensor], grid: TileGrid, indices: Sequence[int],
               settings: PeakSettings) -> Peaks:
    """Local maxima of the centre logits above the threshold, inside each tile's core."""
    center = out["center"]
    pooled = separable_max_filter(center, settings.radius)
    found = ((center == pooled) & (center > settings.logit_threshold)).nonzero()
    b, z, y, x = found[:, 0], found[:, 2], found[:, 3], found[:, 4]
    local = torch.stack([z, y, x], dim=1)
    lo = torch.as_tensor(grid.core_lo[list(indices)], device=local.device)
    hi = torch.as_tensor(grid.core_hi[list(indices)], device=local.device)
    owned = ((local >= lo[b]) & (local < hi[b])).all(dim=1)
    # Every peak found (owned or not) feeds the ridges; the table keeps the owned ones.
    tile, where, mine = b.cpu().numpy(), local.cpu().numpy(), owned.cpu().numpy()
    start, valid = grid.starts[list(indices)][tile], np.asarray(grid.valid)
    inner_edge = ((where == 0) & (start > 0)) | ((where == valid - 1) & (start + valid < grid.shape))
    radius = out["radius"][b, 0, z, y, x].float().cpu().numpy()
    score = torch.sigmoid(center[b, 0, z, y, x]).float().cpu().numpy()
    ridge, ridge_distance = tile_ridges(center, tile, where, radius, score, mine, inner_edge.any(axis=1), settings)
    b, z, y, x = b[owned], z[owned], y[owned], x[owned]
    embedding = out["embedding"].permute(0, 2, 3, 4, 1)[b, z, y, x]
    return Peaks(position=(where + start)[mine].astype(np.int64), score=score[mine], radius=radius[mine],
                 division=torch.sigmoid(out["division"][b, 0, z, y, x]).cpu().numpy(),
                 ridge=ridge, ridge_distance=ridge_distance, embedding=embedding.cpu().numpy())


def tile_ridges(center: torch.Tensor, tile: np.ndarray, position: np.ndarray, radius: np.ndarray,
                score: np.ndarray, owned: np.ndarray, on_seam: np.ndarray, settings: PeakSettings
                ) -> tuple[np.ndarray, np.ndarray]:
    """Ridge and ridge distance (module docstring) of each owned peak, to its nearest peak in the
    same tile among those inference keeps.

    ``center``: (B, 1, Z, Y, X) logits; ``tile``, ``position`` (tile voxels), ``radius`` (xy voxels),
    ``score``, ``owned`` and ``on_seam`` describe every peak found in the batch, so a peak near a
    core edge still sees its neighbour in the overlap. Not partners: a peak on a tile edge inside
    the frame that the tile does not own (where the edge cuts a slope, the max filter makes a false
    maximum), and a peak that :func:`suppress_close` will drop (a twin on a plateau).
    """
    ridge = np.zeros(len(tile), dtype=np.float32)
    ridge_distance = np.full(len(tile), np.nan, dtype=np.float32)
    scale = np.asarray(settings.scale)
    for b in np.unique(tile[owned]):
        members = np.flatnonzero(tile == b)
        eligible = members[owned[members] | ~on_seam[members]]
        peaks = pd.DataFrame(position[eligible], columns=["z", "y", "x"]).assign(score=score[eligible])
        partners = eligible[suppress_close(peaks, settings.min_distance, settings.scale).index]
        if len(partners) < 2:
            continue
        points = position[partners] * scale
        distance, nearest = cKDTree(points).query(position[members] * scale, k=2)
        prob = None
        for k, i in enumerate(members):
            if not owned[i]:
                continue
            first_is_self = partners[nearest[k, 0]] == i
            j = partners[nearest[k, 1]] if first_is_self else partners[nearest[k, 0]]
            gap = distance[k, 1] if first_is_self else distance[k, 0]
            if gap >= radius[i] + radius[j]:
                continue
            if prob is None:
                prob = torch.sigmoid(center[b, 0].float()).cpu().numpy()
            ridge[i] = segment_ridge(prob, position[i], position[j])
            ridge_distance[i] = gap
    return ridge[owned], ridge_distance[owned]


def segment_ridge(prob: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Lowest value of ``prob`` (Z, Y, X) on the segment a-b (linear interpolation, about two
    samples per voxel) over the lower of its two ends, in [0, 1]."""
    steps = 2 * int(np.ceil(np.abs(b - a).max())) + 1
    line = a[:, None] + (b - a)[:, None] * np.linspace(0.0, 1.0, max(steps, 3))
    values = map_coordinates(prob, line, order=1, mode="nearest")
    return float(np.clip(values.min() / max(min(values[0], values[-1]), 1e-6), 0.0, 1.0))


def store_daughter_map(buffer: np.ndarray, out: dict[str, torch.Tensor], grid: TileGrid,
                       indices: Sequence[int]) -> None:
    """Write sigmoid(division ch1) of each tile's core into the frame-sized buffer."""
    daughter = torch.sigmoid(out["division"][:, 1]).to(torch.float16).cpu().numpy()
    for b, i in enumerate(indices):
        local = tuple(slice(lo, hi) for lo, hi in zip(grid.core_lo[i], grid.core_hi[i]))
        frame = tuple(slice(s + lo, s + hi) for s, lo, hi in zip(grid.starts[i], grid.core_lo[i],
                                                                 grid.core_hi[i]))
        buffer[frame] = daughter[b][local]


def suppress_close(table: pd.DataFrame, min_distance: float, voxel_size: Sequence[float]) -> pd.DataFrame:
    """Drop peaks closer than ``min_distance`` (xy px, z scaled) to a higher-scoring kept one.

    Greedy in order of score (ties: lower z, y, x first), so the result is deterministic.
    """
    order = np.lexsort((table["x"], table["y"], table["z"], -table["score"].to_numpy()))
    table = table.iloc[order]
    points = scaled_positions(table, tuple(voxel_size))
    pairs = cKDTree(points).query_pairs(min_distance, output_type="ndarray")
    if len(pairs):
        pairs = pairs[np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1) < min_distance]
    neighbours: dict[int, list[int]] = {}
    for i, j in np.sort(pairs, axis=1):  # i ranks before j
        neighbours.setdefault(int(j), []).append(int(i))
    keep = np.ones(len(table), dtype=bool)
    for j in sorted(neighbours):
        keep[j] = not any(keep[i] for i in neighbours[j])
    return table[keep]


def frame_table(t: int, peaks: Peaks) -> pd.DataFrame:
    """Peaks of frame t in the detections.parquet columns."""
    columns = {"t": np.full(len(peaks.score), t, dtype=np.int64)}
    for axis, name in enumerate(("z", "y", "x")):
        columns[name] = peaks.position[:, axis].astype(np.float64)
    columns |= {"score": peaks.score, "radius": peaks.radius, "division_prob": peaks.division,
                "ridge": peaks.ridge, "ridge_distance": peaks.ridge_distance}
    columns |= {f"emb_{k}": peaks.embedding[:, k] for k in range(peaks.embedding.shape[1])}
    return pd.DataFrame(columns)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def resident_bytes() -> int:
    """Resident set size of this process (Linux; 0 where /proc is missing)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class HeapTrimmer:
    """Give freed heap pages back to the OS once the resident size has grown by ``slack_mib`` (glibc).

    Each frame frees large model buffers while small per-frame tables stay alive; glibc's adaptive
    mmap threshold then serves the large buffers from the heap, which cannot shrink past the live
    tables, so the resident size creeps up by megabytes per frame (600 MiB over 400 small 2D
    frames). ``malloc_trim`` releases those pages; calling it on every frame costs page faults
    (+30 % CPU on small frames), so it runs only after ``slack_mib`` of growth.
    """

    def __init__(self, slack_mib: float = 64.0):
        self.slack = slack_mib * 2**20
        self.mark = resident_bytes()

    def __call__(self) -> None:
        if _LIBC is not None and resident_bytes() - self.mark > self.slack:
            _LIBC.malloc_trim(0)
            self.mark = resident_bytes()


# --- frames and blocks --------------------------------------------------------------------------------

@dataclass
class PairRunner:
    """Runs the model over all tiles of frame pairs of one image, keeping the time per phase."""

    model: torch.nn.Module
    frames: FrameCache
    grid: TileGrid
    peaks: PeakSettings
    device: torch.device
    amp: torch.dtype | None
    batch_size: int
    timer: PhaseTimer
    flip_average: bool = False

    def run(self, t: int, t_next: int, daughters: np.ndarray, *, want_peaks: bool,
            want_daughters: bool) -> list[Peaks]:
        """Pass (t, t_next) over all tiles: peaks of frame t (division = max(ch0 here, the stored
        ch1 of the previous pass)), then the stored ch1 replaced by this pass's, tile core by core."""
        with self.timer.phase("read"):
            pair = self.frames.pair(t, t_next)
        found = []
        for first in range(0, len(self.grid), self.batch_size):
            indices = range(first, min(first + self.batch_size, len(self.grid)))
            with self.timer.phase("model"):
                out = run_model(self.model, functools.partial(tile_batch, pair, self.grid, indices),
                                FLIPS if self.flip_average else FLIPS[:1], self.device, self.amp, self.grid.valid)
            with self.timer.phase("peaks"):
                if want_peaks:
                    peaks = find_peaks(out, self.grid, indices, self.peaks)
                    earlier = daughters[tuple(peaks.position.T)].astype(np.float32)
                    found.append(Peaks(peaks.position, peaks.score, peaks.radius,
                                       np.maximum(peaks.division, earlier), peaks.ridge,
                                       peaks.ridge_distance, peaks.embedding))
                if want_daughters:
                    store_daughter_map(daughters, out, self.grid, indices)
        return found


def _check_block(t_start: int, t_stop: int, n_frames: int, tile: Sequence[int], overlap: Sequence[int]) -> None:
    if not 0 <= t_start < t_stop <= n_frames:
        raise ValueError(f"frames [{t_start}, {t_stop}) are not a non-empty range inside 0..{n_frames}")
    if len(tile) != 3 or len(overlap) != 3 or min(tile) < 1 or min(overlap) < 0:
        raise ValueError(f"tile {tile} and overlap {overlap} must be three sizes (z, y, x)")


def detect_block(image_path: str | Path, model: torch.nn.Module, settings: Mapping[str, Any],
                 t_start: int, t_stop: int, *, channel: int | None = None,
                 tile: Sequence[int] = (64, 256, 256), overlap: Sequence[int] = (8, 32, 32),
                 threshold: float | None = None, min_distance: float = 4.0, device: str = "cpu",
                 batch_size: int = 4, threads: int = 1, precision: str = "auto", binning: int = 1,
                 nucleus_radius: float | None = None, flip_average: bool = False,
                 logger: logging.Logger | None = None) -> pd.DataFrame:
    """Detections of frames ``t_start..t_stop-1`` of an OME-Zarr image, sorted by t, z, y, x.

    ``settings`` is the checkpoint's metadata: ``normalization`` (its ``low`` and ``high`` go to
    ``normalize_frame``), ``channel`` (used when ``channel`` is None) and ``threshold`` (the
    calibrated centre threshold, used when ``threshold`` is None; else 0.5). ``tile`` and ``overlap``
    are (z, y, x) voxels, ``min_distance`` xy pixels; ``precision`` is 'auto' (bf16 autocast on
    CUDA, fp32 on CPU), 'fp32', 'bf16' or 'fp16'. The model is moved to ``device``; its mode
    and memory layout are restored after the run (:func:`inference_layout`).
    ``binning`` > 1 runs the model on the image binned in y, x by that factor (tiles, overlaps and
    ``min_distance`` are then in binned pixels, the network's scale, see
    :mod:`celltrails.detector.scale`); positions and radii are returned in image pixels either way.
    ``nucleus_radius`` (image px, the dataset's) sizes the blocks of the test for signal above the
    noise (:mod:`celltrails.detector.signal`); None takes the checkpoint's ``working_radius``.
    ``flip_average`` averages the network's maps over the tiles flipped in y and x (:func:`run_model`,
    four times the model time).

    Frame t is run as the pair (t, t+1), the last frame of the series as (T-1, T-1).
    division_prob = max(mother ch0 of pass (t, t+1), daughter ch1 of pass (t-1, t)); the ch1 map is
    carried from pass to pass in one frame-sized float16 buffer, and a block starting at
    ``t_start > 0`` runs the extra pass (t_start-1, t_start) to fill it. Memory: two normalised
    frames, that buffer, one batch of tiles and the detections. The seconds spent reading, in the
    model and finding peaks are in ``result.attrs["timings"]``, the frames without signal above the
    noise in ``result.attrs["frames_without_signal"]`` (both kept by :func:`write_detections`).
    """
    logger = logger or log
    array, meta = open_image(image_path)
    _check_block(t_start, t_stop, meta.n_frames, tile, overlap)
    torch_device = torch.device(device)
    if torch_device.type == "cpu":
        torch.set_num_threads(threads)
    model = model.to(torch_device)
    array = binned_image(array, binning)
    voxel_size = working_voxel_size(meta.voxel_size, binning)
    threshold = float(settings.get("threshold", DEFAULT_THRESHOLD)) if threshold is None else threshold
    frames = FrameCache(array, settings.get("channel", 0) if channel is None else channel,
                        settings.get("normalization", {}))
    runner = PairRunner(model, frames, plan_tiles(array.shape[2:], tile, overlap, size_multiples(model)),
                        PeakSettings.make(threshold, min_distance, voxel_size, meta.is_3d),
                        torch_device, autocast_dtype(torch_device, precision), batch_size,
                        PhaseTimer(torch_device), flip_average)
    logger.info("detecting frames %d..%d on %s: %d tiles of %s per frame, batch %d, centre threshold %.2f%s%s",
                t_start, t_stop - 1, torch_device, len(runner.grid), runner.grid.size, batch_size, threshold,
                f", image binned {binning}x{binning} in y, x" if binning > 1 else "",
                ", maps averaged over y and x flips" if flip_average else "")
    with torch.inference_mode(), inference_layout(model):
        radius = (nucleus_radius / binning if nucleus_radius is not None
                  else float(settings.get("working_radius", DEFAULT_WORKING_RADIUS)))
        tables, silent = _detect_frames(runner, t_start, t_stop, meta.n_frames, min_distance, voxel_size,
                                        logger, nucleus_radius=radius)
    result = to_image(pd.concat(tables, ignore_index=True), binning).sort_values(SORT_KEYS, ignore_index=True)
    result.attrs["timings"] = runner.timer.seconds
    result.attrs["frames_without_signal"] = silent
    logger.info("%d detections in frames %d..%d; seconds %s", len(result), t_start, t_stop - 1,
                {k: round(v, 2) for k, v in runner.timer.seconds.items()})
    return result


def _detect_frames(runner: PairRunner, t_start: int, t_stop: int, n_frames: int, min_distance: float,
                   voxel_size: Sequence[float], logger: logging.Logger, nucleus_radius: float
                   ) -> tuple[list[pd.DataFrame], list[int]]:
    """One table per frame, the daughter map carried from pass to pass, and the frames without
    signal above their noise at the scale of a nucleus (``nucleus_radius``, xy pixels of the frame
    the network sees; :mod:`celltrails.detector.signal`), which have no cells."""
    daughters = np.zeros(runner.grid.shape, dtype=np.float16)
    if t_start > 0:
        runner.run(t_start - 1, t_start, daughters, want_peaks=False, want_daughters=True)
    tables, silent = [], []
    progress = ProgressLog(logger, t_stop - t_start, "detection frames")
    trim_heap = HeapTrimmer()
    for t in tqdm(range(t_start, t_stop), desc="detect", unit="frame", disable=None):
        found = runner.run(t, min(t + 1, n_frames - 1), daughters, want_peaks=True, want_daughters=t + 1 < t_stop)
        with runner.timer.phase("peaks"):
            table = frame_table(t, Peaks.concat(found))
            if signal_significance(runner.frames.frames[t], nucleus_radius, voxel_size) < MIN_SIGNIFICANCE:
                silent.append(t)
                table = table.iloc[:0]
            tables.append(suppress_close(table, min_distance, voxel_size))
        progress.advance()
        trim_heap()
    if silent:
        logger.warning("%d frame(s) show nothing brighter than their noise at the size of a nucleus "
                       "(significance < %g), so no cells are reported there: %s", len(silent),
                       MIN_SIGNIFICANCE, frame_ranges(silent))
    return tables, silent


def frame_ranges(frames: Sequence[int]) -> str:
    """'3, 7-9, 12' for [3, 7, 8, 9, 12]."""
    runs: list[list[int]] = []
    for t in frames:
        if runs and t == runs[-1][1] + 1:
            runs[-1][1] = t
        else:
            runs.append([t, t])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def detect_series(image_path: str | Path, model: torch.nn.Module, settings: Mapping[str, Any],
                  *, block_frames: int | None = None, t_start: int = 0, t_stop: int | None = None,
                  **options: Any) -> pd.DataFrame:
    """Detections of frames ``t_start..t_stop-1`` computed block by block (``block_frames`` each).

    The same table as one :func:`detect_block` over the whole range; ``options`` are its keywords.
    """
    _, meta = open_image(image_path)
    t_stop = meta.n_frames if t_stop is None else t_stop
    step = block_frames or (t_stop - t_start)
    blocks = [detect_block(image_path, model, settings, first, min(first + step, t_stop), **options)
              for first in range(t_start, t_stop, step)]
    result = pd.concat(blocks, ignore_index=True)
    result.attrs["timings"] = {k: sum(b.attrs["timings"][k] for b in blocks) for k in PHASES}
    result.attrs["frames_without_signal"] = [t for b in blocks for t in b.attrs["frames_without_signal"]]
    return result


def inference_binning(settings: Mapping[str, Any], nucleus_radius: float | None = None) -> int:
    """The y, x binning that shows a checkpoint nuclei of the size it was trained on.

    With the dataset's ``nucleus_radius`` (image px): the factor that brings it nearest the
    checkpoint's ``working_radius``. Without it the images are taken to be at the scale of the
    training images and get their binning (1 for a checkpoint trained at image scale).
    """
    if nucleus_radius is not None:
        return binning_factor(nucleus_radius, settings.get("working_radius", DEFAULT_WORKING_RADIUS))
    return int(settings.get("binning") or 1)


def detect_with_checkpoint(image_path: str | Path, checkpoint: str | Path, t_start: int, t_stop: int,
                           *, device: str = "cpu", nucleus_radius: float | None = None,
                           **options: Any) -> pd.DataFrame:
    """:func:`detect_block` with the network and its settings loaded from a checkpoint file, on
    the image binned by :func:`inference_binning` for the dataset's ``nucleus_radius``."""
    from celltrails.detector.checkpoint import load_checkpoint

    model, settings = load_checkpoint(checkpoint, device=device)
    binning = inference_binning(settings, nucleus_radius)
    return detect_block(image_path, model, settings, t_start, t_stop, device=device, binning=binning,
                        nucleus_radius=nucleus_radius, **options)


def pick_device(requested_gpus: int, logger: logging.Logger | None = None) -> str:
    """'cuda' when the job asked for a GPU and torch sees one, otherwise 'cpu' (warning if asked)."""
    logger = logger or log
    if requested_gpus > 0 and torch.cuda.is_available():
        logger.info("detection runs on CUDA (%s)", torch.cuda.get_device_name(0))
        return "cuda"
    if requested_gpus > 0:
        logger.warning("%d GPU(s) requested but torch sees no CUDA device; the job runs on the CPU",
                       requested_gpus)
    else:
        logger.info("the job runs on the CPU")
    return "cpu"


# --- files --------------------------------------------------------------------------------------------

def _check_table(table: pd.DataFrame) -> None:
    missing = [c for c in DETECTION_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"detections lack columns {missing}; block files written by an older celltrails "
                         "lack the ridge columns: rerun detection (snakemake --forcerun detect_block)")


def write_detections(table: pd.DataFrame, path: str | Path) -> None:
    """Write a detections table to parquet atomically (a killed job leaves no finished-looking file)."""
    _check_table(table)
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)


def merge_detection_blocks(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate per-block detection files into one table sorted by t, z, y, x, with the blocks'
    frames without signal in ``attrs["frames_without_signal"]``.

    A frame found in two blocks is an error (overlapping block ranges would duplicate cells).
    """
    blocks = [pd.read_parquet(p) for p in paths]
    seen: dict[int, str] = {}
    for path, block in zip(paths, blocks):
        _check_table(block)
        for t in block["t"].unique():
            if int(t) in seen:
                raise ValueError(f"frame {t} is in both {seen[int(t)]} and {path}")
            seen[int(t)] = str(path)
    widths = {len(embedding_columns(b)) for b in blocks if len(b)}
    if len(widths) > 1:
        raise ValueError(f"detection blocks have different embedding sizes {sorted(widths)}")
    merged = pd.concat(blocks, ignore_index=True).sort_values(SORT_KEYS, ignore_index=True)
    merged.attrs = {"frames_without_signal": sorted(int(t) for b in blocks
                                                    for t in b.attrs.get("frames_without_signal", []))}
    return merged


def require_cells(detections: pd.DataFrame, dataset: str, image: str | Path, log_folder: str | Path) -> None:
    """Raise InputError when no cell was detected in any frame: linking, lineages, patches and
    DynaCLR would otherwise run on nothing and fail later with a message about their own inputs."""
    if len(detections):
        return
    raise InputError(
        "no cell was detected in any frame. If the image shows only noise, there is nothing to track "
        f"({log_folder} lists the frames without signal above the noise); if it does show nuclei, check "
        "the sheet's nucleus_radius (the detector sees nuclei at the size it was trained on) and "
        "detector.threshold", dataset=dataset, path=image)
