"""Detector training: targets from points, losses, streamed augmented samples, and a fixed-seed overfit."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from celltrails.detector.calibrate import calibrate_checkpoint
from celltrails.detector.checkpoint import load_checkpoint, save_checkpoint
from celltrails.detector.losses import (
    batch_hard_triplet,
    focal_center_loss,
    masked_bce,
    masked_l1,
    nt_xent,
)
from celltrails.detector.model import DetectorConfig
from celltrails.detector.sampling import (
    Augmentation,
    CropSampler,
    Source,
    TrainingDataset,
    _intensity,
    collate,
)
from celltrails.detector.targets import FramePoints, division_flags, embedding_relations, render_pass_targets
from celltrails.detector.train import ema_decay, evaluate_frames, plateau_threshold, train_detector
from celltrails.ome_zarr_io import create_image_store
from celltrails.synthetic import generate_series, load_params

torch.set_num_threads(2)

VOXEL_2D = (1.0, 0.5, 0.5)


def hand_table() -> pd.DataFrame:
    """Cell 1 divides into 2 and 3 after t=1; cell 4 is missed at t=1 and continues as 5 (a gap, not a
    division); cell 6 just lives."""
    rows = [
        *[(t, 0.0, 8.0, 8.0, 1, -1, 3.0) for t in (0, 1)],
        *[(t, 0.0, 6.0, 6.0, 2, 1, 2.0) for t in (2, 3)],
        *[(t, 0.0, 10.0, 10.0, 3, 1, 2.0) for t in (2, 3)],
        (0, 0.0, 24.0, 24.0, 4, -1, 3.0),
        *[(t, 0.0, 24.0, 25.0, 5, 4, 3.0) for t in (2, 3)],
        *[(t, 0.0, 8.3, 24.4, 6, -1, 4.0) for t in range(4)],
    ]
    return pd.DataFrame(rows, columns=["t", "z", "y", "x", "cell_id", "parent_id", "radius"])


def frame_points(table: pd.DataFrame, t: int) -> FramePoints:
    return FramePoints.from_table(table[table.t == t])


def disk(shape, centre, radius) -> np.ndarray:
    yy, xx = np.indices(shape)
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2).astype(np.float32)


# -- targets ---------------------------------------------------------------------------------
def test_division_flags_only_for_true_divisions():
    flags = division_flags(hand_table())
    mothers = set(zip(flags.t[flags.mother], flags.cell_id[flags.mother]))
    daughters = set(zip(flags.t[flags.daughter], flags.cell_id[flags.daughter]))
    assert mothers == {(1, 1)}
    assert daughters == {(2, 2), (2, 3)}  # not (2, 5): a gap continuation


def test_centre_foreground_and_radius_targets():
    table = division_flags(hand_table())
    shape = (1, 32, 32)
    tg = render_pass_targets(frame_points(table, 1), frame_points(table, 2), shape, VOXEL_2D)
    center = tg["center"][0, 0]
    peaks = np.argwhere(center == 1.0)
    assert {tuple(p) for p in peaks} == {(8, 8), (8, 24)}  # cell 6 at (8.3, 24.4) peaks at its voxel
    sigma1, sigma6 = 3 * 0.5 / 3, 4 * 0.5 / 3  # radius / 3 in micrometres
    assert center[8, 9] == pytest.approx(math.exp(-0.5 * (0.5 / sigma1) ** 2), rel=1e-6)
    assert center[9, 24] == pytest.approx(math.exp(-0.5 * (0.5 / sigma6) ** 2), rel=1e-6)
    expected_fg = np.maximum(disk((32, 32), (8, 8), 3), disk((32, 32), (8.3, 24.4), 4))
    np.testing.assert_array_equal(tg["foreground"][0, 0], expected_fg)
    assert tg["radius"][0, 0, 8, 24] == 4.0 and tg["radius"][0, 0, 8, 6] == 3.0
    np.testing.assert_array_equal(tg["radius_mask"][0, 0], expected_fg)
    assert (tg["mask"] == 1).all()  # complete frames: everything is taught

    # Anisotropic 3D: a 2 um sphere (4 px) spans +-1 slice of 2 um, and the Gaussian is narrower in z.
    cell = FramePoints([[3.0, 10.0, 10.0]], [4.0], [1], [-1], [False], [False])
    tg3 = render_pass_targets(cell, FramePoints.empty(), (7, 20, 20), (2.0, 0.5, 0.5))
    assert tg3["foreground"][0, :, 10, 10].tolist() == [0, 0, 1, 1, 1, 0, 0]
    assert tg3["center"][0, 4, 10, 10] == pytest.approx(math.exp(-0.5 * (2.0 / (2.0 / 3)) ** 2), rel=1e-6)
    assert tg3["center"][0, 3, 10, 14] == pytest.approx(math.exp(-0.5 * (2.0 / (2.0 / 3)) ** 2), rel=1e-6)


def test_division_targets_mark_mothers_and_daughters_not_gaps():
    table = division_flags(hand_table())
    shape = (1, 32, 32)
    tg = render_pass_targets(frame_points(table, 1), frame_points(table, 2), shape, VOXEL_2D)
    mothers, daughters = tg["division"][0, 0], tg["division"][1, 0]
    np.testing.assert_array_equal(mothers, disk((32, 32), (8, 8), 1.5))  # core: half the radius
    both = np.maximum(disk((32, 32), (6, 6), 1), disk((32, 32), (10, 10), 1))
    np.testing.assert_array_equal(daughters, both)
    assert daughters[24, 25] == 0  # cell 5's first frame: a gap continuation
    before_gap = render_pass_targets(frame_points(table, 0), frame_points(table, 1), shape, VOXEL_2D)
    assert not before_gap["division"].any()  # cell 4's last frame is no mother
    assert tg["division"][0].any()  # frame 1 holds the mother of cells 2 and 3 ...
    repeated = render_pass_targets(frame_points(table, 1), frame_points(table, 1), shape, VOXEL_2D,
                                   same_frame=True)
    assert not repeated["division"].any()  # ... but in (t, t) nothing divides and nobody is born


def test_sparse_frames_only_teach_near_annotated_cells():
    table = division_flags(hand_table())
    cells = frame_points(table, 1).subset(np.array([True, False]))  # only cell 1 clicked, r = 3 px
    tg = render_pass_targets(cells, frame_points(table, 2), (1, 32, 32), VOXEL_2D, complete_a=False)
    mask_a = tg["mask"][0, 0]
    np.testing.assert_array_equal(mask_a, disk((32, 32), (8, 8), 4.5))  # 1.5 radii
    assert mask_a[8, 24] == 0  # the unannotated cell 6 is not taught as background
    assert (tg["mask"][1] == 1).all()  # frame t+1 is complete
    assert (tg["radius_mask"][0, 0] <= mask_a).all()


def test_embedding_relations():
    table = division_flags(hand_table())
    rel = embedding_relations(frame_points(table, 1), frame_points(table, 2))
    # order: t=1 cells 1, 6; t=2 cells 2, 3, 5, 6
    expected_pos = {(0, 2), (0, 3), (2, 3), (1, 5)}
    got_pos = {(i, j) for i, j in zip(*np.nonzero(rel == 1)) if i < j}
    assert got_pos == expected_pos
    assert (np.diag(rel) == -1).all() and (rel == rel.T).all()
    assert rel[3, 4] == 0 and rel[0, 1] == 0  # different cells are negatives


# -- losses ----------------------------------------------------------------------------------
def test_focal_center_loss_by_hand():
    logits = torch.zeros(1, 1, 1, 1, 3)
    target = torch.tensor([1.0, 0.5, 0.0]).view(1, 1, 1, 1, 3)
    ln2 = math.log(2)
    expected = 0.25 * ln2 + 0.5 ** 4 * 0.25 * ln2 + 0.25 * ln2  # one positive: divide by 1
    assert float(focal_center_loss(logits, target)) == pytest.approx(expected, rel=1e-6)
    mask = torch.tensor([1.0, 1.0, 0.0]).view(1, 1, 1, 1, 3)
    assert float(focal_center_loss(logits, target, mask)) == pytest.approx(0.25 * ln2 + 0.5 ** 4 * 0.25 * ln2,
                                                                         rel=1e-6)
    confident = torch.tensor([8.0, -8.0, -8.0]).view(1, 1, 1, 1, 3)
    assert float(focal_center_loss(confident, target)) < 1e-3


def test_masked_bce_and_l1_by_hand():
    logits = torch.tensor([0.0, 2.0, -1.0, 5.0])
    target = torch.tensor([1.0, 0.0, 0.0, 1.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    bce = [math.log(2), math.log(1 + math.exp(2)), math.log(1 + math.exp(-1))]
    assert float(masked_bce(logits, target, mask)) == pytest.approx(sum(bce) / 3, rel=1e-6)
    assert float(masked_bce(logits, target, mask, pos_weight=10.0)) == pytest.approx(
        (10 * bce[0] + bce[1] + bce[2]) / 3, rel=1e-6)
    pred = torch.tensor([1.0, 5.0, 2.0])
    l1 = masked_l1(pred, torch.tensor([2.0, 1.0, 2.5]), torch.tensor([1.0, 0.0, 1.0]))
    assert float(l1) == pytest.approx(0.75)


def test_triplet_and_ntxent_by_hand():
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    rel = torch.tensor([[-1, 1, 0], [1, -1, 0], [0, 0, -1]], dtype=torch.int8)
    # anchors 0 and 1: hardest positive 1.0, nearest negative 0.5; anchor 2 has no positive.
    assert float(batch_hard_triplet(emb, rel, margin=0.3)) == pytest.approx(0.8, rel=1e-5)
    unit = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # anchor 0: s01 = 0, s02 = -1/T; anchor 1: s10 = 0, s12 = 0.
    t = 0.5
    l0 = -(0 - math.log(math.exp(0) + math.exp(-1 / t)))
    l1 = -(0 - math.log(2.0))
    assert float(nt_xent(unit, rel, temperature=t)) == pytest.approx((l0 + l1) / 2, rel=1e-5)
    assert float(batch_hard_triplet(emb, -torch.ones(3, 3, dtype=torch.int8))) == 0.0


def test_contrastive_losses_prefer_separated_identities():
    gen = torch.Generator().manual_seed(0)
    identity = torch.arange(8).repeat(2)  # 8 cells seen in two frames
    rel = (identity[:, None] == identity[None, :]).to(torch.int8)
    rel.fill_diagonal_(-1)
    centres = torch.nn.functional.normalize(torch.randn(8, 16, generator=gen), dim=1)
    jitter = 0.05 * torch.randn(16, 16, generator=gen)
    separated = torch.nn.functional.normalize(centres[identity] + jitter, dim=1)
    random = torch.nn.functional.normalize(torch.randn(16, 16, generator=gen), dim=1)
    assert float(batch_hard_triplet(separated, rel)) < 0.5 * float(batch_hard_triplet(random, rel))
    assert float(nt_xent(separated, rel)) < 0.5 * float(nt_xent(random, rel))


# -- streamed, augmented samples -------------------------------------------------------------
def test_augmented_crops_keep_points_on_their_cells(tmp_path):
    """Bright blobs at known points: after flips, 90-degree and small-angle rotations, every centre
    target peak still sits on a blob of its own frame."""
    rng = np.random.default_rng(0)
    n_frames, shape = 4, (1, 80, 80)
    rows, frames = [], np.full((n_frames, 1, *shape), 100, np.uint16)
    yy, xx = np.indices(shape[1:])
    for cell in range(1, 9):
        y, x = rng.uniform(8, 72, 2)
        for t in range(n_frames):
            y, x = y + rng.uniform(-2, 2), x + rng.uniform(-2, 2)
            blob = 1000 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 2.0 ** 2))
            frames[t, 0, 0] += blob.astype(np.uint16)
            rows.append((t, 0.0, y, x, cell, -1, 4.0))
    store = tmp_path / "blobs.ome.zarr"
    create_image_store(store, frames.shape, np.uint16, VOXEL_2D, 1.0, ["nuclei"])[:] = frames
    table = pd.DataFrame(rows, columns=["t", "z", "y", "x", "cell_id", "parent_id", "radius"])
    source = Source(TrainingDataset(store, table, "blobs"))
    aug = Augmentation(rotate_degrees=25, rotate_probability=1.0, intensity_scale=(1, 1), gamma=(1, 1),
                       noise_probability=0, blur_probability=0)
    sampler = CropSampler([source], [set(range(n_frames))], (1, 40, 40), aug, repeat_probability=0.3)
    draw = np.random.default_rng(1)
    samples = [sampler.sample(draw) for _ in range(12)]
    checked = 0
    for sample in samples:
        image = sample["image"]
        for p in range(2):  # pass p's frame a is sample frame p
            for z, y, x in np.argwhere(sample["targets"]["center"][p, 0] == 1.0):
                assert image[p, z, y, x] > 0.6, sample["info"]
                checked += 1
        if sample["info"]["frames"][2] == sample["info"]["frames"][1]:
            assert sample["info"]["repeat"]
    assert checked > 30
    batch = collate(samples[:3])
    assert batch["x"].shape == (6, 2, 1, 40, 40)
    assert batch["relation"].shape[0] == len(batch["emb_index"]) == len(batch["emb_voxels"])
    assert (batch["relation"] == 1).any()


def test_intensity_augmentation_draws_from_its_ranges():
    image = np.full((3, 1, 8, 8), 0.5, np.float32)
    rng = np.random.default_rng(0)
    fixed = Augmentation(intensity_scale=(3.0, 3.0), gamma=(2.0, 2.0), noise_probability=0, blur_probability=0)
    assert np.allclose(_intensity(rng, image, fixed, VOXEL_2D), 3.0 * 0.5 ** 2.0)
    wide = Augmentation(intensity_scale=(0.5, 3.0), gamma=(0.5, 2.0), noise_probability=0, blur_probability=0)
    values = np.array([_intensity(rng, image, wide, VOXEL_2D)[0, 0, 0, 0] for _ in range(300)])
    low, high = 0.5 * 0.5 ** 2.0, 3.0 * 0.5 ** 0.5    # darkest and brightest draws of a 0.5 voxel
    assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6
    assert values.min() < low + 0.1 and values.max() > high - 0.4    # the whole width is drawn


def test_augmentation_ranges_from_lists_become_tuples():
    augmentation = Augmentation(intensity_scale=[0.5, 2], gamma=[0.4, 2.5])
    assert augmentation.intensity_scale == (0.5, 2.0) and augmentation.gamma == (0.4, 2.5)
    hash(augmentation)


@pytest.mark.parametrize("ranges", [{"gamma": (2.0, 0.5)}, {"intensity_scale": (0.0, 1.0)},
                                    {"noise_std": (-0.1, 0.1)}, {"blur_sigma": (1.0, 0.3)},
                                    {"gamma": (0.5, 1.0, 2.0)}, {"intensity_scale": 2.0}])
def test_augmentation_refuses_a_range_that_is_not_one(ranges):
    with pytest.raises(ValueError, match=f"augmentation {next(iter(ranges))} must be a range"):
        Augmentation(**ranges)


def test_division_bias_draws_crops_around_mothers(tmp_path):
    """One division among many cells: with division_bias 1 every crop holds the mother of frame 2
    and its division target; uniform crops rarely do."""
    rng = np.random.default_rng(2)
    n_frames, shape = 5, (1, 200, 200)
    store = tmp_path / "cells.ome.zarr"
    create_image_store(store, (n_frames, 1, *shape), np.uint16, VOXEL_2D, 1.0, ["nuclei"])[:] = 100
    rows = [(t, 0.0, y, x, cell, -1, 4.0) for cell, (y, x) in enumerate(rng.uniform(10, 190, (30, 2)), 1)
            for t in range(n_frames) if cell != 1 or t <= 2]
    rows += [(t, 0.0, 20.0 + 5 * k, 20.0, 100 + k, 1, 4.0) for k in (0, 1) for t in (3, 4)]  # daughters of 1
    table = pd.DataFrame(rows, columns=["t", "z", "y", "x", "cell_id", "parent_id", "radius"])
    source = Source(TrainingDataset(store, table, "cells"))
    mother = table[(table.cell_id == 1) & (table.t == 2)][["y", "x"]].to_numpy()[0]

    def holds_the_division(bias: float) -> float:
        sampler = CropSampler([source], [set(range(n_frames))], (1, 48, 48), division_bias=bias)
        draw = np.random.default_rng(3)
        samples = [sampler.sample(draw) for _ in range(40)]
        held = [s["info"]["t"] == 2 and s["targets"]["division"][0, 0].any() for s in samples]
        for sample, hit in zip(samples, held):
            if hit:
                offset = mother - np.array(sample["info"]["origin"][1:])
                assert np.all((offset >= 0) & (offset < 48))
        return float(np.mean(held))

    assert holds_the_division(1.0) == 1.0
    assert holds_the_division(0.0) < 0.2


# -- fixed-seed overfit on a tiny synthetic series -------------------------------------------
TINY_RECIPE = {
    "seed": 5, "n_frames": 6, "shape": [1, 64, 64], "voxel_size": [1.0, 0.5, 0.5], "margin": 8.0,
    "n_cells": 10, "nucleus_radius_mean": 3.0, "nucleus_radius_sd": 0.4, "cell_cycle_mean": 8.0,
    "cell_cycle_sd": 2.0, "mitosis_frames": 2,
}


# The smallest detector the training tests below train (a few seconds each on one thread).
TINY_DETECTOR = DetectorConfig(2, base_channels=4, depth=1, embedding_dim=4)


def tiny_dataset(tmp_path, **changes) -> tuple:
    """Generate the tiny synthetic series (TINY_RECIPE with ``changes``): (image, points, name)."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_RECIPE, **changes}))
    generate_series(load_params(recipe), tmp_path / "tiny")
    return tmp_path / "tiny" / "image.ome.zarr", tmp_path / "tiny" / "cells.parquet", "tiny"


