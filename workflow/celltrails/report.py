"""The run's HTML report: one self-contained file (figures inlined as base64 PNG, no scripts, no
network) that opens offline and can be mailed around.

For every dataset it shows what the run produced, in the order of the pipeline: tracking
metrics, tracks over the image, lineage trees, embedding quality, cell states predicted from
sparse annotations, and DTW pseudo-time. A section whose inputs the run did not produce (no
ground truth, no annotations, no embeddings) says so instead of disappearing, so a reader knows
it was not forgotten. The end of the report records the configuration and the software versions
that produced it.

The same figures also reach ``snakemake --report`` through ``report()`` in the rules; this file
is the version that needs no Snakemake to read.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import json
import platform
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from celltrails.atomic import atomic_path

PACKAGES = ("celltrails", "snakemake", "torch", "numpy", "scipy", "pandas", "scikit-learn", "tslearn", "zarr",
            "ome-zarr", "traccuracy", "matplotlib")
SECTIONS = ("tracking", "embeddings", "states", "pseudotime")
SECTION_TITLES = {"tracking": "Tracking", "embeddings": "Embeddings (DynaCLR)",
                  "states": "Cell states from sparse annotations", "pseudotime": "DTW pseudo-time"}

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b8c0cc;font-size:13px}main{padding:16px 32px;max-width:1200px}
nav a{margin-right:14px;color:#2f6fde;text-decoration:none;font-size:14px}
section.dataset{background:#fff;border-radius:8px;padding:12px 24px;margin:18px 0;box-shadow:0 1px 3px #0002}
h2{border-bottom:2px solid #e3e6eb;padding-bottom:6px}h3{margin-top:22px;color:#34405a}
table{border-collapse:collapse;margin:8px 0;font-size:13px}td,th{border:1px solid #dde1e7;padding:4px 10px;text-align:right}
th{background:#eef1f5;text-align:left}td:first-child{text-align:left}
figure{margin:10px 0;display:inline-block;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #e3e6eb;border-radius:4px}
figcaption{font-size:12px;color:#5b6577;max-width:640px}.missing{color:#8a6d00;font-style:italic;font-size:13px}
pre{background:#f0f2f5;padding:10px;font-size:12px;overflow-x:auto;border-radius:4px}
"""


@dataclass
class Figure:
    """A PNG and the sentence that says what it shows."""

    path: Path
    caption: str


@dataclass
class DatasetReport:
    """Everything the report shows about one dataset; absent parts carry the reason."""

    name: str
    tables: dict[str, list[tuple[str, Mapping]]] = field(default_factory=dict)  # section -> [(title, values)]
    figures: dict[str, list[Figure]] = field(default_factory=dict)  # section -> figures
    missing: dict[str, str] = field(default_factory=dict)  # section -> why it is absent


def software_versions() -> dict[str, str]:
    """Versions of Python, the platform and the main packages (``not installed`` where absent)."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(repo: str | Path) -> str | None:
    """The commit of the workflow's repository (with ``-dirty`` for local changes), if it is one."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "–"
    return html.escape(str(value))


