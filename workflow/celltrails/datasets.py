"""The dataset sheet: one row per registered dataset, checked before any job runs.

A tab-separated file with columns ``dataset, path, layout`` and optionally ``ground_truth,
voxel_size, time_interval, channels, annotations, nucleus_radius`` (see the interface in the README). Relative
paths resolve against the working directory. Every problem is reported with its row number
and dataset name, all at once, so a user fixes the sheet in one go.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from celltrails.errors import InputError

LAYOUTS = ("ctc", "tiff-sequence", "tiff-stack", "ome-zarr", "synthetic")
REQUIRED_COLUMNS = ("dataset", "path", "layout")
OPTIONAL_COLUMNS = ("ground_truth", "voxel_size", "time_interval", "channels", "annotations", "nucleus_radius")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Dataset:
    """One registered dataset, its paths resolved and its values parsed."""

    name: str
    path: Path
    layout: str
    ground_truth: Path | None = None
    voxel_size: tuple[float, float, float] | None = None
    time_interval: float | None = None
    channels: tuple[str, ...] | None = None
    annotations: Path | None = None
    nucleus_radius: float | None = None  # typical nucleus radius in xy pixels (sets the detector's scale)

    @property
    def is_synthetic(self) -> bool:
        return self.layout == "synthetic"

    @property
    def has_ground_truth(self) -> bool:
        return self.is_synthetic or self.ground_truth is not None


def parse_voxel_size(text: str) -> tuple[float, float, float]:
    """``"2.0,0.5,0.5"`` -> (2.0, 0.5, 0.5); exactly three positive numbers (z, y, x, µm)."""
    parts = [p.strip() for p in str(text).replace(";", ",").split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"voxel_size '{text}' is not three numbers z,y,x") from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"voxel_size '{text}' must be three positive numbers z,y,x (micrometres)")
    return values


def _resolve(text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _parse_row(row: dict[str, str], base: Path, problems: list[str], where: str) -> Dataset | None:
    name, layout = row["dataset"], row["layout"]
    before = len(problems)
    if not NAME_PATTERN.match(name):
        problems.append(f"{where}: dataset name '{name}' must match [A-Za-z0-9_-]+")
    if layout not in LAYOUTS:
        problems.append(f"{where}: unknown layout '{layout}' (one of {', '.join(LAYOUTS)})")
    path = _resolve(row["path"], base) if row["path"] else None
    if path is None:
        problems.append(f"{where}: empty path")
    elif not path.exists():
        what = "synthetic recipe (YAML)" if layout == "synthetic" else "source"
        problems.append(f"{where}: {what} '{path}' does not exist")
    elif layout == "synthetic" and not path.is_file():
        problems.append(f"{where}: for layout 'synthetic' the path is the generator recipe (a YAML file), "
                        f"'{path}' is not a file")
    optional = {}
    for column in ("ground_truth", "annotations"):
        if row.get(column):
            optional[column] = _resolve(row[column], base)
            if not optional[column].exists():
                problems.append(f"{where}: {column} '{optional[column]}' does not exist")
    if layout == "synthetic" and row.get("ground_truth"):
        problems.append(f"{where}: a synthetic dataset brings its own ground truth; leave ground_truth empty")
    if row.get("voxel_size"):
        try:
            optional["voxel_size"] = parse_voxel_size(row["voxel_size"])
        except ValueError as err:
            problems.append(f"{where}: {err}")
    if row.get("time_interval"):
        try:
            optional["time_interval"] = float(row["time_interval"])
            if not optional["time_interval"] > 0:
                raise ValueError
        except ValueError:
            problems.append(f"{where}: time_interval '{row['time_interval']}' must be a positive number (minutes)")
    if row.get("nucleus_radius"):
        try:
            optional["nucleus_radius"] = float(row["nucleus_radius"])
            if not (math.isfinite(optional["nucleus_radius"]) and optional["nucleus_radius"] > 0):
                raise ValueError
        except ValueError:
            problems.append(f"{where}: nucleus_radius '{row['nucleus_radius']}' must be a positive number "
                            "(typical nucleus radius in xy pixels)")
    if row.get("channels"):
        names = tuple(c.strip() for c in row["channels"].split(","))
        if any(not c for c in names) or len(set(names)) != len(names):
            problems.append(f"{where}: channels '{row['channels']}' must be distinct comma-separated names")
        optional["channels"] = names
    if len(problems) > before:
        return None
    return Dataset(name=name, path=path, layout=layout, **optional)


def load_datasets(sheet: str | Path, base: str | Path | None = None) -> dict[str, Dataset]:
    """Read and check the dataset sheet; returns datasets by name in sheet order.

    Raises :class:`InputError` listing every problem (row numbers count the header as row 1).
    """
    sheet = Path(sheet)
    base = Path(base) if base is not None else Path.cwd()
    if not sheet.is_absolute():
        sheet = base / sheet
    if not sheet.is_file():
        raise InputError("dataset sheet not found (config key 'datasets')", path=sheet)
    try:
        table = pd.read_csv(sheet, sep="\t", dtype=str, keep_default_na=False, comment="#")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"cannot read the dataset sheet as tab-separated values: {err}", path=sheet) from err
    table.columns = [c.strip() for c in table.columns]
    problems = []
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    unknown = [c for c in table.columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing:
        problems.append(f"missing required column(s) {missing}")
    if unknown:
        problems.append(f"unknown column(s) {unknown} (allowed: {', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)})")
    if problems:
        raise InputError("; ".join(problems) + " (is the sheet tab-separated?)", path=sheet)
    if table.empty:
        raise InputError("the dataset sheet registers no dataset", path=sheet)
    datasets: dict[str, Dataset] = {}
    seen: dict[str, int] = {}
    for i, raw in enumerate(table.to_dict("records")):
        row = {k: str(v).strip() for k, v in raw.items()}
        where = f"row {i + 2} (dataset '{row['dataset']}')"
        if row["dataset"] in seen:
            problems.append(f"{where}: duplicate dataset name, already on row {seen[row['dataset']]}")
            continue
        seen[row["dataset"]] = i + 2
        dataset = _parse_row(row, base, problems, where)
        if dataset is not None:
            datasets[dataset.name] = dataset
    if problems:
        raise InputError("invalid dataset sheet:\n  " + "\n  ".join(problems), path=sheet)
    return datasets
