"""Training samples streamed from OME-Zarr: random crops of three frames, augmented, with targets.

Nothing is preprocessed to disk (CELLECT wrote ~236 GB of float64 label volumes per embryo):
each sample reads only its frames' crop region from the zarr store, normalises it with the
frame's percentiles (computed once per frame from a strided sample, see
:mod:`celltrails.detector.normalize`, and cached in memory), augments it and draws its targets
from the points table (:mod:`celltrails.detector.targets`).

A sample holds frames (t, t+1, t+2) of one crop, for two network passes P1 = (t, t+1) and
P2 = (t+1, t+2) (CELLECT's scheme): the embedding of a cell at t is read from P1 and that of a
cell at t+1 from P2, so the contrastive loss teaches embeddings comparable *across* passes, as
inference uses them. With probability ``repeat_probability`` the sample is (t, t+1, t+1): P2 is
then the repeated-frame pass that inference runs on the last frame.

Crops are biased towards cells: with probability ``cell_bias`` (always in sparse frames) a crop
is placed so that a random annotated cell of frame t lies at a random position inside it. With
probability ``division_bias`` a sample is instead drawn around a division: a frame t whose cells
include a mother (dividing before t+1), the crop placed on that mother. Divisions are ~1 % of
cells (28 in the 2607 cells of Fluo-N2DH-SIM+ 01), rare in uniform crops. Measured on SIM+ (binned
5x, 2000 steps): the division head stayed uninformative with uniform crops (AUROC 0.54 at the
cells of 02) and with ``division_bias`` 0.3 too (0.53 on 02; on 01's own training frames 0.33 for
mothers, 0.62 for daughters): more division crops alone do not teach it; see the tracking issue.
Crops larger than the image are padded with 0 (the normalised background level) and the
padding counts as background.

Augmentation (:class:`Augmentation`) uses one draw per sample for all its frames and points:
flips (y, x, and z in 3D), 90-degree rotations in xy (square crops), an optional small-angle
rotation in xy (read from a larger region, so no empty corners; only for square pixels),
blur, gamma, intensity scaling and Gaussian noise (one noise level, independent noise per frame,
as a camera makes it).

Datasets are ``(image.ome.zarr, points table, name)`` tuples, optionally with a 4th element
``complete``: True (every frame in the table's range is completely annotated: CTC, synthetic),
False (sparse annotations) or a collection of frame indices that are complete. A boolean
``complete`` column in the points table (per row, constant per frame) overrides it. The last
``val_fraction`` of each dataset's annotated frames is held out for validation.

With a ``working_radius``, a source is read binned in y and x (:mod:`celltrails.detector.scale`)
by the factor that brings its nuclei (``nucleus_radius``, else the median annotated radius) to
that radius; its points, shape and voxel size are then those of the binned image.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.ndimage import gaussian_filter, map_coordinates

from celltrails.config import is_range
from celltrails.detector.normalize import (
    SCOPES,
    apply_percentiles,
    percentiles_from_store,
    series_percentiles,
)
from celltrails.detector.scale import binned_image, binning_factor, to_working, working_voxel_size
from celltrails.detector.targets import FramePoints, division_flags, embedding_relations, render_pass_targets
from celltrails.ground_truth import check_points_fit_image, load_ground_truth, normalise_points
from celltrails.ome_zarr_io import open_image, read_image_meta

BINNED_CACHE_BYTES = 1 << 30  # a binned training series up to this size is held in memory


@dataclass(frozen=True)
class TrainingDataset:
    """One annotated image series (see the module docstring for ``complete``)."""

    image: str | Path
    points: str | Path | pd.DataFrame
    name: str
    complete: bool | Collection[int] = True
    nucleus_radius: float | None = None  # typical nucleus radius, image px (None: the annotations' median)


def as_training_dataset(item) -> TrainingDataset:
    """A :class:`TrainingDataset` from itself or from a tuple (image, points, name[, complete])."""
    if isinstance(item, TrainingDataset):
        return item
    if not isinstance(item, (tuple, list)) or len(item) not in (3, 4):
        raise ValueError("a training dataset is (image.ome.zarr, points table, name[, complete]), "
                         f"got {item!r}")
    return TrainingDataset(*item)


@dataclass(frozen=True)
class Augmentation:
    """Random augmentation settings; ``Augmentation.none()`` switches everything off."""

    flip: bool = True
    rot90: bool = True
    rotate_degrees: float = 0.0  # small-angle xy rotation, uniform in [-a, a]; 0 = off
    rotate_probability: float = 0.5
    intensity_scale: tuple[float, float] = (0.75, 1.33)
    gamma: tuple[float, float] = (0.75, 1.33)
    noise_std: tuple[float, float] = (0.0, 0.08)  # normalised units
    noise_probability: float = 0.5
    blur_sigma: tuple[float, float] = (0.3, 1.0)  # xy pixels
    blur_probability: float = 0.2

    def __post_init__(self) -> None:
        """Each range as a (low, high) pair of floats; a scale or gamma of 0 or a reversed range is refused."""
        for name in ("intensity_scale", "gamma", "noise_std", "blur_sigma"):
            bounds = tuple(float(v) for v in np.atleast_1d(getattr(self, name)))
            positive = name in ("intensity_scale", "gamma")
            if not is_range(bounds, positive):
                raise ValueError(f"augmentation {name} must be a range [low, high] with "
                                 f"{'0 <' if positive else '0 <='} low <= high, got {list(bounds)}")
            object.__setattr__(self, name, bounds)  # frozen: hashable tuples whatever the caller passed

    @classmethod
    def none(cls) -> Augmentation:
        return cls(flip=False, rot90=False, rotate_degrees=0.0, intensity_scale=(1.0, 1.0), gamma=(1.0, 1.0),
                   noise_probability=0.0, blur_probability=0.0)


class Source:
    """One dataset opened for sampling: lazy zarr access, points per frame, cached percentiles."""

    def __init__(self, dataset: TrainingDataset, channel: int = 0, low: float = 1.0, high: float = 99.8,
                 default_radius: float | None = None, working_radius: float | None = None,
                 scope: str = "series"):
        self.dataset = dataset
        self.name = dataset.name
        self.image_path = str(dataset.image)
        self.meta = read_image_meta(self.image_path)
        self.channel = int(channel)
        if not 0 <= self.channel < self.meta.shape[1]:
            raise ValueError(f"dataset '{self.name}': channel {channel} does not exist "
                             f"(the image has {self.meta.shape[1]})")
        self.low, self.high = float(low), float(high)
        if scope not in SCOPES:
            raise ValueError(f"normalization scope must be one of {SCOPES}, got {scope!r}")
        self.scope = scope
        points = dataset.points
        if isinstance(points, pd.DataFrame):
            table = normalise_points(points, self.name, "<table>")
        else:
            table = load_ground_truth(points, tuple(float(v) for v in self.meta.voxel_size), self.name)
        where = points if isinstance(points, (str, Path)) else None
        check_points_fit_image(table, self.meta.shape, self.name, where)
        self.binning = self._binning(table, dataset.nucleus_radius, working_radius)
        table = to_working(table, self.binning)
        self.shape = (int(self.meta.shape[2]), *(int(n) // self.binning for n in self.meta.shape[3:]))
        self.voxel_size = working_voxel_size(self.meta.voxel_size, self.binning)
        radii = table.radius.to_numpy()
        known = radii[np.isfinite(radii) & (radii > 0)]
        self.default_radius = float(default_radius or (np.median(known) if len(known) else 5.0))
        table = division_flags(table)
        self.points = {int(t): FramePoints.from_table(rows, self.default_radius)
                       for t, rows in table.groupby("t")}
        self.complete = self._complete_frames(table, dataset.complete)
        self.frames = self._annotated_frames(table)
        self._array = None
        self._percentiles: dict[int, tuple[float, float]] = {}
        self._binned_frames: dict[int, np.ndarray] = {}
        self._hold_binned = self.binning > 1 and 4 * math.prod(self.shape) * self.meta.shape[0] <= BINNED_CACHE_BYTES

    def _binning(self, table: pd.DataFrame, nucleus_radius: float | None, working_radius: float | None) -> int:
        if working_radius is None:
            return 1
        if nucleus_radius is None:
            radii = table.radius.to_numpy(np.float64)
            radii = radii[np.isfinite(radii) & (radii > 0)]
            if not len(radii):
                raise ValueError(f"dataset '{self.name}': the annotations have no radius; give the dataset's "
                                 "nucleus_radius to choose the detector's working scale")
            nucleus_radius = float(np.median(radii))
        return binning_factor(nucleus_radius, working_radius)

    def _complete_frames(self, table: pd.DataFrame, complete) -> dict[int, bool]:
        frames = range(int(table.t.min()), int(table.t.max()) + 1)
        if "complete" in table.columns:
            by_frame = table.groupby("t")["complete"].first().astype(bool)
            return {t: bool(by_frame.get(t, False)) for t in frames}
        if isinstance(complete, bool):
            return {t: complete for t in frames}
        chosen = {int(t) for t in complete}
        return {t: t in chosen for t in frames}

    def _annotated_frames(self, table: pd.DataFrame) -> list[int]:
        """Frames whose annotation counts: all frames in range if complete, else frames with points."""
        return [t for t in range(int(table.t.min()), int(table.t.max()) + 1)
                if self.complete.get(t, False) or t in self.points]

    def __getstate__(self) -> dict:  # data-loader workers open the store themselves
        state = dict(self.__dict__)
        state["_array"], state["_binned_frames"] = None, {}
        return state

    @property
    def array(self):
        if self._array is None:
            self._array = binned_image(open_image(self.image_path)[0], self.binning)
        return self._array

    def frame_points(self, t: int) -> FramePoints:
        return self.points.get(int(t), FramePoints.empty())

    def _frame(self, t: int):
        """Frame ``t``: a lazy view, or an in-memory copy when the binned series is small enough.

        Binning a crop costs more than reading it; a whole binned series of up to
        ``BINNED_CACHE_BYTES`` is kept in memory (Fluo-N2DH-SIM+ 01 binned 5x: 4.5 MB) instead.
        """
        if not self._hold_binned:
            return self.array[t, self.channel]
        if t not in self._binned_frames:
            self._binned_frames[t] = np.asarray(self.array[t, self.channel], dtype=np.float32)
        return self._binned_frames[t]

    def percentiles(self, t: int) -> tuple[float, float]:
        """The (low, high) intensities frame ``t`` is normalised with (one pair for the series with
        scope "series"; see :mod:`celltrails.detector.normalize`)."""
        key = -1 if self.scope == "series" else int(t)
        if key not in self._percentiles:
            self._percentiles[key] = (
                series_percentiles(self.array, self.channel, self.low, self.high) if key < 0
                else percentiles_from_store(self.array, t, self.channel, self.low, self.high))
        return self._percentiles[key]

    def read(self, t: int, origin: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """Normalised float32 (Z, Y, X) region of frame ``t``; outside the image: 0."""
        out = np.zeros(tuple(size), np.float32)
        low = [max(0, o) for o in origin]
        high = [min(n, o + s) for o, s, n in zip(origin, size, self.shape)]
        if any(h <= lo for lo, h in zip(low, high)):
            return out
        region = self._frame(int(t))[tuple(slice(a, b) for a, b in zip(low, high))]
        lo, hi = self.percentiles(t)
        target = tuple(slice(a - o, b - o) for a, b, o in zip(low, high, origin))
        out[target] = apply_percentiles(region, lo, hi)
        return out


def split_frames(source: Source, val_fraction: float) -> tuple[set[int], set[int]]:
    """Annotated frames used for training and for validation (the last ``val_fraction`` of them;
    none if 0 or too few frames are left to train on)."""
    frames = source.frames
    n_val = math.ceil(val_fraction * len(frames)) if val_fraction > 0 else 0
    n_val = max(n_val, 2) if n_val else 0  # a validation sample needs two frames
    if len(frames) - n_val < 2:
        n_val = 0
    return set(frames[: len(frames) - n_val]), set(frames[len(frames) - n_val:])


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    a, b = bounds
    return float(a) if a == b else float(rng.uniform(a, b))


class CropSampler:
    """Draws augmented 3-frame crops with their targets from a list of (source, start frame)."""

    def __init__(self, sources: Sequence[Source], frames: Sequence[Collection[int]], crop_size: Sequence[int],
                 augmentation: Augmentation | None = None, repeat_probability: float = 0.1,
                 cell_bias: float = 0.8, division_bias: float = 0.0):
        """``frames[i]``: the frames of ``sources[i]`` this sampler may use (e.g. the training part);
        a sample starts at t with t and t+1 among them, and uses t+2 only if it is too."""
        self.sources = list(sources)
        self.frames = [{int(t) for t in f} for f in frames]
        self.starts = [(i, t) for i, f in enumerate(self.frames) for t in sorted(f) if t + 1 in f]
        if not self.starts:
            raise ValueError("no frame pairs to sample from (each sample needs annotated frames t and t+1)")
        self.crop = tuple(int(n) for n in crop_size)
        self.augmentation = augmentation or Augmentation.none()
        self.repeat_probability = float(repeat_probability)
        self.cell_bias = float(cell_bias)
        self.division_bias = float(division_bias)
        self.division_starts = [k for k, (i, t) in enumerate(self.starts)
                                if self.sources[i].frame_points(t).mother.any()]

    # -- geometry --------------------------------------------------------------------------
    def _origin(self, rng: np.random.Generator, source: Source, t: int, at_division: bool = False) -> np.ndarray:
        crop, shape = np.array(self.crop), np.array(source.shape)
        cells = source.frame_points(t)
        sparse = not source.complete.get(t, False)
        if at_division:
            centre = cells.zyx[rng.choice(np.flatnonzero(cells.mother))]
            origin = np.floor(centre - rng.uniform(0.25, 0.75, size=3) * crop).astype(np.int64) + 1
        elif len(cells) and (sparse or rng.random() < self.cell_bias):
            centre = cells.zyx[rng.integers(len(cells))]
            origin = np.floor(centre - rng.uniform(0, crop)).astype(np.int64) + 1
        else:
            origin = np.array([rng.integers(0, max(1, n - c + 1)) for n, c in zip(shape, crop)])
        # Keep the crop inside the image where it fits; centre it where the image is smaller.
        fits = shape >= crop
        origin = np.where(fits, np.clip(origin, 0, shape - crop), (shape - crop) // 2)
        return origin

    def _frames(self, rng: np.random.Generator, source_index: int, t: int) -> tuple[list[int], bool]:
        repeat = (t + 2) not in self.frames[source_index] or rng.random() < self.repeat_probability
        return ([t, t + 1, t + 1] if repeat else [t, t + 1, t + 2]), repeat

    # -- a sample --------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, index: int | None = None, augment: bool = True) -> dict:
        """One sample: ``image`` (3, Z, Y, X), per-pass ``targets`` stacked (2, ...), embedding cells."""
        at_division = (self.division_bias > 0 and index is None and bool(self.division_starts)
                       and rng.random() < self.division_bias)
        if at_division:
            k = self.division_starts[int(rng.integers(len(self.division_starts)))]
        else:
            k = int(rng.integers(len(self.starts))) if index is None else index
        source_index, t = self.starts[k]
        source = self.sources[source_index]
        frames, repeat = self._frames(rng, source_index, t)
        origin = self._origin(rng, source, t, at_division)
        aug = self.augmentation if augment else Augmentation.none()
        crop = np.array(self.crop)
        vy, vx = source.voxel_size[1:]
        angle = 0.0
        if aug.rotate_degrees > 0 and abs(vy - vx) <= 1e-3 * vx and rng.random() < aug.rotate_probability:
            angle = math.radians(rng.uniform(-aug.rotate_degrees, aug.rotate_degrees))
        if angle:
            c, s = abs(math.cos(angle)), abs(math.sin(angle))
            big = np.array([crop[0], math.ceil(crop[1] * c + crop[2] * s) + 2,
                            math.ceil(crop[1] * s + crop[2] * c) + 2])
            read_origin = origin - (big - crop) // 2
        else:
            big, read_origin = crop, origin
        distinct = sorted(set(frames))
        raw = {f: source.read(f, read_origin, big) for f in distinct}
        image = np.stack([raw[f] for f in frames])
        points = [self._nearby(source.frame_points(f), read_origin, big) for f in frames]
        if angle:
            image, points = _rotate(image, points, angle, big, crop)
        image, points = _geometric(rng, image, points, aug, source.shape[0] > 1)
        image = _intensity(rng, image, aug, source.voxel_size)
        complete = [source.complete.get(f, False) for f in frames]
        passes = [(0, 1), (1, 2)]
        targets = [render_pass_targets(points[a], points[b], crop, source.voxel_size, complete_a=complete[a],
                                       complete_b=complete[b], same_frame=frames[a] == frames[b])
                   for a, b in passes]
        stacked = {key: np.stack([tg[key] for tg in targets]) for key in targets[0]}
        inside = [p.subset(p.centre_voxels(crop)[1]) for p in points[:2]]
        return {
            "image": np.ascontiguousarray(image, dtype=np.float32),
            "targets": stacked,
            "cells": inside,
            "relation": embedding_relations(inside[0], inside[1]),
            "voxel_size": source.voxel_size,
            "info": {"dataset": source.name, "t": t, "frames": frames, "origin": origin.tolist(),
                     "repeat": repeat, "complete": complete},
        }

    @staticmethod
    def _nearby(cells: FramePoints, origin: np.ndarray, size: np.ndarray) -> FramePoints:
        """Cells of a frame whose centre lies within a margin of the region, in region coordinates."""
        if not len(cells):
            return FramePoints.empty()
        local = cells.shifted(origin)
        margin = 2.0 * float(cells.radius.max()) + 2.0
        keep = np.all((local.zyx[:, 1:] >= -margin) & (local.zyx[:, 1:] < size[1:] + margin), axis=1)
        keep &= (local.zyx[:, 0] >= -margin) & (local.zyx[:, 0] < size[0] + margin)
        return local.subset(keep)


def _rotate(image: np.ndarray, points: list[FramePoints], angle: float, big: np.ndarray,
            crop: np.ndarray) -> tuple[np.ndarray, list[FramePoints]]:
    """Rotate the larger read region about its centre by ``angle`` in yx and cut the crop."""
    cos, sin = math.cos(angle), math.sin(angle)
    c_out = (crop[1:] - 1) / 2.0
    c_in = (big[1:] - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(crop[1]) - c_out[0], np.arange(crop[2]) - c_out[1], indexing="ij")
    # Output pixel q reads input R (q - c_out) + c_in.
    src = np.stack([cos * yy - sin * xx + c_in[0], sin * yy + cos * xx + c_in[1]])
    out = np.empty((image.shape[0], image.shape[1], crop[1], crop[2]), np.float32)
    for f in range(image.shape[0]):
        for z in range(image.shape[1]):
            out[f, z] = map_coordinates(image[f, z], src, order=1, mode="constant", cval=0.0)
    rotated = []
    for p in points:
        d = p.zyx[:, 1:] - c_in
        q = np.stack([cos * d[:, 0] + sin * d[:, 1], -sin * d[:, 0] + cos * d[:, 1]], axis=1) + c_out
        rotated.append(p.with_zyx(np.column_stack([p.zyx[:, 0], q])))
    return out, rotated


def _geometric(rng: np.random.Generator, image: np.ndarray, points: list[FramePoints], aug: Augmentation,
               is_3d: bool) -> tuple[np.ndarray, list[FramePoints]]:
    """Flips and 90-degree xy rotations of (F, Z, Y, X) ``image`` and the points, one draw for all."""
    shape = image.shape[1:]
    zyx = [p.zyx.copy() for p in points]
    if aug.flip:
        for axis in (0, 1, 2) if is_3d else (1, 2):
            if rng.random() < 0.5:
                image = np.flip(image, axis=axis + 1)
                for c in zyx:
                    c[:, axis] = shape[axis] - 1 - c[:, axis]
    if aug.rot90 and shape[1] == shape[2]:
        k = int(rng.integers(4))
        if k:
            image = np.rot90(image, k, axes=(2, 3))
            for c in zyx:
                for _ in range(k):  # one step: (y, x) -> (X - 1 - x, y)
                    c[:, 1], c[:, 2] = shape[2] - 1 - c[:, 2], c[:, 1].copy()
    return np.ascontiguousarray(image), [p.with_zyx(c) for p, c in zip(points, zyx)]


def _intensity(rng: np.random.Generator, image: np.ndarray, aug: Augmentation,
               voxel_size: Sequence[float]) -> np.ndarray:
    """Blur, gamma, scaling and noise with one parameter draw for all frames of the sample."""
    image = image.astype(np.float32, copy=True)
    if aug.blur_probability and rng.random() < aug.blur_probability:
        sigma_xy = _uniform(rng, aug.blur_sigma)
        sigma_z = sigma_xy * voxel_size[2] / voxel_size[0] if image.shape[1] > 1 else 0.0
        for f in range(image.shape[0]):
            image[f] = gaussian_filter(image[f], (sigma_z, sigma_xy, sigma_xy))
    gamma = _uniform(rng, aug.gamma)
    if gamma != 1.0:
        positive = image > 0
        image[positive] = image[positive] ** np.float32(gamma)
    scale = _uniform(rng, aug.intensity_scale)
    if scale != 1.0:
        image *= np.float32(scale)
    if aug.noise_probability and rng.random() < aug.noise_probability:
        std = _uniform(rng, aug.noise_std)
        image += rng.normal(0.0, std, image.shape).astype(np.float32)
    return image


def collate(samples: list[dict]) -> dict:
    """Batch of samples -> tensors for both passes: ``x`` (2B, 2, Z, Y, X) = P1 of all samples,
    then P2 of all samples; ``targets`` in the same order; embedding read positions and relations."""
    images = torch.from_numpy(np.stack([s["image"] for s in samples]))
    x = torch.cat([images[:, [0, 1]], images[:, [1, 2]]])
    targets = {key: torch.from_numpy(np.concatenate([np.stack([s["targets"][key][p] for s in samples])
                                                     for p in (0, 1)]))
               for key in samples[0]["targets"]}
    n = len(samples)
    index, voxels, blocks = [], [], []
    for b, s in enumerate(samples):
        for pass_index, cells in enumerate(s["cells"]):
            v, _ = cells.centre_voxels(s["image"].shape[1:])
            index.append(np.full(len(v), b + pass_index * n))
            voxels.append(v.reshape(-1, 3))
        blocks.append(s["relation"])
    total = sum(len(r) for r in blocks)
    relation = -np.ones((total, total), np.int8)
    at = 0
    for r in blocks:
        relation[at:at + len(r), at:at + len(r)] = r
        at += len(r)
    return {
        "x": x,
        "targets": targets,
        "emb_index": torch.from_numpy(np.concatenate(index).astype(np.int64)),
        "emb_voxels": torch.from_numpy(np.concatenate(voxels).astype(np.int64)),
        "relation": torch.from_numpy(relation),
        "samples": samples,
    }


def gather_embeddings(embedding: torch.Tensor, index: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
    """(n, D) embeddings at batch ``index`` and (z, y, x) ``voxels`` of a (N, D, Z, Y, X) map."""
    return embedding[index, :, voxels[:, 0], voxels[:, 1], voxels[:, 2]]


class SampleStream(torch.utils.data.IterableDataset):
    """Endless stream of training samples; reproducible per (seed, worker)."""

    def __init__(self, sampler: CropSampler, seed: int):
        super().__init__()
        self.sampler = sampler
        self.seed = int(seed)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        rng = np.random.default_rng([self.seed, worker])
        while True:
            yield self.sampler.sample(rng)


def open_sources(datasets: Sequence, channel: int = 0, low: float = 1.0, high: float = 99.8,
                 working_radius: float | None = None, scope: str = "series") -> list[Source]:
    """Open the training datasets, binned to ``working_radius`` when it is given."""
    return [Source(as_training_dataset(d), channel, low, high, working_radius=working_radius, scope=scope)
            for d in datasets]
