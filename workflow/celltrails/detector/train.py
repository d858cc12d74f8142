"""Training of the cell detector on annotated series (CPU or CUDA).

:func:`train_detector` streams random 3-frame crops from OME-Zarr stores
(:mod:`celltrails.detector.sampling`), runs both passes of every sample in one batch, optimises
the masked dense losses plus the contrastive embedding loss (:mod:`celltrails.detector.losses`)
with AdamW (linear warm-up, cosine decay, gradient clipping), keeps an exponential moving average
of the weights (:func:`ema_decay`; validated and saved instead of the raw weights), validates
after every epoch on fixed, unaugmented crops of held-out frames, and writes

* ``log_dir/validation.tsv``: one row per epoch (training losses of the raw weights; validation
  losses, detection precision/recall/F1 and embedding successor accuracy of the averaged ones;
  learning rate, time),
* ``log_dir/loss_curve.png``: training and validation loss, validation F1 and successor accuracy,
  and the calibration (validation F1 by centre threshold, the plateau and the threshold kept),
* the checkpoint (atomically, :func:`celltrails.detector.checkpoint.save_checkpoint`) of the
  epoch with the best validation F1 (``select="best"``) or of the last epoch, with the centre
  threshold calibrated on the whole validation frames (:func:`calibrate_threshold`), which
  inference uses by default.

Seeds (python, numpy, torch) make a CPU run reproducible for a given seed, batch size and
number of loader workers. On CUDA, bf16 autocast is used where the GPU supports it.

Validation metrics
------------------
* detection: detections are local maxima (3x3(x3) neighbourhood) of sigmoid(center) above
  ``detection_threshold``; they are matched one-to-one to the annotated centres (Hungarian, on
  distance in xy pixels with z scaled by the voxel size) when closer than the cell's radius, with
  the same matcher as the workflow's detection metrics (:func:`celltrails.detector.metrics.match_frame`).
  Cells and detections within ``border`` pixels of a crop's y/x edge are not counted (a cell cut
  by the crop edge is judged in the tile that contains it).
* embedding successor accuracy: for each annotated cell at t whose track continues at t+1 in the
  crop, among the annotated cells at t+1 within ``max(10, 3 * radius)`` xy pixels (the linker's
  default search region) the one with the nearest embedding (t from pass (t, t+1), t+1 from pass
  (t+1, t+2)) must be the same cell. Also reported for the ambiguous cells only (>= 2 candidates).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from celltrails.atomic import atomic_path
from celltrails.detector.checkpoint import save_checkpoint
from celltrails.detector.losses import LossWeights, dense_losses, embedding_loss, total_loss
from celltrails.detector.metrics import match_frame
from celltrails.detector.model import CellDetector, DetectorConfig, count_parameters
from celltrails.detector.normalize import normalization_settings
from celltrails.detector.sampling import (
    Augmentation,
    CropSampler,
    SampleStream,
    Source,
    collate,
    gather_embeddings,
    open_sources,
    split_frames,
)
from celltrails.detector.targets import FramePoints
from celltrails.figures import save_png
from celltrails.logs import ProgressLog

LOSS_NAMES = ("center", "foreground", "radius", "division", "embedding")
SEARCH_FACTOR, MIN_SEARCH_RADIUS = 3.0, 10.0  # linker defaults (celltrails.linking.LinkParams)
CALIBRATION_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 19))  # 0.05 .. 0.9
CALIBRATION_TOLERANCE_CELLS = 2.0  # F1 within this many cells' worth of the best is as good (plateau_threshold)


# -- evaluation helpers ----------------------------------------------------------------------
def detect_peaks(center_logits: torch.Tensor, threshold: float = 0.5) -> list[np.ndarray]:
    """Local maxima of sigmoid(center) above ``threshold``: one (n, 3) int array (z, y, x) per item."""
    prob = torch.sigmoid(center_logits.float())
    kz = 3 if prob.shape[2] > 1 else 1
    pooled = F.max_pool3d(prob, kernel_size=(kz, 3, 3), stride=1, padding=(kz // 2, 1, 1))
    peaks = (prob == pooled) & (prob > threshold)
    return [torch.nonzero(peaks[i, 0]).cpu().numpy() for i in range(prob.shape[0])]


def _scaled(zyx: np.ndarray, voxel_size: Sequence[float]) -> np.ndarray:
    """Positions in xy-pixel units (z and y rescaled by voxel_size / voxel_size_x)."""
    scale = np.asarray(voxel_size, float) / float(voxel_size[2])
    return np.asarray(zyx, float).reshape(-1, 3) * scale


def match_points(detected: np.ndarray, gt: np.ndarray, gt_radius: np.ndarray,
                 voxel_size: Sequence[float]) -> np.ndarray:
    """(k, 2) matched (detection, ground-truth) index pairs within each GT radius, in xy-pixel units,
    by the workflow's one-to-one matcher."""
    found, truth, _ = match_frame(_scaled(detected, voxel_size), _scaled(gt, voxel_size),
                                  np.asarray(gt_radius, float))
    return np.stack([found, truth], axis=1).astype(np.int64)


