"""CTC results of linkers run on celltrails' detections, drawn exactly as celltrails draws its own.

The masks follow the workflow's default ``ctc_masks`` settings (read from the config schema, so the
two cannot drift apart): disks / ellipsoids of the detected radius grown into the nuclear foreground
of channel 0. The comparison on identical detections then differs in the linking only.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from celltrails.ctc_export import write_ctc_of_image

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def default_mask_settings() -> dict:
    """The workflow's default ``ctc_masks`` settings (shape, reach, smoothing, local_level)."""
    properties = yaml.safe_load(SCHEMA.read_text())["properties"]["ctc_masks"]["properties"]
    return {key: spec["default"] for key, spec in properties.items()}


def write_like_celltrails(tracks: pd.DataFrame, image: Path, res: Path) -> None:
    """Write ``tracks`` (celltrails' tracks columns) as a CTC result with celltrails' default masks."""
    write_ctc_of_image(tracks, res, image, channel=0, **default_mask_settings())
