"""Detection tables with known lineages, for the linking, lineage and evaluation tests.

A truth is a list of ``Track`` (label, parent label, one point per frame). From it we build the
linker's input (``detections``: centre, radius, division probability, an embedding per detection)
and the expected output (``truth_tracks``, in tracks.parquet columns). Embeddings are synthetic: a
random vector per track plus per-detection noise, daughters near their mother, so that embedding
distance separates cells the way a trained network's would (this tests the linker, not a network).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from celltrails.ctc import list_frames, read_track_table, write_track_table
from celltrails.ctc_export import write_ctc
from skimage.measure import regionprops_table

CTC_ROOT = Path(__file__).parents[1].parent / "shared" / "data" / "ctc"
EMB_DIM = 16


@dataclass
class Track:
    label: int
    points: list[tuple[int, float, float, float]]  # (t, y, x, radius), z = 0
    parent: int = 0


@dataclass
class Truth:
    tracks: list[Track]
    children: dict[int, list[int]] = field(init=False)

    def __post_init__(self) -> None:
        self.children = {}
        for track in self.tracks:
            if track.parent:
                self.children.setdefault(track.parent, []).append(track.label)


def embeddings_by_label(parents: dict[int, int], rng: np.random.Generator, daughter_spread: float = 0.5,
                        ) -> dict[int, np.ndarray]:
    """A base vector per track label (ordered parents first); daughters = mother + small offset."""
    base: dict[int, np.ndarray] = {}
    for label in sorted(parents):
        stack = [label]
        while parents.get(stack[-1], 0) and parents[stack[-1]] not in base:
            stack.append(parents[stack[-1]])
        for lab in reversed(stack):
            if lab in base:
                continue
            mother = parents.get(lab, 0)
            base[lab] = (base[mother] + daughter_spread * rng.standard_normal(EMB_DIM) if mother
                         else rng.standard_normal(EMB_DIM))
    return base


def division_probability(is_mother_end: np.ndarray, is_daughter_start: np.ndarray,
                         rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    """0.85 on a mother's last frame and a daughter's first frame, 0.05 elsewhere, plus noise."""
    base = np.where(is_mother_end | is_daughter_start, 0.85, 0.05)
    return np.clip(base + noise * rng.standard_normal(len(base)), 0.01, 0.99)


def detections_from_points(points: pd.DataFrame, parents: dict[int, int], seed: int = 0,
                           emb_noise: float = 0.2) -> pd.DataFrame:
    """Detections (index = cell id) from truth points with columns t, z, y, x, radius, label."""
    rng = np.random.default_rng(seed)
    points = points.sort_values(["t", "label"], ignore_index=True)
    mothers = set(parents.values()) - {0}
    last = points.groupby("label")["t"].transform("max") == points["t"]
    first = points.groupby("label")["t"].transform("min") == points["t"]
    is_mother_end = (last & points["label"].isin(mothers)).to_numpy()
    is_daughter_start = (first & points["label"].map(lambda lab: parents.get(lab, 0) > 0)).to_numpy()
    base = embeddings_by_label(parents, rng)
    noise = emb_noise * rng.standard_normal((len(points), EMB_DIM))
    emb = np.stack([base[label] for label in points["label"]]) + noise
    det = points[["t", "z", "y", "x"]].copy()
    det["score"] = 1.0
    det["radius"] = points["radius"].to_numpy(float)
    det["division_prob"] = division_probability(is_mother_end, is_daughter_start, rng)
    det[[f"emb_{k}" for k in range(EMB_DIM)]] = emb
    det["label"] = points["label"].to_numpy()
    return det


def truth_points(truth: Truth) -> pd.DataFrame:
    rows = [(t, 0.0, y, x, r, tr.label) for tr in truth.tracks for t, y, x, r in tr.points]
    return pd.DataFrame(rows, columns=["t", "z", "y", "x", "radius", "label"])


def make_detections(truth: Truth, seed: int = 0) -> pd.DataFrame:
    """Linker input for a hand-made truth (an extra ``label`` column records the truth)."""
    return detections_from_points(truth_points(truth), {tr.label: tr.parent for tr in truth.tracks}, seed)


def truth_tracks(detections: pd.DataFrame, parents: dict[int, int]) -> pd.DataFrame:
    """The expected tracks table: track_id = truth label."""
    out = pd.DataFrame({"t": detections["t"].to_numpy(), "cell_id": detections.index.to_numpy(),
                        "track_id": detections["label"].to_numpy(),
                        "parent_track_id": [parents.get(label, 0) or -1 for label in detections["label"]],
                        **{c: detections[c].to_numpy() for c in ("z", "y", "x", "radius")}})
    return out.sort_values(["track_id", "t"], ignore_index=True)


def lineage_signature(tracks: pd.DataFrame) -> set[tuple[tuple[int, ...], tuple[int, ...] | None]]:
    """Tracks as (cell ids, parent's cell ids) — equal for two tables with the same lineage,
    whatever their track numbering."""
    cells = {k: tuple(sorted(g["cell_id"])) for k, g in tracks.groupby("track_id")}
    parent = tracks.drop_duplicates("track_id").set_index("track_id")["parent_track_id"]
    return {(cells[k], cells.get(parent[k])) for k in cells}


def write_gt_folder(tracks: pd.DataFrame, folder: Path, shape: tuple[int, int, int], n_frames: int) -> Path:
    """A CTC ``TRA`` folder (man_trackTTT.tif + man_track.txt) rendered from a tracks table."""
    write_ctc(tracks, folder, shape, n_frames)
    for path in folder.glob("mask*.tif"):
        path.rename(folder / path.name.replace("mask", "man_track"))
    (folder / "res_track.txt").rename(folder / "man_track.txt")
    return folder


def ctc_gt_points(tra_folder: Path, n_frames: int | None = None,
                  ) -> tuple[pd.DataFrame, dict[int, int], tuple]:
    """Truth points (t, z, y, x, radius = equivalent radius, label) from CTC TRA markers, the
    parent of each label, and the image shape (z, y, x)."""
    frames = list_frames(tra_folder, prefix="man_track")[:n_frames]
    rows = []
    for t, path in enumerate(frames):
        mask = tifffile.imread(path)
        props = pd.DataFrame(regionprops_table(mask, properties=("label", "centroid", "area")))
        rows.append(pd.DataFrame({"t": t, "z": 0.0, "y": props["centroid-0"], "x": props["centroid-1"],
                                  "radius": np.sqrt(props["area"] / np.pi), "label": props["label"]}))
    table = read_track_table(tra_folder / "man_track.txt")
    table = table[table["begin"] < len(frames)]
    known = set(table["label"])
    parents = {int(lab): int(p) if p in known else 0 for lab, p in zip(table["label"], table["parent"])}
    return pd.concat(rows, ignore_index=True), parents, (1, *mask.shape)


def ctc_detections(dataset: str = "Fluo-N2DH-SIM+", sequence: str = "01", n_frames: int | None = None,
                   seed: int = 0) -> tuple[pd.DataFrame, dict[int, int], tuple, Path]:
    """Detections built from a CTC sequence's GT markers (centroid, equivalent radius, division
    probability from the GT lineage with noise, synthetic identity-consistent embeddings)."""
    tra = CTC_ROOT / dataset / f"{sequence}_GT" / "TRA"
    points, parents, shape = ctc_gt_points(tra, n_frames)
    return detections_from_points(points, parents, seed), parents, shape, tra


def write_clipped_gt(tra: Path, folder: Path, n_frames: int) -> Path:
    """A copy of a CTC TRA folder limited to its first ``n_frames`` frames."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in list_frames(tra, prefix="man_track")[:n_frames]:
        (folder / path.name).symlink_to(path)
    table = read_track_table(tra / "man_track.txt")
    table = table[table["begin"] < n_frames].copy()
    table["end"] = table["end"].clip(upper=n_frames - 1)
    table.loc[~table["parent"].isin(table["label"]), "parent"] = 0
    write_track_table(table, folder / "man_track.txt")
    return folder
