"""Detection benchmark: throughput, where the time goes, peak memory vs series length, CPU vs CUDA.

Not a test. The network is a randomly initialised CellDetector (default 2D and 3D configurations):
speed and memory do not depend on the weights, but detections do. With random weights the centre
map is about 0.01 everywhere, so the runs use ``threshold=0.009``: every local maximum above it
becomes a detection, many more than real cells (a stress test of peak finding). Images are
synthetic Gaussian nuclei on noise, written to OME-Zarr first (writing is not timed).

- throughput: voxels of the frames detected per second (tiles overlap, so the network sees more:
  ``tile_voxels_per_frame_voxel``), process CPU seconds, the machine's load average, and the share of reading + normalising, the model (tile assembly, transfer, forward) and peak
  finding (max-filter, read-out, suppression);
- memory: VmHWM of a fresh process running detection on 20 and on 200 frames (must not grow);
- CUDA (when present): the same throughput with bf16 autocast and fp32, and agreement of CUDA with
  the CPU (detections matched within 1 px).

    python benchmarks/bench_detect.py [--quick] [--label NAME]

Prints the figures and stores them under ``runs[label]`` in benchmarks/results/detect.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from results_store import store_run

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from celltrails.detector.infer import detect_series, plan_tiles, size_multiples
from celltrails.detector.metrics import match_detections
from celltrails.detector.model import CellDetector, DetectorConfig
from celltrails.ome_zarr_io import create_image_store

RESULTS = REPO / "benchmarks" / "results" / "detect.json"
SETTINGS = {"channel": 0, "normalization": {"method": "percentile", "low": 1.0, "high": 99.8}}
THRESHOLD = 0.009
CASES = {  # dims -> (frame shape, voxel size, tile, overlap): 2 x 2 tiles per frame
    2: ((1, 1024, 1024), (1.0, 1.0, 1.0), (1, 544, 544), (0, 32, 32)),
    3: ((32, 384, 384), (2.0, 0.5, 0.5), (32, 208, 208), (0, 32, 32)),
}
CUDA_CASES = {2: ((1, 2048, 2048), (1, 512, 512), 8), 3: ((64, 512, 512), (64, 256, 256), 2)}  # shape, tile, batch
MEMORY_SHAPES = {2: (1, 128, 128), 3: (8, 64, 64)}


def nuclei_frame(shape: tuple[int, int, int], rng: np.random.Generator, voxel_size, spacing_um: float = 12.0,
                 sigma_um: float = 3.0) -> np.ndarray:
    """uint16 frame: noise around 100 plus Gaussian nuclei about ``spacing_um`` apart."""
    frame = rng.normal(100.0, 5.0, size=shape).astype(np.float32)
    extent = np.array(shape) * voxel_size
    n = max(1, int(np.prod(extent[1:]) * max(extent[0], 1.0) / spacing_um ** (3 if shape[0] > 1 else 2)))
    sigma = np.array([sigma_um / v for v in voxel_size])
    half = np.ceil(3 * sigma).astype(int)
    if shape[0] == 1:
        half[0] = 0
    for centre in rng.uniform(0, 1, size=(n, 3)) * (np.array(shape) - 1):
        lo = np.maximum(np.floor(centre).astype(int) - half, 0)
        hi = np.minimum(np.floor(centre).astype(int) + half + 1, shape)
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        d2 = sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, sigma))
        frame[tuple(slice(a, b) for a, b in zip(lo, hi))] += 800.0 * np.exp(-d2 / 2)
    return np.clip(frame, 0, 65535).astype(np.uint16)


def write_series(path: Path, n_frames: int, shape: tuple[int, int, int], voxel_size) -> Path:
    rng = np.random.default_rng(0)
    array = create_image_store(path, (n_frames, 1, *shape), np.uint16, voxel_size, 1.0, ("nuclei",))
    for t in range(n_frames):
        array[t, 0] = nuclei_frame(shape, rng, voxel_size)
    return path


def make_model(dims: int) -> CellDetector:
    torch.manual_seed(0)
    return CellDetector(DetectorConfig(spatial_dims=dims)).eval()


def timed_detection(path: Path, dims: int, frames: int, shape, tile, overlap, device: str, **options) -> dict:
    """Throughput, time shares and detection count of one run over ``frames`` frames."""
    model = make_model(dims)
    grid = plan_tiles(shape, tile, overlap, size_multiples(model))
    start, cpu_start = time.perf_counter(), time.process_time()
    found = detect_series(path, model, SETTINGS, t_stop=frames, tile=tile, overlap=overlap,
                          threshold=THRESHOLD, device=device, **options)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    timings = found.attrs["timings"]
    total = sum(timings.values())
    return {"device": device, "frame_shape": list(shape), "frames": frames, "tile": list(tile),
            "overlap": list(overlap), "tiles_per_frame": len(grid),
            "tile_voxels_per_frame_voxel": round(len(grid) * int(np.prod(grid.size)) / int(np.prod(shape)), 3),
            **options, "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
            "voxels_per_s": round(frames * int(np.prod(shape)) / seconds),
            "share": {k: round(v / total, 3) for k, v in timings.items()},
            "detections_per_frame": round(len(found) / frames, 1), "load_average": os.getloadavg()[0]}


def cpu_throughput(tmp: Path, threads: int, quick: bool) -> dict:
    results = {}
    for dims, (shape, voxel, tile, overlap) in CASES.items():
        frames = 2 if quick else 3
        path = write_series(tmp / f"cpu{dims}d.ome.zarr", frames, shape, voxel)
        results[f"{dims}d"] = timed_detection(path, dims, frames, shape, tile, overlap, "cpu",
                                              threads=threads, batch_size=4)
        print(f"CPU {dims}D {shape}: {results[f'{dims}d']}", flush=True)
    return results


def vm_hwm_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def memory_child(path: str, dims: int, frames: int, threads: int) -> None:
    """In a fresh process: detect ``frames`` frames on the CPU, print frames and VmHWM as JSON."""
    _, _, tile, overlap = CASES[dims]
    found = detect_series(Path(path), make_model(dims), SETTINGS, t_stop=frames, tile=tile, overlap=overlap,
                          threshold=THRESHOLD, device="cpu", threads=threads, batch_size=4)
    print(json.dumps({"frames": frames, "detections": len(found), "vm_hwm_mib": round(vm_hwm_mib(), 1)}))


def memory_vs_length(tmp: Path, threads: int, quick: bool) -> dict:
    results = {}
    counts = (5, 20) if quick else (20, 200)
    for dims, shape in MEMORY_SHAPES.items():
        voxel = CASES[dims][1]
        rows = []
        for frames in counts:
            path = write_series(tmp / f"mem{dims}d_{frames}.ome.zarr", frames, shape, voxel)
            start = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--child", str(path), str(dims), str(frames),
                                  str(threads)], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row | {"seconds": round(time.perf_counter() - start, 1)})
        results[f"{dims}d"] = {"frame_shape": list(shape), "runs": rows,
                               "growth_mib": round(rows[1]["vm_hwm_mib"] - rows[0]["vm_hwm_mib"], 1)}
        print(f"memory {dims}D {shape}: {results[f'{dims}d']}", flush=True)
    return results


def agreement(reference, other, voxel) -> dict:
    """How far a run's detections are from the reference run's (matched within 1 px)."""
    match = match_detections(other, reference, voxel_size=voxel, max_distance=1.0 * voxel[2])
    pairs = match["pairs"]
    exact = (reference.loc[pairs["gt"], ["z", "y", "x"]].to_numpy() == other.loc[pairs["pred"], ["z", "y", "x"]]
             .to_numpy()).all(axis=1)
    score = np.abs(reference.loc[pairs["gt"], "score"].to_numpy() - other.loc[pairs["pred"], "score"].to_numpy())
    return {"reference": len(reference), "other": len(other), "f1": round(match["f1"], 4),
            "exact_position": round(float(exact.mean()) if len(exact) else 1.0, 4),
            "max_score_diff": float(score.max()) if len(score) else 0.0}


def cuda_section(tmp: Path, quick: bool) -> dict:
    results = {"device_name": torch.cuda.get_device_name(0)}
    for dims, (shape, tile, batch) in CUDA_CASES.items():
        _, voxel, _, overlap = CASES[dims]
        frames = 2 if quick else 4
        path = write_series(tmp / f"cuda{dims}d.ome.zarr", frames, shape, voxel)
        for precision in ("bf16", "fp32"):
            torch.cuda.reset_peak_memory_stats()
            run = timed_detection(path, dims, frames, shape, tile, overlap, "cuda", precision=precision,
                                  batch_size=batch)
            run["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
            results[f"{dims}d_{precision}"] = run
            print(f"CUDA {dims}D {shape} {precision}: {run}", flush=True)
    for dims, (shape, voxel, tile, overlap) in CASES.items():
        path = tmp / f"cpu{dims}d.ome.zarr"
        common = {"t_stop": 2, "tile": tile, "overlap": overlap, "threshold": THRESHOLD, "batch_size": 4}
        cpu = detect_series(path, make_model(dims), SETTINGS, device="cpu", threads=os.cpu_count(), **common)
        for precision in ("fp32", "bf16"):
            cuda = detect_series(path, make_model(dims), SETTINGS, device="cuda", precision=precision, **common)
            results[f"{dims}d_cpu_vs_cuda_{precision}"] = agreement(cpu, cuda, voxel)
            print(f"CPU vs CUDA {precision} {dims}D: {results[f'{dims}d_cpu_vs_cuda_{precision}']}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer frames (a smoke run)")
    parser.add_argument("--label", default=None, help="key of this run in the results file")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=4, metavar=("IMAGE", "DIMS", "FRAMES", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        memory_child(args.child[0], int(args.child[1]), int(args.child[2]), int(args.child[3]))
        return
    threads = os.cpu_count() or 1
    label = args.label or (f"{torch.cuda.get_device_name(0)}-{threads}cpu" if torch.cuda.is_available()
                           else f"cpu-{threads}cpu")
    result = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "cpu_threads": threads, "processor": platform.processor() or platform.machine()},
              "threshold": THRESHOLD, "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        result["cpu"] = cpu_throughput(Path(tmp), threads, args.quick)
        result["memory"] = memory_vs_length(Path(tmp), threads, args.quick)
        if torch.cuda.is_available():
            result["cuda"] = cuda_section(Path(tmp), args.quick)
    labels = store_run(args.out, label, result)
    print(f"wrote {args.out} (runs: {labels})")


if __name__ == "__main__":
    main()
