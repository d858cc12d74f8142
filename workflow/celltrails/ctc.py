"""Cell Tracking Challenge (CTC) files: frame folders, label masks and track tables.

Layout (celltrackingchallenge.net): ``NN/tTTT.tif`` raw frames, ``NN_GT/TRA/man_trackTTT.tif``
markers with ``man_track.txt``, and results as ``maskTTT.tif`` with ``res_track.txt``. A track
table has one line ``L B E P`` per track: label, first frame, last frame, parent label (0 = none).
A label must be present in every frame from B to E and nowhere else.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from celltrails.errors import InputError

TRACK_COLUMNS = ["label", "begin", "end", "parent"]
_FRAME_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def frame_number(path: Path) -> int:
    """The last integer in a file name: ``t007.tif`` -> 7, ``img_c1_0012.tiff`` -> 12."""
    match = _FRAME_NUMBER.search(path.stem)
    if match is None:
        raise ValueError(f"no frame number in file name '{path.name}'")
    return int(match.group(1))


def list_frames(folder: str | Path, prefix: str = "t", dataset: str | None = None) -> list[Path]:
    """Frames ``{prefix}NNN.tif`` of a CTC folder, sorted by number; numbering must be 0..T-1."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("CTC folder not found", dataset=dataset, path=folder)
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.tiff?$")
    frames = sorted((p for p in folder.iterdir() if pattern.match(p.name)), key=frame_number)
    if not frames:
        raise InputError(f"no frames named {prefix}NNN.tif in the CTC folder", dataset=dataset, path=folder)
    numbers = [frame_number(p) for p in frames]
    expected = list(range(len(frames)))
    if numbers != expected:
        missing = sorted(set(expected) - set(numbers))
        raise InputError(
            f"CTC frames must be numbered 0..{len(frames) - 1} without gaps; "
            f"missing or out of range: {missing[:10] or numbers[-1]}",
            dataset=dataset, path=folder)
    return frames


def read_track_table(path: str | Path, dataset: str | None = None) -> pd.DataFrame:
    """Read ``man_track.txt`` / ``res_track.txt`` into columns label, begin, end, parent."""
    path = Path(path)
    if not path.is_file():
        raise InputError("track table not found", dataset=dataset, path=path)
    try:
        table = pd.read_csv(path, sep=r"\s+", header=None, names=TRACK_COLUMNS, dtype="int64")
    except (ValueError, pd.errors.ParserError) as err:
        raise InputError(f"not a CTC track table (expected 4 integers per line: L B E P): {err}",
                         dataset=dataset, path=path) from err
    bad = table[(table.label <= 0) | (table.begin > table.end) | (table.parent < 0)]
    if len(bad):
        raise InputError(f"invalid track lines (label > 0, begin <= end, parent >= 0 required): "
                         f"{bad.head(3).values.tolist()}", dataset=dataset, path=path)
    if table.label.duplicated().any():
        raise InputError(f"duplicate labels {table.label[table.label.duplicated()].tolist()[:5]}",
                         dataset=dataset, path=path)
    return table


def write_track_table(table: pd.DataFrame, path: str | Path) -> None:
    """Write a track table (columns label, begin, end, parent) as ``L B E P`` lines."""
    table = table[TRACK_COLUMNS].astype("int64").sort_values("label")
    Path(path).write_text("".join(f"{l} {b} {e} {p}\n" for l, b, e, p in table.itertuples(index=False)))


def mask_name(prefix: str, t: int, n_frames: int) -> str:
    """CTC file name of frame ``t``: three digits, or four (or more) for long series."""
    digits = max(3, len(str(max(n_frames - 1, 0))))
    return f"{prefix}{t:0{digits}d}.tif"


def write_label_frame(labels: np.ndarray, folder: str | Path, prefix: str, t: int, n_frames: int) -> Path:
    """Write one uint16 label image (2D, or 3D as a z-stack) in CTC naming."""
    if labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError("CTC masks are uint16: more than 65535 labels")
    path = Path(folder) / mask_name(prefix, t, n_frames)
    tifffile.imwrite(path, labels.astype(np.uint16, copy=False), compression="zlib")
    return path


def labels_per_frame(tra_folder: str | Path, prefix: str = "man_track") -> dict[int, set[int]]:
    """Labels present in each mask frame of a TRA/RES folder (reads every frame)."""
    present = {}
    for path in list_frames(tra_folder, prefix=prefix):
        present[frame_number(path)] = set(np.unique(tifffile.imread(path)).tolist()) - {0}
    return present


def check_track_consistency(tracks: pd.DataFrame, present: dict[int, set[int]]) -> list[str]:
    """Problems where masks and track table disagree (empty list when they agree).

    Each label must be present in exactly the frames begin..end; parents must exist and end
    before their children begin.
    """
    problems = []
    frames_of: dict[int, list[int]] = {}
    for t, labels in present.items():
        for label in labels:
            frames_of.setdefault(label, []).append(t)
    known = set(tracks.label)
    for label in sorted(set(frames_of) - known):
        problems.append(f"label {label} is in masks but not in the track table")
    ends = dict(zip(tracks.label, tracks.end))
    for label, begin, end, parent in tracks[TRACK_COLUMNS].itertuples(index=False):
        frames = sorted(frames_of.get(label, []))
        if frames != list(range(begin, end + 1)):
            problems.append(f"label {label}: table says frames {begin}..{end}, masks have "
                            f"{frames[:3]}..{frames[-3:] if frames else []}")
        if parent and parent not in known:
            problems.append(f"label {label}: parent {parent} is not a track")
        elif parent and ends[parent] >= begin:
            problems.append(f"label {label}: parent {parent} ends at {ends[parent]}, not before {begin}")
    return problems
