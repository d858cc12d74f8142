"""results.json, results.md and the two plots beside it, each written atomically.

The Markdown is generated from the JSON alone: tables of accuracy and cost per dataset, the
acceptance checks of issue #8 (TRA at least the best peer's, division F1 above it, faster end to
end than ultrack) answered per dataset, per-stage costs with ratios to celltrails, linking
throughput, the scaling fit, parameters and versions.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from celltrails.atomic import atomic_path
from celltrails.figures import save_png
from matplotlib.ticker import NullFormatter, ScalarFormatter

from suite.accuracy import TOOLS

PEERS = ("classical_laptrack", "ultrack", "laptrack_detections", "motile")


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def error_line(error: str) -> str:
    """The line of a recorded error that says what went wrong: its last non-empty line (the
    exception of the failed stage's log tail)."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return lines[-1] if lines else "failed"


def _ok(result: dict | None) -> bool:
    return bool(result) and "error" not in result


def reference(tools: dict) -> dict | None:
    """The celltrails result that peers are compared with: trained if it ran, else zero-shot."""
    for key in ("celltrails_trained", "celltrails_zeroshot"):
        if _ok(tools.get(key)):
            return tools[key]
    return None


def _division_check(ours: dict, peers: dict) -> tuple[bool | None, str | None]:
    """celltrails' division F1 above every peer's: py-ctcmetrics BC(1) where computed (it scores any
    matching), else traccuracy's division F1 where both sides have one."""
    for key, name in (("bc1", "BC(1), py-ctcmetrics"), ("division_f1", "division F1, traccuracy")):
        theirs = [p["metrics"].get(key) for p in peers.values() if p["metrics"].get(key) is not None]
        if ours["metrics"].get(key) is not None and theirs:
            return ours["metrics"][key] > max(theirs), name
    return None, None


def verdict(tools: dict) -> dict:
    """Issue #8's acceptance checks for one dataset (None where a side is missing)."""
    ours = reference(tools)
    peers = {k: tools[k] for k in PEERS if _ok(tools.get(k))}
    if ours is None or not peers:
        return {"tra_at_least_best_peer": None, "division_f1_above_best_peer": None, "division_measure": None,
                "faster_than_ultrack": None}
    best_tra = max(p["metrics"]["TRA"] or 0.0 for p in peers.values())
    division, measure = _division_check(ours, peers)
    ultrack = peers.get("ultrack")
    return {
        "tra_at_least_best_peer": (ours["metrics"]["TRA"] or 0.0) >= best_tra,
        "division_f1_above_best_peer": division, "division_measure": measure,
        "faster_than_ultrack": None if ultrack is None else ours["end_to_end_s"] < ultrack["end_to_end_s"],
    }


def plot_accuracy_vs_time(results: dict, path: Path) -> None:
    """TRA against end-to-end wall time, one panel per dataset, one marker per tool."""
    datasets = list(results["accuracy"])
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(6.0, 4.2 * len(datasets)), 3.8), squeeze=False)
    markers = dict(zip(TOOLS, "o^sDPv"))
    for ax, name in zip(axes[0], datasets):
        for key, result in results["accuracy"][name]["tools"].items():
            if _ok(result) and result["metrics"]["TRA"] is not None:
                ax.scatter(result["end_to_end_s"], result["metrics"]["TRA"], marker=markers.get(key, "o"),
                           s=60, label=TOOLS.get(key, key))
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("end-to-end wall time (s, log)")
        ax.set_ylabel("TRA")
        ax.set_title(textwrap.fill(results["accuracy"][name]["title"], 40), fontsize=9)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(datasets) + 1), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    save_png(fig, path)


