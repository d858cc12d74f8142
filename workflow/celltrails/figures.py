"""Figures people look at instead of reading tables; matplotlib with the file-only Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Circle  # noqa: E402

from celltrails.atomic import atomic_path  # noqa: E402
from celltrails.ome_zarr_io import open_image  # noqa: E402


def save_png(fig: plt.Figure, path: str | Path, dpi: int = 110) -> None:
    """Write a figure as PNG atomically (a killed job leaves no finished-looking file) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def _stretch(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, (1.0, 99.8))
    return np.clip((image - low) / max(high - low, 1e-9), 0.0, 1.0)


def overview_montage(image_path: str | Path, out_png: str | Path, n_frames: int = 6,
                     points: pd.DataFrame | None = None, title: str | None = None) -> None:
    """Max projections (over z) of evenly spaced frames, a row per channel, GT centres overlaid.

    Reads one frame at a time, so it is cheap whatever the series length.
    """
    array, meta = open_image(image_path)
    frames = np.unique(np.linspace(0, meta.n_frames - 1, min(n_frames, meta.n_frames)).round().astype(int))
    n_channels = meta.shape[1]
    aspect = meta.shape[3] / meta.shape[4]
    fig, axes = plt.subplots(n_channels, len(frames), squeeze=False,
                             figsize=(2.6 * len(frames), 2.6 * aspect * n_channels + 0.6))
    for col, t in enumerate(frames):
        frame = np.asarray(array[t]).max(axis=1)  # (c, y, x)
        for row in range(n_channels):
            ax = axes[row, col]
            ax.imshow(_stretch(frame[row].astype(np.float32)), cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t = {t}", fontsize=9)
            if col == 0:
                ax.set_ylabel(meta.channel_names[row], fontsize=9)
            if points is not None and row == 0:
                cells = points[points.t == t]
                for y, x, r in zip(cells.y, cells.x, cells.radius.fillna(3.0)):
                    ax.add_patch(Circle((x, y), r, fill=False, color="#ffcc00", lw=0.6))
    kind = "3D, max projection over z" if meta.is_3d else "2D"
    fig.suptitle(title or f"{Path(image_path).parent.name}: {meta.n_frames} frames, {kind}", fontsize=10)
    fig.tight_layout()
    save_png(fig, out_png)


def threshold_histogram(scores: np.ndarray, choice: dict, out_png: str | Path, title: str) -> None:
    """Histogram of a series' centre-peak scores with the calibrated, valley and used thresholds,
    the figure to look at when detection finds too many or too few cells."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.hist(np.asarray(scores, float), bins=np.linspace(0.0, 1.0, 101), color="#7f7f7f")
    ax.set_yscale("log")
    # The used line first and wide, so that the one it coincides with stays visible on top of it.
    lines = [("used", choice.get("threshold"), "#d62728", "-", 3.0),
             ("calibrated", choice.get("calibrated"), "#1f77b4", "--", 1.5),
             ("valley", choice.get("valley"), "#ff7f0e", ":", 1.5)]
    for name, value, colour, style, width in lines:
        if value is not None:
            ax.axvline(value, color=colour, linestyle=style, lw=width, label=f"{name} {value:.2f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("centre-peak score")
    ax.set_ylabel("peaks (log)")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, out_png)