def detection_counts(detected: np.ndarray, cells: FramePoints, shape: Sequence[int],
                     voxel_size: Sequence[float], border: int = 0) -> tuple[int, int, int]:
    """(tp, fp, fn) of detections against the annotated cells of one crop (see module docstring)."""
    return _match_and_count(detected, cells, shape, voxel_size, border)[:3]


def _match_and_count(detected: np.ndarray, cells: FramePoints, shape: Sequence[int],
                     voxel_size: Sequence[float], border: int = 0) -> tuple[int, int, int, np.ndarray]:
    detected = np.asarray(detected, float).reshape(-1, 3)
    pairs = match_points(detected, cells.zyx, cells.radius, voxel_size)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)

    def counted(p: np.ndarray) -> np.ndarray:
        low, high = border - 0.5, np.asarray(shape[1:], float) - border - 0.5
        return np.all((p[:, 1:] >= low) & (p[:, 1:] < high), axis=1)

    det_in, gt_in = counted(detected), counted(cells.zyx)
    matched_det = np.zeros(len(det_in), bool)
    matched_gt = np.zeros(len(gt_in), bool)
    matched_det[pairs[:, 0]] = True
    matched_gt[pairs[:, 1]] = True
    tp = int((matched_gt & gt_in).sum())
    fp = int((~matched_det & det_in).sum())
    fn = int((~matched_gt & gt_in).sum())
    return tp, fp, fn, pairs[gt_in[pairs[:, 1]]]


def successor_counts(emb_t: np.ndarray, emb_next: np.ndarray, cells_t: FramePoints, cells_next: FramePoints,
                     voxel_size: Sequence[float]) -> tuple[int, int, int, int]:
    """(correct, total, correct among ambiguous, ambiguous) embedding successor decisions."""
    correct = total = correct_amb = ambiguous = 0
    if not len(cells_t) or not len(cells_next):
        return 0, 0, 0, 0
    pos_t, pos_n = _scaled(cells_t.zyx, voxel_size), _scaled(cells_next.zyx, voxel_size)
    for i, cell in enumerate(cells_t.cell_id):
        successor = np.flatnonzero(cells_next.cell_id == cell)
        if not len(successor):
            continue
        reach = max(MIN_SEARCH_RADIUS, SEARCH_FACTOR * cells_t.radius[i])
        candidates = np.flatnonzero(np.linalg.norm(pos_n - pos_t[i], axis=1) <= reach)
        if successor[0] not in candidates:
            continue
        distance = np.linalg.norm(emb_next[candidates] - emb_t[i], axis=1)
        hit = candidates[np.argmin(distance)] == successor[0]
        total += 1
        correct += int(hit)
        if len(candidates) >= 2:
            ambiguous += 1
            correct_amb += int(hit)
    return correct, total, correct_amb, ambiguous


def _f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


