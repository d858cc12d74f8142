"""Training of the DynaCLR encoder on the patch stores of one or more datasets (CPU or CUDA).

Every step draws a batch of (anchor, positive[, negative]) patches with
:class:`celltrails.dynaclr.sampling.ContrastiveSampler`, normalizes them with the stored frame
statistics, augments every view on the model's device, centre-crops to the model input, and
optimizes NT-Xent (same-lineage pairs masked out of each other's negatives) or the triplet
loss with AdamW at a constant learning rate (as DynaCLR).

Validation uses whole lineages held out from training, fixed batches and a fixed augmentation
seed, so its numbers are comparable across steps: the loss and the top-1 retrieval accuracy
(for how many anchors is their own positive the nearest of the batch's positives in
projection space). The checkpoint keeps the weights with the lowest validation loss (VisCy
monitors ``loss/val`` the same way), or the last ones without a validation split.

Seeds (numpy, torch, the sampler and the augmentation generator) make a CPU run reproducible.
Stores that fit in ``cache_mb`` are read into memory once; larger ones are read lazily from
their chunks, so a dataset larger than memory trains too.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from celltrails.atomic import atomic_path
from celltrails.dynaclr.augment import AugmentConfig, augment, center_crop_yx
from celltrails.dynaclr.checkpoint import save_checkpoint
from celltrails.dynaclr.losses import LOSSES, nt_xent, triplet
from celltrails.dynaclr.model import ContrastiveEncoder, EncoderConfig, encoder_config
from celltrails.dynaclr.normalization import Normalization
from celltrails.dynaclr.patches import PatchStore
from celltrails.dynaclr.sampling import MIN_TRAINING_LINEAGES, Batch, ContrastiveSampler, split_by_lineage
from celltrails.errors import InputError
from celltrails.figures import save_png
from celltrails.logs import ProgressLog


@dataclass(frozen=True)
class TrainingSettings:
    """How to train; the config's ``dynaclr.training`` maps onto these fields one to one."""

    steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    loss: str = "ntxent"
    temperature: float = 0.2
    margin: float = 0.5
    sampling: str = "time_aware"
    tau: tuple[int, int] = (1, 1)
    crop: int = 32
    validation_fraction: float = 0.2
    validate_every: int = 100
    validation_batches: int = 4
    cache_mb: int = 2048
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss {self.loss!r} is not one of {LOSSES}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2: a contrastive batch needs negatives")

    @classmethod
    def from_dict(cls, data: Mapping) -> TrainingSettings:
        data = dict(data)
        if "augment" in data:
            data["augment"] = AugmentConfig.from_dict(data["augment"])
        if "tau" in data:
            tau = data["tau"]
            data["tau"] = (int(tau), int(tau)) if np.isscalar(tau) else (int(tau[0]), int(tau[1]))
        return cls(**data)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["augment"] = self.augment.to_dict()
        out["tau"] = list(self.tau)
        return out


def tau_in_frames(minutes: Sequence[float], intervals: Sequence[float], names: Sequence[str]) -> tuple[int, int]:
    """A tau range in minutes as frames (nearest, halves up, at least 1); the training datasets must share
    a frame interval."""
    if not intervals:
        raise ValueError("tau_minutes needs at least one training dataset")
    if len(set(intervals)) > 1:
        raise ValueError(f"tau_minutes needs one time interval, but {list(names)} have {list(intervals)} minutes")
    interval = intervals[0]
    if not interval > 0:
        raise ValueError(f"tau_minutes needs the time interval of {list(names)}; register time_interval")
    low, high = (max(1, math.floor(m / interval + 0.5)) for m in minutes)
    return low, max(low, high)


