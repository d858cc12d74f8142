"""Dense training targets from sparse point annotations (CELLECT style: points + radius + parent).

Annotations are the standard ground-truth points table (:mod:`celltrails.ground_truth`):
``t, z, y, x, cell_id, parent_id, radius`` with positions in voxel indices, radius in xy pixels,
one ``cell_id`` per track segment (new after a division or a gap) and ``parent_id`` the track it
continues from (-1 for none). Nothing is rasterised to disk: targets are drawn per training crop,
after augmentation, from the points that fall near it.

Targets of one network pass on frames (a, b) (b = a + 1, or b = a for a repeated last frame):

* ``center`` (1, Z, Y, X): for every cell of frame a, a Gaussian peaking at exactly 1 at its
  centre voxel (the rounded position), sigma = ``sigma_factor`` * radius in physical units, so in
  voxels it is anisotropic (narrower along a coarse z); overlapping cells take the maximum.
* ``foreground`` (1, Z, Y, X): the cell's sphere of the annotated radius in physical units (an
  ellipsoid in voxels).
* ``radius`` (1, Z, Y, X): the radius of the cell owning each foreground voxel (the one in whose
  sphere it lies deepest); taught only where ``radius_mask`` is 1.
* ``division`` (2, Z, Y, X): ch0 = mothers at frame a, ch1 = daughters at frame b, each as the
  core (half radius, at least the centre voxel) of the nucleus. A *mother* is the last frame of a
  track with two (or more) child tracks; a *daughter* is the first frame of a track whose parent
  track has two or more children. A track with a single child is a gap continuation (the cell was
  missed for some frames), not a division, and marks nothing. For b = a (the repeated last frame)
  nothing divides and nothing is born: both channels are 0, since a mother is defined by daughters
  the pass cannot see (teaching it there would contradict the (a, a + 1) passes).
* ``mask`` (2, Z, Y, X): where the losses may look. ch0 covers center, foreground, radius and
  division ch0 (about frame a), ch1 covers division ch1 (about frame b).

**Complete vs sparse frames.** In a *complete* frame (CTC and synthetic ground truth: every cell is
annotated) the mask is 1 everywhere: unannotated voxels are background. In a *sparse* frame (a
user clicked some cells) absence of a point says nothing, so background is only taught near
annotated cells: the mask is the union of spheres of ``context`` * radius (default 1.5) around
the frame's annotated centres. Inside them the model learns the annotated cell's peak, extent,
radius and division state, and that the ring between 1 and 1.5 radii (the gap to the neighbours)
is not a centre; everything farther away is ignored. (A neighbour's edge inside that ring is
taught as background, a small bias; annotating all cells of a small region avoids it.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SIGMA_FACTOR = 1.0 / 3.0  # centre Gaussian sigma / radius
CORE_FACTOR = 0.5  # division target: core of this fraction of the radius
SPARSE_CONTEXT = 1.5  # sparse frames: losses within this many radii of an annotated centre


def division_flags(points: pd.DataFrame) -> pd.DataFrame:
    """Add boolean columns ``mother`` and ``daughter`` to a points table (a copy).

    mother: the row is the last frame of a track with >= 2 child tracks.
    daughter: the row is the first frame of a track whose parent track has >= 2 children.
    """
    table = points.copy()
    tracks = table.groupby("cell_id").agg(first=("t", "min"), last=("t", "max"),
                                          parent=("parent_id", "first"))
    children = tracks[tracks.parent > 0].groupby("parent").size()
    n_children = table.cell_id.map(children).fillna(0).to_numpy()
    n_siblings = table.parent_id.map(children).fillna(0).to_numpy()
    table["mother"] = (table.t.to_numpy() == table.cell_id.map(tracks["last"]).to_numpy()) & (n_children >= 2)
    table["daughter"] = ((table.t.to_numpy() == table.cell_id.map(tracks["first"]).to_numpy())
                         & (table.parent_id.to_numpy() > 0) & (n_siblings >= 2))
    return table


@dataclass
class FramePoints:
    """Annotated cells of one frame in crop coordinates (voxels, float)."""

    zyx: np.ndarray  # (n, 3)
    radius: np.ndarray  # (n,) xy pixels
    cell_id: np.ndarray  # (n,) int
    parent_id: np.ndarray  # (n,) int
    mother: np.ndarray  # (n,) bool
    daughter: np.ndarray  # (n,) bool
    radius_known: np.ndarray = field(default=None)  # (n,) bool; None = all known

    def __post_init__(self) -> None:
        self.zyx = np.asarray(self.zyx, dtype=np.float64).reshape(-1, 3)
        n = len(self.zyx)
        self.radius = np.asarray(self.radius, dtype=np.float64).reshape(n)
        self.cell_id = np.asarray(self.cell_id, dtype=np.int64).reshape(n)
        self.parent_id = np.asarray(self.parent_id, dtype=np.int64).reshape(n)
        self.mother = np.asarray(self.mother, dtype=bool).reshape(n)
        self.daughter = np.asarray(self.daughter, dtype=bool).reshape(n)
        known = np.ones(n, bool) if self.radius_known is None else self.radius_known
        self.radius_known = np.asarray(known, dtype=bool).reshape(n)

    def __len__(self) -> int:
        return len(self.zyx)

    @classmethod
    def empty(cls) -> FramePoints:
        return cls(np.zeros((0, 3)), [], [], [], [], [])

    @classmethod
    def from_table(cls, rows: pd.DataFrame, default_radius: float = 5.0) -> FramePoints:
        """Rows of a points table (with ``mother``/``daughter`` from :func:`division_flags`)."""
        radius = rows["radius"].to_numpy(dtype=np.float64)
        known = np.isfinite(radius) & (radius > 0)
        flags = {name: rows[name].to_numpy() if name in rows else np.zeros(len(rows), bool)
                 for name in ("mother", "daughter")}
        return cls(rows[["z", "y", "x"]].to_numpy(np.float64), np.where(known, radius, default_radius),
                   rows["cell_id"].to_numpy(), rows["parent_id"].to_numpy(), flags["mother"],
                   flags["daughter"], known)

    def subset(self, keep: np.ndarray) -> FramePoints:
        return FramePoints(self.zyx[keep], self.radius[keep], self.cell_id[keep], self.parent_id[keep],
                           self.mother[keep], self.daughter[keep], self.radius_known[keep])

    def shifted(self, offset: Sequence[float]) -> FramePoints:
        return FramePoints(self.zyx - np.asarray(offset, float), self.radius, self.cell_id, self.parent_id,
                           self.mother, self.daughter, self.radius_known)

    def with_zyx(self, zyx: np.ndarray) -> FramePoints:
        return FramePoints(zyx, self.radius, self.cell_id, self.parent_id, self.mother, self.daughter,
                           self.radius_known)

    def centre_voxels(self, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(rounded centre voxels (n, 3) int, bool inside ``shape``)."""
        voxels = np.rint(self.zyx).astype(np.int64)
        inside = np.all((voxels >= 0) & (voxels < np.asarray(shape)), axis=1)
        return voxels, inside


