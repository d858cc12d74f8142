"""Accuracy and per-stage cost of every tool on every benchmark series, from raw images.

celltrails runs through snakemake (``suite.celltrails_runner``): one working directory per
training series (trained on the matching ``01``) and one with the shipped checkpoints (zero-shot;
it also generates the synthetic series the peers then read). The peers run stage by stage, each
stage its own measured process: the classical pipeline (``suite.classical``), ultrack on its
foreground and contours (``suite.ultrack_runner``, in ultrack's own venv), and laptrack and
motile on celltrails' detections (``suite.laptrack_runner``, ``suite.motile_runner``: the linkers
compared on identical input). Every CTC result, celltrails' included, is
scored by the same ``suite.score`` stage (``celltrails.evaluate.evaluate_ctc``); the TRA of the
workflow's own evaluate_tracking rule (the same function) is kept beside it as a cross-check.

A tool whose stage fails is recorded with its error and the suite goes on.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from celltrails.sources import open_source

from suite import celltrails_runner
from suite.classical import PARAMETERS as CLASSICAL_PARAMETERS
from suite.datasets import Benchmark, Series
from suite.laptrack_runner import PARAMETERS as LAPTRACK_PARAMETERS
from suite.measure import Stage, StageFailed, python_stage
from suite.motile_runner import PARAMETERS as MOTILE_PARAMETERS
from suite.score import gt_divisions
from suite.ultrack_runner import PARAMETERS as ULTRACK_PARAMETERS

TOOLS = {
    "celltrails_trained": "celltrails (trained on 01)",
    "celltrails_zeroshot": "celltrails (shipped checkpoint, zero-shot)",
    "classical_laptrack": "scikit-image + laptrack",
    "ultrack": "ultrack (CBC)",
    "laptrack_detections": "laptrack on celltrails detections",
    "motile": "motile (SCIP) on celltrails detections",
}
# Peers that link celltrails' own detections, with the runner module of each.
ON_OUR_DETECTIONS = {"laptrack_detections": "laptrack_runner", "motile": "motile_runner"}
# Stages that make up a tool's end-to-end time (evaluation and training are reported apart).
INFERENCE_STAGES = ("convert", "segment", "detect", "link", "lineage", "track", "export")
SHIPPED_WORKDIR = "celltrails-shipped"
# py-ctcmetrics' BC(1) is computed on series with at least this many ground-truth divisions.
MIN_DIVISIONS_FOR_BC1 = 5


@dataclass(frozen=True)
class Plan:
    """Which tools this run includes, and where ultrack's interpreter is."""

    tools: tuple[str, ...]
    ultrack_python: Path


def tool_parameters() -> dict:
    """The generic parameters of every peer (sizes in units of the nucleus radius r)."""
    return {"classical_laptrack": CLASSICAL_PARAMETERS, "ultrack": ULTRACK_PARAMETERS,
            "laptrack_detections": LAPTRACK_PARAMETERS, "motile": MOTILE_PARAMETERS,
            "celltrails": {"config": "workflow defaults (link, lineage, detector); training: the detector.training "
                                     "block of config/training/detector_simplus.yaml / detector_gowt1.yaml"}}


def availability(plan: Plan) -> dict[str, str]:
    """Tools of the plan that cannot run here, with the reason (to print and record)."""
    missing = {}
    if "ultrack" in plan.tools and not plan.ultrack_python.is_file():
        missing["ultrack"] = (f"no ultrack interpreter at {plan.ultrack_python}; install it into its own venv "
                              "(benchmarks/README.md) or pass --ultrack-python")
    if "motile" in plan.tools and importlib.util.find_spec("motile") is None:
        missing["motile"] = "motile is not importable (pip install -e '.[bench]')"
    return missing


def _result(stages: dict[str, Stage], metrics: dict, n_frames: int, **extra: object) -> dict:
    inference = {k: v for k, v in stages.items() if k in INFERENCE_STAGES}
    total = sum(v.seconds for v in inference.values())
    return {"metrics": metrics, "stages": {k: v.as_dict() for k, v in stages.items()},
            "end_to_end_s": round(total, 3), "end_to_end_cpu_s": round(sum(v.cpu_s for v in inference.values()), 3),
            "per_frame_s": round(total / n_frames, 4),
            "peak_rss_mb": round(max((v.max_rss_mb for v in inference.values()), default=0.0), 1), **extra}


