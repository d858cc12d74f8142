"""DynaCLR benchmark: patch extraction and embedding throughput, peak memory vs series length, CPU vs CUDA.

Not a test. Images are synthetic: two channels (Gaussian nuclei, and a dimmer, wider "cytoplasm"
blob around each) on noise, written to OME-Zarr first (writing is not timed). The track table has
one row per cell per frame (``t, track_id, parent_track_id, z, y, x``): every cell keeps its
track id and moves by a small random step each frame; cells near the edges are kept (padded
patches). The encoders are randomly initialised ``ContrastiveEncoder`` s saved as checkpoints:
speed and memory do not depend on the weights.

- extraction: patches per second of ``extract_patches`` (reading the frames, statistics, cutting,
  writing the chunked store) for 2D (frames 1 x 512 x 512, 200 cells, ``PatchSpec(48, 1)``) and 3D
  (16 x 256 x 256, 100 cells, ``PatchSpec(48, 5)``), process CPU seconds and the load average;
- embedding: patches per second of ``embed_with_checkpoint`` on the CPU (all threads, batch 256)
  with the ``small`` preset on every extracted patch and the ``convnext_tiny`` preset on fewer
  (it is about 100x slower); the timing includes loading the checkpoint, reading and normalising
  the patches and writing the parquet table (a short warm-up forward is not timed); the loading,
  about 2 s for convnext_tiny, is also timed alone and ``patches_per_s_after_load`` leaves it out;
- CUDA (when present): the same with batch 256 on the GPU, and the largest absolute difference
  between CPU and CUDA features of the same patches; otherwise ``"cuda": null`` and the reason;
- memory: VmHWM of a fresh process running extraction + embedding (``small``) on 20 and on 200
  frames of 1 x 256 x 256 with 100 cells (``--quick``: 5 and 50), and their ratio: it must stay
  near 1 (the patch store is written chunk by chunk, embedding reads one batch at a time).

    python benchmarks/bench_dynaclr.py [--quick] [--label NAME]

``--quick`` (a smoke run, under 2 minutes on 2 cores) uses fewer frames and patches. Prints the
figures and stores them under ``runs[label]`` in benchmarks/results/dynaclr.json.
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
import pandas as pd
import torch
from results_store import store_run

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from celltrails.dynaclr.checkpoint import save_checkpoint
from celltrails.dynaclr.embed import embed_with_checkpoint
from celltrails.dynaclr.model import ContrastiveEncoder, encoder_config
from celltrails.dynaclr.normalization import Normalization
from celltrails.dynaclr.patches import PatchSpec, extract_patches
from celltrails.ome_zarr_io import create_image_store

RESULTS = REPO / "benchmarks" / "results" / "dynaclr.json"
CHANNELS = ["nuclei", "cytoplasm"]
PATCH_SIZE, CROP, BATCH = 48, 32, 256
CASES = {  # dims -> frame shape, voxel size (um), cells per frame, z window, frames (full, quick)
    2: {"shape": (1, 512, 512), "voxel": (1.0, 1.0, 1.0), "cells": 200, "z_window": 1, "frames": (20, 2)},
    3: {"shape": (16, 256, 256), "voxel": (2.0, 0.5, 0.5), "cells": 100, "z_window": 5, "frames": (20, 2)},
}
TINY_PATCHES = (512, 64)  # convnext_tiny on the CPU: patches (full, quick)
MEMORY_CASE = {"shape": (1, 256, 256), "voxel": (1.0, 1.0, 1.0), "cells": 100, "z_window": 1}
MEMORY_FRAMES = {False: (20, 200), True: (5, 50)}


# --- synthetic data -----------------------------------------------------------------------------

def cell_tracks(n_cells: int, n_frames: int, shape: tuple[int, int, int],
                rng: np.random.Generator) -> pd.DataFrame:
    """One row per cell per frame: constant track ids, a random walk of about 1 px per frame."""
    limits = np.array(shape, dtype=np.float64) - 1
    position = rng.uniform(0, 1, size=(n_cells, 3)) * limits
    step = np.array([0.3 if shape[0] > 1 else 0.0, 1.0, 1.0])
    rows = []
    for t in range(n_frames):
        if t:
            position = np.clip(position + rng.normal(0, 1, size=position.shape) * step, 0, limits)
        rows.append(pd.DataFrame({"t": t, "track_id": np.arange(1, n_cells + 1), "parent_track_id": -1,
                                  "z": position[:, 0], "y": position[:, 1], "x": position[:, 2]}))
    return pd.concat(rows, ignore_index=True)


def render_frame(centres: np.ndarray, shape: tuple[int, int, int], voxel,
                 rng: np.random.Generator) -> np.ndarray:
    """``(2, Z, Y, X)`` uint16: noise around 100, nuclei (sigma 3 um) and dimmer cytoplasm (sigma 6 um)."""
    frame = rng.normal(100.0, 5.0, size=(2, *shape)).astype(np.float32)
    for channel, sigma_um, peak in ((0, 3.0, 800.0), (1, 6.0, 300.0)):
        sigma = np.array([sigma_um / v for v in voxel])
        half = np.ceil(3 * sigma).astype(int)
        if shape[0] == 1:
            half[0] = 0
        for centre in centres:
            lo = np.maximum(np.round(centre).astype(int) - half, 0)
            hi = np.minimum(np.round(centre).astype(int) + half + 1, shape)
            grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
            d2 = sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, sigma))
            frame[(channel, *(slice(a, b) for a, b in zip(lo, hi)))] += peak * np.exp(-d2 / 2)
    return np.clip(frame, 0, 65535).astype(np.uint16)


def write_dataset(folder: Path, n_frames: int, shape: tuple[int, int, int], voxel,
                  n_cells: int) -> tuple[Path, Path]:
    """A two-channel image of ``n_frames`` frames and its track table (parquet); returns both paths."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    tracks = cell_tracks(n_cells, n_frames, shape, rng)
    image = folder / "image.ome.zarr"
    array = create_image_store(image, (n_frames, 2, *shape), np.uint16, voxel, 1.0, CHANNELS)
    for t, cells in tracks.groupby("t"):
        array[int(t)] = render_frame(cells[["z", "y", "x"]].to_numpy(), shape, voxel, rng)
    tracks.to_parquet(folder / "tracks.parquet", index=False)
    return image, folder / "tracks.parquet"


