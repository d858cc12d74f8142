"""celltrails against the trackers users would pick instead, in one reproducible run.

    python benchmarks/run_suite.py [--quick] [--work DIR] [--ultrack-python PATH] [--tools A,B] [--report-only]

Full run (about 45 min on 2 idle CPU cores): accuracy and per-stage cost from raw images on
Fluo-N2DH-SIM+ 02 and Fluo-N2DH-GOWT1 02 (from ../shared/data/ctc; skipped with a message when
absent) and the held-out synthetic 3D series, for celltrails (trained on 01, and zero-shot),
scikit-image + laptrack, ultrack (its own venv; skipped with a message when absent), and laptrack
and motile on celltrails' detections; linking throughput at 1k / 10k / 100k detections per frame; end-to-end time against series
length (50 .. 500 frames). Writes benchmarks/results.md, results.json and two PNG plots.

``--quick`` (a few minutes): a small synthetic 3D series with celltrails (shipped checkpoint), the
classical pipeline and laptrack on celltrails' detections only, throughput at 1k, scaling at 50 and 100 frames; it writes the same
files into the work directory, never over the full results in benchmarks/.

The work directory (default benchmarks/work/<mode>, git-ignored) holds every intermediate file
and log; it is emptied at the start of a run so that every figure comes from this run. ``--tools``
runs a subset of the tools; ``--report-only`` renders results.md and the plots again from an
existing results.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCHMARKS), str(BENCHMARKS.parent / "workflow")]

from suite import accuracy, report, scaling, throughput
from suite.datasets import accuracy_benchmarks
from suite.environment import DEFAULT_ULTRACK_PYTHON, describe

MARKER = ".celltrails-benchmark-work"


@dataclass(frozen=True)
class Mode:
    """What one mode runs."""

    name: str
    tools: tuple[str, ...]
    trained: bool
    throughput_sizes: tuple[int, ...]
    throughput_timeout_s: float
    scaling_lengths: tuple[int, ...]
    scaling_recipe: dict


FULL = Mode("full", tuple(accuracy.TOOLS), True, (1_000, 10_000, 100_000), 900.0, (50, 100, 200, 500), {})
QUICK = Mode("quick", ("celltrails_zeroshot", "classical_laptrack", "laptrack_detections"), False, (1_000,), 120.0, (50, 100),
             {"shape": [1, 64, 64], "n_cells": 8})


def say(message: str) -> None:
    """Progress line on stdout (the suite runs for a while)."""
    print(f"[suite {time.strftime('%H:%M:%S')}] {message}", flush=True)


def fresh_work_dir(work: Path) -> None:
    """Empty ``work`` for this run; refuse a non-empty folder the suite did not create."""
    if work.exists() and any(work.iterdir()) and not (work / MARKER).is_file():
        raise SystemExit(f"{work} is not empty and not a benchmark work directory; choose another --work")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("created by benchmarks/run_suite.py; emptied at the start of every run\n")


def skipped_tools(mode: Mode, plan: accuracy.Plan) -> list[str]:
    """Messages for the tools this run leaves out, and why."""
    messages = [f"{accuracy.TOOLS[t]}: {why}" for t, why in accuracy.availability(plan).items()]
    left_out = [accuracy.TOOLS[t] for t in accuracy.TOOLS if t not in mode.tools and t != "celltrails_zeroshot"]
    if left_out:
        messages.append(f"not requested in this run ({mode.name} mode or --tools): {', '.join(left_out)}")
    if mode.name == "quick":
        messages.append(f"quick mode: throughput at {', '.join(map(str, mode.throughput_sizes))} detections "
                        "per frame only")
    return messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few minutes: small data, two tools")
    parser.add_argument("--work", type=Path, help="work directory (default benchmarks/work/<mode>)")
    parser.add_argument("--ultrack-python", type=Path, default=DEFAULT_ULTRACK_PYTHON,
                        help="python of ultrack's own venv (default: %(default)s)")
    parser.add_argument("--tools", type=lambda text: tuple(text.split(",")),
                        help=f"comma-separated subset of {','.join(accuracy.TOOLS)} (default: the mode's); "
                             "celltrails' shipped-checkpoint run always happens (it generates the synthetic series)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: render results.md and the plots again from the existing results.json")
    args = parser.parse_args()
    mode = QUICK if args.quick else FULL
    if args.tools:
        unknown = set(args.tools) - set(accuracy.TOOLS)
        if unknown:
            parser.error(f"unknown tools {sorted(unknown)}; choose from {', '.join(accuracy.TOOLS)}")
        mode = replace(mode, tools=args.tools, trained="celltrails_trained" in args.tools)
    work = (args.work or BENCHMARKS / "work" / mode.name).resolve()
    out_dir = work if args.quick else BENCHMARKS
    if args.report_only:
        for path in report.write(json.loads((out_dir / "results.json").read_text()), out_dir):
            say(f"wrote {path}")
        return
    started, started_at = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    fresh_work_dir(work)
    plan = accuracy.Plan(mode.tools, args.ultrack_python.absolute())

    benchmarks, skipped = accuracy_benchmarks(work, quick=args.quick)
    skipped += skipped_tools(mode, plan)
    for message in skipped:
        say(f"SKIPPED {message}")

    say(f"celltrails on {', '.join(b.evaluate.name for b in benchmarks)} (snakemake)")
    results_by_series = accuracy.run_celltrails(benchmarks, work, trained=mode.trained)
    accuracy_results = {}
    for b in benchmarks:
        say(f"peers on {b.evaluate.name}")
        tools = results_by_series[b.evaluate.name]
        tools.update(accuracy.run_peers(b, work, plan, tools))
        ordered = {k: tools[k] for k in accuracy.TOOLS if k in tools}
        for key, result in ordered.items():
            summary = f"failed: {report.error_line(result['error'])}" if "error" in result else (
                f"TRA {result['metrics']['TRA']}, {result['end_to_end_s']:.1f} s")
            say(f"  {b.evaluate.name} {key}: {summary}")
        accuracy_results[b.evaluate.name] = {
            "title": b.evaluate.title, "n_frames": accuracy.series_frames(b.evaluate, work),
            "radius_px": b.evaluate.radius_px, "anisotropy": b.evaluate.anisotropy,
            "trained_on": b.train.title if b.train else None, "tools": ordered}

    say(f"linking throughput at {', '.join(map(str, mode.throughput_sizes))} detections per frame")
    throughput_results = throughput.run(list(mode.throughput_sizes), 3, work, mode.throughput_timeout_s)
    say(f"scaling over {', '.join(map(str, mode.scaling_lengths))} frames")
    scaling_results = scaling.run(work, list(mode.scaling_lengths), mode.scaling_recipe, work / "logs" / "scaling")

    results = {
        "run": {"mode": mode.name, "command": shlex.join(["python", "benchmarks/run_suite.py", *sys.argv[1:]]),
                "started": started_at, "work_dir": str(work),
                "wall_s": round(time.perf_counter() - started, 1)},
        "environment": describe(plan.ultrack_python),
        "skipped": skipped,
        "parameters": accuracy.tool_parameters(),
        "accuracy": accuracy_results,
        "throughput": throughput_results,
        "scaling": scaling_results,
    }
    for path in report.write(results, out_dir):
        say(f"wrote {path}")


if __name__ == "__main__":
    main()