def _box(centre: np.ndarray, half: np.ndarray, shape: Sequence[int]) -> tuple[slice, ...] | None:
    low = np.maximum(np.floor(centre - half).astype(np.int64), 0)
    high = np.minimum(np.ceil(centre + half).astype(np.int64) + 1, np.asarray(shape))
    if np.any(high <= low):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _grid(box: tuple[slice, ...], centre: np.ndarray, voxel: np.ndarray) -> np.ndarray:
    """Squared physical distance from ``centre`` of every voxel of ``box``."""
    d = [((np.arange(s.start, s.stop) - c) * v) ** 2 for s, c, v in zip(box, centre, voxel)]
    return d[0][:, None, None] + d[1][None, :, None] + d[2][None, None, :]


def _context_mask(cells: FramePoints, shape: Sequence[int], voxel: np.ndarray, context: float) -> np.ndarray:
    mask = np.zeros(shape, np.float32)
    for i in range(len(cells)):
        reach = context * cells.radius[i] * voxel[2]
        box = _box(cells.zyx[i], reach / voxel, shape)
        if box is not None:
            inside = (_grid(box, cells.zyx[i], voxel) <= reach ** 2).astype(np.float32)
            mask[box] = np.maximum(mask[box], inside)
    return mask


def _division_cores(cells: FramePoints, flag: np.ndarray, shape: Sequence[int],
                    voxel: np.ndarray) -> np.ndarray:
    target = np.zeros(shape, np.float32)
    voxels, inside = cells.centre_voxels(shape)
    for i in np.flatnonzero(flag):
        reach = CORE_FACTOR * cells.radius[i] * voxel[2]
        box = _box(cells.zyx[i], reach / voxel, shape)
        if box is not None:
            core = _grid(box, cells.zyx[i], voxel) <= reach ** 2
            target[box] = np.maximum(target[box], core.astype(np.float32))
        if inside[i]:
            target[tuple(voxels[i])] = 1.0
    return target


