"""Configuration checks with short messages: one line per problem, naming the key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator


def config_problems(config: dict, schema_path: str | Path) -> list[str]:
    """Every schema violation in ``config`` as '<key path>: <what is wrong>' (empty when valid).

    snakemake.utils.validate then fills the defaults; this only makes its errors readable
    (it prints the whole schema for an unknown key).
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    problems = []
    for error in sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in error.path) or "config"
        problems.append(f"{where}: {error.message}")
    return problems


def is_range(bounds: Sequence[float], positive: bool) -> bool:
    """Whether ``bounds`` is a range [low, high]: two numbers, low <= high, and low > 0 when
    ``positive`` (a factor such as a scale or a gamma), else low >= 0."""
    return len(bounds) == 2 and (bounds[0] > 0 if positive else bounds[0] >= 0) and bounds[0] <= bounds[1]
