"""laptrack on celltrails' own detections: the linkers compared on identical input.

laptrack sees the detections' positions only (physical scale: z times the anisotropy), with
splitting on and gap closing off, the same generic cutoff as in the classical pipeline
(``suite.classical``, 1.5 nucleus radii). The result is drawn as CTC masks exactly as celltrails
draws its own (``suite.ctc_result``), so only the linking differs: celltrails
adds the detector's embeddings, sizes and division probabilities to the positions.

    python -m suite.laptrack_runner DETECTIONS IMAGE RES --radius R
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from celltrails.ome_zarr_io import read_image_meta

from suite.classical import PARAMETERS as CLASSICAL_PARAMETERS
from suite.classical import laptrack_tracks
from suite.ctc_result import write_like_celltrails

PARAMETERS = {"link_cutoff_r": CLASSICAL_PARAMETERS["link_cutoff_r"], "splitting": "on", "gap_closing": "off",
              "input": "detection positions only"}


def tracks_table(detections: pd.DataFrame, radius: float, anisotropy: float) -> pd.DataFrame:
    """celltrails tracks table (t, cell_id, track_id, parent_track_id, z, y, x, radius) of laptrack's
    linking of ``detections`` (cell_id = the detection's row index)."""
    points = pd.DataFrame({"t": detections["t"].to_numpy(), "z": detections["z"].to_numpy(float) * anisotropy,
                           "y": detections["y"].to_numpy(float), "x": detections["x"].to_numpy(float),
                           "label": detections.index.to_numpy()})
    linked = laptrack_tracks(points, PARAMETERS["link_cutoff_r"] * radius)
    cells = detections.loc[linked["label"].to_numpy()]
    return pd.DataFrame({"t": linked["t"].to_numpy(), "cell_id": linked["label"].to_numpy(),
                         "track_id": linked["track_id"].to_numpy(),
                         "parent_track_id": linked["parent_track_id"].to_numpy(),
                         **{c: cells[c].to_numpy() for c in ("z", "y", "x", "radius")}})


def run(detections_path: Path, image: Path, res: Path, radius: float) -> None:
    """Link ``detections_path`` with laptrack and write the CTC result ``res``."""
    meta = read_image_meta(image)
    detections = pd.read_parquet(detections_path)
    tracks = tracks_table(detections, radius, meta.voxel_size[0] / meta.voxel_size[2])
    write_like_celltrails(tracks, image, res)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("detections", type=Path, help="celltrails results/{dataset}/detections.parquet")
    parser.add_argument("image", type=Path, help="celltrails results/{dataset}/image.ome.zarr (shape, voxel size)")
    parser.add_argument("res", type=Path, help="CTC result folder to write")
    parser.add_argument("--radius", type=float, required=True, help="nucleus radius, xy pixels")
    args = parser.parse_args()
    run(args.detections, args.image, args.res, args.radius)


if __name__ == "__main__":
    main()
