"""The workflow end to end on its own tracks: train -> detect (blocks) -> link (blocks) -> lineage
-> CTC result -> metrics, then patches -> DynaCLR training -> embeddings -> embedding quality ->
annotations derived from the truth -> classifiers -> pseudo-time -> HTML report, on a tiny
synthetic 2D series in a temporary working directory.

A few hundred training steps make a modest detector: this checks the wiring, the file formats of the
interface and the CTC validity, not accuracy (the detector and linker tests measure that).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from celltrails.ctc import check_track_consistency, labels_per_frame, read_track_table
from celltrails.detector.checkpoint import load_checkpoint
from celltrails.detector.losses import LossWeights
from celltrails.linking import with_candidates
from celltrails.memory import detect_memory_mb, evaluate_memory_mb, lineage_memory_mb
from celltrails.ome_zarr_io import read_image_meta
from conftest import REPO
from ctc_metrics import validate_sequence
from test_workflow import register, snakemake

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("tracking")
    recipe = yaml.safe_load((REPO / "config" / "synthetic" / "demo2d.yaml").read_text())
    recipe.update(n_frames=7, shape=[1, 96, 96], n_cells=14)
    (workdir / "tiny2d.yaml").write_text(yaml.safe_dump(recipe))
    config = {"datasets": "datasets.tsv",
              "detector": {"train_on": ["tiny"], "frames_per_job": 3, "tile_yx": 64, "overlap_yx": 16, "threshold": 0.3,
                           "training": {"steps": 300, "batch_size": 4, "crop_yx": 64, "base_channels": 8,
                                        "depth": 2, "embedding_dim": 4, "learning_rate": 0.003,
                                        "gamma": [0.8, 1.25], "radius_weight": 0.5}},
              "link": {"pairs_per_job": 4},
              "dynaclr": {"train_on": ["tiny"], "patch": {"size": 24},
                          "encoder": {"dims": [8, 16], "depths": [1, 1], "projection_dim": 8},
                          "training": {"steps": 30, "batch_size": 8, "crop": 16, "validate_every": 10}},
              "analyze": {"annotation_fraction": 0.5, "n_splits": 2}}
    register(workdir, ["tiny\ttiny2d.yaml\tsynthetic\t\t\t\t\t"], config=yaml.safe_dump(config))
    result = snakemake(workdir)
    assert result.returncode == 0, result.stdout[-5000:]
    return workdir


def test_outputs_follow_the_interface(tracked):
    results = tracked / "results" / "tiny"
    detections = pd.read_parquet(results / "detections.parquet")
    assert list(detections.columns[:7]) == ["t", "z", "y", "x", "score", "radius", "division_prob"]
    assert [c for c in detections.columns if c.startswith("emb_")] == ["emb_0", "emb_1", "emb_2", "emb_3"]
    tracks = pd.read_parquet(results / "tracks.parquet")
    assert list(tracks.columns) == ["t", "cell_id", "track_id", "parent_track_id", "z", "y", "x", "radius"]
    detected = tracks[tracks.cell_id >= 0]            # the rest are cells filled into closed gaps
    cells = with_candidates(detections, pd.read_parquet(results / "candidates.parquet"))
    assert set(detected.cell_id) <= set(cells.index)
    assert cells["candidate"].loc[detected.cell_id].groupby(detected.track_id.to_numpy()).mean().max() < 1
    assert (tracks.loc[tracks.cell_id < 0, "cell_id"].sort_values(ascending=False).to_numpy()
            == -np.arange(1, (tracks.cell_id < 0).sum() + 1)).all()
    # Positions in tracks are those of the detections they came from.
    joined = detected.join(cells[["t", "y", "x"]], on="cell_id", rsuffix="_det")
    assert (joined.t == joined.t_det).all() and (joined.y == joined.y_det).all()
    napari = pd.read_csv(results / "napari_tracks.csv")
    assert list(napari.columns) == ["track_id", "t", "z", "y", "x", "parent_track_id"]
    assert (tracked / "results" / "models" / "detector" / "loss_curve.png").stat().st_size > 5_000
    training = load_checkpoint(tracked / "results" / "models" / "detector" / "detector.pt")[1]["training"]
    augmentation = training["augmentation"]
    assert training["loss_weights"]["radius"] == 0.5              # set in the config above
    defaults = dataclasses.asdict(LossWeights())
    assert {k: v for k, v in training["loss_weights"].items() if k != "radius"} == {
        k: v for k, v in defaults.items() if k != "radius"}, "the other weights keep their defaults"
    assert list(augmentation["gamma"]) == [0.8, 1.25]            # set in the config above
    assert list(augmentation["intensity_scale"]) == [0.75, 1.33]  # the schema's default
    threshold = json.loads((results / "metrics" / "detection_threshold.json").read_text())
    assert threshold["source"] == "config" and threshold["threshold"] == 0.3    # set in the config above
    assert (detections["score"] > 0.3).all()
    assert (results / "qc" / "detection_threshold.png").stat().st_size > 5_000


def test_ctc_result_is_valid(tracked):
    ctc = tracked / "results" / "tiny" / "ctc"
    assert validate_sequence(str(ctc))["Valid"] == 1
    tracks = read_track_table(ctc / "res_track.txt")
    assert check_track_consistency(tracks, labels_per_frame(ctc, "mask")) == []
    assert len(list(ctc.glob("mask*.tif"))) == 7


def test_metrics_are_written(tracked):
    metrics = tracked / "results" / "tiny" / "metrics"
    tracking = json.loads((metrics / "tracking.json").read_text())
    assert {"TRA", "DET", "LNK", "division_f1", "fp_nodes", "fn_nodes"} <= set(tracking)
    assert 0.0 <= tracking["DET"] <= 1.0
    assert 0.0 < tracking["SEG"] <= 1.0 and tracking["seg_frames"] == 7  # the generator's SEG annotations
    detection = json.loads((metrics / "detection.json").read_text())
    assert detection["tp"] + detection["fn"] == len(pd.read_parquet(tracked / "results" / "tiny" / "ground_truth.parquet"))


def test_blocks_are_temporary_and_rerun_has_nothing_to_do(tracked):
    assert not list((tracked / "results" / "tiny").glob("detect/*.parquet"))
    assert not list((tracked / "results" / "tiny").glob("link/*.parquet"))
    for rule in ("train_detector", "detect_block", "link_block", "lineage", "evaluate_tracking", "patches",
                 "train_dynaclr", "embed", "embedding_quality", "derive_annotations", "classify", "pseudotime",
                 "track_figures", "report_html"):
        assert (tracked / "benchmarks" / rule).exists(), rule
    result = snakemake(tracked, "-n")
    assert "Nothing to be done" in result.stdout


def test_image_sized_jobs_ask_for_the_memory_their_image_needs(tracked):
    """detect_block, lineage and evaluate_tracking request celltrails.memory's estimate for this
    image (a dry run prints each job's resources), not a fixed amount."""
    meta = read_image_meta(tracked / "results" / "tiny" / "image.ome.zarr")
    result = snakemake(tracked, "-n", "--forcerun", "detect_block", "lineage", "evaluate_tracking")
    assert result.returncode == 0, result.stdout[-3000:]
    requested = {}
    for block in result.stdout.split("\nrule ")[1:]:
        rule, found = block.split(":", 1)[0], re.search(r"mem_mb=(\d+)", block)
        if found:
            requested.setdefault(rule, set()).add(int(found.group(1)))
    assert requested["detect_block"] == {detect_memory_mb(meta)}
    assert requested["lineage"] == {lineage_memory_mb(meta, "foreground")}
    assert requested["evaluate_tracking"] == {evaluate_memory_mb(meta, masks=True)}  # the generator's CTC masks


def test_embeddings_follow_the_interface(tracked):
    results = tracked / "results" / "tiny"
    tracks = pd.read_parquet(results / "tracks.parquet")
    embeddings = pd.read_parquet(results / "embeddings.parquet")
    assert {"track_id", "t", "z", "y", "x"} <= set(embeddings.columns)
    assert [c for c in embeddings.columns if c.startswith("f_")] == [f"f_{i}" for i in range(16)]
    assert [c for c in embeddings.columns if c.startswith("p_")] == [f"p_{i}" for i in range(8)]
    # One embedding per tracked cell per frame, at the track's position.
    merged = tracks.merge(embeddings, on=["t", "track_id"], suffixes=("", "_emb"), validate="one_to_one")
    assert len(merged) == len(tracks) == len(embeddings)
    assert (merged.y == merged.y_emb).all() and (merged.x == merged.x_emb).all()
    quality = json.loads((results / "metrics" / "embedding.json").read_text())
    assert {"smoothness", "dynamic_range", "n_adjacent"} <= set(quality)
    assert quality["n_cells"] == len(tracks)
    for figure in ("embedding_distances.png", "embedding_pca.png"):
        assert (results / "analysis" / figure).read_bytes()[:4] == b"\x89PNG"
    model_dir = tracked / "results" / "models" / "dynaclr"
    assert (model_dir / "dynaclr.pt").is_file() and (model_dir / "history.tsv").is_file()


def test_analysis_predicts_every_cell_and_the_report_has_every_section(tracked):
    analysis = tracked / "results" / "tiny" / "analysis"
    embeddings = pd.read_parquet(tracked / "results" / "tiny" / "embeddings.parquet")
    predictions = pd.read_parquet(analysis / "predictions.parquet")
    assert len(predictions) == len(embeddings)
    metrics = json.loads((analysis / "classifier_metrics.json").read_text())
    fitted = [task for task, values in metrics.items() if "skipped" not in values]
    for task in fitted:
        assert f"predicted_{task}" in predictions.columns
        assert (analysis / "states" / f"state_fraction_{task}.png").is_file()
    annotations = pd.read_csv(analysis / "annotations.csv")
    assert {"track_id", "t"} <= set(annotations.columns) and len(annotations) <= len(embeddings)
    pseudotime = pd.read_parquet(analysis / "pseudotime.parquet")
    assert {"track_id", "t", "pseudotime", "onset_estimate", "response_group"} <= set(pseudotime.columns)
    assert pseudotime["pseudotime"].dropna().between(0, 1).all()

    html = (tracked / "results" / "report.html").read_text()
    for anchor in ("dataset-tiny", "tiny-tracking", "tiny-embeddings", "tiny-states", "tiny-pseudotime",
                   "parameters", "software"):
        assert f'id="{anchor}"' in html
    assert html.count("data:image/png;base64,") >= 4 and "TRA" in html
