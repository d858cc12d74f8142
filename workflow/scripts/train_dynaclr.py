"""Snakemake adapter: train the DynaCLR encoder on the datasets of `dynaclr.train_on` (rule `train_dynaclr`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

from pathlib import Path

from celltrails.detector.infer import pick_device
from celltrails.dynaclr.normalization import Normalization
from celltrails.dynaclr.patches import PatchStore
from celltrails.dynaclr.train import TrainingSettings, tau_in_frames, train_dynaclr
from celltrails.errors import InputError
from celltrails.logs import script_logging

with script_logging(snakemake.log[0]) as log:
    names = snakemake.params.datasets
    stores = [PatchStore(folder, dataset=name) for folder, name in zip(snakemake.input.patches, names)]
    training = dict(snakemake.params.training)
    minutes = training.pop("tau_minutes")
    if minutes is not None:
        unknown = [name for name, known in zip(names, snakemake.params.time_known) if not known]
        if unknown:
            raise InputError(f"dynaclr.training.tau_minutes needs the frame interval of {unknown}: register their "
                             "time_interval (minutes) in the dataset sheet, or give tau in frames")
        training["tau"] = tau_in_frames(minutes, [store.attrs["time_interval"] for store in stores], names)
    encoder = {k: v for k, v in snakemake.params.encoder.items() if v is not None}
    train_dynaclr(
        stores,
        names,
        snakemake.output.model,
        settings=TrainingSettings.from_dict(training),
        encoder=encoder,
        normalization=Normalization.from_dict(snakemake.params.normalization),
        seed=snakemake.params.seed,
        device=pick_device(snakemake.resources.get("gpu", 0), log),
        threads=snakemake.threads,
        log_dir=Path(snakemake.output.history).parent,
        logger=log,
    )
