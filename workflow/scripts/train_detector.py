"""Snakemake adapter: train the detector on the datasets of `detector.train_on` (rule `train_detector`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

from pathlib import Path

from celltrails.detector.infer import pick_device
from celltrails.detector.losses import LossWeights
from celltrails.detector.model import DetectorConfig
from celltrails.detector.sampling import Augmentation, TrainingDataset
from celltrails.detector.train import train_detector
from celltrails.errors import InputError
from celltrails.logs import script_logging
from celltrails.ome_zarr_io import read_image_meta

with script_logging(snakemake.log[0]) as log:
    images, truths, names = snakemake.input.images, snakemake.input.ground_truth, snakemake.params.datasets
    dims = {read_image_meta(image).is_3d for image in images}
    if len(dims) > 1:
        raise InputError(f"detector.train_on mixes 2D and 3D datasets ({', '.join(names)}); train one "
                         "model per dimensionality")
    training = snakemake.params.training
    config = DetectorConfig(spatial_dims=3 if dims.pop() else 2, base_channels=training["base_channels"],
                            depth=training["depth"], embedding_dim=training["embedding_dim"])
    train_detector(
        [TrainingDataset(image, truth, name, nucleus_radius=radius)
         for image, truth, name, radius in zip(images, truths, names, snakemake.params.nucleus_radii)],
        snakemake.output.model,
        config=config,
        channel=snakemake.params.channel,
        crop_size=(training["crop_z"] if config.spatial_dims == 3 else 1, training["crop_yx"], training["crop_yx"]),
        batch_size=training["batch_size"],
        steps=training["steps"],
        lr=training["learning_rate"],
        seed=snakemake.params.seed,
        device=pick_device(snakemake.resources.get("gpu", 0), log),
        threads=snakemake.threads,
        log_dir=Path(snakemake.output.validation).parent,
        val_fraction=training["validation_fraction"],
        working_radius=training["working_radius"],
        division_bias=training["division_bias"],
        loss_weights=LossWeights(radius=training["radius_weight"]),
        ema_window=training["ema_window"],
        augmentation=Augmentation(intensity_scale=training["intensity_scale"], gamma=training["gamma"]),
        logger=log,
    )