def _score(series: Series, work: Path, res: Path, out: Path, log: Path) -> tuple[Stage, dict]:
    """The ``evaluate`` stage: ``suite.score`` of one CTC result (BC(1) too on series with divisions)."""
    gt_tra = series.gt_tra(work / SHIPPED_WORKDIR)
    extra = ["--bc1"] if gt_divisions(gt_tra) >= MIN_DIVISIONS_FOR_BC1 else []
    stage = python_stage("score", [str(gt_tra), str(res), str(out), *extra], log)
    return stage, json.loads(out.read_text())


def series_frames(series: Series, work: Path) -> int:
    """Number of frames of a benchmark series (synthetic ones once generated)."""
    path, layout = series.raw_image(work / SHIPPED_WORKDIR)
    return open_source(path, layout, series.name).n_frames


def run_celltrails(benchmarks: list[Benchmark], work: Path, trained: bool) -> dict:
    """celltrails runs: {series name: {tool key: result}}. The shipped-checkpoint (zero-shot) run
    always happens, and first: it also generates the synthetic series the peers read."""
    shipped = work / SHIPPED_WORKDIR
    runs = [(shipped, [b.evaluate for b in benchmarks], None, None, "celltrails_zeroshot")]
    if trained:
        runs += [(work / f"celltrails-trained-{b.train.name}", [b.evaluate], b.train, b.training_settings(),
                  "celltrails_trained") for b in benchmarks if b.train is not None]
    results: dict[str, dict] = {b.evaluate.name: {} for b in benchmarks}
    for workdir, series, train_on, training, key in runs:
        celltrails_runner.prepare(workdir, series, train_on, training)
        targets = [t for s in series for t in celltrails_runner.tracking_targets(s.name)]
        try:
            celltrails_runner.snakemake(workdir, targets, work / "logs" / f"{workdir.name}.log")
        except StageFailed as err:
            results.update({s.name: {**results[s.name], key: {"error": str(err)}} for s in series})
            continue
        extra: dict = {"workdir": str(workdir)}
        if train_on is not None:
            extra["training"] = celltrails_runner.training_stage(workdir, train_on).as_dict()
        for s in series:
            logs = work / "logs" / workdir.name / s.name
            try:
                score, metrics = _score(s, work, workdir / "results" / s.name / "ctc", logs / "metrics.json",
                                        logs / "score.log")
            except StageFailed as err:
                results[s.name][key] = {"error": str(err)}
                continue
            # The workflow's own evaluate_tracking rule calls the same evaluate_ctc: a cross-check.
            metrics["workflow_TRA"] = celltrails_runner.metrics(workdir, s.name)["TRA"]
            stages = {**celltrails_runner.stages(workdir, s.name), "evaluate": score}
            results[s.name][key] = _result(stages, metrics, series_frames(s, work), **extra)
    for b in benchmarks:  # no training series: the shipped checkpoint is the trained model
        zero_shot = results[b.evaluate.name].get("celltrails_zeroshot")
        if trained and b.train is None and zero_shot:
            results[b.evaluate.name]["celltrails_trained"] = {
                **zero_shot, "note": "the zero-shot run: the shipped checkpoint was trained on the synthetic "
                                     "train3d series (same generator, another seed)"}
    return results


@dataclass(frozen=True)
class PeerJob:
    """One series as the peers see it: inputs, output and log folders, size arguments."""

    series: Series
    work: Path
    out: Path
    logs: Path
    n_frames: int

    @property
    def size(self) -> list[str]:
        return ["--radius", f"{self.series.radius_px:g}", "--anisotropy", f"{self.series.anisotropy:g}"]

    @property
    def segmented(self) -> Path:
        return self.out / "segmented"

    def score(self, tool: str, res: Path) -> tuple[Stage, dict]:
        return _score(self.series, self.work, res, self.out / tool / "metrics.json", self.logs / f"score_{tool}.log")


