"""Add the calibrated centre threshold to a checkpoint trained before training calibrated it.

Training now ends with :func:`celltrails.detector.train.calibrate_threshold` on its validation
frames. A checkpoint written before that lacks the threshold; this computes it the same way, on
the validation frames the checkpoint records, and rewrites the checkpoint (atomically) with it,
which is what retraining with the same seed would produce::

    python -m celltrails.detector.calibrate workflow/models/detector_3d.pt \\
        results/train3d/image.ome.zarr results/train3d/ground_truth.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from celltrails.detector.checkpoint import load_checkpoint, save_checkpoint
from celltrails.detector.sampling import Source, TrainingDataset
from celltrails.detector.train import calibrate_threshold


def calibrate_checkpoint(checkpoint: str | Path, image: str | Path, points: str | Path) -> dict | None:
    """Calibrate ``checkpoint`` on the validation frames of its (single) training dataset."""
    model, meta = load_checkpoint(checkpoint)
    trained = meta["training"].get("datasets", [])
    if len(trained) != 1:
        raise ValueError(f"{checkpoint}: calibrating needs exactly one recorded training dataset, "
                         f"found {len(trained)}")
    record = trained[0]
    binning = int(record.get("binning", 1))
    source = Source(TrainingDataset(image, points, record["name"]),
                    working_radius=meta["working_radius"] if binning > 1 else None,
                    scope=meta["normalization"].get("scope", "frame"))
    if source.binning != binning:
        raise ValueError(f"{checkpoint}: the dataset bins {source.binning}x, the checkpoint was trained at {binning}x")
    calibration = calibrate_threshold(model, [source], [record["val_frames"]])
    save_checkpoint(checkpoint, model, trained_on=meta["trained_on"], channel=meta["channel"],
                    normalization=meta["normalization"], metrics=meta["metrics"],
                    training=dict(meta["training"], threshold_calibration=calibration),
                    voxel_size_trained=meta["voxel_size_trained"])
    return calibration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("image", type=Path, help="the training dataset's image.ome.zarr")
    parser.add_argument("points", type=Path, help="its ground-truth points table")
    args = parser.parse_args()
    torch.set_num_threads(2)
    calibration = calibrate_checkpoint(args.checkpoint, args.image, args.points)
    print(calibration)


if __name__ == "__main__":
    main()
