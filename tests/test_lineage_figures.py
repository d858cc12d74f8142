"""Lineage figures: tree layout, lineage bookkeeping, track montage and lineage-tree PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from celltrails.lineage import TRACK_COLUMNS
from celltrails.lineage_figures import (
    PALETTE,
    frame_overlay,
    largest_lineages,
    lineage_colors,
    lineage_roots,
    lineage_tree_layout,
    plot_lineage_trees,
    plot_track_montage,
    track_summary,
)
from celltrails.ome_zarr_io import create_image_store
from matplotlib.figure import Figure
from matplotlib.text import Text

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_FRAMES = 12
HEIGHT, WIDTH = 40, 48

# track id: (parent, first frame, last frame). Sizes in cell-frames: lineage 2 -> 25, lineage 7 -> 17,
# singleton 1 -> 12, orphan 11 (parent 99 is not in the table) -> 4; so size order != id order.
TRACKS = {
    1: (-1, 0, 11),                                  # singleton over the whole movie
    2: (-1, 0, 3), 3: (2, 4, 11), 4: (2, 4, 6),      # lineage 2: 2 -> 3, 4; 4 -> 5, 6
    5: (4, 7, 11), 6: (4, 7, 11),
    7: (-1, 0, 4), 8: (7, 5, 11), 9: (7, 5, 6),      # lineage 7: 7 -> 8, 9; 9 -(gap)-> 10
    10: (9, 9, 11),
    11: (99, 2, 5),                                  # its mother is missing: a root
}


def make_tracks(spec: dict[int, tuple[int, int, int]] = TRACKS) -> pd.DataFrame:
    """A tracks table in the workflow's format, cells drifting slowly inside a 40 x 48 image."""
    rows = []
    cell = 0
    for k, (parent, first, last) in spec.items():
        y0, x0 = 5 + (7 * k) % 28, 5 + (11 * k) % 36
        for t in range(first, last + 1):
            rows.append((t, cell, k, parent, 1.0, y0 + 0.4 * t, x0 + 0.3 * t, 3.0))
            cell += 1
    return pd.DataFrame(rows, columns=TRACK_COLUMNS)


def empty_tracks() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if i < 4 else "float64") for i, c in enumerate(TRACK_COLUMNS)})


def write_image(path: Path, depth: int, channels: int = 1, n_frames: int = N_FRAMES,
                size: tuple[int, int] = (HEIGHT, WIDTH)) -> Path:
    rng = np.random.default_rng(0)
    array = create_image_store(path, shape=(n_frames, channels, depth, *size), dtype="uint16",
                               voxel_size=(1, 1, 1), time_interval=1,
                               channel_names=[f"ch{i}" for i in range(channels)])
    for t in range(n_frames):
        array[t] = rng.integers(100, 4000, size=(channels, depth, *size), dtype=np.uint16)
    return path


