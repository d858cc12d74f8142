"""Linking throughput: celltrails' linker and laptrack on N detections per frame.

Reuses ``bench_linking``: its synthetic detections (cells ~2.6 radii apart drifting ~2 px per frame,
with per-cell embeddings) and its two runners (celltrails ``link_frames`` + ``assemble_tracks``;
laptrack with splitting, cutoff 30 px). Each (tool, size) runs in its own process so its peak
memory is its own; the time is the linking call alone, not the generation of the detections.

    python -m suite.throughput TOOL N_PER_FRAME N_FRAMES OUT.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_linking import run_laptrack, run_ours, synthetic_detections
from celltrails.atomic import atomic_path
from celltrails.linking import LinkParams

from suite.measure import StageFailed, python_stage

TOOLS = ("celltrails", "laptrack")


def measure(tool: str, per_frame: int, n_frames: int) -> dict:
    """Linking seconds and detections per second of ``tool`` on ``per_frame`` x ``n_frames`` detections."""
    detections = synthetic_detections(per_frame, n_frames)
    _, seconds = run_ours(detections, LinkParams()) if tool == "celltrails" else run_laptrack(detections)
    return {"tool": tool, "per_frame": per_frame, "n_frames": n_frames, "detections": len(detections),
            "link_seconds": round(seconds, 3), "detections_per_s": round(len(detections) / seconds, 1)}


def run(sizes: list[int], n_frames: int, work: Path, timeout: float) -> dict:
    """Every tool at every size, each in its own measured process; a run past ``timeout``
    seconds is stopped and recorded as such."""
    runs = []
    for per_frame in sizes:
        for tool in TOOLS:
            out = work / "throughput" / f"{tool}_{per_frame}.json"
            try:
                stage = python_stage("throughput", [tool, str(per_frame), str(n_frames), str(out)],
                                     work / "logs" / "throughput" / f"{tool}_{per_frame}.log", timeout=timeout)
            except (StageFailed, TimeoutError) as err:
                runs.append({"tool": tool, "per_frame": per_frame, "error": str(err)})
                continue
            runs.append({**json.loads(out.read_text()), "process_s": round(stage.seconds, 2),
                         "max_rss_mb": round(stage.max_rss_mb, 1)})
    setup = (f"bench_linking's synthetic detections ({n_frames} frames of N cells, ~2.6 radii apart, drifting "
             "~2 px per frame, synthetic embeddings); time of the linking call only (celltrails: link_frames + "
             f"assemble_tracks; laptrack: predict_dataframe), each run its own process (timeout {timeout:g} s).")
    return {"setup": setup, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tool", choices=TOOLS)
    parser.add_argument("per_frame", type=int)
    parser.add_argument("n_frames", type=int)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    result = measure(args.tool, args.per_frame, args.n_frames)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
