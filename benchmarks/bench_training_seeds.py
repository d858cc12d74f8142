"""How much a trained detector's accuracy depends on the training seed.

Not a test. The comparison suite (``run_suite.py``) trains each CTC detector once, with the
workflow's default seed; a single training run is one draw. This benchmark repeats the suite's
"celltrails trained on 01, evaluated on 02" run for several values of the workflow's ``seed``
(everything else as in the suite: the same dataset sheet, the ``detector.training`` block of
``config/training/detector_simplus.yaml`` / ``detector_gowt1.yaml``) and reports each run and the
spread: TRA, DET, LNK and division F1 of the workflow's ``metrics/tracking.json``, detection F1
of ``metrics/detection.json``, the centre threshold used, and the time to train (converting and
reading the training series included). A run that fails is recorded with its error and the
others go on; the results file is rewritten after each series.

Run from the repository root: ``python benchmarks/bench_training_seeds.py [--seeds 42,1,2]
[--series sim,gowt1] [--set KEY=VALUE ...] [--label NAME]``; ``--set`` changes a key of the
recipes' ``detector.training`` block (``--set ema_window=0 --label raw``: the weights themselves
instead of their moving average); about 4-5 min per run on 2 CPU cores. Needs
``../shared/data/ctc`` (read in place, never copied). Writes ``benchmarks/results/training_seeds.json``
(``runs[label]``); work folders go to ``benchmarks/work/seeds-<label>`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_store import store_run
from suite import celltrails_runner
from suite.datasets import accuracy_benchmarks
from suite.environment import DEFAULT_ULTRACK_PYTHON, describe
from suite.measure import REPO, StageFailed

RESULTS = REPO / "benchmarks" / "results" / "training_seeds.json"
TRACKING_KEYS = ("TRA", "DET", "LNK", "division_f1")


def run_one(benchmark, seed: int, work: Path, training: dict) -> dict:
    """Train on the benchmark's 01 with ``seed`` and the ``training`` settings, track its 02, and
    read the metrics; ``{"seed", "error"}`` when the workflow fails."""
    evaluate, train = benchmark.evaluate, benchmark.train
    workdir = work / f"{train.name}-seed{seed}"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    celltrails_runner.prepare(workdir, [evaluate], train, training, seed=seed)
    targets = [*celltrails_runner.tracking_targets(evaluate.name),
               f"results/{evaluate.name}/metrics/detection.json"]
    try:
        stage = celltrails_runner.snakemake(workdir, targets, workdir / "snakemake.log")
    except (StageFailed, TimeoutError) as error:
        return {"seed": seed, "error": str(error).splitlines()[0]}
    metrics_dir = workdir / "results" / evaluate.name / "metrics"
    tracking = json.loads((metrics_dir / "tracking.json").read_text())
    detection = json.loads((metrics_dir / "detection.json").read_text())
    threshold = json.loads((metrics_dir / "detection_threshold.json").read_text())
    training = celltrails_runner.training_stage(workdir, train)
    return {"seed": seed, **{key: tracking.get(key) for key in TRACKING_KEYS},
            "detection_f1": detection["f1"], "detection_precision": detection["precision"],
            "detection_recall": detection["recall"], "threshold": threshold["threshold"],
            "threshold_source": threshold["source"],
            "training_s": training.seconds if training else None, "wall_s": stage.seconds}


def spread(runs: list[dict]) -> dict:
    """Mean, standard deviation, min and max of each figure over the runs that finished."""
    out = {}
    for key in (*TRACKING_KEYS, "detection_f1"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            out[key] = {"mean": statistics.fmean(values), "sd": sd, "min": min(values), "max": max(values),
                        "n": len(values)}
    return out


def table(title: str, runs: list[dict], summary: dict) -> str:
    """A plain-text table of one series' runs and their spread."""
    def cell(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [title, "seed  TRA    DET    LNK    divF1  detF1  threshold"]
    for r in runs:
        if "error" in r:
            lines.append(f"{r['seed']:<5} {r['error']}")
            continue
        lines.append(f"{r['seed']:<5} " + "  ".join(cell(r[k]) for k in (*TRACKING_KEYS, "detection_f1"))
                     + f"  {r['threshold']:.2f} ({r['threshold_source']})")
    for stat in ("mean", "sd"):
        lines.append(f"{stat:<5} " + "  ".join(cell(summary.get(k, {}).get(stat))
                                               for k in (*TRACKING_KEYS, "detection_f1")))
    return "\n".join(lines)


def _setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="42,1,2",
                        type=lambda text: [int(s) for s in text.split(",")])
    parser.add_argument("--series", default="sim,gowt1", type=lambda text: text.split(","),
                        help="which CTC pairs: sim (Fluo-N2DH-SIM+), gowt1 (Fluo-N2DH-GOWT1)")
    parser.add_argument("--work", type=Path, help="work folder (default benchmarks/work/seeds-<label>)")
    parser.add_argument("--set", dest="changes", action="append", default=[], metavar="KEY=VALUE",
                        help="change a detector.training setting of the recipes (a YAML value)")
    parser.add_argument("--label", default="default", help="the key of this run in the results file")
    args = parser.parse_args()
    changes = dict(_setting(text) for text in args.changes)
    seeds = list(dict.fromkeys(args.seeds))
    work = args.work or REPO / "benchmarks" / "work" / f"seeds-{args.label}"
    benchmarks, skipped = accuracy_benchmarks(work, quick=False)
    trainable = {b.train.name.removesuffix("01"): b for b in benchmarks if b.train is not None}
    unknown = [name for name in args.series if name not in trainable]
    if unknown or not trainable:
        sys.exit("no CTC series to train on: "
                 + ("; ".join(skipped) or f"unknown {unknown}; known: {sorted(trainable)}"))
    result = {"environment": describe(DEFAULT_ULTRACK_PYTHON), "seeds": seeds, "series": {}}
    for benchmark in (trainable[name] for name in args.series):
        training = {**benchmark.training_settings(), **changes}
        runs = []
        for seed in seeds:
            print(f"{benchmark.train.title} -> {benchmark.evaluate.title}, seed {seed} ...", flush=True)
            runs.append(run_one(benchmark, seed, work, training))
        summary = spread(runs)
        result["series"][benchmark.evaluate.name] = {"trained_on": benchmark.train.title,
                                                     "evaluated_on": benchmark.evaluate.title,
                                                     "training": training,
                                                     "runs": runs, "spread": summary}
        print(table(f"{benchmark.train.title} -> {benchmark.evaluate.title}", runs, summary), flush=True)
        labels = store_run(RESULTS, args.label, result)
    print(f"wrote {RESULTS} (runs: {', '.join(labels)})")


if __name__ == "__main__":
    main()