def test_overfit_tiny_synthetic_series(tmp_path):
    dataset = tiny_dataset(tmp_path)
    checkpoint = tmp_path / "detector.pt"
    config = DetectorConfig(2, base_channels=8, depth=2, embedding_dim=8)
    metrics = train_detector([dataset], checkpoint, config=config, crop_size=(1, 64, 64), batch_size=2,
                             steps=200, steps_per_epoch=100, lr=3e-3, seed=0,
                             # One thread: as fast for this tiny model, and immune to OpenMP stalls when
                             # other processes share the two cores.
                             threads=1, log_dir=tmp_path / "logs", val_fraction=0.34, val_crops=2,
                             progress=False)
    assert (tmp_path / "logs" / "loss_curve.png").stat().st_size > 0
    table = pd.read_csv(tmp_path / "logs" / "validation.tsv", sep="\t")
    assert table.epoch.tolist() == [1, 2] and np.isfinite(table.val_f1).all()
    assert table.train_loss.iloc[-1] < table.train_loss.iloc[0]
    model, meta = load_checkpoint(checkpoint)
    assert meta["trained_on"] == ["tiny"] and meta["voxel_size_trained"] == (1.0, 0.5, 0.5)
    assert meta["metrics"]["val_f1"] == pytest.approx(metrics["val_f1"])
    source = Source(TrainingDataset(*dataset))
    train_frames = meta["training"]["datasets"][0]["train_frames"]
    assert train_frames == [0, 1, 2]  # frames 3-5 are held out (34 %)
    result = evaluate_frames(model, source, train_frames)
    assert result["tp"] + result["fn"] >= 25
    assert result["f1"] >= 0.9, result
    assert result["localization_error"] < 1.5, result  # peaks on the centres, not just within the radius
    calibration = meta["training"]["threshold_calibration"]
    assert meta["threshold"] == calibration["threshold"] and calibration["frames"] == 3
    by_threshold = calibration["f1_by_threshold"]
    low, high = calibration["plateau"]
    assert calibration["f1"] == by_threshold[f"{meta['threshold']:.2f}"] and low <= meta["threshold"] <= high
    floor = max(by_threshold.values()) - 2 / (calibration["tp"] + calibration["fn"])  # two cells' worth
    thresholds = sorted(by_threshold, key=float)
    inside = [k for k in thresholds if low <= float(k) <= high]
    assert all(by_threshold[k] >= floor for k in inside)
    edges = [thresholds.index(inside[0]) - 1, thresholds.index(inside[-1]) + 1]
    assert all(by_threshold[thresholds[i]] < floor for i in edges if 0 <= i < len(thresholds))
    held_out = evaluate_frames(model, source, [3, 4, 5], threshold=meta["threshold"])
    assert held_out["f1"] == pytest.approx(calibration["f1"])  # the same frames, matcher and threshold
    # A checkpoint saved without a calibration gets the same one afterwards.
    save_checkpoint(checkpoint, model, trained_on=meta["trained_on"], channel=meta["channel"],
                    normalization=meta["normalization"], metrics=meta["metrics"],
                    training={k: v for k, v in meta["training"].items() if k != "threshold_calibration"})
    assert load_checkpoint(checkpoint)[1]["threshold"] == 0.5
    assert calibrate_checkpoint(checkpoint, *dataset[:2]) == calibration
    assert load_checkpoint(checkpoint)[1]["threshold"] == calibration["threshold"]


