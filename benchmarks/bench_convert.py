"""Benchmark: conversion to OME-Zarr, against a plain tifffile + zarr loop, and memory vs series length.

Two inputs, each converted by celltrails (dask, `convert.threads` workers) and by the plain loop
a user would write (`tifffile.imread` per frame, `zarr` array writes, same chunks):
- `Fluo-N2DH-SIM+/02` (CTC, 150 frames of 773 x 739 uint16), read from ../shared/data/ctc;
- a synthetic 3D series written as a folder of 3D TIFFs (`--frames`, default 200 frames).
Peak memory is measured in a fresh process per run (ru_maxrss), for 50 and for 200 frames of the
synthetic series: it must not grow with the number of frames.

    python benchmarks/bench_convert.py [--frames 200] [--threads 2] [--quick]

Prints a table and writes benchmarks/results/convert.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
CTC = REPO.parent / "shared" / "data" / "ctc"
RESULTS = REPO / "benchmarks" / "results"


def convert_celltrails(source_dir: Path, layout: str, out: Path, threads: int) -> None:
    from celltrails.convert import convert_to_ome_zarr
    from celltrails.sources import open_source

    convert_to_ome_zarr(open_source(source_dir, layout, "bench"), out, threads=threads)


def convert_plain_loop(source_dir: Path, out: Path) -> None:
    """What a user writes by hand: read each TIFF, assign it into a zarr array with the same chunks."""
    import tifffile
    import zarr
    from celltrails.ome_zarr_io import default_chunks

    files = sorted(p for p in source_dir.iterdir() if p.suffix == ".tif")
    first = tifffile.imread(files[0])
    frame = first.reshape((1,) * (4 - first.ndim) + first.shape)
    shape = (len(files), *frame.shape)
    array = zarr.open_array(str(out), mode="w", shape=shape, chunks=default_chunks(shape), dtype=first.dtype)
    for t, path in enumerate(files):
        data = tifffile.imread(path)
        array[t] = data.reshape(frame.shape)


def worker(args: argparse.Namespace) -> None:
    """One measured conversion in this process; prints seconds, megabytes and peak RSS as JSON."""
    source, out = Path(args.source), Path(args.out)
    started = time.perf_counter()
    if args.method == "celltrails":
        convert_celltrails(source, args.layout, out, args.threads)
    else:
        convert_plain_loop(source, out)
    seconds = time.perf_counter() - started
    megabytes = sum(p.stat().st_size for p in source.iterdir() if p.suffix == ".tif") / 1e6
    raw_mb = _raw_megabytes(source)
    print(json.dumps({"seconds": seconds, "tiff_mb": megabytes, "raw_mb": raw_mb, "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Unlike ru_maxrss, which Linux carries over
    across exec from the parent, VmHWM belongs to the new address space and measures only this run."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _raw_megabytes(source: Path) -> float:
    import tifffile

    files = [p for p in source.iterdir() if p.suffix == ".tif"]
    with tifffile.TiffFile(files[0]) as tif:
        series = tif.series[0]
        return len(files) * int(np.prod(series.shape)) * series.dtype.itemsize / 1e6


def measure(method: str, source: Path, layout: str, threads: int, workdir: Path) -> dict:
    out = workdir / f"{method}-{source.name}.zarr"
    command = [sys.executable, __file__, "--worker", "--method", method, "--source", str(source),
               "--layout", layout, "--out", str(out), "--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "workflow"))
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    shutil.rmtree(out, ignore_errors=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["mb_per_s"] = figures["raw_mb"] / figures["seconds"]
    return figures


def synthetic_tiff_folder(n_frames: int, workdir: Path) -> Path:
    """A synthetic 3D series from the generator, written as one 3D TIFF per frame."""
    import tifffile
    from celltrails.ome_zarr_io import open_image
    from celltrails.synthetic import generate_series, load_params

    recipe = workdir / "recipe.yaml"
    recipe.write_text(f"seed: 11\nn_frames: {n_frames}\nshape: [24, 256, 256]\nn_cells: 120\n"
                      "voxel_size: [2.0, 0.5, 0.5]\nnucleus_radius_mean: 3.0\n")
    generated = workdir / f"synthetic-{n_frames}"
    generate_series(load_params(recipe), generated)
    array, _ = open_image(generated / "image.ome.zarr")
    folder = workdir / f"tiffs-{n_frames}"
    folder.mkdir()
    for t in range(array.shape[0]):
        tifffile.imwrite(folder / f"t{t:03d}.tif", np.asarray(array[t, 0]))
    shutil.rmtree(generated)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="60 synthetic frames, 15 vs 60 for memory")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=("celltrails", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--layout", default="ctc", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    long_series = 60 if args.quick else args.frames
    short_series = 15 if args.quick else 50
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        inputs = []
        if (CTC / "Fluo-N2DH-SIM+" / "02").is_dir():
            inputs.append(("Fluo-N2DH-SIM+/02", CTC / "Fluo-N2DH-SIM+" / "02"))
        else:
            print(f"skipping Fluo-N2DH-SIM+/02: {CTC} not found")
        print(f"generating synthetic 3D series ({short_series} and {long_series} frames) ...", flush=True)
        inputs.append((f"synthetic 3D, {long_series} frames", synthetic_tiff_folder(long_series, workdir)))
        inputs.append((f"synthetic 3D, {short_series} frames", synthetic_tiff_folder(short_series, workdir)))
        for name, folder in inputs:
            for method in ("celltrails", "plain"):
                figures = measure(method, folder, "ctc", args.threads, workdir)
                rows.append({"input": name, "method": method, **figures})
                print(f"{name:32s} {method:10s} {figures['seconds']:7.2f} s  {figures['mb_per_s']:7.1f} MB/s  "
                      f"peak RSS {figures['peak_rss_mb']:7.1f} MB", flush=True)
    by = {(r["input"], r["method"]): r for r in rows}
    summary = {}
    for name, _ in inputs:
        summary[name] = {"speed_ratio_celltrails_over_plain":
                         by[(name, "celltrails")]["mb_per_s"] / by[(name, "plain")]["mb_per_s"]}
    long_rss = by[(f"synthetic 3D, {long_series} frames", "celltrails")]["peak_rss_mb"]
    short_rss = by[(f"synthetic 3D, {short_series} frames", "celltrails")]["peak_rss_mb"]
    summary["peak_rss_ratio_long_over_short"] = long_rss / short_rss
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()},
              "threads": args.threads, "rows": rows, "summary": summary}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("convert-quick.json" if args.quick else "convert.json")
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"peak memory, celltrails: {short_series} frames {short_rss:.0f} MB, {long_series} frames {long_rss:.0f} MB")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
