"""The self-contained HTML report: every section present, figures inlined, nothing fetched."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
from celltrails.report import SECTIONS, collect_dataset, write_report
from matplotlib.figure import Figure


class Outline(HTMLParser):
    """Ids, image sources, headings and external references of an HTML document."""

    def __init__(self):
        super().__init__()
        self.ids, self.images, self.external, self.text = set(), [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "href"):
            value = attrs.get(key, "")
            if value.startswith(("http:", "https:", "//")) or (tag in ("script", "link")):
                self.external.append(value or tag)

    def handle_data(self, data):
        self.text.append(data)


def png(path):
    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot(np.arange(5))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


def test_report_has_every_section_inlined_and_says_what_is_missing(tmp_path):
    full, bare = tmp_path / "results" / "full", tmp_path / "results" / "bare"
    (full / "metrics").mkdir(parents=True)
    (full / "metrics" / "tracking.json").write_text(json.dumps({"TRA": 0.987654, "DET": 0.99, "notes": ["x"]}))
    (full / "metrics" / "embedding.json").write_text(json.dumps({"smoothness": 0.12, "dynamic_range": 1.1}))
    (full / "analysis").mkdir()
    (full / "analysis" / "classifier_metrics.json").write_text(json.dumps({"reporter_state": {"macro_f1": 0.95, "agreement_with_truth": {"macro_f1": 0.9321}}}))
    for name in ("tracks_montage", "lineage_trees", "embedding_pca", "states/state_fraction_reporter_state",
                 "pseudotime_components"):
        png(full / "analysis" / f"{name}.png")
    bare.mkdir(parents=True)

    reports = [collect_dataset("full", full), collect_dataset("bare", bare, {"states": "no annotations registered"})]
    out = tmp_path / "results" / "report.html"
    write_report(out, reports, {"seed": 1, "dynaclr": {"train_on": []}})
    outline = Outline()
    outline.feed(out.read_text())
    text = " ".join(outline.text)

    for dataset in ("full", "bare"):
        assert f"dataset-{dataset}" in outline.ids
        assert all(f"{dataset}-{section}" in outline.ids for section in SECTIONS)
    assert {"parameters", "software"} <= outline.ids
    assert len(outline.images) == 5 and all(src.startswith("data:image/png;base64,") for src in outline.images)
    assert outline.external == []  # opens offline
    assert "0.9877" in text and "TRA" in text and "reporter_state" in text
    assert "agreement_with_truth.macro_f1" in text and "0.9321" in text  # nested metrics are shown
    assert "no annotations registered" in text  # a missing section says why
    assert "torch" in text and "seed" in text  # versions and parameters
    assert not list(out.parent.glob(".report*"))  # written atomically