def texts(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def assert_png_only(folder: Path, name: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == [name]  # no hidden temporaries left behind
    assert (folder / name).read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def tracks() -> pd.DataFrame:
    return make_tracks()


# --- lineage bookkeeping and layout -----------------------------------------------------------

def test_summary_roots_children_and_missing_parent(tracks):
    info = track_summary(tracks)
    assert list(info.index) == sorted(TRACKS)
    roots = lineage_roots(tracks).to_dict()
    assert roots == {1: 1, 2: 2, 3: 2, 4: 2, 5: 2, 6: 2, 7: 7, 8: 7, 9: 7, 10: 7, 11: 11}
    assert info.at[11, "parent_track_id"] == -1  # parent 99 is not in the table
    assert info["n_children"].to_dict() == {1: 0, 2: 2, 3: 0, 4: 2, 5: 0, 6: 0, 7: 2, 8: 0, 9: 1,
                                            10: 0, 11: 0}
    assert (info.at[4, "t_start"], info.at[4, "t_end"], info.at[4, "n_frames"]) == (4, 6, 3)


def test_self_parent_and_cycles_become_roots():
    spec = {1: (1, 0, 3), 2: (3, 0, 2), 3: (2, 3, 5), 4: (3, 6, 7)}  # 1 -> itself; 2 <-> 3 a cycle
    info = track_summary(make_tracks(spec))
    assert info.at[1, "root"] == 1 and info.at[1, "parent_track_id"] == -1
    assert info.at[2, "parent_track_id"] == -1  # the cycle is cut at its smallest id
    assert info.loc[[2, 3, 4], "root"].tolist() == [2, 2, 2]
    layout = lineage_tree_layout(make_tracks(spec), 2)
    assert list(layout.index) == [2, 3, 4]


def test_layout_of_a_two_level_tree(tracks):
    layout = lineage_tree_layout(tracks, 2)
    assert list(layout.index) == [2, 3, 4, 5, 6]  # depth first, children by first frame then id
    assert layout["x"].to_dict() == {2: 0.75, 3: 0.0, 4: 1.5, 5: 1.0, 6: 2.0}
    assert layout["depth"].to_dict() == {2: 0, 3: 1, 4: 1, 5: 2, 6: 2}


@pytest.mark.parametrize("root", [1, 2, 7, 11])
def test_layout_invariants(tracks, root):
    layout = lineage_tree_layout(tracks, root)
    leaves = layout[layout["n_children"] == 0]
    assert sorted(leaves["x"]) == list(range(len(leaves)))  # distinct, evenly spaced
    for k, row in layout.iterrows():
        kids = layout[layout["parent_track_id"] == k]
        assert len(kids) == row.n_children
        if len(kids):
            assert (kids["t_start"] > row.t_end).all()  # daughters start after the mother ends
            assert kids["x"].min() <= row.x <= kids["x"].max()
            assert row.x == pytest.approx((kids["x"].min() + kids["x"].max()) / 2)


def test_layout_gap_and_singletons(tracks):
    layout = lineage_tree_layout(tracks, 7)
    assert layout.at[10, "x"] == layout.at[9, "x"]  # a continuation after a gap stays in line
    assert layout.at[10, "t_start"] - layout.at[9, "t_end"] == 3
    for root in (1, 11):
        single = lineage_tree_layout(tracks, root)
        assert list(single.index) == [root] and single.at[root, "x"] == 0.0


def test_layout_subtree_and_unknown_root(tracks):
    assert list(lineage_tree_layout(tracks, 4).index) == [4, 5, 6]
    with pytest.raises(KeyError):
        lineage_tree_layout(tracks, 123)


def test_largest_lineages_by_cell_frames(tracks):
    assert largest_lineages(tracks, 4) == [2, 7, 1, 11]
    assert largest_lineages(tracks, 2) == [2, 7]
    assert largest_lineages(tracks, 10) == [2, 7, 1, 11]
    ties = make_tracks({5: (-1, 0, 3), 3: (-1, 0, 3), 9: (-1, 0, 4)})
    assert largest_lineages(ties, 3) == [9, 3, 5]  # equal sizes: smaller root id first
    assert largest_lineages(empty_tracks(), 3) == []


def test_lineage_colors_cycle_in_root_order():
    roots = list(range(100, 100 + len(PALETTE) + 2))
    colors = lineage_colors(roots[::-1])
    assert colors[roots[0]] == PALETTE[0] and colors[roots[1]] == PALETTE[1]
    assert colors[roots[len(PALETTE)]] == PALETTE[0]


# --- montage overlay ------------------------------------------------------------------------------

def test_overlay_trails_follow_ancestors_and_mark_divisions(tracks):
    overlay = frame_overlay(tracks, 8, tail=5)
    assert sorted(overlay.cells["track_id"]) == [1, 3, 5, 6, 8]
    assert set(overlay.cells["root"]) == {1, 2, 7}
    trail = dict(zip(overlay.cells["track_id"], overlay.trails))
    # track 5 began at 7: its trail runs through mother 4 (4..6) and grandmother 2 (3): frames 3..8
    assert len(trail[5]) == 6
    expected = tracks.set_index(["track_id", "t"]).loc[[(2, 3), (4, 4), (4, 5), (4, 6), (5, 7), (5, 8)],
                                                       ["x", "y"]].to_numpy()
    np.testing.assert_allclose(trail[5], expected)
    assert len(trail[1]) == 6 and len(trail[8]) == 6
    # daughters born in (3, 8]: 2 -> 3, 4 at 4; 7 -> 8, 9 at 5; 4 -> 5, 6 at 7. Forks at the mothers' ends
    forks = tracks.set_index(["track_id", "t"]).loc[[(2, 3), (4, 6), (7, 4)], ["x", "y"]].to_numpy()
    np.testing.assert_allclose(overlay.divisions, forks)


def test_overlay_gap_is_not_a_division(tracks):
    overlay = frame_overlay(tracks, 10, tail=5)
    trail = dict(zip(overlay.cells["track_id"], overlay.trails))
    assert len(trail[10]) == 4  # 9 at 5, 6 and 10 at 9, 10: the gap is bridged
    assert len(overlay.divisions) == 1  # only 4 -> 5, 6 (born at 7); 9 -> 10 is a continuation
    assert len(frame_overlay(tracks, 3, tail=5).cells) == 4


def test_overlay_tail_zero_marks_only_births_at_the_frame(tracks):
    assert len(frame_overlay(tracks, 7, tail=0).divisions) == 1
    assert len(frame_overlay(tracks, 8, tail=0).divisions) == 0
    assert all(len(t) == 1 for t in frame_overlay(tracks, 8, tail=0).trails)


# --- figures ----------------------------------------------------------------------------------------

def panels(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.images]


@pytest.mark.parametrize("depth", [3, 1], ids=["3d", "2d"])
def test_track_montage_png(tmp_path, tracks, depth):
    image = write_image(tmp_path / "image.ome.zarr", depth)
    out_dir = tmp_path / "qc"
    fig = plot_track_montage(image, tracks, out_dir / "montage.png", frames=4)
    assert_png_only(out_dir, "montage.png")
    shown = panels(fig)
    assert len(shown) == 4
    labels = texts(fig)
    for t in (0, 4, 7, 11):
        assert f"t = {t}" in labels
    assert "4 lineages" in labels and "3 divisions" in labels
    assert all(any(c.get_gid() == "cells" for c in ax.collections) for ax in shown)
    # t = 7: the divisions of 2 (daughters born at 4), 7 (at 5) and 4 (at 7) are within 5 frames
    stars = [c for c in shown[2].collections if c.get_gid() == "divisions"]
    assert len(stars) == 1 and len(stars[0].get_offsets()) == 3


def test_track_montage_other_channel_and_bad_channel(tmp_path, tracks):
    image = write_image(tmp_path / "image.ome.zarr", 2, channels=2, n_frames=3)
    fig = plot_track_montage(image, tracks, tmp_path / "m.png", frames=6, channel=1, title="custom")
    assert len(panels(fig)) == 3 and "custom" in texts(fig)
    with pytest.raises(ValueError, match="channel"):
        plot_track_montage(image, tracks, tmp_path / "bad.png", channel=2)
    assert not (tmp_path / "bad.png").exists()


def test_track_montage_downsamples_large_images(tmp_path):
    image = write_image(tmp_path / "big.ome.zarr", 1, n_frames=1, size=(600, 300))
    spec = make_tracks({1: (-1, 0, 0)})
    fig = plot_track_montage(image, spec, tmp_path / "big.png")
    (ax,) = panels(fig)
    assert max(ax.images[0].get_array().shape) <= 512
    assert ax.get_xlim() == (-0.5, 299.5) and ax.get_ylim() == (599.5, -0.5)  # full-resolution coordinates


def test_track_montage_empty_tracks(tmp_path):
    image = write_image(tmp_path / "image.ome.zarr", 1, n_frames=3)
    fig = plot_track_montage(image, empty_tracks(), tmp_path / "out" / "m.png")
    assert "no tracks" in texts(fig)
    assert len(panels(fig)) == 3
    assert_png_only(tmp_path / "out", "m.png")


def test_track_montage_missing_parent_only(tmp_path):
    image = write_image(tmp_path / "image.ome.zarr", 1, n_frames=6)
    orphans = make_tracks({11: (99, 2, 5), 12: (11, 0, 1)})  # 12's parent starts after it: still drawn
    fig = plot_track_montage(image, orphans, tmp_path / "m.png", frames=6)
    assert not any(c.get_gid() == "divisions" for ax in panels(fig) for c in ax.collections)


def test_lineage_trees_png(tmp_path, tracks):
    out_dir = tmp_path / "qc"
    fig = plot_lineage_trees(tracks, out_dir / "trees.png", n=3, title="demo")
    assert_png_only(out_dir, "trees.png")
    trees = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split(":")[0] for ax in trees] == ["lineage 2", "lineage 7", "lineage 1"]
    assert "5 tracks, 2 divisions" in trees[0].get_title() and "25 cell-frames" in trees[0].get_title()
    assert "1 track, 0 divisions" in trees[2].get_title()
    assert any(c.get_gid() == "gaps" for c in trees[1].collections)  # 9 -> 10 bridges missing frames
    assert not any(c.get_gid() == "gaps" for c in trees[0].collections)
    assert {t.get_text() for t in trees[0].texts} == {"2", "3", "4", "5", "6"}
    assert trees[0].get_ylim()[0] > trees[0].get_ylim()[1]  # time runs downwards
    assert "3 largest of 4 lineages" in texts(fig)


def test_lineage_trees_all_lineages_with_orphan(tmp_path, tracks):
    fig = plot_lineage_trees(tracks, tmp_path / "trees.png", n=10)
    titles = [ax.get_title().split(":")[0] for ax in fig.axes if ax.get_title()]
    assert titles == ["lineage 2", "lineage 7", "lineage 1", "lineage 11"]
    assert "all 4 lineages" in texts(fig)


def test_lineage_trees_empty(tmp_path):
    fig = plot_lineage_trees(empty_tracks(), tmp_path / "trees.png")
    assert "no tracks" in texts(fig)
    assert_png_only(tmp_path, "trees.png")