# -- validation ------------------------------------------------------------------------------
def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def _step_losses(model: CellDetector, batch: dict, weights: LossWeights, device: torch.device,
                 amp: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    x = batch["x"].to(device, non_blocking=True)
    targets = {k: v.to(device, non_blocking=True) for k, v in batch["targets"].items()}
    with _autocast(device, amp):
        out = model(x)
    parts = dense_losses(out, targets, weights)
    emb = gather_embeddings(out["embedding"], batch["emb_index"].to(device), batch["emb_voxels"].to(device))
    parts["embedding"] = embedding_loss(emb, batch["relation"].to(device), weights)
    return total_loss(parts, weights), parts, out


@torch.no_grad()
def validate(model: CellDetector, batches: list[dict], weights: LossWeights, device: torch.device, *,
             amp: bool = True, threshold: float = 0.5, border: int = 4) -> dict[str, float]:
    """Losses, detection precision/recall/F1 and embedding successor accuracy on validation batches."""
    was_training = model.training
    model.eval()
    sums = {name: 0.0 for name in ("loss", *LOSS_NAMES)}
    tp = fp = fn = correct = total = correct_amb = ambiguous = 0
    for batch in batches:
        loss, parts, out = _step_losses(model, batch, weights, device, amp)
        sums["loss"] += float(loss.detach())
        for name, value in parts.items():
            sums[name] += float(value)
        samples = batch["samples"]
        n = len(samples)
        peaks = detect_peaks(out["center"][:n], threshold)
        embedding = out["embedding"].float().cpu().numpy()
        for b, sample in enumerate(samples):
            shape = sample["image"].shape[1:]
            cells_t, cells_next = sample["cells"]
            counts = detection_counts(peaks[b], cells_t, shape, sample["voxel_size"], border)
            tp, fp, fn = tp + counts[0], fp + counts[1], fn + counts[2]
            v0, _ = cells_t.centre_voxels(shape)
            v1, _ = cells_next.centre_voxels(shape)
            e0 = embedding[b][:, v0[:, 0], v0[:, 1], v0[:, 2]].T
            e1 = embedding[b + n][:, v1[:, 0], v1[:, 1], v1[:, 2]].T
            c = successor_counts(e0, e1, cells_t, cells_next, sample["voxel_size"])
            correct, total = correct + c[0], total + c[1]
            correct_amb, ambiguous = correct_amb + c[2], ambiguous + c[3]
    model.train(was_training)
    n_batches = max(1, len(batches))
    precision, recall, f1 = _f1(tp, fp, fn)
    metrics = {f"val_{k}": v / n_batches for k, v in sums.items()}
    metrics.update({
        "val_precision": precision, "val_recall": recall, "val_f1": f1,
        "val_tp": tp, "val_fp": fp, "val_fn": fn,
        "val_embedding_accuracy": correct / total if total else float("nan"),
        "val_embedding_accuracy_ambiguous": correct_amb / ambiguous if ambiguous else float("nan"),
        "val_successor_cells": total, "val_successor_ambiguous": ambiguous,
    })
    return metrics


@torch.no_grad()
def evaluate_frames(model: CellDetector, source: Source, frames: Sequence[int] | None = None, *,
                    threshold: float = 0.5, device: str | torch.device = "cpu") -> dict[str, float]:
    """Detection precision/recall/F1, mean localisation error of matched detections and mean
    absolute radius error there (xy pixels), embedding successor accuracy, and division calls
    (``max(ch0 of (t, t+1), ch1 of (t-1, t)) > 0.5`` at the annotated centres, against the
    annotated mothers and daughters) on whole frames.

    Each frame t is run as the pass (t, t+1) (the last frame as (t, t)) on the whole field of
    view, zero-padded to the network's size multiples; a small stand-in for tiled inference,
    for tests and training reports.
    """
    frames = sorted(source.frames if frames is None else frames)
    shape = np.array(source.shape)
    outputs = {t: (detect_peaks(out["center"], threshold)[0], out["embedding"][0].cpu().numpy(),
                   out["radius"][0, 0].cpu().numpy(), torch.sigmoid(out["division"][0]).cpu().numpy())
               for t, out in _whole_frame_passes(model, source, frames, device)}
    tp = fp = fn = correct = total = correct_amb = ambiguous = 0
    offsets, radius_errors, division_prob, division_event = [], [], [], []
    for t in frames:
        peaks, emb, radius, division = outputs[t]
        cells_here = source.frame_points(t)
        if len(cells_here):
            v, _ = cells_here.centre_voxels(shape)
            v = np.clip(v, 0, shape - 1)
            prob = division[0][tuple(v.T)]  # mother: ch0 of pass (t, t+1)
            if t - 1 in outputs:  # daughter: ch1 of pass (t-1, t), as inference combines them
                prob = np.maximum(prob, outputs[t - 1][3][1][tuple(v.T)])
            division_prob.append(prob)
            division_event.append(cells_here.mother | cells_here.daughter)
        peaks = peaks[np.all(peaks < shape, axis=1)]
        cells = source.frame_points(t)
        counts = _match_and_count(peaks, cells, shape, source.voxel_size, 0)
        tp, fp, fn = tp + counts[0], fp + counts[1], fn + counts[2]
        for d, g in counts[3]:
            offsets.append(float(np.linalg.norm(_scaled(peaks[d], source.voxel_size)
                                                - _scaled(cells.zyx[g], source.voxel_size))))
            radius_errors.append(abs(float(radius[tuple(peaks[d])]) - cells.radius[g]))
        if t + 1 in outputs:
            nxt = source.frame_points(t + 1)
            v0, _ = cells.centre_voxels(shape)
            v1, _ = nxt.centre_voxels(shape)
            v0, v1 = np.clip(v0, 0, shape - 1), np.clip(v1, 0, shape - 1)
            e0 = emb[:, v0[:, 0], v0[:, 1], v0[:, 2]].T
            e1 = outputs[t + 1][1][:, v1[:, 0], v1[:, 1], v1[:, 2]].T
            c = successor_counts(e0, e1, cells, nxt, source.voxel_size)
            correct, total = correct + c[0], total + c[1]
            correct_amb, ambiguous = correct_amb + c[2], ambiguous + c[3]
    precision, recall, f1 = _f1(tp, fp, fn)
    prob = np.concatenate(division_prob) if division_prob else np.zeros(0)
    event = np.concatenate(division_event) if division_event else np.zeros(0, bool)
    called = prob > 0.5
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn,
            "division_events": int(event.sum()), "division_called": int(called.sum()),
            "division_recall": float((called & event).sum() / event.sum()) if event.any() else float("nan"),
            "division_precision": (float((called & event).sum() / called.sum()) if called.any()
                                   else float("nan")),
            "localization_error": float(np.mean(offsets)) if offsets else float("nan"),
            "radius_error": float(np.mean(radius_errors)) if radius_errors else float("nan"),
            "embedding_accuracy": correct / total if total else float("nan"),
            "embedding_accuracy_ambiguous": correct_amb / ambiguous if ambiguous else float("nan"),
            "successor_cells": total, "successor_ambiguous": ambiguous}


