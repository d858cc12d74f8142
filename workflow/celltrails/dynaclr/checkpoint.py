"""DynaCLR checkpoints: encoder weights plus what is needed to feed the encoder the same way again.

One ``torch.save`` file of plain Python data (loaded with ``weights_only=True``), written
atomically. Keys: ``format``, ``version``, ``config`` (:class:`EncoderConfig` as a dict),
``state_dict``, ``channels`` (names of the image channels, in input order), ``patch`` (the
extraction ``size``, ``z_window`` and the model's input ``crop``), ``normalization``
(:class:`Normalization` as a dict), ``trained_on``, ``training`` and ``metrics``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from celltrails.atomic import atomic_path
from celltrails.dynaclr.model import ContrastiveEncoder, EncoderConfig
from celltrails.dynaclr.normalization import Normalization
from celltrails.serialize import plain_data

FORMAT = "celltrails-dynaclr"
VERSION = 1


def save_checkpoint(path, model: ContrastiveEncoder, *, channels: list[str], patch: dict, normalization: Normalization,
                    trained_on: list[str], training: dict, metrics: dict) -> None:
    """Write ``model`` and its metadata to ``path`` atomically."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": plain_data(model.config.to_dict()),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "channels": [str(c) for c in channels],
        "patch": plain_data(dict(patch)),
        "normalization": normalization.to_dict(),
        "trained_on": [str(name) for name in trained_on],
        "training": plain_data(dict(training)),
        "metrics": plain_data(dict(metrics)),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path, device: str | torch.device = "cpu") -> tuple[ContrastiveEncoder, dict]:
    """(encoder on ``device`` in eval mode, metadata) from a file written by :func:`save_checkpoint`.

    The metadata has ``config``, ``channels``, ``patch``, ``normalization`` (a
    :class:`Normalization`), ``trained_on``, ``training`` and ``metrics``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DynaCLR checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable DynaCLR checkpoint: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a celltrails DynaCLR checkpoint")
    if payload.get("version", 0) > VERSION:
        raise ValueError(f"{path} has checkpoint version {payload['version']}; this celltrails reads up to "
                         f"{VERSION}: update celltrails")
    config = EncoderConfig.from_dict(payload["config"])
    model = ContrastiveEncoder(config)
    model.load_state_dict(payload["state_dict"])
    model.to(torch.device(device)).eval()
    meta = {
        "config": config,
        "channels": list(payload["channels"]),
        "patch": dict(payload["patch"]),
        "normalization": Normalization.from_dict(payload["normalization"]),
        "trained_on": list(payload.get("trained_on", [])),
        "training": dict(payload.get("training", {})),
        "metrics": dict(payload.get("metrics", {})),
    }
    return model, meta
