"""Synthetic-generator benchmark: time per frame and peak memory of a large, dense 3D series.

Not a test. Generates the same 5,000-cell 3D recipe (24 x 512 x 512 voxels of 2 x 0.5 x 0.5 µm,
nuclei filling ~18 % of the volume) for a few frame counts, each in a fresh process so that its
peak RSS is its own. The marginal time per frame (difference between the runs) extrapolates the
time of a 500-frame series; a peak RSS that does not grow with the frame count shows that
frames are streamed.

Run from the repository root: ``python benchmarks/bench_synthetic.py [--workers N]``. Writes
``benchmarks/results/synthetic.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = {"seed": 1, "shape": [24, 512, 512], "voxel_size": [2.0, 0.5, 0.5], "n_cells": 5000, "margin": 10.0}
FRAME_COUNTS = (20, 60)
EXTRAPOLATE_TO = 500


def _run(n_frames: int, workers: int, queue: multiprocessing.Queue) -> None:
    from celltrails.synthetic import generate_series
    from celltrails.synthetic.params import params_from_mapping

    params = params_from_mapping({**RECIPE, "n_frames": n_frames}, source="bench_synthetic")
    folder = Path(tempfile.mkdtemp(prefix="bench_synthetic_"))
    try:
        start = time.perf_counter()
        generate_series(params, folder / "series", workers=workers)
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in (folder / "series").rglob("*") if f.is_file())
        import pandas as pd

        cells = pd.read_parquet(folder / "series" / "cells.parquet", columns=["t", "cell_id"])
        queue.put({
            "n_frames": n_frames, "seconds": round(seconds, 2),
            "seconds_per_frame": round(seconds / n_frames, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "output_mb": round(size / 2**20, 1),
            "visible_cells_first_frame": int((cells.t == 0).sum()),
            "visible_cells_last_frame": int((cells.t == n_frames - 1).sum()),
            "tracks": int(cells.cell_id.nunique()),
        })
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    runs = []
    for n_frames in FRAME_COUNTS:
        queue = context.Queue()
        process = context.Process(target=_run, args=(n_frames, args.workers, queue))
        process.start()
        result = queue.get()
        process.join()
        runs.append(result)
        print(f"{n_frames:4d} frames: {result['seconds']:7.1f} s, {result['seconds_per_frame']:.2f} s/frame, "
              f"peak RSS {result['peak_rss_mb']:.0f} MB, {result['visible_cells_first_frame']} visible cells "
              f"at t=0, output {result['output_mb']:.0f} MB")
    short, long = runs[0], runs[-1]
    marginal = (long["seconds"] - short["seconds"]) / (long["n_frames"] - short["n_frames"])
    extrapolated = short["seconds"] + marginal * (EXTRAPOLATE_TO - short["n_frames"])
    print(f"marginal {marginal:.2f} s/frame -> {EXTRAPOLATE_TO} frames in ~{extrapolated / 60:.1f} min")
    summary = {
        "recipe": RECIPE, "workers": args.workers, "runs": runs,
        "marginal_seconds_per_frame": round(marginal, 3),
        f"extrapolated_minutes_{EXTRAPOLATE_TO}_frames": round(extrapolated / 60, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
    }
    out = REPO / "benchmarks" / "results" / "synthetic.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
