"""Which patches make a contrastive example: the three sampling strategies of DynaCLR.

Every example is an anchor, a positive (what the anchor should embed close to) and, for the
triplet loss, a negative (a different cell). Rows are rows of a patch index
(:mod:`celltrails.dynaclr.patches`), possibly from several datasets stacked together.

* ``classical``: the positive is the anchor patch itself; the two views differ only by
  augmentation (SimCLR on single cells).
* ``cell_aware``: the positive is another observation of the same track, at any time.
* ``time_aware``: the positive is the same cell ``tau`` frames later (DynaCLR): the same track at
  t + tau or, when the track divided in between, one of its daughters at t + tau (VisCy main's
  lineage-aware lookup). ``tau`` is drawn per example from ``[tau_min, tau_max]`` frames.
  Anchors without a successor at any tau in the range are not used as anchors.

False negatives (VisCy#136): with NT-Xent every other example of the batch is a negative. A
batch therefore holds at most one anchor per lineage (tracks descended from one root), as long as
the data have enough lineages, then one per track, and :meth:`ContrastiveSampler.same_group`
marks pairs from one lineage so the loss drops them from each other's negatives. Triplet
negatives always come from another lineage, from frame t + tau where one exists (as VisCy).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd

MODES = ("classical", "cell_aware", "time_aware")


@dataclass(frozen=True)
class Batch:
    """Row numbers of one batch's anchors, positives and negatives (each ``(B,)``)."""

    anchor: np.ndarray
    positive: np.ndarray
    negative: np.ndarray


