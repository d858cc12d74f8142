"""Figures of tracking results: tracks drawn on the images, and lineage trees.

``plot_track_montage`` shows maximum-intensity projections (over z) of evenly spaced frames of one
channel. Every cell present in a frame is a circle (radius from the tracks table) coloured by its
*lineage* (the root track and all its descendants), with its trail over the previous ``tail`` frames
in the same colour. Trails follow a daughter back into its mother, so a recent division reads as a
fork; the fork point (the mother's last position) carries a white star for every division whose
daughters appeared within the trail window (with ``tail=0``: daughters whose first frame is the
panel's frame). A track that continues another one after a gap (a parent with a single child) is
not a division and gets no star.

``plot_lineage_trees`` draws the ``n`` largest lineages, largest first, where size is the number of
cell-frames (rows of the tracks table), which weighs both how long cells were followed and how often
they divided. Time runs downwards; each track is a vertical line over its frames; a division is a
horizontal connector at the mother's last frame spanning its daughters, each daughter's line going
down from it. A stretch with missing frames (a child starting more than one frame after its parent
ended: gap closing) is dotted. Leaves are placed at 0, 1, 2, ... in depth-first order (children by
first frame, then id) and every other track midway between its first and last child (a post-order
layout), so branches never cross.

Design choices:

* Colours: a qualitative palette (tab10 without its grey, which vanishes on grey images), cycled
  over lineages in order of root track id, so a lineage has the same colour in both figures.
* Tolerant of imperfect tables: a parent id missing from the table (or pointing to the track
  itself, or forming a cycle) makes the track a root; an empty table gives a figure with a
  "no tracks" note instead of an error.
* Images are read one frame and one channel at a time, the z-projection slab by slab, so memory
  is bounded by a chunk-deep slab of one frame, whatever the series size. Projections larger than
  ``MAX_DISPLAY_PX`` per side are block-averaged for display; overlays keep full-resolution pixel
  coordinates (the image is placed with ``extent``).
* Only ``matplotlib.figure.Figure`` objects (no pyplot state); PNGs are written atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PatchCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle

from celltrails.figures import save_png
from celltrails.ome_zarr_io import open_image

MAX_DISPLAY_PX = 512
DPI = 110
DEFAULT_RADIUS = 3.0
MAX_FIGURE_WIDTH = 16.0  # inches; wide lineage trees get fewer panels per row
REQUIRED_COLUMNS = ("t", "track_id", "parent_track_id", "y", "x")
# tab10 without its grey (index 7), which disappears on grey-scale images.
PALETTE: tuple[tuple[float, float, float], ...] = tuple(
    tuple(c) for i, c in enumerate(colormaps["tab10"].colors) if i != 7)
SUMMARY_COLUMNS = ["t_start", "t_end", "n_frames", "parent_track_id", "root", "n_children"]
LAYOUT_COLUMNS = ["parent_track_id", "t_start", "t_end", "n_frames", "n_children", "depth", "x"]


# ---------------------------------------------------------------------------------------------
# Lineage structure
# ---------------------------------------------------------------------------------------------

def _check_columns(tracks: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in tracks.columns]
    if missing:
        raise ValueError(f"tracks table lacks column(s) {missing}; has {list(tracks.columns)}")


def _sanitised_parents(parent: dict[int, int]) -> dict[int, int]:
    """Parents with missing, self and cyclic references cut (those tracks become roots)."""
    parent = {k: (p if p in parent and p != k else -1) for k, p in parent.items()}
    done: set[int] = set()
    for start in parent:
        path: list[int] = []
        on_path: set[int] = set()
        node = start
        while node != -1 and node not in done and node not in on_path:
            path.append(node)
            on_path.add(node)
            node = parent[node]
        if node in on_path:  # a cycle: cut it at its smallest id
            cycle = path[path.index(node):]
            parent[min(cycle)] = -1
        done.update(path)
    return parent


def track_summary(tracks: pd.DataFrame) -> pd.DataFrame:
    """One row per track (index ``track_id``): first/last frame, rows, parent, lineage root, children.

    ``parent_track_id`` is the first row's value, set to -1 where the parent is not in the table
    (or is the track itself, or closes a cycle); ``root`` is the lineage's root track.
    """
    if len(tracks) == 0:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in SUMMARY_COLUMNS},
                            index=pd.Index([], dtype="int64", name="track_id"))
    _check_columns(tracks)
    ordered = tracks.sort_values(["track_id", "t"], kind="stable")
    groups = ordered.groupby(ordered["track_id"].astype("int64"), sort=True)
    info = pd.DataFrame({
        "t_start": groups["t"].min().astype("int64"),
        "t_end": groups["t"].max().astype("int64"),
        "n_frames": groups.size().astype("int64"),
    })
    raw = {int(k): int(p) for k, p in groups["parent_track_id"].first().items()}
    parent = _sanitised_parents(raw)
    root: dict[int, int] = {}
    for k in parent:
        path = []
        node = k
        while node not in root and parent[node] != -1:
            path.append(node)
            node = parent[node]
        r = root.get(node, node)
        root[node] = r
        for p in path:
            root[p] = r
    info["parent_track_id"] = pd.Series(parent).reindex(info.index).astype("int64")
    info["root"] = pd.Series(root).reindex(info.index).astype("int64")
    counts = info["parent_track_id"][info["parent_track_id"] >= 0].value_counts()
    info["n_children"] = counts.reindex(info.index, fill_value=0).astype("int64")
    info.index.name = "track_id"
    return info[SUMMARY_COLUMNS]


def lineage_roots(tracks: pd.DataFrame) -> pd.Series:
    """Map track id -> id of the root track of its lineage."""
    return track_summary(tracks)["root"]


def largest_lineages(tracks: pd.DataFrame, n: int) -> list[int]:
    """Root ids of the ``n`` largest lineages by number of cell-frames (rows), largest first.

    Ties go to the smaller root id.
    """
    info = track_summary(tracks)
    sizes = info.groupby("root")["n_frames"].sum()
    order = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))
    return [int(root) for root, _ in order[: max(n, 0)]]


def lineage_colors(roots: list[int] | np.ndarray | pd.Index) -> dict[int, tuple[float, float, float]]:
    """A palette colour per lineage root, cycled in order of root id (stable across figures)."""
    ordered = sorted({int(r) for r in roots})
    return {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(ordered)}


def _children(info: pd.DataFrame) -> dict[int, list[int]]:
    kids = info[info["parent_track_id"] >= 0].sort_values(["t_start"], kind="stable")
    children: dict[int, list[int]] = {}
    # info is sorted by track id, and the sort above is stable: children by (t_start, id).
    for k, p in zip(kids.index, kids["parent_track_id"]):
        children.setdefault(int(p), []).append(int(k))
    return children


def _layout(info: pd.DataFrame, children: dict[int, list[int]], root: int) -> pd.DataFrame:
    order: list[int] = []  # depth-first pre-order; leaves in it run left to right
    depth = {root: 0}
    stack = [root]
    while stack:
        k = stack.pop()
        order.append(k)
        for c in reversed(children.get(k, [])):
            depth[c] = depth[k] + 1
            stack.append(c)
    x: dict[int, float] = {}
    next_leaf = 0
    for k in order:
        if not children.get(k):
            x[k] = float(next_leaf)
            next_leaf += 1
    for k in reversed(order):  # children before their parent
        kids = children.get(k)
        if kids:
            x[k] = (x[kids[0]] + x[kids[-1]]) / 2.0
    out = info.loc[order, ["parent_track_id", "t_start", "t_end", "n_frames", "n_children"]].copy()
    out["depth"] = [depth[k] for k in order]
    out["x"] = [x[k] for k in order]
    return out[LAYOUT_COLUMNS]


def lineage_tree_layout(tracks: pd.DataFrame, root: int) -> pd.DataFrame:
    """Tree layout of the lineage below track ``root`` (usually a root; any track gives its subtree).

    Returns one row per track, index ``track_id`` in depth-first order, columns ``parent_track_id``
    (sanitised, see :func:`track_summary`), ``t_start``, ``t_end``, ``n_frames``, ``n_children``,
    ``depth`` (0 at ``root``) and ``x``: leaves at 0, 1, 2, ..., every other track midway between its
    first and last child. Raises ``KeyError`` if ``root`` is not in the table.
    """
    info = track_summary(tracks)
    if int(root) not in info.index:
        raise KeyError(f"track {root} is not in the tracks table")
    return _layout(info, _children(info), int(root))


# ---------------------------------------------------------------------------------------------
# Shared figure helpers
# ---------------------------------------------------------------------------------------------

def _note(fig: Figure, text: str) -> None:
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, color="0.35", transform=ax.transAxes)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    rows = max(1, math.ceil(n / max_cols))
    return rows, max(1, math.ceil(n / rows))


# ---------------------------------------------------------------------------------------------
# Track montage
# ---------------------------------------------------------------------------------------------

def _projection(array, t: int, channel: int) -> np.ndarray:
    """Max projection over z of one channel of frame ``t``, read slab by slab (float32)."""
    depth = array.shape[2]
    slab = max(1, int(array.chunks[2]))
    out: np.ndarray | None = None
    for z0 in range(0, depth, slab):
        part = np.asarray(array[t, channel, z0:z0 + slab]).max(axis=0)
        out = part if out is None else np.maximum(out, part)
    return out.astype(np.float32)


def _downsample(image: np.ndarray, max_px: int = MAX_DISPLAY_PX) -> tuple[np.ndarray, int]:
    """Block-average so that neither side exceeds ``max_px``; returns (image, block size)."""
    step = max(1, math.ceil(max(image.shape) / max_px))
    if step == 1:
        return image, 1
    pad = [(0, (-s) % step) for s in image.shape]
    padded = np.pad(image, pad, mode="edge")
    h, w = padded.shape
    return padded.reshape(h // step, step, w // step, step).mean(axis=(1, 3)), step


def _stretch(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, (1.0, 99.8))
    return np.clip((image - low) / max(float(high - low), 1e-9), 0.0, 1.0)


@dataclass
class FrameOverlay:
    """What the montage draws on one frame's panel (positions in full-resolution pixels).

    Attributes:
        cells: rows of the tracks table at the frame, plus ``root`` and ``radius`` (NaN filled).
        trails: per cell, an (n, 2) array of (x, y) over the trail window, oldest first; trails
            follow a young track back into its ancestors.
        divisions: (m, 2) array of (x, y) fork points (mother's last position) of divisions whose
            daughters appeared within the window.
    """

    cells: pd.DataFrame
    trails: list[np.ndarray] = field(default_factory=list)
    divisions: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))


class _TrackIndex:
    """Per-track positions sorted by time, and the lineage summary, for fast window queries."""

    def __init__(self, tracks: pd.DataFrame) -> None:
        self.info = track_summary(tracks)
        ordered = tracks.sort_values(["track_id", "t"], kind="stable")
        self.t = ordered["t"].to_numpy("int64")
        self.xy = ordered[["x", "y"]].to_numpy("float64")
        ids = ordered["track_id"].to_numpy("int64")
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.array([], int)
        ends = np.r_[starts[1:], len(ids)]
        self.span = {int(ids[s]): (int(s), int(e)) for s, e in zip(starts, ends)}
        self.parent = self.info["parent_track_id"].to_dict()
        self.n_children = self.info["n_children"].to_dict()

    def positions(self, track: int, t_from: int, t_to: int) -> np.ndarray:
        """(x, y) rows of ``track`` with ``t_from <= t <= t_to``."""
        s, e = self.span[track]
        lo = s + np.searchsorted(self.t[s:e], t_from, side="left")
        hi = s + np.searchsorted(self.t[s:e], t_to, side="right")
        return self.xy[lo:hi]

    def trail(self, track: int, t: int, tail: int) -> np.ndarray:
        """Positions over ``[t - tail, t]``, continuing into ancestors before the track began."""
        first = t - tail
        pieces = [self.positions(track, first, t)]
        node = track
        while self.parent.get(node, -1) != -1 and int(self.info.at[node, "t_start"]) > first:
            start = int(self.info.at[node, "t_start"])
            node = int(self.parent[node])
            pieces.append(self.positions(node, first, start - 1))
        return np.concatenate(pieces[::-1]) if len(pieces) > 1 else pieces[0]


def _overlay(index: _TrackIndex, tracks: pd.DataFrame, t: int, tail: int) -> FrameOverlay:
    cells = tracks[tracks["t"] == t].copy()
    cells["root"] = index.info["root"].reindex(cells["track_id"].to_numpy()).to_numpy()
    radius = cells["radius"] if "radius" in cells.columns else pd.Series(np.nan, index=cells.index)
    cells["radius"] = radius.fillna(DEFAULT_RADIUS).astype(float)
    trails = [index.trail(int(k), t, tail) for k in cells["track_id"]]
    info = index.info
    young = info[(info["t_start"] > t - tail - (tail == 0)) & (info["t_start"] <= t)
                 & (info["parent_track_id"] >= 0)]
    mothers = sorted({int(p) for p in young["parent_track_id"] if index.n_children.get(int(p), 0) >= 2})
    forks = [index.xy[index.span[m][1] - 1] for m in mothers]
    divisions = np.array(forks, dtype=float).reshape(-1, 2)
    return FrameOverlay(cells=cells, trails=trails, divisions=divisions)


def frame_overlay(tracks: pd.DataFrame, t: int, tail: int = 5) -> FrameOverlay:
    """The circles, trails and division marks that :func:`plot_track_montage` draws at frame ``t``."""
    _check_columns(tracks)
    return _overlay(_TrackIndex(tracks), tracks, int(t), int(tail))


def _nice_length(target: float) -> float:
    if target <= 0:
        return 0.0
    power = 10 ** math.floor(math.log10(target))
    return max(m * power for m in (1, 2, 5) if m * power <= target)


def _scale_bar(ax: Axes, width_px: int, height_px: int, pixel_um: float) -> None:
    length_um = _nice_length(width_px * pixel_um / 5)
    if length_um <= 0:
        return
    length_px = length_um / pixel_um
    x1 = width_px - 0.5 - 0.05 * width_px
    y = height_px - 0.5 - 0.07 * height_px
    ax.plot([x1 - length_px, x1], [y, y], color="white", lw=2.5, solid_capstyle="butt")
    ax.text(x1 - length_px / 2, y - 0.02 * height_px, f"{length_um:g} µm", color="white", fontsize=7,
            ha="center", va="bottom")


def _draw_overlay(ax: Axes, overlay: FrameOverlay, colors: dict[int, tuple]) -> None:
    cells = overlay.cells
    if len(cells) == 0:
        return
    cell_colors = [colors[int(r)] for r in cells["root"]]
    lines = [(trail, c) for trail, c in zip(overlay.trails, cell_colors) if len(trail) > 1]
    if lines:
        ax.add_collection(LineCollection([t for t, _ in lines], colors=[c for _, c in lines],
                                         linewidths=1.3, alpha=0.9, capstyle="round", joinstyle="round",
                                         gid="trails"))
    circles = [Circle((x, y), r) for x, y, r in zip(cells["x"], cells["y"], cells["radius"])]
    ax.add_collection(PatchCollection(circles, facecolors="none", edgecolors=cell_colors, linewidths=1.2,
                                      gid="cells"))
    if len(overlay.divisions):
        ax.scatter(overlay.divisions[:, 0], overlay.divisions[:, 1], marker="*", s=90, c="white",
                   edgecolors="black", linewidths=0.5, zorder=5, gid="divisions")


def plot_track_montage(image_path: str | Path, tracks: pd.DataFrame, path: str | Path, *, frames: int = 6,
                       channel: int = 0, tail: int = 5, title: str = "") -> Figure:
    """Max projections of ``frames`` evenly spaced frames with cells, trails and divisions; PNG at ``path``.

    Cells are circles coloured by lineage, trails cover the previous ``tail`` frames, white stars
    mark divisions within that window. Returns the figure (already written).
    """
    array, meta = open_image(image_path)
    if not 0 <= channel < meta.shape[1]:
        raise ValueError(f"channel {channel} out of range for {meta.shape[1]} channel(s)")
    tail = max(int(tail), 0)
    n_t, height, width = meta.n_frames, meta.shape[3], meta.shape[4]
    shown = np.unique(np.linspace(0, n_t - 1, min(max(frames, 1), n_t)).round().astype(int)) if n_t else []
    empty = len(tracks) == 0
    if not empty:
        _check_columns(tracks)
        tracks = tracks.assign(t=tracks["t"].astype("int64"), track_id=tracks["track_id"].astype("int64"))
    index = _TrackIndex(tracks) if not empty else None
    colors = lineage_colors(index.info["root"]) if index is not None else {}

    rows, cols = _grid(len(shown))
    aspect = min(max(height / width, 0.25), 4.0)
    panel = 3.0
    fig = Figure(figsize=(panel * cols, panel * aspect * rows + (1.1 if not empty else 0.8)),
                 layout="constrained")
    dataset = Path(image_path).parent.name
    channel_name = meta.channel_names[channel] if channel < len(meta.channel_names) else f"ch{channel}"
    kind = "max projection over z" if meta.is_3d else "2D"
    if empty:
        summary = "no tracks in the table"
    else:
        info = index.info
        n_div = int((info["n_children"] >= 2).sum())
        summary = (f"{_plural(len(info), 'track')} in {_plural(info['root'].nunique(), 'lineage')}, "
                   f"{_plural(n_div, 'division')}; "
                   "colour = lineage")
    fig.suptitle(f"{title or f'{dataset}: tracks on {channel_name} ({kind})'}\n{summary}", fontsize=10)
    if not len(shown):
        _note(fig, "no frames in the image")
        save_png(fig, path, dpi=DPI)
        return fig

    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.set_axis_off()
    for ax, t in zip(axes.flat, shown):
        image, step = _downsample(_projection(array, int(t), channel))
        ax.imshow(_stretch(image), cmap="gray", vmin=0.0, vmax=1.0,
                  interpolation="nearest" if step == 1 else "antialiased",
                  extent=(-0.5, image.shape[1] * step - 0.5, image.shape[0] * step - 0.5, -0.5))
        n_cells = 0
        if index is not None:
            overlay = _overlay(index, tracks, int(t), tail)
            _draw_overlay(ax, overlay, colors)
            n_cells = len(overlay.cells)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        box = {"boxstyle": "round,pad=0.25", "fc": "black", "alpha": 0.55, "lw": 0}
        ax.text(0.03, 0.97, f"t = {t}", transform=ax.transAxes, ha="left", va="top", color="white",
                fontsize=9, bbox=box)
        if index is not None:
            ax.text(0.03, 0.03, f"{n_cells} cells", transform=ax.transAxes, ha="left", va="bottom",
                    color="white", fontsize=7, bbox=box)
    _scale_bar(axes.flat[len(shown) - 1], width, height, float(meta.voxel_size[2]))
    if not empty:
        when = f"in the last {tail} frames" if tail else "at this frame"
        handles = [
            Line2D([], [], ls="none", marker="o", mfc="none", mec="0.3", ms=7, label="cell (colour = lineage)"),
            Line2D([], [], color="0.3", lw=1.3, label=f"trail, last {tail} frames"),
            Line2D([], [], ls="none", marker="*", mfc="white", mec="black", ms=10, label=f"division {when}"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False, fontsize=8)
    save_png(fig, path, dpi=DPI)
    return fig


# ---------------------------------------------------------------------------------------------
# Lineage trees
# ---------------------------------------------------------------------------------------------

def _draw_tree(ax: Axes, layout: pd.DataFrame, color: tuple, last_frame: int) -> None:
    solid: list[list[tuple[float, float]]] = []
    dotted: list[list[tuple[float, float]]] = []
    x = layout["x"].to_dict()
    t_end = layout["t_end"].to_dict()
    for k, row in layout.iterrows():
        solid.append([(row.x, row.t_start), (row.x, row.t_end)])
        p = int(row.parent_track_id)
        if p in x:
            branch = t_end[p]
            if row.x != x[p]:
                solid.append([(x[p], branch), (row.x, branch)])
            stem = [(row.x, branch), (row.x, row.t_start)]
            (dotted if row.t_start - branch > 1 else solid).append(stem)
    ax.add_collection(LineCollection(solid, colors=[color], linewidths=2.0, capstyle="butt", gid="tracks"))
    if dotted:
        ax.add_collection(LineCollection(dotted, colors=[color], linewidths=1.4, linestyles=(0, (1, 2)),
                                         gid="gaps"))
    single = layout[layout["t_start"] == layout["t_end"]]
    if len(single):
        ax.scatter(single["x"], single["t_start"], s=10, color=color, zorder=3)
    forks = layout[layout["n_children"] >= 2]
    if len(forks):
        ax.scatter(forks["x"], forks["t_end"], s=22, color=color, edgecolors="white", linewidths=0.6,
                   zorder=4, gid="divisions")
    lost = layout[(layout["n_children"] == 0) & (layout["t_end"] < last_frame)]
    if len(lost):
        ax.scatter(lost["x"], lost["t_end"], s=18, marker="x", color="0.25", linewidths=1.0, zorder=4,
                   gid="ends")
    n_leaves = int((layout["n_children"] == 0).sum())
    if len(layout) <= 80:
        size = 7 if n_leaves <= 8 else (6 if n_leaves <= 16 else 5)
        for k, row in layout.iterrows():
            ax.annotate(str(k), (row.x, row.t_start), xytext=(2.5, -1.5), textcoords="offset points",
                        ha="left", va="top", fontsize=size, color="0.2")
    ax.set_xlim(-0.7, max(n_leaves - 1, 0) + 0.9)


def plot_lineage_trees(tracks: pd.DataFrame, path: str | Path, *, n: int = 4, title: str = "") -> Figure:
    """The ``n`` largest lineages (by cell-frames) as lineage trees, one panel each; PNG at ``path``.

    Returns the figure (already written).
    """
    info = track_summary(tracks)
    if len(info) == 0 or n <= 0:
        fig = Figure(figsize=(5.0, 2.5), layout="constrained")
        fig.suptitle(title or "Lineage trees", fontsize=10)
        _note(fig, "no tracks" if len(info) == 0 else "no lineages requested")
        save_png(fig, path, dpi=DPI)
        return fig
    sizes = info.groupby("root")["n_frames"].sum()
    roots = sorted(sizes.index, key=lambda r: (-sizes[r], r))[:n]
    colors = lineage_colors(info["root"])
    children = _children(info)
    layouts = [_layout(info, children, int(r)) for r in roots]
    leaves = max(int((lay["n_children"] == 0).sum()) for lay in layouts)
    panel_w = min(max(0.32 * leaves + 1.0, 2.6), 8.0)
    rows, cols = _grid(len(roots), max_cols=max(1, min(4, int(MAX_FIGURE_WIDTH // panel_w))))
    fig = Figure(figsize=(panel_w * cols, 3.8 * rows + 1.0), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for ax in axes.flat[len(roots):]:
        ax.set_axis_off()
    t_min, t_max = int(info["t_start"].min()), int(info["t_end"].max())
    for i, (ax, root, layout) in enumerate(zip(axes.flat, roots, layouts)):
        _draw_tree(ax, layout, colors[int(root)], t_max)
        n_div = int((layout["n_children"] >= 2).sum())
        ax.set_title(f"lineage {root}: {_plural(len(layout), 'track')}, {_plural(n_div, 'division')}\n"
                     f"{int(sizes[root])} cell-frames", fontsize=8.5)
        ax.set_xticks([])
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
        ax.grid(axis="y", color="0.9", lw=0.6)
        ax.set_axisbelow(True)
        ax.tick_params(labelsize=7)
        if i % cols == 0:
            ax.set_ylabel("frame", fontsize=8)
    pad = max(0.5, 0.02 * (t_max - t_min))
    axes.flat[0].set_ylim(t_max + pad, t_min - pad)  # shared: time runs downwards in every panel
    shown = f"{len(roots)} largest of {info['root'].nunique()} lineages" if len(roots) < sizes.size \
        else f"all {len(roots)} lineages"
    fig.suptitle(f"{title or 'Lineage trees'}\n{shown}, by number of cell-frames", fontsize=10)
    handles = [
        Line2D([], [], color="0.3", lw=2.0, label="track (label = track id)"),
        Line2D([], [], ls="none", marker="o", mfc="0.3", mec="white", ms=6, label="division"),
        Line2D([], [], color="0.3", lw=1.4, ls=(0, (1, 2)), label="gap (missing frames)"),
        Line2D([], [], ls="none", marker="x", color="0.25", ms=6, label="track ends before last frame"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False, fontsize=7.5)
    save_png(fig, path, dpi=DPI)
    return fig
