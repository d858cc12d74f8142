"""The benchmarks' results files: one JSON per benchmark holding ``runs[label]`` per machine / setting."""

from __future__ import annotations

import json
from pathlib import Path


def store_run(path: Path, label: str, result: dict) -> list[str]:
    """Put ``result`` under ``runs[label]`` in ``path`` (other labels kept); returns the stored labels."""
    stored = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    stored["runs"][label] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=2) + "\n")
    return sorted(stored["runs"])
