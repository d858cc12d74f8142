"""DynaCLR checkpoints: encoder weights plus what is needed to feed the encoder the same way again.

One ``torch.save`` file of plain Python data (loaded with ``weights_only=True``), written
atomically. Keys: ``format``, ``version``, ``config`` (:class:`EncoderConfig` as a dict),
``state_dict``, ``channels`` (names of the image channels, in input order), ``patch`` (the
extraction ``size``, ``z_window`` and the model's input ``crop``), ``normalization``
(:class:`Normalization` as a dict), ``trained_on``, ``training`` and ``metrics``.
"""

from __future__ import annotations

import torch

from celltrails.atomic import atomic_path
from celltrails.dynaclr.model import ContrastiveEncoder, EncoderConfig
from celltrails.dynaclr.normalization import Normalization
from celltrails.serialize import load_checkpoint_payload, plain_data

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
    payload = load_checkpoint_payload(path, FORMAT, VERSION, "DynaCLR")
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
