"""Shared test fixtures: where the CTC data lives, and small image series written on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]
CTC_ROOT = REPO.parent / "shared" / "data" / "ctc"


@pytest.fixture
def ctc_root() -> Path:
    """The Cell Tracking Challenge data (never committed: read from ../shared, skip without it)."""
    if not CTC_ROOT.is_dir():
        pytest.skip(f"CTC data not found at {CTC_ROOT} (it is read from ../shared/data/ctc and never "
                    "committed); these tests run where that folder exists")
    return CTC_ROOT


def blob_frames(n_frames: int, shape: tuple[int, ...], seed: int = 0, dtype=np.uint16) -> np.ndarray:
    """(t, *shape) frames with a few bright blobs on noise: realistic enough for I/O checks."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(90, 110, size=(n_frames, *shape)).astype(dtype)
    grid = np.indices(shape[-2:])
    for t in range(n_frames):
        for _ in range(3):
            cy, cx = rng.uniform(4, np.array(shape[-2:]) - 4)
            blob = ((grid[0] - cy) ** 2 + (grid[1] - cx) ** 2) < 9
            frames[t][..., blob] += dtype(1000) if np.issubdtype(dtype, np.integer) else 1000.0
    return frames


@pytest.fixture
def tiff_folder(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A folder of 2D TIFF frames named with unpadded numbers (so lexical order would be wrong)."""
    frames = blob_frames(12, (40, 50))
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(frames):
        tifffile.imwrite(folder / f"img_{t}.tif", frame)
    return folder, frames
