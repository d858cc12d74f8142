"""The machine and software a benchmark ran on: CPU count, GPU (if torch sees one), versions."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

import psutil

from suite.measure import REPO

PEERS = ("laptrack", "motile", "ilpy", "pyscipopt", "scikit-image", "scipy", "traccuracy", "py-ctcmetrics")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _celltrails_dependencies() -> list[str]:
    """Names of celltrails' declared runtime dependencies (extras left out)."""
    names = []
    for requirement in metadata.requires("celltrails") or []:
        if "extra ==" not in requirement:
            names.append(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0])
    return names


def _cpu_model() -> str | None:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _gpu() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"available": False, "name": None, "torch_cuda": torch.version.cuda}
    return {"available": True, "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
            "torch_cuda": torch.version.cuda}


def _git() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


# ultrack lives in a venv of its own inside the git-ignored work folder (benchmarks/README.md).
DEFAULT_ULTRACK_PYTHON = Path(__file__).resolve().parents[1] / "work" / "venv-ultrack" / "bin" / "python"


def ultrack_version(python: Path) -> str | None:
    """ultrack's version in its own interpreter (None when that interpreter is absent)."""
    if not python.is_file():
        return None
    probe = "import importlib.metadata as m; print(m.version('ultrack'))"
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    return result.stdout.strip() or None


def describe(ultrack_python: Path) -> dict:
    """Machine, GPU, git state and package versions (celltrails' dependencies and the peers')."""
    return {
        "machine": {"cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)), "cpu_model": _cpu_model(),
                    "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "platform": platform.platform(),
                    "python": platform.python_version(), "gpu": _gpu()},
        "git": _git(),
        "versions": {"celltrails": _version("celltrails"),
                     "dependencies": {name: _version(name) for name in _celltrails_dependencies()},
                     "peers": {**{name: _version(name) for name in PEERS},
                               "ultrack": ultrack_version(ultrack_python)}},
    }
