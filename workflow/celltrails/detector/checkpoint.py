"""Detector checkpoints: weights plus everything needed to use and to trust them.

One ``torch.save`` file (written atomically: a killed job leaves no file that looks finished)
holding plain Python data only, so :func:`load_checkpoint` uses ``torch.load(weights_only=True)``
and never unpickles code. Keys: ``format``, ``version``, ``config`` (a
:class:`DetectorConfig` as a dict), ``state_dict``, ``trained_on`` (dataset names), ``channel``
(image channel the model reads), ``normalization`` (e.g. ``{"method": "percentile", "low": 1.0,
"high": 99.8}``: inference calls ``normalize_frame(frame, low, high)``), ``training`` (the
training settings; ``training["working_radius"]`` is the median nucleus radius the network saw, in
its input pixels, and ``training["datasets"][i]["binning"]`` how each training image was binned to
get there, see :mod:`celltrails.detector.scale`; ``training["threshold_calibration"]`` the centre
threshold chosen on the validation frames, the middle of the plateau of near-best F1), ``metrics`` (validation results) and
``voxel_size_trained`` (z, y, x in micrometres of the training data; None if unknown).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from celltrails.atomic import atomic_path
from celltrails.detector.model import CellDetector, DetectorConfig
from celltrails.detector.scale import DEFAULT_WORKING_RADIUS
from celltrails.serialize import load_checkpoint_payload, plain_data

FORMAT = "celltrails-detector"
DEFAULT_THRESHOLD = 0.5  # centre threshold of a checkpoint without a calibrated one
VERSION = 1


def save_checkpoint(path, model: CellDetector, *, trained_on: list[str], channel: int, normalization: dict,
                    training: dict, metrics: dict,
                    voxel_size_trained: Sequence[float] | None = None) -> None:
    """Write ``model`` and its metadata to ``path`` atomically.

    ``voxel_size_trained`` defaults to ``training["voxel_size"]`` when that is given.
    """
    if voxel_size_trained is None:
        voxel_size_trained = training.get("voxel_size")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "trained_on": [str(name) for name in trained_on],
        "channel": int(channel),
        "normalization": plain_data(dict(normalization)),
        "training": plain_data(dict(training)),
        "metrics": plain_data(dict(metrics)),
        "voxel_size_trained": None if voxel_size_trained is None else [float(v) for v in voxel_size_trained],
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path, device="cpu") -> tuple[CellDetector, dict]:
    """(model on ``device`` in eval mode, metadata dict) from a checkpoint written by :func:`save_checkpoint`.

    The dict has ``config`` (a :class:`DetectorConfig`), ``trained_on``, ``channel``,
    ``normalization``, ``training``, ``metrics``, ``voxel_size_trained`` ((z, y, x) tuple or None),
    ``working_radius`` (xy px at the network's input; checkpoints from before binning existed were
    trained at ~``DEFAULT_WORKING_RADIUS``) and ``binning`` (the y, x binning of the training images
    when they all shared one, else None) and ``threshold`` (the calibrated centre threshold,
    else ``DEFAULT_THRESHOLD``).
    """
    payload = load_checkpoint_payload(path, FORMAT, VERSION, "detector")
    config = DetectorConfig.from_dict(payload["config"])
    model = CellDetector(config)
    model.load_state_dict(payload["state_dict"])
    model.to(torch.device(device)).eval()
    voxel = payload.get("voxel_size_trained")
    training = dict(payload.get("training", {}))
    binnings = {int(d.get("binning", 1)) for d in training.get("datasets", [])} or {1}
    meta = {
        "config": config,
        "trained_on": list(payload.get("trained_on", [])),
        "channel": int(payload.get("channel", 0)),
        "normalization": dict(payload.get("normalization", {})),
        "training": training,
        "metrics": dict(payload.get("metrics", {})),
        "voxel_size_trained": None if voxel is None else tuple(float(v) for v in voxel),
        "working_radius": float(training.get("working_radius", DEFAULT_WORKING_RADIUS)),
        "binning": binnings.pop() if len(binnings) == 1 else None,
        "threshold": float((training.get("threshold_calibration") or {}).get("threshold", DEFAULT_THRESHOLD)),
    }
    return model, meta