def write_checkpoint(path: Path, preset: str, z_window: int) -> Path:
    torch.manual_seed(0)
    model = ContrastiveEncoder(encoder_config(preset, in_channels=len(CHANNELS), z_window=z_window,
                                              stem_kernel_z=z_window)).eval()
    patch = {"size": PATCH_SIZE, "z_window": z_window, "crop": CROP}
    save_checkpoint(path, model, channels=CHANNELS, patch=patch, normalization=Normalization(), trained_on=[],
                    training={}, metrics={})
    return path


def n_parameters(preset: str, z_window: int) -> int:
    config = encoder_config(preset, in_channels=len(CHANNELS), z_window=z_window, stem_kernel_z=z_window)
    return sum(p.numel() for p in ContrastiveEncoder(config).parameters())


# --- timed runs ---------------------------------------------------------------------------------

def timed_extraction(image: Path, tracks: pd.DataFrame, out: Path, z_window: int) -> dict:
    start, cpu_start = time.perf_counter(), time.process_time()
    index = extract_patches(image, tracks, out, PatchSpec(PATCH_SIZE, z_window))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    store_bytes = sum(f.stat().st_size for f in (out / "patches.zarr").rglob("*") if f.is_file())
    return {"patches": len(index), "frames": int(index["t"].nunique()), "seconds": round(seconds, 3),
            "cpu_seconds": round(cpu_seconds, 3), "patches_per_s": round(len(index) / seconds, 1),
            "padded_share": round(float(index["padded"].mean()), 3),
            "store_mib": round(store_bytes / 2**20, 1), "load_average": os.getloadavg()[0]}