def test_the_calibrated_threshold_is_the_middle_of_the_near_best_plateau():
    # F1 by threshold 0.05 .. 0.40 of a SIM+ detector that calibrated 0.05 by its best point
    # (446 validation cells): 0.05-0.30 lie within two cells of the best, so 0.20 (the higher middle).
    curve = [0.9944, 0.9921, 0.9921, 0.9921, 0.9910, 0.9910, 0.9887, 0.9829]
    assert plateau_threshold(curve, 446) == (3, (0, 5))
    # More cells make a narrower plateau; a lone peak is kept as it is.
    assert plateau_threshold(curve, 4000) == (0, (0, 0))
    assert plateau_threshold([0.5, 0.8, 0.99, 0.8, 0.5], 100) == (2, (2, 2))
    # The plateau is the run around the best: a near-best threshold beyond a dip is not part of it.
    assert plateau_threshold([0.99, 0.90, 0.985, 0.99, 0.989, 0.7], 100) == (3, (2, 4))
    # A plateau reaching the highest threshold.
    assert plateau_threshold([0.5, 0.6, 0.99, 0.989, 0.988, 0.987], 100) == (4, (2, 5))
    # An even plateau has two middles: the higher is kept.
    assert plateau_threshold([0.9, 0.99, 0.99, 0.9], 1000) == (2, (1, 2))


