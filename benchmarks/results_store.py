"""The benchmarks' results files: one JSON per benchmark holding ``runs[label]`` per machine / setting."""

from __future__ import annotations

import json
from pathlib import Path

from celltrails.atomic import atomic_path


def store_run(path: Path, label: str, result: dict) -> list[str]:
    """Put ``result`` under ``runs[label]`` in ``path`` (other labels kept); returns the stored labels."""
    stored = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    stored["runs"][label] = result
    with atomic_path(path) as partial:  # a killed run leaves the old file whole
        partial.write_text(json.dumps(stored, indent=2) + "\n")
    return sorted(stored["runs"])