def _flatten(values: Mapping, prefix: str = "") -> dict:
    """Nested metrics as ``outer.inner`` rows (lists, e.g. confusion matrices, are left out)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat |= _flatten(value, f"{prefix}{key}.")
        elif not isinstance(value, (list, tuple)):
            flat[f"{prefix}{key}"] = value
    return flat


def _table(title: str, values: Mapping) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{_number(v)}</td></tr>"
                   for k, v in _flatten(values).items())
    return f"<h4>{html.escape(title)}</h4><table><tr><th>quantity</th><th>value</th></tr>{rows}</table>"


def _figure(figure: Figure) -> str:
    return (f'<figure><img alt="{html.escape(figure.caption)}" src="{_image(figure.path)}">'
            f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")


def _dataset_html(report: DatasetReport) -> str:
    parts = [f'<section class="dataset" id="dataset-{html.escape(report.name)}"><h2>{html.escape(report.name)}</h2>']
    for section in SECTIONS:
        parts.append(f'<div class="section" id="{html.escape(report.name)}-{section}">'
                     f"<h3>{SECTION_TITLES[section]}</h3>")
        tables, figures = report.tables.get(section, []), report.figures.get(section, [])
        if not tables and not figures:
            reason = report.missing.get(section, "not produced by this run")
            parts.append(f'<p class="missing">{html.escape(reason)}</p>')
        parts += [_table(title, values) for title, values in tables]
        parts += [_figure(figure) for figure in figures]
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def render_report(datasets: Sequence[DatasetReport], config: Mapping, versions: Mapping[str, str],
                  commit: str | None = None, title: str = "celltrails report") -> str:
    """The report as one HTML string."""
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#dataset-{html.escape(d.name)}">{html.escape(d.name)}</a>' for d in datasets)
    software = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in versions.items())
    body = "".join(_dataset_html(d) for d in datasets) or '<p class="missing">no datasets in this run</p>'
    config_text = html.escape(yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False))
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><header><h1>{html.escape(title)}</h1>"
        f"<p>{len(datasets)} dataset(s) · created {created}"
        f"{' · workflow commit ' + html.escape(commit) if commit else ''}</p></header><main>"
        f"<nav>{nav}<a href='#parameters'>parameters</a><a href='#software'>software</a></nav>{body}"
        f'<section class="dataset" id="parameters"><h2>Parameters</h2><pre>{config_text}</pre></section>'
        f'<section class="dataset" id="software"><h2>Software</h2><table><tr><th>package</th><th>version</th></tr>'
        f"{software}</table></section></main></body></html>"
    )


def write_report(path: str | Path, datasets: Sequence[DatasetReport], config: Mapping,
                 repo: str | Path | None = None) -> None:
    """Render and write the report atomically."""
    text = render_report(datasets, config, software_versions(), git_commit(repo) if repo else None)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# Where each section's files live under results/{dataset}/, with the caption the report gives them.
METRIC_TABLES = {
    "tracking": [("metrics/tracking.json", "Tracking against the ground truth (CTC measures, traccuracy)"),
                 ("metrics/detection.json", "Detection against the ground truth"),
                 ("metrics/detection_threshold.json", "Centre threshold of the detections")],
    "embeddings": [("metrics/embedding.json", "Embedding smoothness and dynamic range")],
    "pseudotime": [("analysis/pseudotime_summary.json", "Pseudo-time alignment")],
}
FIGURES = {
    "tracking": [
        ("analysis/tracks_montage.png", ("Maximum projections of evenly spaced frames with the tracked cells, "
                                        "coloured by lineage, and their recent trails; stars mark new daughters.")),
        ("analysis/lineage_trees.png", "The largest lineages: time runs down, divisions branch."),
        ("qc/detection_threshold.png", ("Centre-peak scores of every peak found (log scale): background near 0, "
                                       "cells near 1; detections are the peaks above the used threshold.")),
    ],
    "embeddings": [
        ("analysis/embedding_distances.png", ("Cosine distances of the same cell in adjacent frames vs random "
                                             "pairs: smoothness = ratio of the means (lower is smoother).")),
        ("analysis/embedding_pca.png", "Principal components of the DynaCLR features, by time (and state)."),
    ],
    "pseudotime": [
        ("analysis/pseudotime_components.png", ("Principal components of the aligned embeddings against "
                                               "pseudo-time: mean and interquartile band.")),
        ("analysis/pseudotime_examples.png", "Example tracks in real time and aligned to the template."),
    ],
}
STATE_FIGURES = [
    ("state_fraction_{task}.png", "Fraction of cells predicted in each class of {task}, frame by frame."),
    ("confusion_{task}.png", "{task}: cross-validated confusion matrix on the annotated cells (folds by track)."),
    ("pca_predicted_{task}.png", "Embedding PCA coloured by the predicted {task}."),
]


def collect_dataset(name: str, folder: str | Path, reasons: Mapping[str, str] | None = None) -> DatasetReport:
    """Gather the tables and figures a run left in ``folder`` (``results/{name}``) for the report."""
    folder = Path(folder)
    report = DatasetReport(name, missing=dict(reasons or {}))
    for section, files in METRIC_TABLES.items():
        for relative, title in files:
            if (folder / relative).is_file():
                report.tables.setdefault(section, []).append((title, json.loads((folder / relative).read_text())))
    for section, files in FIGURES.items():
        for relative, caption in files:
            if (folder / relative).is_file():
                report.figures.setdefault(section, []).append(Figure(folder / relative, caption))
    classifier = folder / "analysis" / "classifier_metrics.json"
    if classifier.is_file():
        for task, metrics in json.loads(classifier.read_text()).items():
            report.tables.setdefault("states", []).append((f"{task}: classifier (cross-validated by track)",
                                                           metrics))
            for pattern, caption in STATE_FIGURES:
                path = folder / "analysis" / "states" / pattern.format(task=task)
                if path.is_file():
                    report.figures.setdefault("states", []).append(Figure(path, caption.format(task=task)))
    return report
