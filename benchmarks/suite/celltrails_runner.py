"""celltrails as a user runs it: ``snakemake`` in a working directory of its own.

Each run gets a generated ``config.yaml`` and dataset sheet; snakemake (``--cores 2``) builds the
CTC result and ``metrics/tracking.json`` (the workflow's own scoring, kept as a cross-check: the
suite scores celltrails' CTC result with the same stage as every peer's). Jobs run one at a time
(a ``serial`` resource of 1) so that each job has the machine to itself, as each peer stage has:
the per-rule wall time and peak memory snakemake records in ``benchmarks/{rule}/...`` are then
per-stage figures comparable with the peers'.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import yaml

from suite.datasets import Series, write_sheet
from suite.measure import REPO, Stage, run_stage

# Stages as the peers' are named, and the rules that make them up (scoring is the suite's, as for
# every peer; the workflow's evaluate_tracking result serves as a cross-check).
STAGE_RULES = {"convert": ("convert",), "detect": ("detect_block", "merge_detections"), "link": ("link_block",),
               "lineage": ("lineage",)}


def prepare(workdir: Path, series: list[Series], train_on: Series | None = None,
            training: dict | None = None, seed: int | None = None) -> None:
    """Write ``config.yaml`` and ``datasets.tsv`` in ``workdir`` (created if needed); with
    ``train_on``, the detector is trained on it with the ``training`` settings; ``seed`` replaces
    the workflow's default seed."""
    config: dict = {"datasets": "datasets.tsv"}
    if seed is not None:
        config["seed"] = int(seed)
    if train_on is not None:
        config["detector"] = {"train_on": [train_on.name], "model_name": train_on.name, "training": training or {}}
    registered = [train_on, *series] if train_on is not None else series
    write_sheet(workdir / "datasets.tsv", registered)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def snakemake(workdir: Path, targets: list[str], log: Path, timeout: float = 3600.0) -> Stage:
    """Run the workflow for ``targets`` in ``workdir``; returns the invocation's wall time."""
    # Targets first: --resources / --default-resources take any number of values.
    command = [sys.executable, "-m", "snakemake", *targets, "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(workdir / "config.yaml"), "--cores", "2",
               "--resources", "serial=1", "--default-resources", "serial=1"]
    return run_stage(command, log, timeout=timeout)


def tracking_targets(name: str) -> list[str]:
    """What a tracking run asks snakemake for: the CTC result and its metrics."""
    return [f"results/{name}/ctc", f"results/{name}/metrics/tracking.json"]


def _rule_records(workdir: Path, rule: str, name: str) -> list[dict]:
    """Snakemake benchmark rows of ``rule`` for dataset/model ``name`` (one file per job)."""
    base = workdir / "benchmarks" / rule
    files = [base / f"{name}.tsv", *sorted((base / name).glob("*.tsv"))]
    rows = []
    for path in files:
        if path.is_file():
            with path.open() as handle:
                rows += list(csv.DictReader(handle, delimiter="\t"))
    return rows


def _combine(records: list[dict]) -> Stage | None:
    """Jobs of one stage run one after another: seconds add up, peak memory is the largest."""
    if not records:
        return None
    return Stage(sum(float(r["s"]) for r in records), max(float(r["max_rss"]) for r in records),
                 sum(float(r["cpu_time"]) for r in records))


def stages(workdir: Path, name: str) -> dict[str, Stage]:
    """Per-stage wall time and peak memory of dataset ``name`` from snakemake's benchmark files."""
    out = {}
    for stage, rules in STAGE_RULES.items():
        combined = _combine([r for rule in rules for r in _rule_records(workdir, rule, name)])
        if combined is not None:
            out[stage] = combined
    return out


def training_stage(workdir: Path, train_on: Series) -> Stage | None:
    """Training cost: converting and reading the ground truth of the training series, then training."""
    records = [r for rule in ("convert", "ground_truth") for r in _rule_records(workdir, rule, train_on.name)]
    return _combine(records + _rule_records(workdir, "train_detector", train_on.name))


def metrics(workdir: Path, name: str) -> dict:
    """The workflow's tracking metrics of dataset ``name``."""
    return json.loads((workdir / "results" / name / "metrics" / "tracking.json").read_text())