def plot_scaling(scaling: dict, path: Path) -> None:
    """Wall time and per-stage time against frames, with the fitted line."""
    runs = scaling["runs"]
    frames = [r["frames"] for r in runs]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(frames, [r["wall_s"] for r in runs], "o-", lw=2, label="end to end (snakemake invocation)")
    fit = scaling["fit_wall"]
    ax.plot(frames, [fit["intercept_s"] + fit["slope_s_per_frame"] * n for n in frames], "k--", lw=1,
            label=f"fit: {fit['slope_s_per_frame']:.3f} s/frame, R² {fit['r2']:.4f}")
    for stage in scaling["fit_stages"]:
        ax.plot(frames, [r["stages_s"].get(stage, 0.0) for r in runs], ".-", lw=1, label=stage)
    ax.set_xlabel("frames")
    ax.set_ylabel("wall time (s)")
    ax.set_title("celltrails: time vs series length (synthetic 2D)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def _accuracy_section(results: dict) -> list[str]:
    lines = ["## Accuracy and cost, end to end from raw images", "",
             ("TRA, DET, LNK: CTC measures (traccuracy CTCMatcher); division F1 with a one-frame buffer "
             "(traccuracy; the notes say which matching it used); all through "
             "`celltrails.evaluate.evaluate_ctc`. BC(1): the CTC's own division F1 (same one-frame tolerance) "
             "from py-ctcmetrics, on series with at least 5 ground-truth divisions. SEG: the CTC segmentation "
             "measure of the tool's CTC masks (`celltrails.evaluate.segmentation_score`) where the ground truth "
             "annotates whole frames. "
             "End to end = the tool's inference "
             "stages from raw frames to a CTC result (scoring and training apart), wall and CPU (user + system) "
             "seconds; × celltrails = this tool's end-to-end wall time over celltrails' (trained where "
             "trained)."), ""]
    for name, entry in results["accuracy"].items():
        tools = entry["tools"]
        ours = reference(tools)
        lines += [(f"### {entry['title']} (`{name}`, {entry['n_frames']} frames, nucleus radius "
                  f"{entry['radius_px']:g} px)"), "",
                  ("| tool | TRA | DET | LNK | division F1 | BC(1) | SEG | end to end (s) | CPU (s) | s / frame "
                   "| × celltrails | peak MiB | training (s) |"), "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        notes: dict[str, list[str]] = {}  # note -> tools it applies to
        for key, result in tools.items():
            label = TOOLS.get(key, key)
            if not _ok(result):
                lines.append(f"| {label} | failed | | | | | | | | | | | |")
                notes.setdefault(f"failed: {error_line(result.get('error', 'no result'))}", []).append(label)
                continue
            m = result["metrics"]
            ratio = result["end_to_end_s"] / ours["end_to_end_s"] if ours and ours["end_to_end_s"] else None
            training = result.get("training", {}).get("seconds")
            lines.append(f"| {label} | {_fmt(m['TRA'])} | {_fmt(m['DET'])} | {_fmt(m['LNK'])} | "
                         f"{_fmt(m['division_f1'])} | {_fmt(m.get('bc1'))} | {_fmt(m.get('SEG'))} | "
                         f"{_fmt(result['end_to_end_s'], 1)} | "
                         f"{_fmt(result['end_to_end_cpu_s'], 1)} | "
                         f"{_fmt(result['per_frame_s'], 3)} | {_fmt(ratio, 2)} | {_fmt(result['peak_rss_mb'], 0)} | "
                         f"{_fmt(training, 1)} |")
            for note in [*m.get("notes", []), result.get("note")]:
                if note:
                    notes.setdefault(note, []).append(label)
        check = entry["verdict"]
        measure = f" ({check['division_measure']})" if check["division_measure"] else ""
        lines += ["", "Acceptance (issue #8): TRA ≥ best peer: **" + _yes(check["tra_at_least_best_peer"])
                  + f"**; division F1 > best peer{measure}: **" + _yes(check["division_f1_above_best_peer"])
                  + "**; faster end to end than ultrack: **" + _yes(check["faster_than_ultrack"]) + "**.", ""]
        lines += [f"- {', '.join(labels)}: {note}" for note, labels in notes.items()] + [""]
    return lines


def _yes(value: bool | None) -> str:
    return {True: "yes", False: "NO", None: "n/a"}[value]


def _stage_section(results: dict) -> list[str]:
    lines = ["## Wall time and peak memory per stage", "",
             ("Every stage is its own process (celltrails: each snakemake job, jobs one at a time). "
             "× celltrails compares the same stage of celltrails (trained where trained) where it has one."), "",
             "| dataset | tool | stage | s | CPU s | peak MiB | × celltrails (s) | × celltrails (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, entry in results["accuracy"].items():
        ours = reference(entry["tools"])
        for key, result in entry["tools"].items():
            if not _ok(result):
                continue
            for stage, cost in result["stages"].items():
                same = ours["stages"].get(stage) if ours else None
                time_ratio = cost["seconds"] / same["seconds"] if same and same["seconds"] else None
                mem_ratio = cost["max_rss_mb"] / same["max_rss_mb"] if same and same["max_rss_mb"] else None
                lines.append(f"| {name} | {TOOLS.get(key, key)} | {stage} | {_fmt(cost['seconds'], 1)} | "
                             f"{_fmt(cost['cpu_s'], 1)} | {_fmt(cost['max_rss_mb'], 0)} | {_fmt(time_ratio, 2)} | "
                             f"{_fmt(mem_ratio, 2)} |")
            if "training" in result:
                t = result["training"]
                lines.append(f"| {name} | {TOOLS.get(key, key)} | training (convert + ground truth + train) | "
                             f"{_fmt(t['seconds'], 1)} | {_fmt(t['cpu_s'], 1)} | {_fmt(t['max_rss_mb'], 0)} | | |")
    return [*lines, ""]


def _throughput_section(results: dict) -> list[str]:
    lines = ["## Linking throughput", "", results["throughput"]["setup"], "",
             "| detections / frame | tool | link (s) | detections / s | peak MiB |", "|---|---|---|---|---|"]
    for row in results["throughput"]["runs"]:
        if "error" in row:
            lines.append(f"| {row['per_frame']} | {row['tool']} | failed: {error_line(row['error'])} | | |")
            continue
        lines.append(f"| {row['per_frame']} | {row['tool']} | {_fmt(row['link_seconds'], 2)} | "
                     f"{row['detections_per_s']:,.0f} | {_fmt(row['max_rss_mb'], 0)} |")
    return [*lines, ""]


def _scaling_section(results: dict, plot_name: str) -> list[str]:
    scaling = results["scaling"]
    fit, runs = scaling["fit_wall"], scaling["runs"]
    lines = ["## Scaling with series length", "",
             (f"Recipe `{scaling['recipe']}` with {json.dumps(scaling['recipe_changes'])}, only `n_frames` "
             "varied; the series is generated first (untimed), then tracked from raw frames "
             "(convert, detect, link, lineage + CTC export) by one snakemake invocation per length."), "",
             "| frames | detections | end to end (s) | CPU (s) | s / frame | " + " | ".join(scaling["fit_stages"])
             + " | peak MiB |", "|---" * (6 + len(scaling["fit_stages"])) + "|"]
    for r in runs:
        stages = " | ".join(_fmt(r["stages_s"].get(s), 1) for s in scaling["fit_stages"])
        lines.append(f"| {r['frames']} | {r['detections']} | {_fmt(r['wall_s'], 1)} | {_fmt(r['cpu_s'], 1)} | "
                     f"{_fmt(r['wall_s'] / r['frames'], 3)} | {stages} | {_fmt(r['peak_rss_mb'], 0)} |")
    lines += ["", f"Line fit: wall = {fit['intercept_s']:.1f} s + {fit['slope_s_per_frame']:.4f} s × frames, "
                  f"R² = {fit['r2']:.4f}; time per added frame between lengths: "
                  + ", ".join(f"{m:.4f}" for m in fit["marginal_s_per_frame"]) + " s. CPU time: "
                  f"{scaling['fit_cpu']['intercept_s']:.1f} s + {scaling['fit_cpu']['slope_s_per_frame']:.4f} s × "
                  f"frames, R² = {scaling['fit_cpu']['r2']:.4f}.", "",
              (f"Detections per frame: {runs[0]['detections'] / runs[0]['frames']:.1f} at {runs[0]['frames']} frames, "
              f"{runs[-1]['detections'] / runs[-1]['frames']:.1f} at {runs[-1]['frames']} (the recipe's population "
              "grows along the series), so the time per added frame may rise a little with it."), "",
              "| stage | s / frame | intercept (s) | R² |", "|---|---|---|---|"]
    for stage, f in scaling["fit_stages"].items():
        lines.append(f"| {stage} | {f['slope_s_per_frame']:.4f} | {f['intercept_s']:.2f} | {f['r2']:.4f} |")
    return [*lines, "", f"![scaling]({plot_name})", ""]


def _setup_section(results: dict) -> list[str]:
    env = results["environment"]
    machine, gpu = env["machine"], env["machine"]["gpu"]
    peers = ", ".join(f"{k} {v or 'absent'}" for k, v in env["versions"]["peers"].items())
    deps = ", ".join(f"{k} {v}" for k, v in env["versions"]["dependencies"].items())
    lines = ["## Setup", "",
             (f"- Machine: {machine['cpu_count']} CPU cores ({machine['cpu_model']}), {machine['memory_gib']} GiB, "
             f"GPU: {gpu['name'] if gpu['available'] else 'none'}; {machine['platform']}, Python {machine['python']}."),
             (f"- celltrails {env['versions']['celltrails']} at commit {env['git']['commit']}"
             f"{' (uncommitted changes)' if env['git']['dirty'] else ''}; dependencies: {deps}."),
             f"- Peers: {peers}.", "", "### Parameters", "",
             ("One per-dataset value: the nucleus radius r (xy pixels), stated in each table's title; every peer "
             "size is a multiple of it (z scaled by the voxel anisotropy). celltrails gets r through the "
             "dataset sheet's `nucleus_radius` for the CTC series only."), ""]
    for tool, params in results["parameters"].items():
        lines.append(f"- {TOOLS.get(tool, tool)}: " + ", ".join(f"`{k}` = {v}" for k, v in params.items()))
    return [*lines, ""]


def markdown(results: dict, plot_names: tuple[str, str]) -> str:
    """The report as Markdown, from ``results`` (the results.json content)."""
    run = results["run"]
    lines = ["# celltrails vs the trackers users would pick instead", "",
             (f"Generated by `{run['command']}` ({run['mode']} mode) in {run['wall_s'] / 60:.1f} min on "
             f"{results['environment']['machine']['cpu_count']} CPU cores; machine-readable figures in "
             f"`{run['json_name']}`. Regenerate with the same command (benchmarks/README.md)."), ""]
    if results["skipped"]:
        lines += ["**Skipped:**", "", *[f"- {s}" for s in results["skipped"]], ""]
    if results["accuracy"]:
        lines += [*_accuracy_section(results), f"![accuracy vs time]({plot_names[0]})", "", *_stage_section(results)]
    lines += [*_throughput_section(results), *_scaling_section(results, plot_names[1]), *_setup_section(results)]
    return "\n".join(lines) + "\n"


def write(results: dict, out_dir: Path) -> list[Path]:
    """Write results.json, the plots and results.md into ``out_dir``; returns their paths."""
    plots = (out_dir / "results_accuracy_vs_time.png", out_dir / "results_scaling.png")
    results["run"]["json_name"] = "results.json"
    for entry in results["accuracy"].values():
        entry["verdict"] = verdict(entry["tools"])
    if results["accuracy"]:
        plot_accuracy_vs_time(results, plots[0])
    plot_scaling(results["scaling"], plots[1])
    with atomic_path(out_dir / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    with atomic_path(out_dir / "results.md") as tmp:
        tmp.write_text(markdown(results, (plots[0].name, plots[1].name)))
    return [out_dir / "results.json", out_dir / "results.md", *plots]
