"""The default workflow on a real single-node SLURM cluster, through `--profile profiles/slurm`.

Needs root and Debian's apt (or SLURM already installed): :mod:`slurm_cluster` installs
slurm-wlm and munge, starts a cluster with a `cpu` and a `gpu` partition, and stops it afterwards.
Elsewhere every test here is skipped with the reason. Not part of `python -m pytest` (marker
`slurm`); `.ci/run` runs it with `python -m pytest -m slurm`.

Checked: GPU rules ran as jobs in the `gpu` partition and the others in `cpu` (each script logs
the partition of its SLURM job); the results equal a local run of the same configuration; a
second run submits nothing; a job cancelled while running is resubmitted and leaves no partial
result.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from slurm_cluster import Cluster, install, unavailable_reason
from test_workflow import register

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

GPU_RULES = {"train_detector", "detect_block", "train_dynaclr", "embed"}
LOCAL_RULES = {"merge_detections"}
PARTITION_LINE = re.compile(r"SLURM job (\d+) on partition ([^,\s]+)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if reason := unavailable_reason():
        pytest.skip(reason)
    try:
        install()
    except subprocess.CalledProcessError as err:
        pytest.skip(f"could not install slurm-wlm and munge with apt: {err.stderr[-500:]}")
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()


def snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--configfile", str(workdir / "config.yaml"), *args]
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                          env=env)


def on_slurm(workdir: Path, cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    return snakemake(workdir, "--profile", str(REPO / "profiles" / "slurm"), "--workflow-profile", "none",
                     "--slurm-init-seconds-before-status-checks", "1", *args, env=cluster.env)


def demo(workdir: Path) -> Path:
    register(workdir, [f"demo\t{REPO / 'config' / 'synthetic' / 'demo3d.yaml'}\tsynthetic\t\t\t\t\t"])
    return workdir


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    local = demo(tmp_path_factory.mktemp("local"))
    result = snakemake(local, "--cores", "2")
    assert result.returncode == 0, result.stdout[-4000:]
    remote = demo(tmp_path_factory.mktemp("on_slurm"))
    result = on_slurm(remote, cluster)
    assert result.returncode == 0, result.stdout[-6000:]
    return local, remote, result


def job_partitions(workdir: Path) -> dict[str, set[str]]:
    """rule -> partitions its jobs ran in, from the 'SLURM job ... on partition ...' line of each rule log."""
    partitions: dict[str, set[str]] = {}
    for log in (workdir / "logs").glob("*/**/*.log"):
        rule = log.relative_to(workdir / "logs").parts[0]
        if rule == "slurm":
            continue
        found = PARTITION_LINE.findall(log.read_text())
        partitions.setdefault(rule, set()).update(p for _, p in found)
    return partitions


def test_gpu_rules_ran_in_the_gpu_partition_and_the_others_in_cpu(runs):
    _, remote, result = runs
    partitions = job_partitions(remote)
    print("partition of every job's rule:", json.dumps({k: sorted(v) for k, v in partitions.items()}))
    assert {"detect_block", "embed"} <= set(partitions)  # the default run detects and embeds on the shipped models
    for rule, seen in partitions.items():
        if rule in LOCAL_RULES:
            assert seen == set(), rule
        elif rule in GPU_RULES:
            assert seen == {"gpu"}, rule
        else:
            assert seen == {"cpu"}, rule
    assert "--gpus=1" in result.stdout or "gpu=1" in result.stdout


def _tables_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for column in a.columns:
        if pd.api.types.is_float_dtype(a[column]):
            np.testing.assert_allclose(a[column].to_numpy(), b[column].to_numpy(), rtol=1e-4, atol=1e-4,
                                       err_msg=column)
        else:
            assert (a[column].astype(str).to_numpy() == b[column].astype(str).to_numpy()).all(), column


def test_results_equal_a_local_run(runs):
    local, remote, _ = runs
    for relative in ("detections.parquet", "tracks.parquet", "embeddings.parquet", "analysis/predictions.parquet",
                     "analysis/pseudotime.parquet"):
        _tables_equal(pd.read_parquet(local / "results" / "demo" / relative),
                      pd.read_parquet(remote / "results" / "demo" / relative))
    for relative in ("metrics/tracking.json", "metrics/embedding.json"):
        here = json.loads((local / "results" / "demo" / relative).read_text())
        there = json.loads((remote / "results" / "demo" / relative).read_text())
        assert here.keys() == there.keys()
        for key, value in here.items():
            if isinstance(value, float):
                assert there[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert (remote / "results" / "report.html").stat().st_size > 50_000


def test_a_second_run_submits_nothing(runs, cluster):
    _, remote, _ = runs
    result = on_slurm(remote, cluster)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Nothing to be done" in result.stdout
    assert "has been submitted" not in result.stdout


def test_a_cancelled_job_is_resubmitted_and_leaves_no_partial_result(runs, cluster):
    _, remote, _ = runs
    embeddings = remote / "results" / "demo" / "embeddings.parquet"
    reference = pd.read_parquet(embeddings)
    embeddings.unlink()
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(remote), "--configfile",
               str(remote / "config.yaml"), "--profile", str(REPO / "profiles" / "slurm"), "--workflow-profile",
               "none", "--slurm-init-seconds-before-status-checks", "1", "--rerun-triggers", "mtime", "--",
               str(embeddings.relative_to(remote))]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cluster.env)
    cancelled = None
    deadline = time.monotonic() + 300
    while cancelled is None and time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-o", "%i %k %T"], capture_output=True, text=True, env=cluster.env)
        for job_id, comment, state in (line.split() for line in queue.stdout.splitlines() if line.strip()):
            if comment.startswith("rule_embed") and state == "RUNNING":
                subprocess.run(["scancel", job_id], check=True, env=cluster.env)
                cancelled = job_id
        time.sleep(0.5)
    output, _ = run.communicate(timeout=900)
    assert cancelled is not None, "the embed job was never seen running:\n" + output[-3000:]
    assert run.returncode == 0, output[-4000:]
    assert output.count("rule embed:") >= 2 or "Trying to restart" in output, output[-4000:]  # resubmitted
    _tables_equal(reference, pd.read_parquet(embeddings))
    assert not list(embeddings.parent.glob(".embeddings*"))  # no temporary left behind