def run_peers(benchmark: Benchmark, work: Path, plan: Plan, celltrails: dict) -> dict:
    """The peers on one series: {tool key: result or {"error"}}; ``celltrails`` holds the
    celltrails results of this series (laptrack and motile reuse their detections and detection stages)."""
    series = benchmark.evaluate
    job = PeerJob(series, work, work / "peers" / series.name, work / "logs" / "peers" / series.name,
                  series_frames(series, work))
    unavailable = availability(plan)
    results: dict[str, dict] = {}
    if "classical_laptrack" in plan.tools or "ultrack" in plan.tools:
        source, layout = series.raw_image(work / SHIPPED_WORKDIR)
        try:
            segment = python_stage("classical", ["segment", str(source), layout, str(job.segmented), *job.size],
                                   job.logs / "segment.log")
        except StageFailed as err:
            return {tool: {"error": f"segmentation failed: {err}"} for tool in ("classical_laptrack", "ultrack")
                    if tool in plan.tools}
        if "classical_laptrack" in plan.tools:
            results["classical_laptrack"] = _guarded(lambda: _classical(job, segment))
        if "ultrack" in plan.tools and "ultrack" not in unavailable:
            results["ultrack"] = _guarded(lambda: _ultrack(job, segment, plan.ultrack_python))
    for tool, module in ON_OUR_DETECTIONS.items():
        if tool in plan.tools and tool not in unavailable:
            results[tool] = _guarded(partial(_on_our_detections, job, celltrails, tool, module))
    return results


def _guarded(run) -> dict:
    try:
        return run()
    except (StageFailed, TimeoutError) as err:
        return {"error": str(err)}


def _classical(job: PeerJob, segment: Stage) -> dict:
    res = job.out / "classical_laptrack" / "RES"
    link = python_stage("classical", ["link", str(job.segmented), str(res), *job.size], job.logs / "laptrack.log")
    score, metrics = job.score("classical_laptrack", res)
    return _result({"segment": segment, "link": link, "evaluate": score}, metrics, job.n_frames)


def _ultrack(job: PeerJob, segment: Stage, python: Path) -> dict:
    db, res = job.out / "ultrack" / "db", job.out / "ultrack" / "RES"
    track = python_stage("ultrack_runner", ["track", str(job.segmented), str(db), *job.size],
                         job.logs / "ultrack_track.log", python=str(python))
    export = python_stage("ultrack_runner", ["export", str(job.segmented), str(db), str(res), *job.size],
                          job.logs / "ultrack_export.log", python=str(python))
    score, metrics = job.score("ultrack", res)
    return _result({"segment": segment, "track": track, "export": export, "evaluate": score}, metrics,
                   job.n_frames, note="segment = the classical pipeline's segmentation (ultrack uses its "
                                      "foreground and contours)")


def _on_our_detections(job: PeerJob, celltrails: dict, tool: str, module: str) -> dict:
    """``tool`` (run by ``suite.<module>``) linking the detections of this series' celltrails run."""
    source = next((celltrails[k] for k in ("celltrails_trained", "celltrails_zeroshot")
                   if k in celltrails and "error" not in celltrails[k]), None)
    if source is None:
        return {"error": "no celltrails detections to link (the celltrails runs failed)"}
    results = Path(source["workdir"]) / "results" / job.series.name
    res = job.out / tool / "RES"
    link = python_stage(module, [str(results / "detections.parquet"), str(results / "image.ome.zarr"),
                                 str(res), "--radius", f"{job.series.radius_px:g}"],
                        job.logs / f"{tool}.log")
    score, metrics = job.score(tool, res)
    reused = {k: Stage(**v) for k, v in source["stages"].items() if k in ("convert", "detect")}
    return _result({**reused, "link": link, "evaluate": score}, metrics, job.n_frames,
                   note=f"convert and detect are celltrails' ({Path(source['workdir']).name}): "
                        f"{TOOLS[tool].split(' on ')[0]} links the same detections (detections.parquet; "
                        "celltrails' own tracks also take the weak peaks of candidates.parquet)")
