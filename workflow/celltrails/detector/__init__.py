"""CELLECT-style cell detector: a small U-Net on frame pairs (t, t+1) that predicts cell centres,
nucleus extent and radius, division states and a per-cell identity embedding for linking.

Modules: :mod:`.model` (network and :class:`DetectorConfig`), :mod:`.normalize` (per-frame
percentile normalisation shared by training and inference), :mod:`.checkpoint` (save/load with
metadata), :mod:`.targets` (dense targets from point annotations), :mod:`.losses`,
:mod:`.sampling` (crops streamed from OME-Zarr, augmentation), :mod:`.train`
(:func:`train_detector`). Names below are imported lazily, so ``import celltrails.detector``
stays cheap (no torch import until a model is needed).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DetectorConfig": "model", "CellDetector": "model",
    "normalize_frame": "normalize",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "train_detector": "train",
}

__all__ = ["CellDetector", "DetectorConfig", "load_checkpoint", "normalize_frame", "save_checkpoint",
           "train_detector"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