def _whole_frame_passes(model: CellDetector, source: Source, frames: Sequence[int],
                        device: str | torch.device) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """(t, network output) of the pass (t, t+1) (the last frame: (t, t)) on each whole frame,
    zero-padded to the network's size multiples."""
    device = torch.device(device)
    model.eval()
    shape = np.array(source.shape)
    multiples = np.array([model.z_multiple, model.size_multiple, model.size_multiple])
    padded = -(-shape // multiples) * multiples
    if model.config.spatial_dims == 2:
        padded[0] = 1
    cache: dict[int, np.ndarray] = {}

    def frame(t: int) -> np.ndarray:
        if t not in cache:
            cache[t] = source.read(t, (0, 0, 0), padded)
        return cache[t]

    last = source.meta.n_frames - 1
    for t in frames:
        x = torch.from_numpy(np.stack([frame(t), frame(min(t + 1, last))]))[None].to(device)
        for stale in [k for k in cache if k < t]:
            del cache[stale]
        yield t, model(x)


@torch.no_grad()
def calibrate_threshold(model: CellDetector, sources: Sequence[Source], frames: Sequence[Sequence[int]], *,
                        device: str | torch.device = "cpu",
                        thresholds: Sequence[float] = CALIBRATION_THRESHOLDS) -> dict | None:
    """The centre threshold for a model: the middle of its plateau of near-best detection F1 on
    whole held-out frames (:func:`plateau_threshold`).

    The centre head is a heat map trained to peak at 1 on a cell's centre voxel, not a calibrated
    probability: where a centre falls between voxels (binned images) or the data differ from the
    training crops its peaks stay clear of the background but below 0.5. Measured on
    Fluo-N2DH-SIM+ (detector trained on 01): F1 on 01's validation frames 0.962 at 0.5 and 0.981
    at 0.2; on 02 frames 90-119, 0.765 at 0.5 and 0.951 at 0.2. The threshold chosen on the
    model's own validation frames is therefore stored with it (a property of the model, not a
    per-dataset setting).
    ``frames[i]`` are the frames of ``sources[i]`` to use; None when there are none.
    """
    thresholds = np.asarray(sorted(thresholds), float)
    counts = np.zeros((len(thresholds), 3), np.int64)
    for source, chosen in zip(sources, frames):
        shape = np.array(source.shape)
        for t, out in _whole_frame_passes(model, source, sorted(chosen), device):
            cells = source.frame_points(t)
            for k, threshold in enumerate(thresholds):
                peaks = detect_peaks(out["center"], float(threshold))[0]
                counts[k] += detection_counts(peaks[np.all(peaks < shape, axis=1)], cells, shape,
                                              source.voxel_size)
    if not counts[:, [0, 2]].sum():
        return None
    f1 = np.array([_f1(*row)[2] for row in counts])
    chosen, plateau = plateau_threshold(f1, int(counts[0, 0] + counts[0, 2]))
    return {"threshold": float(thresholds[chosen]), "f1": float(f1[chosen]), "tp": int(counts[chosen, 0]),
            "fp": int(counts[chosen, 1]), "fn": int(counts[chosen, 2]),
            "plateau": [float(thresholds[plateau[0]]), float(thresholds[plateau[1]])],
            "f1_by_threshold": {f"{t:.2f}": float(v) for t, v in zip(thresholds, f1)},
            "frames": int(sum(len(f) for f in frames))}


def plateau_threshold(f1: np.ndarray, n_cells: int,
                      tolerance_cells: float = CALIBRATION_TOLERANCE_CELLS) -> tuple[int, tuple[int, int]]:
    """Index of the threshold to keep among ascending thresholds with validation ``f1``, and the
    first and last index of its plateau.

    The plateau is the run of thresholds around the best F1 whose F1 is within ``tolerance_cells``
    cells' worth (``tolerance_cells / n_cells``) of it: the validation frames (a few hundred cells)
    cannot tell them apart. The middle of the plateau is kept (of two middles, the higher), not its
    best point: on a new sequence the network's scores shift, and from an edge of the plateau a
    small shift falls off it, into background peaks below or missed cells above. Measured on nine detectors
    trained on Fluo-N2DH-SIM+ 01 (seeds, lengths, widths; 02 tracked end to end at the series'
    threshold, the lower of this and the valley of 02's scores), the best point gave TRA mean
    0.937, sd 0.038, worst 0.835 (a plateau of 0.10-0.35 whose best point, 0.10, let 4400 false
    cells through); the middle gave mean 0.951, sd 0.009, worst 0.939 (detection F1 mean 0.932 ->
    0.936, worst 0.890 -> 0.922). Three detectors lost 0.006-0.012 TRA: CTC's TRA charges a missed
    cell ten times a false one, and their best points (0.05-0.20) were nearer 02's own best. Five
    GOWT1 detectors were unchanged (02's valley sets their threshold)."""
    f1 = np.asarray(f1, dtype=float)
    best = int(np.flatnonzero(f1 == f1.max())[-1])
    floor = f1[best] - tolerance_cells / max(n_cells, 1)
    low = high = best
    while low > 0 and f1[low - 1] >= floor:
        low -= 1
    while high < len(f1) - 1 and f1[high + 1] >= floor:
        high += 1
    return (low + high + 1) // 2, (low, high)


# -- training --------------------------------------------------------------------------------
def ema_decay(steps: int, window: float) -> float:
    """Decay of the weights' exponential moving average that spans ``window`` x ``steps`` steps
    (1 - 1 / (window x steps); 0 = no average).

    The average starts from the first step's weights without bias correction, so the window is
    kept to at most half the run (at 0.5 the first weights keep e^-2, 14 %, of the final average;
    at the default 0.25, 2 %). Early validation rows, taken on the average, lag the raw weights.

    Why: one training run is a noisy draw (batches of 4 small crops, a validation F1 that
    saturates on a few dozen cells, so the kept epoch is close to chance). Detectors trained on
    Fluo-N2DH-SIM+ 01 (2000 steps, the benchmark recipe) with seeds 42 / 1 / 2 tracked 02 at TRA
    0.949 / 0.922 / 0.944 with the raw weights and 0.943 / 0.947 / 0.930 with the average over
    about the last 500 steps (window 0.25, decay 0.998): the same mean (0.938 vs 0.940), sd 0.014
    vs 0.009 (``benchmarks/bench_training_seeds.py``, ``benchmarks/results/training_seeds.json``).
    No measured gain; the average is kept as the standard guard against ending on a bad step.
    """
    if window <= 0 or steps < 2:
        return 0.0
    return max(0.0, 1.0 - 1.0 / (window * steps))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _crop_size(crop_size: Sequence[int] | None, sources: list[Source],
               model: CellDetector) -> tuple[int, int, int]:
    cfg = model.config
    largest = np.max([s.shape for s in sources], axis=0)
    if crop_size is None:
        crop_size = (1, 128, 128) if cfg.spatial_dims == 2 else (16, 64, 64)
    crop = [int(n) for n in crop_size]
    if len(crop) != 3:
        raise ValueError(f"crop_size must be (z, y, x), got {crop_size}")
    if cfg.spatial_dims == 2:
        crop[0] = 1
    multiples = (model.z_multiple, model.size_multiple, model.size_multiple)
    # No larger than the largest image (rounded up to the multiple the network needs).
    crop = [min(c, -(-int(n) // m) * m) for c, n, m in zip(crop, largest, multiples)]
    bad = [(axis, c, m) for axis, c, m in zip("zyx", crop, multiples) if c % m or c < 1]
    if bad:
        raise ValueError("crop_size must be a positive multiple of the network's size multiple along each "
                         "axis: " + ", ".join(f"{a}={c} (multiple of {m})" for a, c, m in bad))
    return tuple(crop)


def _check_sources(sources: list[Source], config: DetectorConfig) -> None:
    for source in sources:
        is_3d = source.shape[0] > 1
        if is_3d != (config.spatial_dims == 3):
            raise ValueError(f"dataset '{source.name}' is {'3D' if is_3d else '2D'} but the detector has "
                             f"spatial_dims={config.spatial_dims}")


def _lr_lambda(total_steps: int, warmup: int, floor: float = 0.05) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _write_tsv(path: Path, rows: list[dict]) -> None:
    columns = list(rows[0])
    lines = ["\t".join(columns)]
    for row in rows:
        cells = (f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in columns)
        lines.append("\t".join(cells))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _plot(path: Path, train_curve: list[tuple[int, float]], rows: list[dict],
          calibration: dict | None = None) -> None:
    """Loss and validation curves; with ``calibration``, a third panel: validation F1 by centre
    threshold, the near-best plateau shaded and the threshold kept marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if calibration else 2, figsize=(16 if calibration else 11, 4))
    ax_loss, ax_metric = axes[:2]
    if calibration:
        _plot_calibration(axes[2], calibration)
    if train_curve:
        steps, losses = np.array(train_curve).T
        ax_loss.plot(steps, losses, color="0.6", lw=0.8, label="train (per step)")
        if len(losses) >= 10:
            k = max(5, len(losses) // 50)
            smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
            ax_loss.plot(steps[k - 1:], smooth, color="C0", label=f"train ({k}-step mean)")
    if rows:
        ax_loss.plot([r["step"] for r in rows], [r["val_loss"] for r in rows], "o-", color="C1",
                     label="validation")
        ax_metric.plot([r["step"] for r in rows], [r["val_f1"] for r in rows], "o-", label="detection F1")
        ax_metric.plot([r["step"] for r in rows], [r["val_embedding_accuracy"] for r in rows], "s-",
                       label="embedding successor acc.")
    ax_loss.set(xlabel="step", ylabel="loss", yscale="log", title="loss")
    ax_metric.set(xlabel="step", ylim=(0, 1.02), title="validation")
    ax_loss.legend()
    ax_metric.legend()
    fig.tight_layout()
    save_png(fig, path, dpi=90)


def _plot_calibration(ax, calibration: dict) -> None:
    thresholds = sorted(calibration["f1_by_threshold"], key=float)
    ax.plot([float(t) for t in thresholds], [calibration["f1_by_threshold"][t] for t in thresholds], "o-",
            color="C2")
    ax.axvspan(*calibration["plateau"], color="C2", alpha=0.15,
               label=f"within {CALIBRATION_TOLERANCE_CELLS:g} cells of the best")
    ax.axvline(calibration["threshold"], color="k", ls="--", lw=1, label=f"kept: {calibration['threshold']:.2f}")
    ax.set(xlabel="centre threshold", ylabel="detection F1", xlim=(0, 1),
           title=f"threshold on {calibration['frames']} whole validation frames")
    ax.legend(loc="lower center")


def train_detector(datasets: Sequence, out_checkpoint, *, config: DetectorConfig, channel: int = 0,
                   crop_size: Sequence[int] | None = None, batch_size: int = 4, steps: int | None = None,
                   epochs: int | None = None, steps_per_epoch: int | None = None, lr: float = 1e-3,
                   weight_decay: float = 1e-4, seed: int = 0, device: str | torch.device = "cpu",
                   threads: int | None = None, log_dir=None, logger: logging.Logger | None = None,
                   val_fraction: float = 0.15, val_crops: int = 16, augmentation: Augmentation | None = None,
                   loss_weights: LossWeights | None = None, repeat_probability: float = 0.1,
                   cell_bias: float = 0.8, division_bias: float = 0.0,
                   normalization: tuple[float, float] = (1.0, 99.8), normalization_scope: str = "series",
                   workers: int = 0,
                   amp: bool = True, detection_threshold: float = 0.5, working_radius: float | None = None,
                   select: str = "best", ema_window: float = 0.25, progress: bool | None = None) -> dict:
    """Train a :class:`CellDetector` and save it to ``out_checkpoint``; returns the metrics dict.

    ``datasets``: (image.ome.zarr, points table, name[, complete]) tuples or
    :class:`~celltrails.detector.sampling.TrainingDataset`. Training length: ``steps`` in total,
    or ``epochs`` x ``steps_per_epoch`` (default: one pass over the training frames' area in
    crops); validation runs after every epoch. ``device``: "cpu", "cuda", "cuda:1", ...;
    ``threads``: CPU threads for torch. ``progress``: tqdm bar (None = only on a terminal).
    ``working_radius`` (xy px): bin each dataset in y, x so that its nuclei come near this radius
    (:mod:`celltrails.detector.scale`); None trains at the images' own scale. ``normalization``:
    (low, high) percentiles mapped to 0 and 1, taken per ``normalization_scope`` ("series" or
    "frame", :mod:`celltrails.detector.normalize`). ``ema_window``: validate and keep an exponential
    moving average of the weights spanning about this fraction of the steps (0: the raw weights;
    see :func:`ema_decay`).
    """
    settings = dict(locals())
    settings["logger"] = logger or logging.getLogger("celltrails.detector.train")
    settings["device"] = device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available (use device='cpu')")
    with _cpu_threads(device, threads):
        return _train(**settings)


@contextmanager
def _cpu_threads(device: torch.device, threads: int | None) -> Iterator[None]:
    """torch.set_num_threads(threads) on CPU for the block; the caller's setting is restored."""
    previous = torch.get_num_threads()
    if device.type == "cpu" and threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train(datasets, out_checkpoint, *, config, channel, crop_size, batch_size, steps, epochs,
           steps_per_epoch, lr, weight_decay, seed, device, threads, log_dir, logger, val_fraction,
           val_crops, augmentation, loss_weights, repeat_probability, cell_bias, division_bias, normalization,
           normalization_scope, workers, amp, detection_threshold, working_radius, select, ema_window,
           progress) -> dict:
    if select not in ("best", "last"):
        raise ValueError(f"select must be 'best' or 'last', got {select!r}")
    if not 0.0 <= ema_window <= 0.5:
        raise ValueError(f"ema_window must be a fraction of the steps between 0 and 0.5, got {ema_window}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    weights = loss_weights or LossWeights()
    augmentation = Augmentation() if augmentation is None else augmentation
    _seed_everything(seed)

    low, high = normalization
    sources = open_sources(datasets, channel, low, high, working_radius, normalization_scope)
    for source in sources:
        if source.binning > 1:
            logger.info("dataset %s is binned %dx%d in y, x (nuclei of radius %.1f px become %.1f px)",
                        source.name, source.binning, source.binning, source.default_radius * source.binning,
                        source.default_radius)
    _check_sources(sources, config)
    # Not channels-last, although a step would be 1.3x (2D) to 2.1x (3D) faster on 2 cores: with
    # it, GOWT1 01 detectors (seeds 0, 1, 2) tracked GOWT1 02 at TRA 0.880 / 0.902 / 0.925 against
    # 0.918 / 0.924 / 0.920 without; not significant with 3 seeds, but no reason to take the spread.
    model = CellDetector(config).to(device)
    crop = _crop_size(crop_size, sources, model)
    splits = [split_frames(s, val_fraction) for s in sources]
    train_sampler = CropSampler(sources, [tr for tr, _ in splits], crop, augmentation, repeat_probability,
                                cell_bias, division_bias)
    has_val = any(len([t for t in va if t + 1 in va]) for _, va in splits)
    val_batches: list[dict] = []
    if has_val and val_crops > 0:
        val_sampler = CropSampler(sources, [va for _, va in splits], crop, None, 0.0, cell_bias)
        rng = np.random.default_rng([seed, 10_000])
        samples = [val_sampler.sample(rng, index=k % len(val_sampler.starts), augment=False)
                   for k in range(val_crops)]
        val_batches = [collate(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)]

    crop_volume = math.prod(crop)
    if steps_per_epoch is None:
        area = sum(math.ceil(math.prod(s.shape) / crop_volume) * len([t for t in tr if t + 1 in tr])
                   for s, (tr, _) in zip(sources, splits))
        steps_per_epoch = max(20, math.ceil(area / batch_size))
    if steps is None:
        steps = (epochs or 10) * steps_per_epoch
    steps = int(steps)
    n_epochs = math.ceil(steps / steps_per_epoch)

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, min(100, steps // 20))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(steps, warmup))
    loader = torch.utils.data.DataLoader(SampleStream(train_sampler, seed), batch_size=batch_size,
                                         collate_fn=collate, num_workers=workers,
                                         pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0)
    log_dir = Path(log_dir) if log_dir is not None else None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)

    logger.info("training detector (%d parameters) on %s: %d steps x batch %d of crops %s, %d epochs, "
                "device %s%s, seed %d",
                count_parameters(model), [s.name for s in sources], steps, batch_size, crop, n_epochs, device,
                f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else "", seed)
    model.train()
    rows: list[dict] = []
    train_curve: list[tuple[int, float]] = []
    best: tuple[float, float] | None = None
    best_state, best_row = None, None
    log_progress = ProgressLog(logger, steps, "detector training steps")
    bar = tqdm(total=steps, desc="detector", disable=(not progress) if progress is not None else None,
               dynamic_ncols=True)
    iterator = iter(loader)
    decay = ema_decay(steps, ema_window)
    averaged = None
    if decay:
        swa = torch.optim.swa_utils
        averaged = swa.AveragedModel(model, multi_avg_fn=swa.get_ema_multi_avg_fn(decay))
    kept = averaged.module if averaged is not None else model  # the weights validated and saved
    start = time.perf_counter()
    step_times: list[float] = []
    epoch_sums = {name: 0.0 for name in ("loss", *LOSS_NAMES)}
    epoch_count = 0
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        batch = next(iterator)
        loss, parts, _ = _step_losses(model, batch, weights, device, amp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        scheduler.step()
        if averaged is not None:
            averaged.update_parameters(model)
        step_times.append(time.perf_counter() - t0)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"detector training diverged at step {step} (loss {value}); "
                                     "try a lower learning rate")
        train_curve.append((step, value))
        epoch_sums["loss"] += value
        for name, part in parts.items():
            epoch_sums[name] += float(part.detach())
        epoch_count += 1
        bar.update(1)
        bar.set_postfix(loss=f"{value:.3f}")
        log_progress.advance()
        if step % steps_per_epoch == 0 or step == steps:
            epoch = math.ceil(step / steps_per_epoch)
            row = {"epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"]}
            row.update({f"train_{k}": v / max(1, epoch_count) for k, v in epoch_sums.items()})
            if val_batches:
                row.update(validate(kept, val_batches, weights, device, amp=amp,
                                    threshold=detection_threshold))
            else:
                row.update({"val_loss": float("nan"), "val_f1": float("nan"),
                            "val_embedding_accuracy": float("nan")})
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
            epoch_sums = {name: 0.0 for name in epoch_sums}
            epoch_count = 0
            logger.info("epoch %d/%d (step %d): train loss %.4f, val loss %.4f, val F1 %.3f, embedding "
                        "successor accuracy %.3f", epoch, n_epochs, step, row["train_loss"], row["val_loss"],
                        row["val_f1"], row["val_embedding_accuracy"])
            if val_batches and select == "best":
                key = (row["val_f1"], -row["val_loss"])
                if best is None or key > best:
                    best, best_row = key, row
                    best_state = copy.deepcopy(kept.state_dict())
            if log_dir is not None:
                _write_tsv(log_dir / "validation.tsv", rows)
                _plot(log_dir / "loss_curve.png", train_curve, rows)
    bar.close()
    elapsed = time.perf_counter() - start
    model.load_state_dict(best_state if best_state is not None else kept.state_dict())
    chosen = best_row if best_row is not None else rows[-1]
    timed = step_times[min(len(step_times) - 1, 5):]  # skip warm-up steps
    metrics = {k: v for k, v in chosen.items() if k.startswith("val_")}
    metrics.update({
        "epoch": chosen["epoch"], "step": chosen["step"],
        "selected": "best" if best_row is not None else "last",
        "epochs": n_epochs, "steps": steps, "train_loss_final": rows[-1]["train_loss"], "seconds": elapsed,
        "seconds_per_step": float(np.mean(timed)), "parameters": count_parameters(model),
        "device": str(device),
    })
    calibration = calibrate_threshold(model, sources, [va for _, va in splits], device=device)
    if calibration is not None:
        logger.info("calibrated centre threshold %.2f (middle of the near-best plateau %.2f-%.2f): F1 %.3f on "
                    "%d whole validation frames (%.3f at %.2f)", calibration["threshold"], *calibration["plateau"],
                    calibration["f1"], calibration["frames"],
                    calibration["f1_by_threshold"].get(f"{detection_threshold:.2f}", float("nan")),
                    detection_threshold)
        if log_dir is not None:
            _plot(log_dir / "loss_curve.png", train_curve, rows, calibration)
    training = {
        "config": config.to_dict(), "crop_size": list(crop), "batch_size": batch_size, "steps": steps,
        "steps_per_epoch": steps_per_epoch, "lr": lr, "weight_decay": weight_decay, "seed": seed,
        "val_fraction": val_fraction, "val_crops": val_crops, "repeat_probability": repeat_probability,
        "cell_bias": cell_bias, "division_bias": division_bias, "ema_window": ema_window, "ema_decay": decay,
        # CPU weights repeat for a seed only with the same torch, vector instructions, thread count and
        # loader workers: each changes the order of the sums, and over the steps rounding differences
        # grow into another model.
        "torch_version": str(torch.__version__), "workers": workers,
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else None,
        "augmentation": dataclasses.asdict(augmentation),
        "loss_weights": dataclasses.asdict(weights), "detection_threshold": detection_threshold,
        "threshold_calibration": calibration,
        "voxel_size": list(sources[0].meta.voxel_size),
        "working_radius": float(np.median([s.default_radius for s in sources])),
        "datasets": [{"name": s.name, "image": s.image_path, "voxel_size": list(s.meta.voxel_size),
                      "binning": s.binning, "train_frames": sorted(tr), "val_frames": sorted(va)}
                     for s, (tr, va) in zip(sources, splits)],
    }
    model.eval()
    save_checkpoint(out_checkpoint, model, trained_on=[s.name for s in sources], channel=channel,
                    normalization=normalization_settings(low, high, normalization_scope), training=training,
                    metrics=metrics)
    logger.info("detector saved to %s (epoch %d, val F1 %.3f, %.2f s/step)", out_checkpoint, chosen["epoch"],
                metrics.get("val_f1", float("nan")), metrics["seconds_per_step"])
    return metrics