def test_ema_decay_spans_the_asked_fraction_of_the_steps():
    assert ema_decay(2000, 0.25) == pytest.approx(0.998)
    assert ema_decay(200, 0.25) == pytest.approx(0.98)
    assert ema_decay(2000, 0.0) == 0.0 and ema_decay(1, 0.25) == 0.0
    assert ema_decay(3, 0.25) == 0.0  # a window under one step: the raw weights


def test_the_saved_detector_is_the_average_of_the_weights(tmp_path, monkeypatch):
    """The checkpoint holds the exponential moving average of the raw weights of every step (with
    validation: at the best epoch), computed here by hand from the raw weights the training passes
    to the average; the raw path itself is that of a run without the average."""
    dataset = tiny_dataset(tmp_path, n_frames=4)
    raw_path: list[dict] = []
    update = torch.optim.swa_utils.AveragedModel.update_parameters

    def recording_update(self, model):
        raw_path.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return update(self, model)

    monkeypatch.setattr(torch.optim.swa_utils.AveragedModel, "update_parameters", recording_update)

    def train(window: float, name: str, **options) -> tuple[dict, dict, dict]:
        raw_path.clear()
        out = tmp_path / f"{name}.pt"
        metrics = train_detector([dataset], out, config=TINY_DETECTOR, crop_size=(1, 32, 32), batch_size=1,
                                 steps=12, lr=3e-3, seed=3, threads=1, ema_window=window, progress=False,
                                 **options)
        model, meta = load_checkpoint(out)
        return model.state_dict(), meta, metrics

    def average(upto: int, decay: float) -> dict:
        ema = {k: v.clone() for k, v in raw_path[0].items()}
        for state in raw_path[1:upto]:
            ema = {k: decay * value + (1 - decay) * state[k] for k, value in ema.items()}
        return ema

    raw, _, _ = train(0.0, "raw", steps_per_epoch=12, val_fraction=0.0, select="last")
    assert raw_path == []  # no average without a window
    saved, meta, _ = train(0.5, "last", steps_per_epoch=12, val_fraction=0.0, select="last")
    decay = meta["training"]["ema_decay"]
    assert decay == pytest.approx(1 - 1 / 6) and len(raw_path) == 12
    assert all(torch.equal(raw_path[-1][k], raw[k]) for k in raw)  # the average leaves the path alone
    expected = average(12, decay)
    moved = [k for k in saved if not torch.equal(raw_path[0][k], raw_path[-1][k])]
    assert moved and all(not torch.allclose(saved[k], raw[k]) for k in moved)
    for k in saved:
        torch.testing.assert_close(saved[k], expected[k], rtol=1e-5, atol=1e-6)

    saved, meta, metrics = train(0.5, "best", steps_per_epoch=4, val_fraction=0.5, val_crops=2, select="best")
    best = int(metrics["step"])
    assert metrics["selected"] == "best" and len(raw_path) == 12
    expected = average(best, meta["training"]["ema_decay"])
    for k in saved:
        torch.testing.assert_close(saved[k], expected[k], rtol=1e-5, atol=1e-6)


def test_a_seed_and_a_thread_count_repeat_the_weights(tmp_path):
    """Two trainings with one seed and one CPU thread count give identical weights, and the checkpoint
    records the thread count (another count sums in another order, so it may not repeat)."""
    dataset = tiny_dataset(tmp_path, n_frames=4)

    def train(name: str, seed: int, threads: int) -> tuple[dict, dict]:
        out = tmp_path / f"{name}.pt"
        train_detector([dataset], out, config=TINY_DETECTOR, crop_size=(1, 32, 32), batch_size=2, steps=8,
                       steps_per_epoch=8, lr=3e-3, seed=seed, threads=threads, val_fraction=0.0,
                       select="last", progress=False)
        model, meta = load_checkpoint(out)
        return model.state_dict(), meta["training"]

    first, training = train("first", 3, 1)
    again, _ = train("again", 3, 1)
    other, _ = train("other", 4, 1)
    assert training["seed"] == 3 and training["cpu_threads"] == 1 and training["workers"] == 0
    assert training["torch_version"] == torch.__version__ and training["cpu_capability"]
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert train("two_threads", 3, 2)[1]["cpu_threads"] == 2