class ContrastiveSampler:
    """Draws batches of (anchor, positive, negative) rows from ``rows`` of an index table.

    ``index`` needs ``t, track_id, lineage_id`` (unique across stacked datasets) and
    ``parent_track_id``; ``rows`` restricts anchors, positives and negatives to a subset (a
    training or validation split made of whole lineages).
    """

    def __init__(self, index: pd.DataFrame, mode: str, rows: np.ndarray | None = None,
                 tau: tuple[int, int] = (1, 1), seed: int = 0):
        if mode not in MODES:
            raise ValueError(f"sampling mode {mode!r} is not one of {MODES}")
        if tau[0] < 1 or tau[1] < tau[0]:
            raise ValueError(f"tau range {tau} must satisfy 1 <= min <= max")
        self.mode = mode
        self.tau = (int(tau[0]), int(tau[1]))
        self.rng = np.random.default_rng(seed)
        self.rows = np.arange(len(index)) if rows is None else np.sort(np.asarray(rows, dtype=np.int64))
        if self.rows.size == 0:
            raise ValueError("no patches to sample from")
        self.t = index["t"].to_numpy(np.int64)
        self.track = index["track_id"].to_numpy(np.int64)
        self.lineage = index["lineage_id"].to_numpy(np.int64)
        self._track_rows = _group_rows(self.track, self.rows)
        self._frame_rows = _group_rows(self.t, self.rows)
        if mode == "time_aware":
            self._successors = self._lineage_successors(index)
            self.anchors = np.array([r for r in self.rows if self._successors[r]], dtype=np.int64)
            if self.anchors.size == 0:
                raise ValueError(f"no track has an observation {self.tau[0]}-{self.tau[1]} frames later: "
                                 "time-aware sampling needs tracks longer than tau")
        else:
            self.anchors = self.rows
        self._lineage_of_anchor = self.lineage[self.anchors]
        self.n_lineages = len(np.unique(self._lineage_of_anchor))

    # -- lookups built once --------------------------------------------------------------------------

    def _lineage_successors(self, index: pd.DataFrame) -> dict[int, list[int]]:
        """For every row, the rows of the same cell (track or its descendants) at t + tau, tau in range."""
        in_rows = np.zeros(len(index), bool)
        in_rows[self.rows] = True
        row_of = {(int(k), int(t)): int(r) for r, (k, t) in enumerate(zip(self.track, self.t)) if in_rows[r]}
        children: dict[int, list[int]] = defaultdict(list)
        for track, parent in (index[["track_id", "parent_track_id"]].drop_duplicates()
                              .itertuples(index=False, name=None)):
            if parent >= 0 and parent != track:
                children[int(parent)].append(int(track))
        successors: dict[int, list[int]] = {}
        for r in self.rows.tolist():
            found = []
            for tau in range(self.tau[0], self.tau[1] + 1):
                found += _descendant_rows(int(self.track[r]), int(self.t[r]) + tau, row_of, children)
            successors[r] = found
        return successors

    # -- batches -------------------------------------------------------------------------------------

    def _pick_anchors(self, batch_size: int) -> np.ndarray:
        """``batch_size`` anchors, one per lineage while lineages last, never two of one track."""
        shuffled = self.anchors[self.rng.permutation(self.anchors.size)]
        _, first_of_lineage = np.unique(self.lineage[shuffled], return_index=True)
        chosen = shuffled[np.sort(first_of_lineage)][:batch_size]
        if chosen.size < batch_size:  # fewer lineages than the batch: top up with unused tracks
            _, first_of_track = np.unique(self.track[shuffled], return_index=True)
            candidates = shuffled[np.sort(first_of_track)]
            candidates = candidates[~np.isin(self.track[candidates], self.track[chosen])]
            chosen = np.concatenate([chosen, candidates[: batch_size - chosen.size]])
        return chosen.astype(np.int64)

    def _positive(self, row: int) -> int:
        if self.mode == "classical":
            return row
        if self.mode == "cell_aware":
            same = self._track_rows[int(self.track[row])]
            others = same[same != row]
            return int(self.rng.choice(others)) if others.size else row
        return int(self.rng.choice(self._successors[row]))

    def _negative(self, anchor: int, positive: int) -> int:
        """A row of another lineage, from the positive's frame when it has one."""
        for pool in (self._frame_rows.get(int(self.t[positive])), self.rows):
            if pool is None:
                continue
            for _ in range(32):
                row = int(pool[self.rng.integers(pool.size)])
                if self.lineage[row] != self.lineage[anchor]:
                    return row
            others = pool[self.lineage[pool] != self.lineage[anchor]]
            if others.size:
                return int(self.rng.choice(others))
        raise ValueError("all patches belong to one lineage: there is no negative to draw")

    def batch(self, batch_size: int, negatives: bool = True) -> Batch:
        """One batch; smaller than ``batch_size`` only if there are fewer tracks than that.

        ``negatives=False`` leaves ``Batch.negative`` empty (NT-Xent takes its negatives from the batch).
        """
        anchors = self._pick_anchors(batch_size)
        positives = np.array([self._positive(int(r)) for r in anchors], dtype=np.int64)
        drawn = [self._negative(int(a), int(p)) for a, p in zip(anchors, positives)] if negatives else []
        return Batch(anchors, positives, np.array(drawn, dtype=np.int64))

    def same_group(self, batch: Batch) -> np.ndarray:
        """``(B, B)`` bool: examples i and j come from one lineage (not negatives of each other)."""
        lineage = self.lineage[batch.anchor]
        return lineage[:, None] == lineage[None, :]


def _group_rows(keys: np.ndarray, rows: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(keys[rows], kind="stable")
    sorted_rows = rows[order]
    unique, starts = np.unique(keys[sorted_rows], return_index=True)
    return {int(k): part for k, part in zip(unique, np.split(sorted_rows, starts[1:]))}


def _descendant_rows(track: int, t: int, row_of: dict[tuple[int, int], int],
                     children: dict[int, list[int]]) -> list[int]:
    """Rows at frame ``t`` of ``track`` or of its descendants (daughters after a division)."""
    found, stack, seen = [], [track], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if (current, t) in row_of:
            found.append(row_of[(current, t)])
        else:
            stack.extend(children.get(current, ()))
    return found


MIN_TRAINING_LINEAGES = 2  # a contrastive batch needs cells of another lineage as negatives


def split_by_lineage(index: pd.DataFrame, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows with whole lineages on one side (no cell seen in both).

    Validation gets at least one lineage when asked for, but never so many that fewer than two
    remain for training (then there is no validation).
    """
    lineages = np.unique(index["lineage_id"].to_numpy())
    rng = np.random.default_rng(seed)
    n_val = round(validation_fraction * int(lineages.size))
    spare = lineages.size - MIN_TRAINING_LINEAGES
    n_val = min(max(n_val, 1), spare) if validation_fraction > 0 and spare > 0 else 0
    held_out = rng.choice(lineages, n_val, replace=False)
    is_val = index["lineage_id"].isin(held_out).to_numpy()
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
