"""The workflow end to end: snakemake in a temporary working directory, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from celltrails.ome_zarr_io import open_image
from conftest import REPO, blob_frames

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    return subprocess.run(command, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)


def register(workdir: Path, rows: list[str], config: str = "datasets: datasets.tsv\n") -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(config)
    header = "dataset\tpath\tlayout\tground_truth\tvoxel_size\ttime_interval\tchannels\tannotations\n"
    (workdir / "datasets.tsv").write_text(header + "".join(r + "\n" for r in rows))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """One run over the embedded synthetic recipe plus a user's TIFF folder with a points table."""
    workdir = tmp_path_factory.mktemp("run")
    frames = blob_frames(5, (32, 36), seed=3)
    (workdir / "raw").mkdir()
    for t, frame in enumerate(frames):
        tifffile.imwrite(workdir / "raw" / f"frame{t}.tif", frame)
    pd.DataFrame({"t": [0, 1], "z": [0.0, 0.0], "y": [10.0, 11.0], "x": [12.0, 12.5], "cell_id": [1, 1],
                  "parent_id": [0, 0]}).to_csv(workdir / "points.csv", index=False)
    register(workdir, [
        f"demo\t{REPO / 'config' / 'synthetic' / 'demo3d.yaml'}\tsynthetic\t\t\t\t\t",
        "mine\traw\ttiff-sequence\tpoints.csv\t1,0.3,0.3\t2.5\tnuclei\t",
    ])
    result = snakemake(workdir)
    assert result.returncode == 0, result.stdout[-4000:]
    return workdir, frames


def test_results_land_where_the_interface_says(finished_run):
    workdir, frames = finished_run
    for name in ("demo", "mine"):
        assert (workdir / "results" / name / "image.ome.zarr").is_dir()
        assert (workdir / "results" / name / "ground_truth.parquet").is_file()
        assert (workdir / "results" / name / "qc" / "overview.png").stat().st_size > 10_000
    array, meta = open_image(workdir / "results" / "mine" / "image.ome.zarr")
    np.testing.assert_array_equal(array[:, 0, 0], frames)
    assert meta.voxel_size == (1.0, 0.3, 0.3) and meta.time_interval == 2.5 and meta.channel_names == ("nuclei",)
    _, demo_meta = open_image(workdir / "results" / "demo" / "image.ome.zarr")
    assert demo_meta.is_3d and demo_meta.channel_names == ("nuclei", "state")
    truth = pd.read_parquet(workdir / "results" / "demo" / "ground_truth.parquet")
    assert {"t", "z", "y", "x", "cell_id", "parent_id", "radius", "state", "onset"} <= set(truth.columns)
    assert truth.t.max() == demo_meta.n_frames - 1
    for name in ("demo", "mine"):       # detection's adaptive centre threshold, with its figure
        results = workdir / "results" / name
        threshold = json.loads((results / "metrics" / "detection_threshold.json").read_text())
        assert threshold["source"] in ("calibrated", "valley") and threshold["threshold"] <= threshold["calibrated"]
        assert threshold["frames_without_signal"] == ""     # every frame shows its nuclei
        assert (pd.read_parquet(results / "detections.parquet")["score"] > threshold["threshold"]).all()
        candidates = pd.read_parquet(results / "candidates.parquet")["score"]  # default fraction 0.5
        floor, top = threshold["candidate_floor"], threshold["threshold"]
        assert floor == pytest.approx(top / 2) and candidates.between(floor, top, inclusive="right").all()
        assert (results / "qc" / "detection_threshold.png").stat().st_size > 5_000


def test_every_rule_writes_log_and_benchmark(finished_run):
    workdir, _ = finished_run
    for rule in ("synthesize", "convert", "ground_truth", "qc_overview"):
        assert (workdir / "benchmarks" / rule / "demo.tsv").is_file(), rule
        assert (workdir / "logs" / rule / "demo.log").is_file(), rule
    assert "ground-truth cells" in (workdir / "logs" / "ground_truth" / "mine.log").read_text()


def test_second_run_has_nothing_to_do(finished_run):
    workdir, _ = finished_run
    result = snakemake(workdir, "-n")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout


def test_bad_input_fails_naming_dataset_and_file_and_leaves_no_store(tmp_path):
    workdir = tmp_path / "bad"
    (workdir / "raw").mkdir(parents=True)
    for t, frame in enumerate(blob_frames(3, (20, 20))):
        tifffile.imwrite(workdir / "raw" / f"t{t:03d}.tif", frame)
    tifffile.imwrite(workdir / "raw" / "t002.tif", blob_frames(1, (20, 24))[0])
    register(workdir, ["broken\traw\tctc\t\t\t\t\t"])
    result = snakemake(workdir)
    assert result.returncode != 0
    log = (workdir / "logs" / "convert" / "broken.log").read_text()
    assert "dataset 'broken'" in log and "t002.tif" in log and "differs" in log
    assert not (workdir / "results" / "broken" / "image.ome.zarr").exists()
    leftovers = list((workdir / "results" / "broken").glob("*")) if (workdir / "results" / "broken").exists() else []
    assert leftovers == []


def test_a_series_of_noise_fails_before_linking_naming_dataset_and_image(tmp_path):
    """Camera noise only: the detector used to report "cells" in it, which became tracks."""
    workdir = tmp_path / "noise"
    (workdir / "raw").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for t in range(4):
        tifffile.imwrite(workdir / "raw" / f"t{t:03d}.tif", (100 + rng.normal(0, 3, (96, 96))).astype(np.uint16))
    register(workdir, ["noise\traw\tctc\t\t\t\t\t"])
    result = snakemake(workdir)
    assert result.returncode != 0
    log = (workdir / "logs" / "merge_detections" / "noise.log").read_text()
    assert "dataset 'noise', file 'results/noise/image.ome.zarr': no cell was detected in any frame" in log
    block_logs = "".join(p.read_text() for p in (workdir / "logs" / "detect_block" / "noise").glob("*.log"))
    assert "4 frame(s) show nothing brighter than their noise" in block_logs
    assert not (workdir / "results" / "noise" / "detections.parquet").exists()
    assert not (workdir / "results" / "noise" / "tracks.parquet").exists()


def test_unknown_config_key_stops_before_any_job(tmp_path):
    register(tmp_path, ["x\traw\tctc\t\t\t\t\t"], config="datasets: datasets.tsv\nconvert:\n  tile_xy: 64\n")
    result = snakemake(tmp_path, "-n")
    assert result.returncode != 0
    assert "convert: Additional properties are not allowed ('tile_xy' was unexpected)" in result.stdout


def test_reversed_augmentation_range_stops_before_any_job(tmp_path):
    register(tmp_path, [f"demo\t{REPO / 'config' / 'synthetic' / 'demo3d.yaml'}\tsynthetic\t\t\t\t\t"],
             config="datasets: datasets.tsv\ndetector:\n  training:\n    gamma: [2.0, 0.5]\n")
    result = snakemake(tmp_path, "-n")
    assert result.returncode != 0
    assert "config detector.training.gamma: [2.0, 0.5] is not a range [low, high]" in result.stdout


def test_invalid_sheet_stops_before_any_job(tmp_path):
    register(tmp_path, ["x\tnot_there\tctc\t\t\t\t\t"])
    result = snakemake(tmp_path, "-n")
    assert result.returncode != 0
    assert "row 2 (dataset 'x')" in result.stdout and "not_there' does not exist" in result.stdout
