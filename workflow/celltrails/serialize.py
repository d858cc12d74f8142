"""Plain Python data for checkpoints and JSON files: what ``torch.load(weights_only=True)`` and
``json`` accept, whatever numpy or path types the caller had."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from celltrails.atomic import atomic_path


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


def config_to_dict(config) -> dict:
    """A frozen config dataclass as JSON/YAML-friendly data (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def config_from_dict(cls, data: Mapping, what: str):
    """``cls(**data)`` with lists back to tuples; unknown keys are an error naming them and the known ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {what} config keys {unknown} (known: {sorted(names)})")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def load_checkpoint_payload(path, file_format: str, version: int, what: str) -> dict:
    """The plain-data payload of a celltrails checkpoint (``torch.load(weights_only=True)``: no code is
    unpickled), checked to be ``file_format`` at a version this code reads."""
    import torch  # here, not at module level: the analysis environment has no torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable {what} checkpoint: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        raise ValueError(f"{path} is not a celltrails {what} checkpoint")
    if payload.get("version", 0) > version:
        raise ValueError(f"{path} has checkpoint version {payload['version']}; this celltrails reads up to "
                         f"{version}: update celltrails")
    return payload


def write_metrics(metrics: dict, path: str | Path) -> None:
    """Write the metrics dict as JSON (strict: no NaN) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