def warm_up(checkpoint: Path, z_window: int, device: str) -> float:
    """One forward pass outside the timing (first-call overheads: allocator, kernels, CUDA context).

    Returns the seconds ``load_checkpoint`` took (building the model, which initialises its weights,
    then loading the state dict): ``embed_with_checkpoint`` spends them again in its timing.
    """
    from celltrails.dynaclr.checkpoint import load_checkpoint

    start = time.perf_counter()
    model, _ = load_checkpoint(checkpoint, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    load_seconds = time.perf_counter() - start
    with torch.no_grad():
        model(torch.zeros(8, len(CHANNELS), z_window, CROP, CROP, device=device))
    if device == "cuda":
        torch.cuda.synchronize()
    return load_seconds


def timed_embedding(patches: Path, checkpoint: Path, out: Path, z_window: int, device: str,
                    threads: int | None) -> tuple[dict, np.ndarray]:
    """Throughput of one ``embed_with_checkpoint`` run, and its features (for CPU vs CUDA).

    ``patches_per_s`` is end to end; ``patches_per_s_after_load`` leaves out the checkpoint loading
    (``load_seconds``, timed separately), which dominates for convnext_tiny on few patches.
    """
    load_seconds = warm_up(checkpoint, z_window, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    embed_with_checkpoint(patches, checkpoint, out, device=device, batch_size=BATCH, threads=threads)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    table = pd.read_parquet(out)
    features = table[[c for c in table.columns if c.startswith("f_")]].to_numpy(np.float32)
    run = {"device": device, "threads": threads if device == "cpu" else None, "batch_size": BATCH,
           "patches": len(table), "features": features.shape[1], "seconds": round(seconds, 3),
           "cpu_seconds": round(cpu_seconds, 3), "patches_per_s": round(len(table) / seconds, 1),
           "load_seconds": round(load_seconds, 3),
           "patches_per_s_after_load": round(len(table) / max(seconds - load_seconds, 1e-6), 1),
           "load_average": os.getloadavg()[0]}
    if device == "cuda":
        run["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return run, features


def subset_patches(image: Path, tracks: pd.DataFrame, out: Path, n: int, z_window: int) -> Path:
    """A patch folder of the first ``n`` rows (by t, then track) for the slow encoder."""
    if not out.exists():
        subset = tracks.sort_values(["t", "track_id"]).head(n).reset_index(drop=True)
        extract_patches(image, subset, out, PatchSpec(PATCH_SIZE, z_window))
    return out


def throughput(tmp: Path, threads: int, quick: bool) -> tuple[dict, dict, dict]:
    """Extraction and CPU embedding per case; returns (extraction, embedding, paths for the CUDA section)."""
    extraction, embedding, inputs = {}, {}, {}
    for dims, case in CASES.items():
        key, zw = f"{dims}d", case["z_window"]
        frames = case["frames"][quick]
        image, tracks_path = write_dataset(tmp / key, frames, case["shape"], case["voxel"], case["cells"])
        tracks = pd.read_parquet(tracks_path)
        patches = tmp / key / "patches"
        extraction[key] = {"frame_shape": list(case["shape"]), "cells_per_frame": case["cells"],
                           "patch": [len(CHANNELS), zw, PATCH_SIZE, PATCH_SIZE],
                           **timed_extraction(image, tracks, patches, zw)}
        print(f"extraction {dims}D: {extraction[key]}", flush=True)
        tiny_patches = subset_patches(image, tracks, tmp / key / "patches_tiny", TINY_PATCHES[quick], zw)
        inputs[key] = {"z_window": zw, "features": {},
                       "patches": {"small": patches, "convnext_tiny": tiny_patches}}
        embedding[key] = {}
        for preset, folder in inputs[key]["patches"].items():
            checkpoint = write_checkpoint(tmp / key / f"{preset}.pt", preset, zw)
            inputs[key][preset] = checkpoint
            out = tmp / key / f"{preset}_cpu.parquet"
            run, features = timed_embedding(folder, checkpoint, out, zw, "cpu", threads)
            embedding[key][preset] = {"parameters": n_parameters(preset, zw), **run}
            inputs[key]["features"][preset] = features
            print(f"embedding {dims}D {preset} CPU: {embedding[key][preset]}", flush=True)
    return extraction, embedding, inputs


def cuda_section(tmp: Path, inputs: dict) -> dict:
    """CUDA throughput (fp32, batch 256) of both presets on the CPU's patches, and CPU vs CUDA features."""
    results = {"device_name": torch.cuda.get_device_name(0), "torch_cuda": torch.version.cuda,
               "tf32_conv": torch.backends.cudnn.allow_tf32,
               "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    for key, case in inputs.items():
        results[key] = {}
        for preset, folder in case["patches"].items():
            run, features = timed_embedding(folder, case[preset], tmp / key / f"{preset}_cuda.parquet",
                                            case["z_window"], "cuda", None)
            cpu = case["features"][preset]
            run["cpu_vs_cuda_max_abs_diff"] = float(np.abs(cpu - features).max())
            run["feature_max_abs"] = float(np.abs(cpu).max())
            results[key][preset] = run
            print(f"embedding {key.upper()} {preset} CUDA: {run}", flush=True)
    return results


# --- memory vs series length --------------------------------------------------------------------

def vm_hwm_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def memory_child(image: str, tracks: str, checkpoint: str, work: str, threads: int) -> None:
    """In a fresh process: extract patches and embed them on the CPU, print counts and VmHWM as JSON."""
    work_dir = Path(work)
    table = pd.read_parquet(tracks)
    start = time.perf_counter()
    spec = PatchSpec(PATCH_SIZE, MEMORY_CASE["z_window"])
    index = extract_patches(Path(image), table, work_dir / "patches", spec)
    extracted = time.perf_counter()
    hwm_extraction = vm_hwm_mib()
    embed_with_checkpoint(work_dir / "patches", Path(checkpoint), work_dir / "embeddings.parquet",
                          device="cpu", batch_size=BATCH, threads=threads)
    print(json.dumps({"frames": int(index["t"].nunique()), "patches": len(index),
                      "extraction_seconds": round(extracted - start, 2),
                      "embedding_seconds": round(time.perf_counter() - extracted, 2),
                      "vm_hwm_after_extraction_mib": round(hwm_extraction, 1),
                      "vm_hwm_mib": round(vm_hwm_mib(), 1)}))


def memory_vs_length(tmp: Path, threads: int, quick: bool) -> dict:
    case = MEMORY_CASE
    checkpoint = write_checkpoint(tmp / "memory_small.pt", "small", case["z_window"])
    rows = []
    for frames in MEMORY_FRAMES[quick]:
        folder = tmp / f"memory_{frames}"
        image, tracks = write_dataset(folder, frames, case["shape"], case["voxel"], case["cells"])
        start = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--child", str(image), str(tracks), str(checkpoint),
                              str(folder), str(threads)], check=False, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"memory child ({frames} frames) failed:\n{out.stderr}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row | {"seconds": round(time.perf_counter() - start, 1)})
    result = {"frame_shape": list(case["shape"]), "cells_per_frame": case["cells"], "preset": "small",
              "runs": rows, "growth_mib": round(rows[1]["vm_hwm_mib"] - rows[0]["vm_hwm_mib"], 1),
              "ratio": round(rows[1]["vm_hwm_mib"] / rows[0]["vm_hwm_mib"], 3)}
    print(f"memory {case['shape']}: {result}", flush=True)
    return result


# --- summary ------------------------------------------------------------------------------------

def summary(result: dict) -> str:
    lines = ["", (f"DynaCLR benchmark ({'quick' if result['quick'] else 'full'}; "
                  f"{result['machine']['cpu_threads']} CPU threads, load average at start "
                  f"{result['machine']['load_average_start']:.2f})")]
    for key, run in result["extraction"].items():
        lines.append(f"  extraction {key}: frames {run['frame_shape']} x {run['frames']}, "
                     f"{run['patches']} patches {run['patch']} in {run['seconds']:.2f} s = "
                     f"{run['patches_per_s']:.0f} patches/s "
                     f"({run['padded_share']:.0%} padded, store {run['store_mib']} MiB)")
    for key, presets in result["embedding"].items():
        for preset, run in presets.items():
            lines.append(f"  embedding {key} {preset:13s} CPU : {run['patches']:5d} patches in "
                         f"{run['seconds']:.2f} s = {run['patches_per_s']:.0f} patches/s, "
                         f"{run['patches_per_s_after_load']:.0f} after loading ({run['load_seconds']:.2f} s) "
                         f"({run['parameters']:,} parameters)")
    if result["cuda"] is None:
        lines.append(f"  CUDA: not measured ({result['cuda_reason']})")
    else:
        for key, presets in result["cuda"].items():
            if not isinstance(presets, dict):
                continue
            for preset, run in presets.items():
                lines.append(f"  embedding {key} {preset:13s} CUDA: {run['patches']:5d} patches in "
                             f"{run['seconds']:.2f} s = {run['patches_per_s']:.0f} patches/s, "
                             f"{run['patches_per_s_after_load']:.0f} after loading, "
                             f"max |CPU - CUDA| {run['cpu_vs_cuda_max_abs_diff']:.2e} "
                             f"(features up to {run['feature_max_abs']:.2f})")
    memory = result["memory"]
    for run in memory["runs"]:
        lines.append(f"  memory {memory['frame_shape']} x {run['frames']:3d} frames "
                     f"({run['patches']} patches): "
                     f"VmHWM {run['vm_hwm_mib']:.0f} MiB "
                     f"(after extraction {run['vm_hwm_after_extraction_mib']:.0f})")
    lines.append(f"  memory growth with 10x the frames: {memory['growth_mib']:+.1f} MiB "
                 f"(ratio {memory['ratio']:.3f})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer frames and patches (a smoke run)")
    parser.add_argument("--label", default=None, help="key of this run in the results file")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=5, metavar=("IMAGE", "TRACKS", "CHECKPOINT", "WORK", "THREADS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        memory_child(*args.child[:4], int(args.child[4]))
        return
    threads = os.cpu_count() or 1
    cuda = torch.cuda.is_available()
    label = args.label or (f"{torch.cuda.get_device_name(0)}-{threads}cpu" if cuda else f"cpu-{threads}cpu")
    result = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "cpu_threads": threads, "processor": platform.processor() or platform.machine(),
                          "load_average_start": os.getloadavg()[0]},
              "quick": args.quick, "patch": {"size": PATCH_SIZE, "crop": CROP, "channels": CHANNELS},
              "batch_size": BATCH}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result["extraction"], result["embedding"], inputs = throughput(Path(tmp), threads, args.quick)
        if cuda:
            result["cuda"] = cuda_section(Path(tmp), inputs)
        else:
            result["cuda"], result["cuda_reason"] = None, "torch.cuda.is_available() is False on this machine"
        result["memory"] = memory_vs_length(Path(tmp), threads, args.quick)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["machine"]["load_average_end"] = os.getloadavg()[0]
    print(summary(result))
    labels = store_run(args.out, label, result)
    print(f"wrote {args.out} (runs: {labels}; {result['total_seconds']} s)")


if __name__ == "__main__":
    main()
