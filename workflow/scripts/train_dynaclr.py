"""Snakemake adapter: train the DynaCLR encoder on the datasets of `dynaclr.train_on` (rule `train_dynaclr`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

from pathlib import Path

from celltrails.detector.infer import pick_device
from celltrails.dynaclr.normalization import Normalization
from celltrails.dynaclr.patches import PatchStore
from celltrails.dynaclr.train import TrainingSettings, tau_in_frames, train_dynaclr
from celltrails.logs import script_logging

with script_logging(snakemake.log[0]) as log:
    settings, names = snakemake.params.settings, snakemake.params.datasets
    stores = [PatchStore(folder, dataset=name) for folder, name in zip(snakemake.input.patches, names)]
    training = dict(settings["training"])
    minutes = training.pop("tau_minutes")
    if minutes is not None:
        training["tau"] = tau_in_frames(minutes, [store.attrs["time_interval"] for store in stores], names)
    encoder = {k: v for k, v in settings["encoder"].items() if v is not None}
    train_dynaclr(
        stores,
        names,
        snakemake.output.model,
        settings=TrainingSettings.from_dict(training),
        encoder=encoder,
        normalization=Normalization.from_dict(settings["normalization"]),
        seed=snakemake.params.seed,
        device=pick_device(snakemake.resources.get("gpu", 0), log),
        threads=snakemake.threads,
        log_dir=Path(snakemake.output.history).parent,
        logger=log,
    )
