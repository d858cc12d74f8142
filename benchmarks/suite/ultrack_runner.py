"""ultrack on the classical pipeline's foreground and contours, CBC solver; runs in its own venv.

ultrack (napari, torch, higra, mip, ...) lives in a separate virtual environment so it cannot
disturb the project's pinned packages (install: benchmarks/README.md), and this module runs under
that interpreter: it imports only numpy and ultrack. Sizes are multiples of the nucleus radius r,
as in ``suite.classical``; ``scale`` gives z its physical weight. ``n_workers=1`` everywhere
(faster on 2 cores: every worker re-imports torch and napari).

Stages::

    <venv>/bin/python -m suite.ultrack_runner track SEGMENTED DB --radius R --anisotropy A
    <venv>/bin/python -m suite.ultrack_runner export SEGMENTED DB RES --radius R --anisotropy A

``track`` builds the segmentation hierarchy, links candidates and solves (ultrack's ``track``);
``export`` writes the CTC result (``to_ctc``).
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import numpy as np

PARAMETERS = {"min_area_radius_r": 0.5, "max_area_radius_r": 2.0, "max_distance_r": 1.5,
              "foreground_threshold": 0.5, "solver": "CBC", "n_workers": 1}


def _volume(radius: float, anisotropy: float, planar: bool) -> int:
    """Pixels (2D) or voxels (3D) of a nucleus of ``radius`` xy pixels."""
    return int(math.pi * radius**2 if planar else 4 / 3 * math.pi * radius**3 / anisotropy)


def config(db_dir: Path, radius: float, anisotropy: float, planar: bool):
    """ultrack's MainConfig for this benchmark (sizes from the nucleus radius)."""
    from ultrack import MainConfig

    cfg = MainConfig()
    cfg.data_config.working_dir = str(db_dir)
    cfg.data_config.n_workers = PARAMETERS["n_workers"]
    seg = cfg.segmentation_config
    seg.min_area = _volume(PARAMETERS["min_area_radius_r"] * radius, anisotropy, planar)
    seg.max_area = _volume(PARAMETERS["max_area_radius_r"] * radius, anisotropy, planar)
    seg.threshold = PARAMETERS["foreground_threshold"]
    seg.n_workers = PARAMETERS["n_workers"]
    cfg.linking_config.max_distance = PARAMETERS["max_distance_r"] * radius
    cfg.linking_config.n_workers = PARAMETERS["n_workers"]
    cfg.tracking_config.solver_name = PARAMETERS["solver"]
    return cfg


def _planar(segmented: Path) -> bool:
    return np.load(segmented / "foreground.npy", mmap_mode="r").shape[1] == 1


def track(segmented: Path, db_dir: Path, radius: float, anisotropy: float) -> None:
    """Run ultrack's segmentation hierarchy, linking and CBC solve; state lands in ``db_dir``."""
    from ultrack import track as ultrack_track

    planar = _planar(segmented)
    foreground = np.load(segmented / "foreground.npy", mmap_mode="r")
    contours = np.load(segmented / "contours.npy", mmap_mode="r").astype(np.float32)
    if planar:
        foreground, contours = foreground[:, 0], contours[:, 0]
    if db_dir.exists():
        shutil.rmtree(db_dir)
    db_dir.mkdir(parents=True)
    scale = None if planar else (anisotropy, 1.0, 1.0)
    ultrack_track(config(db_dir, radius, anisotropy, planar), foreground=np.asarray(foreground),
                  contours=contours, scale=scale, overwrite=True)


def export(segmented: Path, db_dir: Path, res: Path, radius: float, anisotropy: float) -> None:
    """Write the solved tracks as a CTC result folder."""
    from ultrack import to_ctc

    to_ctc(Path(res), config(db_dir, radius, anisotropy, _planar(segmented)), overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    trk, exp = sub.add_parser("track"), sub.add_parser("export")
    for p in (trk, exp):
        p.add_argument("segmented", type=Path, help="suite.classical segment output folder")
        p.add_argument("db", type=Path, help="ultrack working directory (its database)")
    exp.add_argument("res", type=Path)
    for p in (trk, exp):
        p.add_argument("--radius", type=float, required=True, help="nucleus radius, xy pixels")
        p.add_argument("--anisotropy", type=float, default=1.0, help="z voxel size / xy voxel size")
    args = parser.parse_args()
    if args.stage == "track":
        track(args.segmented, args.db, args.radius, args.anisotropy)
    else:
        export(args.segmented, args.db, args.res, args.radius, args.anisotropy)


if __name__ == "__main__":
    main()
