"""Write a synthetic series: image, CTC tracking ground truth, per-cell table and parameters.

Frames are streamed: simulate a step, render it, write frame t, discard it, so memory does not
grow with the number of frames (the track table grows with the number of tracks, at most 65535
and counted by a dry run of the population first; table rows go to Parquet in row groups).
Everything is written under a temporary name and renamed at the end, so an interrupted run
leaves nothing that looks finished.

Layout of ``out_dir``::

    image.ome.zarr        t, c, z, y, x uint16; channels "nuclei", "state"
    GT/TRA/man_trackTTT.tif, GT/TRA/man_track.txt   markers: z-stacks in 3D, 2D images in 2D
    GT/SEG/man_segTTT.tif the same images as segmentation ground truth (the markers are whole
                          nuclei), so the CTC result's masks get a SEG score
    cells.parquet         one row per visible cell per frame (see CELL_SCHEMA)
    params.yaml           the resolved recipe
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from celltrails.atomic import atomic_path
from celltrails.ctc import write_label_frame, write_track_table
from celltrails.errors import InputError
from celltrails.logs import ProgressLog
from celltrails.ome_zarr_io import create_image_store
from celltrails.synthetic.params import SyntheticParams
from celltrails.synthetic.render import Renderer
from celltrails.synthetic.simulate import MAX_LABEL, FrameCells, count_tracks, simulate

CHANNELS = ("nuclei", "state")
# cell_id: CTC label of the row's track; parent_id: CTC parent label (-1 = none); z, y, x: nucleus
# centre in voxel indices (z = 0 in 2D); radius: equivalent radius in xy pixels; state: 0/1
# (1 from onset on); onset: frame of the cell's state switch, inherited by daughters (-1 = never).
CELL_SCHEMA = pa.schema([
    ("t", pa.int64()), ("cell_id", pa.int64()), ("parent_id", pa.int64()),
    ("z", pa.float64()), ("y", pa.float64()), ("x", pa.float64()),
    ("radius", pa.float64()), ("state", pa.int64()), ("onset", pa.int64()),
])
ROW_GROUP = 1 << 17


class _Tracks:
    """begin, end and parent of every ground-truth label, filled frame by frame."""

    def __init__(self, n_tracks: int):
        self.begin = np.full(n_tracks + 1, -1, np.int64)
        self.end = np.full(n_tracks + 1, -1, np.int64)
        self.parent = np.zeros(n_tracks + 1, np.int64)

    def add(self, t: int, labels: np.ndarray, parents: np.ndarray) -> None:
        new = self.begin[labels] < 0
        self.begin[labels[new]] = t
        self.parent[labels[new]] = np.maximum(parents[new], 0)
        self.end[labels] = t

    def table(self) -> pd.DataFrame:
        labels = np.flatnonzero(self.begin >= 0)
        return pd.DataFrame({"label": labels, "begin": self.begin[labels], "end": self.end[labels],
                             "parent": self.parent[labels]})


def _rows(cells: FrameCells, voxel: np.ndarray) -> dict[str, np.ndarray]:
    visible = cells.visible
    centre = cells.position[visible] / voxel
    return {
        "t": np.full(int(visible.sum()), cells.t), "cell_id": cells.label[visible],
        "parent_id": cells.parent[visible],
        "z": centre[:, 0], "y": centre[:, 1], "x": centre[:, 2],
        "radius": cells.radius[visible] / voxel[2], "state": cells.state[visible].astype(np.int64),
        "onset": cells.onset[visible],
    }


class _RowWriter:
    """Buffers table rows and writes them to Parquet in row groups."""

    def __init__(self, path: Path):
        self.writer = pq.ParquetWriter(path, CELL_SCHEMA)
        self.pending: list[dict[str, np.ndarray]] = []
        self.n_pending = 0

    def add(self, rows: dict[str, np.ndarray]) -> None:
        self.pending.append(rows)
        self.n_pending += len(rows["t"])
        if self.n_pending >= ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            columns = {name: np.concatenate([rows[name] for rows in self.pending])
                       for name in CELL_SCHEMA.names}
            self.writer.write_table(pa.Table.from_pydict(columns, schema=CELL_SCHEMA))
            self.pending, self.n_pending = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


def generate_series(params: SyntheticParams, out_dir: str | Path, logger: logging.Logger | None = None,
                    workers: int = 1) -> None:
    """Generate the series described by ``params`` into ``out_dir`` (replaced if it exists).

    ``workers`` threads blur and add noise in parallel; the output does not depend on it.
    Raises :class:`InputError` before writing anything when the series would have more tracks
    than CTC's uint16 markers can label.
    """
    n_tracks = count_tracks(params)
    if n_tracks > MAX_LABEL:
        raise InputError(f"this recipe makes {n_tracks} ground-truth tracks, more than the {MAX_LABEL} "
                         "that CTC markers (uint16) can label: shorten the series, or lower n_cells, "
                         "capacity or the division, fade, entry or motion rates")
    n_frames = params.n_frames
    voxel = np.array(params.voxel_size)
    renderer = Renderer(params, workers=workers)
    progress = ProgressLog(logger, n_frames, "synthetic frames") if logger else None
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        shape = (n_frames, len(CHANNELS), *params.shape)
        image = create_image_store(tmp / "image.ome.zarr", shape, np.uint16, voxel_size=params.voxel_size,
                                   time_interval=params.time_interval, channel_names=CHANNELS,
                                   name=Path(out_dir).name)
        tra, seg = tmp / "GT" / "TRA", tmp / "GT" / "SEG"
        tra.mkdir(parents=True)
        seg.mkdir()
        tracks = _Tracks(n_tracks)
        rows = _RowWriter(tmp / "cells.parquet")
        try:
            for cells in simulate(params):
                pixels, markers = renderer.render(cells)
                image[cells.t] = pixels
                markers = markers if params.is_3d else markers[0]  # CTC: 2D series have 2D masks
                write_label_frame(markers, tra, "man_track", cells.t, n_frames)
                write_label_frame(markers, seg, "man_seg", cells.t, n_frames)
                tracks.add(cells.t, cells.label[cells.visible], cells.parent[cells.visible])
                rows.add(_rows(cells, voxel))
                if progress:
                    progress.advance()
        finally:
            rows.close()
        write_track_table(tracks.table(), tra / "man_track.txt")
        (tmp / "params.yaml").write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    if logger:
        table = tracks.table()
        logger.info("synthetic series %s: %d frames, %d tracks, %d divisions", out_dir, n_frames, n_tracks,
                    int((table.parent.value_counts() == 2).sum()))
