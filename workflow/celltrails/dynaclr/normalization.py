"""Per-channel intensity statistics of an image, computed once on a pixel sample, and the
normalization of patches that uses them.

DynaCLR normalizes every patch with statistics of its field of view or time point, not of the
patch or the batch: a dim cell stays dim next to a bright one, and a patch's values do not
depend on which other cells happen to share its batch (VisCy's MONAI percentile transform
computes them over the whole batch, one of its known pitfalls). As in ``viscy preprocess``,
the sample is every ``stride``-th pixel in y and x over all z slices, and each statistics dict
holds ``mean, std, median, iqr, p1, p5, p95, p99, p95_p5, p99_p1``.

Levels: ``dataset`` (all frames; in celltrails one dataset is one field of view, so this is
also VisCy's ``fov_statistics``) and ``timepoint`` (one frame: follows bleaching and drifts
in illumination). The dataset level pools at most ``max_dataset_samples`` values per channel,
drawn evenly from every frame with a seeded generator, so memory stays flat for long series.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from celltrails.errors import InputError
from celltrails.logs import ProgressLog

STATISTICS = ("mean", "std", "median", "iqr", "p1", "p5", "p95", "p99", "p95_p5", "p99_p1")
LEVELS = ("dataset", "timepoint")
EPSILON = 1e-8


def sample_statistics(values: np.ndarray) -> dict[str, float]:
    """The statistics of one sample of pixel values (NaN-aware, as VisCy's nan-percentiles)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or np.all(np.isnan(values)):
        raise ValueError("no finite pixel values to compute statistics from")
    p1, p5, p25, p50, p75, p95, p99 = np.nanpercentile(values, [1, 5, 25, 50, 75, 95, 99])
    return {
        "mean": float(np.nanmean(values)), "std": float(np.nanstd(values)), "median": float(p50),
        "iqr": float(p75 - p25), "p1": float(p1), "p5": float(p5), "p95": float(p95), "p99": float(p99),
        "p95_p5": float(p95 - p5), "p99_p1": float(p99 - p1),
    }


def frame_sample(frame: np.ndarray, stride: int) -> np.ndarray:
    """Every ``stride``-th pixel in y and x over all z: ``(C, n)`` from a ``(C, Z, Y, X)`` frame."""
    sample = frame[:, :, ::stride, ::stride]
    return sample.reshape(sample.shape[0], -1)


class StatisticsAccumulator:
    """Collects the per-channel statistics of an image frame by frame (one frame in memory)."""

    def __init__(self, channel_names: Sequence[str], n_frames: int, stride: int = 32,
                 max_dataset_samples: int = 2_000_000, seed: int = 0, dataset: str = ""):
        self.channel_names = list(channel_names)
        self.stride = stride
        self.dataset = dataset
        self.keep_per_frame = max(1, max_dataset_samples // max(n_frames, 1))
        self.rng = np.random.default_rng(seed)
        self.pooled: list[list[np.ndarray]] = [[] for _ in self.channel_names]
        self.per_frame: list[dict[str, dict]] = [{} for _ in self.channel_names]

    def add(self, t: int, frame: np.ndarray) -> None:
        """Sample frame ``t`` (``(C, Z, Y, X)``, channels in the order of ``channel_names``)."""
        sample = frame_sample(frame, self.stride).astype(np.float64)
        for c, name in enumerate(self.channel_names):
            values = sample[c]
            if not np.isfinite(values).any():
                raise InputError(f"frame {t}, channel {name!r} has no finite pixel values", dataset=self.dataset)
            self.per_frame[c][str(t)] = sample_statistics(values)
            if values.size > self.keep_per_frame:
                values = self.rng.choice(values, self.keep_per_frame, replace=False)
            self.pooled[c].append(values)

    def result(self) -> dict:
        """``{channel: {"dataset_statistics": {...}, "timepoint_statistics": {"0": {...}, ...}}}``."""
        return {name: {"dataset_statistics": sample_statistics(np.concatenate(self.pooled[c])),
                       "timepoint_statistics": self.per_frame[c]}
                for c, name in enumerate(self.channel_names)}


def image_statistics(array, channel_names: Sequence[str], stride: int = 32, seed: int = 0, dataset: str = "",
                     logger: logging.Logger | None = None) -> dict:
    """Statistics per channel at the dataset and timepoint levels of a ``(T, C, Z, Y, X)`` array.

    VisCy's layout, JSON-ready (see :meth:`StatisticsAccumulator.result`); frames are read one
    at a time. A frame whose sample holds no finite value is an error naming dataset and frame.
    """
    n_frames, n_channels = array.shape[:2]
    if len(channel_names) != n_channels:
        raise ValueError(f"{len(channel_names)} channel names for {n_channels} channels")
    accumulator = StatisticsAccumulator(channel_names, n_frames, stride=stride, seed=seed, dataset=dataset)
    progress = ProgressLog(logger, n_frames, "normalization statistics, frames") if logger else None
    for t in range(n_frames):
        accumulator.add(t, np.asarray(array[t]))
        if progress:
            progress.advance()
    return accumulator.result()


@dataclass(frozen=True)
class Normalization:
    """``(x - stats[subtrahend]) / (stats[divisor] + 1e-8)`` per channel, stats taken at ``level``.

    The default (timepoint median / IQR) is a robust standardisation that follows bleaching.
    VisCy's recipes are ``fov`` mean / std (phase) and p50-p99 scaling (fluorescence).
    """

    level: str = "timepoint"
    subtrahend: str = "median"
    divisor: str = "iqr"

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"normalization level {self.level!r} is not one of {LEVELS}")
        for key in (self.subtrahend, self.divisor):
            if key not in STATISTICS:
                raise ValueError(f"normalization statistic {key!r} is not one of {STATISTICS}")

    @classmethod
    def from_dict(cls, data: Mapping) -> Normalization:
        return cls(**dict(data))

    def to_dict(self) -> dict[str, str]:
        return {"level": self.level, "subtrahend": self.subtrahend, "divisor": self.divisor}

    def check(self, statistics: Mapping, channel_names: Sequence[str], dataset: str = "") -> None:
        """Raise if a channel lacks statistics or its dataset-level divisor is zero.

        A frame whose own divisor is zero (mostly one value: a blank frame, or a sparse image on a
        flat background) falls back to the dataset's divisor (see :meth:`offsets_and_scales`).
        """
        for name in channel_names:
            if name not in statistics:
                raise InputError(f"no normalization statistics for channel {name!r}", dataset=dataset)
            if statistics[name]["dataset_statistics"][self.divisor] <= 0:
                raise InputError(f"channel {name!r}: the statistic {self.divisor!r} is 0 over the whole dataset (at "
                                 "least 3/4 of the sampled pixels share one value for the IQR); choose another "
                                 "dynaclr.normalization.divisor, e.g. p99_p1 or std", dataset=dataset)

    def offsets_and_scales(self, statistics: Mapping, channel_names: Sequence[str],
                           t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(offset, scale)`` arrays of shape ``(len(t), C)`` for patches of frames ``t``; a frame whose
        divisor is 0 takes the dataset's."""
        t = np.asarray(t, dtype=np.int64)
        offsets = np.empty((t.size, len(channel_names)), np.float32)
        scales = np.empty_like(offsets)
        for c, name in enumerate(channel_names):
            channel = statistics[name]
            if self.level == "dataset":
                stats = channel["dataset_statistics"]
                offsets[:, c] = stats[self.subtrahend]
                scales[:, c] = stats[self.divisor] + EPSILON
            else:
                per_t = channel["timepoint_statistics"]
                fallback = channel["dataset_statistics"][self.divisor]
                frames = np.unique(t)
                lookup_offset = {f: per_t[str(f)][self.subtrahend] for f in frames}
                lookup_scale = {f: (per_t[str(f)][self.divisor] if per_t[str(f)][self.divisor] > 0 else fallback)
                                + EPSILON for f in frames}
                offsets[:, c] = [lookup_offset[f] for f in t]
                scales[:, c] = [lookup_scale[f] for f in t]
        return offsets, scales

    def apply(self, patches: np.ndarray, statistics: Mapping, channel_names: Sequence[str],
              t: np.ndarray) -> np.ndarray:
        """Normalized float32 copy of ``patches`` ``(N, C, Z, Y, X)`` taken at frames ``t``."""
        offsets, scales = self.offsets_and_scales(statistics, channel_names, t)
        shape = (len(t), len(channel_names), 1, 1, 1)
        return (patches.astype(np.float32) - offsets.reshape(shape)) / scales.reshape(shape)