class PatchPool:
    """Several patch stores seen as one index with globally unique track and lineage ids."""

    def __init__(self, stores: Sequence[PatchStore], names: Sequence[str]):
        if not stores:
            raise ValueError("no patch stores to train on")
        first = stores[0]
        for store, name in zip(stores[1:], names[1:]):
            if (store.channel_names != first.channel_names or store.patch_shape != first.patch_shape
                    or store.attrs.get("downsample_yx", 1) != first.attrs.get("downsample_yx", 1)):
                raise ValueError(f"dataset {name!r}: patches {store.channel_names} {store.patch_shape} differ from "
                                 f"{names[0]!r}'s {first.channel_names} {first.patch_shape}; train on datasets "
                                 "with the same channels and patch sizes")
        self.stores = list(stores)
        self.names = list(names)
        parts = []
        for source, store in enumerate(stores):
            part = store.index[["t", "track_id", "parent_track_id", "lineage_id"]].copy()
            part["source"], part["row"] = source, np.arange(len(store))
            parts.append(part)
        index = pd.concat(parts, ignore_index=True)
        track_keys = list(zip(index["source"], index["track_id"]))
        codes, uniques = pd.factorize(pd.Series(track_keys))
        global_of = {key: code for code, key in enumerate(uniques)}
        index["parent_track_id"] = [global_of.get((s, p), -1) for s, p in zip(index["source"], index["parent_track_id"])]
        index["track_id"] = codes
        index["lineage_id"] = pd.factorize(pd.Series(list(zip(index["source"], index["lineage_id"]))))[0]
        self.index = index

    @property
    def channel_names(self) -> list[str]:
        return self.stores[0].channel_names

    @property
    def patch_shape(self) -> tuple[int, ...]:
        return self.stores[0].patch_shape

    @property
    def downsample_yx(self) -> int:
        return int(self.stores[0].attrs.get("downsample_yx", 1))

    def cache_if_fits(self, cache_mb: float, logger: logging.Logger) -> None:
        total = sum(store.nbytes for store in self.stores)
        if total <= cache_mb * 2**20:
            for store in self.stores:
                store.load_into_memory()
            logger.info("patches (%.1f MiB) held in memory", total / 2**20)
        else:
            logger.info("patches (%.1f MiB) exceed cache_mb=%d: read lazily from the stores", total / 2**20,
                        cache_mb)

    def read(self, rows: np.ndarray, normalization: Normalization) -> np.ndarray:
        """Normalized float32 patches of global ``rows``, in that order."""
        out = np.empty((len(rows), *self.patch_shape), np.float32)
        source = self.index["source"].to_numpy()[rows]
        local = self.index["row"].to_numpy()[rows]
        for s in np.unique(source):
            mask = source == s
            out[mask] = self.stores[s].read_normalized(local[mask], normalization)
        return out