def render_pass_targets(cells_a: FramePoints, cells_b: FramePoints, shape: Sequence[int],
                        voxel_size: Sequence[float], *, complete_a: bool = True, complete_b: bool = True,
                        same_frame: bool = False, sigma_factor: float = SIGMA_FACTOR,
                        context: float = SPARSE_CONTEXT) -> dict[str, np.ndarray]:
    """Targets of one pass on frames (a, b) for a crop of ``shape`` (Z, Y, X); see the module docstring.

    ``cells_a``/``cells_b``: annotated cells of frames a and b in crop voxel coordinates (cells
    just outside the crop still contribute their tails). ``same_frame``: b is a repeat of a.
    Returns float32 arrays ``center``, ``foreground``, ``radius``, ``radius_mask`` (1, Z, Y, X),
    ``division`` and ``mask`` (2, Z, Y, X).
    """
    shape = tuple(int(n) for n in shape)
    voxel = np.asarray(voxel_size, dtype=np.float64)
    center = np.zeros(shape, np.float32)
    foreground = np.zeros(shape, np.float32)
    radius = np.zeros(shape, np.float32)
    radius_known = np.zeros(shape, np.float32)
    depth = np.full(shape, np.inf, np.float32)  # normalised distance of the owner so far
    voxels, _ = cells_a.centre_voxels(shape)
    for i in range(len(cells_a)):
        r_phys = cells_a.radius[i] * voxel[2]
        sigma = max(sigma_factor * r_phys, 1e-6)
        box = _box(voxels[i].astype(np.float64), 3.0 * sigma / voxel, shape)
        if box is not None:
            g = np.exp(-0.5 * _grid(box, voxels[i].astype(np.float64), voxel) / sigma ** 2).astype(np.float32)
            center[box] = np.maximum(center[box], g)
        box = _box(cells_a.zyx[i], r_phys / voxel + 1, shape)
        if box is None:
            continue
        q = (np.sqrt(_grid(box, cells_a.zyx[i], voxel)) / r_phys).astype(np.float32)
        own = (q <= 1.0) & (q < depth[box])
        foreground[box][own] = 1.0
        radius[box][own] = cells_a.radius[i]
        radius_known[box][own] = float(cells_a.radius_known[i])
        depth[box][own] = q[own]
    # Rounded centres inside the crop are the exact peaks (also when the radius is tiny).
    _, inside = cells_a.centre_voxels(shape)
    for v in voxels[inside]:
        center[tuple(v)] = 1.0
        foreground[tuple(v)] = 1.0

    mask_a = np.ones(shape, np.float32) if complete_a else _context_mask(cells_a, shape, voxel, context)
    if same_frame:  # (a, a): nothing divides between a frame and itself
        mask_b = mask_a
        mothers = daughters = np.zeros(shape, np.float32)
    else:
        mask_b = np.ones(shape, np.float32) if complete_b else _context_mask(cells_b, shape, voxel, context)
        mothers = _division_cores(cells_a, cells_a.mother, shape, voxel)
        daughters = _division_cores(cells_b, cells_b.daughter, shape, voxel)
    return {
        "center": center[None],
        "foreground": foreground[None],
        "radius": radius[None],
        "radius_mask": (foreground * radius_known * mask_a)[None],
        "division": np.stack([mothers, daughters]),
        "mask": np.stack([mask_a, mask_b]),
    }


def embedding_relations(cells_0: FramePoints, cells_1: FramePoints) -> np.ndarray:
    """Pair relations among the cells of frames t (``cells_0``) and t+1 (``cells_1``), in that order.

    Returns an (n0 + n1, n0 + n1) int8 matrix: 1 = positive (same cell at t and t+1; a mother at t
    and its daughters at t+1; sister daughters at t+1 in their first frame), -1 = ignore (the
    diagonal), 0 = negative (all other pairs: different cells).
    """
    cell = np.concatenate([cells_0.cell_id, cells_1.cell_id])
    parent = np.concatenate([cells_0.parent_id, cells_1.parent_id])
    frame = np.concatenate([np.zeros(len(cells_0), np.int64), np.ones(len(cells_1), np.int64)])
    first = np.concatenate([np.zeros(len(cells_0), bool), cells_1.daughter])
    same = cell[:, None] == cell[None, :]
    # Parent links only across t -> t+1 (a continuation or a division), in either order.
    lineage = ((parent[None, :] == cell[:, None]) & (frame[:, None] == 0) & (frame[None, :] == 1))
    lineage = lineage | lineage.T
    sisters = ((parent[:, None] == parent[None, :]) & (parent[:, None] > 0)
               & first[:, None] & first[None, :] & (frame[:, None] == 1) & (frame[None, :] == 1))
    relation = (same | lineage | sisters).astype(np.int8)
    np.fill_diagonal(relation, -1)
    return relation
