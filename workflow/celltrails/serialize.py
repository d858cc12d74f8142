"""Plain Python data for checkpoints and JSON files: what ``torch.load(weights_only=True)`` and
``json`` accept, whatever numpy or path types the caller had."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def plain_data(value):
    """numpy scalars/arrays, tuples and paths -> JSON-like Python data (what weights_only loads)."""
    if isinstance(value, dict):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain_data(value.tolist())
    if isinstance(value, np.generic):
        return plain_data(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return json.loads(json.dumps(value, default=str))
