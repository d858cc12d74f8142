"""The benchmarks' results files: one JSON per benchmark holding ``runs[label]`` per machine / setting."""

from __future__ import annotations

import json
import os
from pathlib import Path


def store_run(path: Path, label: str, result: dict) -> list[str]:
    """Put ``result`` under ``runs[label]`` in ``path`` (other labels kept); returns the stored labels."""
    stored = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    stored["runs"][label] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # a killed run leaves the old file whole
    partial.write_text(json.dumps(stored, indent=2) + "\n")
    partial.replace(path)
    return sorted(stored["runs"])