def _views(pool: PatchPool, batch: Batch, normalization: Normalization, with_negative: bool, crop: int,
           augmentation: AugmentConfig | None, generator: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    rows = [batch.anchor, batch.positive] + ([batch.negative] if with_negative else [])
    views = []
    for r in rows:
        tensor = torch.from_numpy(pool.read(r, normalization)).to(device)
        if augmentation is not None:
            tensor = augment(tensor, augmentation, generator)
        views.append(center_crop_yx(tensor, crop))
    return views


def _loss(model: ContrastiveEncoder, views: list[torch.Tensor], same_group: torch.Tensor,
          settings: TrainingSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, anchor projections, positive projections)."""
    _, projections = model(torch.cat(views))
    parts = projections.split(views[0].shape[0])
    if settings.loss == "ntxent":
        loss = nt_xent(parts[0], parts[1], settings.temperature, same_group)
    else:
        loss = triplet(parts[0], parts[1], parts[2], settings.margin)
    return loss, parts[0], parts[1]


def retrieval_accuracy(anchor: torch.Tensor, positive: torch.Tensor) -> float:
    """Fraction of anchors whose own positive is the most similar (cosine) of all positives."""
    a = torch.nn.functional.normalize(anchor.float(), dim=1)
    p = torch.nn.functional.normalize(positive.float(), dim=1)
    best = (a @ p.T).argmax(dim=1)
    return float((best == torch.arange(len(a), device=a.device)).float().mean())


def _validate(model, pool, batches, samplers_group, normalization, settings, seed, device) -> dict[str, float]:
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    losses, accuracies = [], []
    with torch.no_grad():
        for batch in batches:
            views = _views(pool, batch, normalization, settings.loss == "triplet", settings.crop,
                           settings.augment, generator, device)
            same = torch.from_numpy(samplers_group(batch)).to(device)
            loss, a, p = _loss(model, views, same, settings)
            losses.append(float(loss))
            accuracies.append(retrieval_accuracy(a, p))
    model.train()
    return {"val_loss": float(np.mean(losses)), "val_retrieval_accuracy": float(np.mean(accuracies))}


def train_dynaclr(stores: Sequence[PatchStore], names: Sequence[str], out_checkpoint: str | Path, *,
                  settings: TrainingSettings, encoder: Mapping | None = None,
                  normalization: Normalization | None = None, seed: int = 42, device: str = "cpu",
                  threads: int | None = None, log_dir: str | Path | None = None,
                  logger: logging.Logger | None = None) -> dict:
    """Train an encoder on the patches of ``stores`` and write the checkpoint; returns its metrics.

    ``encoder`` holds ``preset`` (``small`` or ``convnext_tiny``) and overrides of
    :class:`EncoderConfig` fields; channels and z window come from the patches. ``log_dir``
    receives ``history.tsv`` and ``loss_curve.png``.
    """
    logger = logger or logging.getLogger(__name__)
    normalization = normalization or Normalization()
    device = torch.device(device)
    previous_threads = torch.get_num_threads()
    if device.type == "cpu" and threads:
        torch.set_num_threads(int(threads))
    try:
        return _train(stores, names, out_checkpoint, settings, dict(encoder or {}), normalization, seed, device,
                      log_dir, logger)
    finally:
        torch.set_num_threads(previous_threads)


def _encoder_for(pool: PatchPool, options: dict, crop: int) -> EncoderConfig:
    channels, z_window, size, _ = pool.patch_shape
    options = dict(options)
    preset = options.pop("preset", "small")
    if options.get("stem_kernel_z") is None:
        options["stem_kernel_z"] = z_window
    config = encoder_config(preset, in_channels=channels, z_window=z_window, **options)
    if crop > size or crop % config.size_multiple:
        raise ValueError(f"training crop {crop} must be <= the patch size {size} and a multiple of "
                         f"{config.size_multiple} (the encoder's downsampling)")
    return config


def _train(stores, names, out_checkpoint, settings: TrainingSettings, encoder_options: dict,
           normalization: Normalization, seed: int, device: torch.device, log_dir, logger) -> dict:
    np.random.seed(seed)
    torch.manual_seed(seed)
    pool = PatchPool(stores, names)
    for store, name in zip(stores, names):
        normalization.check(store.statistics, store.channel_names, name)
    config = _encoder_for(pool, encoder_options, settings.crop)
    pool.cache_if_fits(settings.cache_mb, logger)

    n_lineages = pool.index["lineage_id"].nunique()
    if n_lineages < MIN_TRAINING_LINEAGES:
        raise InputError(f"the patches of {list(names)} hold {n_lineages} lineage: contrastive training needs cells "
                         f"of at least {MIN_TRAINING_LINEAGES} lineages (negatives); train on more data")
    train_rows, val_rows = split_by_lineage(pool.index, settings.validation_fraction, seed)
    sampler = ContrastiveSampler(pool.index, settings.sampling, train_rows, settings.tau, seed=seed)
    val_batches, val_sampler = [], None
    if val_rows.size:
        try:
            val_sampler = ContrastiveSampler(pool.index, settings.sampling, val_rows, settings.tau, seed=seed + 1)
            val_batches = [val_sampler.batch(settings.batch_size, negatives=settings.loss == "triplet")
                           for _ in range(settings.validation_batches)]
            val_batches = [b for b in val_batches if len(b.anchor) >= 2]
        except ValueError as err:  # e.g. no held-out track long enough for tau
            logger.warning("no validation: %s", err)
    if sampler.n_lineages < settings.batch_size:
        logger.info("%d training lineages for a batch of %d: batches also hold several tracks of one lineage "
                    "(masked from each other's negatives)", sampler.n_lineages, settings.batch_size)

    model = ContrastiveEncoder(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    generator = torch.Generator(device=device).manual_seed(seed)
    n_parameters = sum(p.numel() for p in model.parameters())
    logger.info("training DynaCLR encoder (%d parameters, %s) on %s: %d steps x batch %d, %s sampling, tau %s, "
                "%s loss, crop %d, device %s; %d training / %d validation patches", n_parameters,
                "x".join(map(str, config.dims)), list(names), settings.steps, settings.batch_size,
                settings.sampling, settings.tau, settings.loss, settings.crop, device, train_rows.size,
                val_rows.size)

    rows: list[dict] = []
    best_loss, best_state, best_step = math.inf, None, None
    progress = ProgressLog(logger, settings.steps, "DynaCLR training steps")
    running: list[float] = []
    start = time.perf_counter()
    model.train()
    for step in range(1, settings.steps + 1):
        batch = sampler.batch(settings.batch_size, negatives=settings.loss == "triplet")
        views = _views(pool, batch, normalization, settings.loss == "triplet", settings.crop, settings.augment,
                       generator, device)
        loss, _, _ = _loss(model, views, torch.from_numpy(sampler.same_group(batch)).to(device), settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"DynaCLR training diverged at step {step} (loss {value}); lower the "
                                     "learning rate")
        running.append(value)
        progress.advance()
        if step % settings.validate_every == 0 or step == settings.steps:
            row = {"step": step, "train_loss": float(np.mean(running)), "seconds": time.perf_counter() - start}
            running = []
            if val_batches:
                row.update(_validate(model, pool, val_batches, val_sampler.same_group, normalization, settings,
                                     seed + 2, device))
                if row["val_loss"] < best_loss:
                    best_loss, best_step = row["val_loss"], step
                    best_state = copy.deepcopy(model.state_dict())
            rows.append(row)
            logger.info("step %d: train loss %.4f%s", step, row["train_loss"],
                        f", val loss {row['val_loss']:.4f}, val retrieval accuracy "
                        f"{row['val_retrieval_accuracy']:.3f}" if val_batches else "")
            if log_dir is not None:
                _write_history(Path(log_dir), rows)
    elapsed = time.perf_counter() - start
    if best_state is not None:
        model.load_state_dict(best_state)
    chosen = next((r for r in rows if r["step"] == best_step), rows[-1])
    metrics = {k: v for k, v in chosen.items() if k.startswith("val_")}
    metrics.update({"step": chosen["step"], "selected": "best" if best_state is not None else "last",
                    "steps": settings.steps, "train_loss_final": rows[-1]["train_loss"], "seconds": elapsed,
                    "seconds_per_step": elapsed / settings.steps, "parameters": n_parameters,
                    "device": str(device)})
    training = settings.to_dict() | {"seed": seed, "datasets": list(names), "train_patches": int(train_rows.size),
                                     "val_patches": int(val_rows.size)}
    model.eval()
    save_checkpoint(out_checkpoint, model, channels=pool.channel_names,
                    patch={"size": pool.patch_shape[2], "z_window": pool.patch_shape[1], "crop": settings.crop,
                           "downsample_yx": pool.downsample_yx},
                    normalization=normalization, trained_on=list(names), training=training, metrics=metrics)
    logger.info("DynaCLR training done in %.0f s (%.3f s/step); checkpoint from step %d (%s) -> %s", elapsed,
                elapsed / settings.steps, chosen["step"], metrics["selected"], out_checkpoint)
    return metrics


def _write_history(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    with atomic_path(folder / "history.tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    plot_history(table, folder / "loss_curve.png")


def plot_history(table: pd.DataFrame, path: Path) -> None:
    """Training and validation loss (and validation retrieval accuracy) against the step."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.2))
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(table["step"], table["train_loss"], label="training")
    if "val_loss" in table:
        loss_axes.plot(table["step"], table["val_loss"], label="validation")
        accuracy_axes.plot(table["step"], table["val_retrieval_accuracy"], color="C1")
    loss_axes.set(xlabel="step", ylabel="loss", title="contrastive loss")
    loss_axes.legend()
    accuracy_axes.set(xlabel="step", ylabel="top-1 retrieval accuracy", ylim=(0, 1.02),
                      title="validation: own positive is nearest")
    figure.tight_layout()
    save_png(figure, path)
