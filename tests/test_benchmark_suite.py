"""Smoke test of the benchmark suite: ``benchmarks/run_suite.py --quick`` runs and writes its report.

Only that it works: the figures themselves are the benchmark's business, not CI's. Needs neither the
CTC data nor ultrack nor motile (quick mode runs celltrails with its shipped checkpoint and the
classical scikit-image + laptrack pipeline on a small synthetic series, and laptrack again on
celltrails' detections).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.workflow


def test_quick_suite_writes_results(tmp_path: Path) -> None:
    work = tmp_path / "work"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_suite.py"), "--quick", "--work", str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-5000:]

    results = json.loads((work / "results.json").read_text())
    assert {"run", "environment", "skipped", "parameters", "accuracy", "throughput", "scaling"} <= set(results)
    assert results["run"]["mode"] == "quick"
    assert results["environment"]["machine"]["cpu_count"] >= 1
    assert "available" in results["environment"]["machine"]["gpu"]
    assert results["environment"]["versions"]["dependencies"]["snakemake"]

    tools = results["accuracy"]["quick3d"]["tools"]
    assert set(tools) == {"celltrails_zeroshot", "classical_laptrack", "laptrack_detections"}
    for tool in tools.values():
        assert "error" not in tool, tool.get("error")
        assert {"TRA", "DET", "LNK", "division_f1"} <= set(tool["metrics"])
        assert 0.0 <= tool["metrics"]["TRA"] <= 1.0
        assert 0.0 < tool["metrics"]["SEG"] <= 1.0  # the generator's SEG annotations
        assert tool["end_to_end_s"] > 0 and tool["peak_rss_mb"] > 0
    assert {"convert", "detect", "link", "lineage"} <= set(tools["celltrails_zeroshot"]["stages"])
    assert {"segment", "link"} <= set(tools["classical_laptrack"]["stages"])
    # laptrack links celltrails' own detections: their convert and detect stages are reused.
    assert tools["laptrack_detections"]["stages"]["detect"] == tools["celltrails_zeroshot"]["stages"]["detect"]

    runs = results["throughput"]["runs"]
    assert {(r["tool"], r["per_frame"]) for r in runs} == {("celltrails", 1000), ("laptrack", 1000)}
    assert all(r["detections_per_s"] > 0 for r in runs)
    assert [r["frames"] for r in results["scaling"]["runs"]] == [50, 100]
    assert results["scaling"]["fit_wall"]["slope_s_per_frame"] > 0

    report = (work / "results.md").read_text()
    for heading in ("## Accuracy and cost", "## Wall time and peak memory per stage", "## Linking throughput",
                    "## Scaling with series length", "## Setup"):
        assert heading in report
    assert "| BC(1) | SEG |" in report
    for plot in ("results_accuracy_vs_time.png", "results_scaling.png"):
        assert (work / plot).stat().st_size > 5_000
        assert plot in report
