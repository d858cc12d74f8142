"""DynaCLR training on a tiny synthetic patch store, checkpoints, embeddings and the training helpers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from celltrails.dynaclr.checkpoint import load_checkpoint
from celltrails.dynaclr.embed import check_compatible, embed_with_checkpoint
from celltrails.dynaclr.normalization import Normalization
from celltrails.dynaclr.patches import PatchSpec, PatchStore, extract_patches
from celltrails.dynaclr.train import (
    PatchPool,
    TrainingSettings,
    retrieval_accuracy,
    tau_in_frames,
    train_dynaclr,
)
from celltrails.errors import InputError
from celltrails.ome_zarr_io import create_image_store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ENCODER = {"dims": [8, 16], "depths": [1, 1], "projection_dim": 8}
NORMALIZATION = Normalization("dataset", "mean", "std")
GRID = [(y, x) for y in (16, 48, 80) for x in (16, 48, 80)]


def settings(**overrides) -> TrainingSettings:
    """Small, fast training settings (tiny crop and batch)."""
    return TrainingSettings(**{"steps": 20, "batch_size": 8, "crop": 16, "validate_every": 10,
                               "validation_batches": 2, **overrides})


def synthetic_series(n_frames: int = 6, size: int = 96, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """A 2-channel 2D series of blobs on noise, each track with its own look (disk radius and brightness in
    channel a, ring radius in b), and its track table. Tracks 1-8 live throughout on a 3 x 3 grid, track 9
    divides after t=2 into 10 and 11 (11 near the bottom border)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(100, 5, size=(n_frames, 2, 1, size, size))
    yy, xx = np.indices((size, size))

    def draw(t, k, y, x):
        r = np.hypot(yy - y, xx - x)
        data[t, 0, 0][r < 2 + k % 4 * 2] += 300 + 120 * k
        data[t, 1, 0][(r > 3 + (k * 3) % 5) & (r < 5 + (k * 3) % 5)] += 500

    rows = []
    for k in range(1, 9):
        for t in range(n_frames):
            y, x = np.array(GRID[k - 1]) + rng.uniform(-1, 1, size=2)
            draw(t, k, y, x)
            rows.append((t, k, -1, 0.0, y, x, f"cell{k}"))
    for t in range(n_frames):
        cells = [(9, -1, 80.0)] if t < 3 else [(10, 9, 72.0), (11, 9, 88.0)]
        for k, parent, y in cells:
            draw(t, k, y, 80.0)
            rows.append((t, k, parent, 0.0, y, 80.0, "mother" if k == 9 else "daughter"))
    tracks = pd.DataFrame(rows, columns=["t", "track_id", "parent_track_id", "z", "y", "x", "state"])
    return data.astype(np.uint16), tracks


def write_image(path: Path, data: np.ndarray, names=("a", "b")) -> Path:
    """An OME-Zarr image of ``data`` (t, c, z, y, x)."""
    array = create_image_store(path, data.shape, data.dtype, (1.0, 0.5, 0.5), 5.0, names)
    array[:] = data
    return path


def train(store_folders, out: Path, seed: int = 0, **overrides) -> dict:
    """Train the tiny encoder on patch folders (one thread, reproducible)."""
    stores = [PatchStore(folder) for folder in store_folders]
    names = [f"ds{i}" for i in range(len(stores))]
    return train_dynaclr(stores, names, out / "model.pt", settings=settings(**overrides), encoder=ENCODER,
                         normalization=NORMALIZATION, seed=seed, threads=1, log_dir=out / "logs")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(image path, patch folder, data, tracks) of the synthetic series, patches of 24 px."""
    root = tmp_path_factory.mktemp("dynaclr")
    data, tracks = synthetic_series()
    image = write_image(root / "image.ome.zarr", data)
    extract_patches(image, tracks, root / "patches", PatchSpec(size=24), stats_stride=4, dataset="ds0")
    return image, root / "patches", data, tracks


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    """(output folder, metrics) of 20 training steps with seed 0."""
    out = tmp_path_factory.mktemp("trained")
    return out, train([synthetic[1]], out, seed=0)


# --- training ------------------------------------------------------------------------------------

def test_training_writes_checkpoint_history_and_curve(trained, synthetic):
    out, metrics = trained
    assert (out / "model.pt").is_file()
    assert (out / "logs" / "loss_curve.png").read_bytes()[:8] == PNG_MAGIC
    history = pd.read_csv(out / "logs" / "history.tsv", sep="\t")
    assert history.step.tolist() == [10, 20]
    assert {"train_loss", "val_loss", "val_retrieval_accuracy"} <= set(history.columns)
    assert np.isfinite(history[["train_loss", "val_loss"]].to_numpy()).all()
    assert ((history.val_retrieval_accuracy >= 0) & (history.val_retrieval_accuracy <= 1)).all()
    best = history.loc[history.val_loss.idxmin()]
    assert metrics["selected"] == "best" and metrics["step"] == best.step
    assert metrics["val_loss"] == pytest.approx(best.val_loss)
    assert metrics["train_loss_final"] == pytest.approx(history.train_loss.iloc[-1])
    assert sorted(p.name for p in out.iterdir()) == ["logs", "model.pt"]  # no temporaries left

    model, meta = load_checkpoint(out / "model.pt")
    store = PatchStore(synthetic[1])
    assert meta["channels"] == store.channel_names == ["a", "b"]
    assert meta["patch"] == {"size": 24, "z_window": 1, "crop": 16, "downsample_yx": 1}
    assert meta["normalization"] == NORMALIZATION
    assert meta["trained_on"] == ["ds0"]
    assert meta["config"].dims == (8, 16) and meta["config"].in_channels == 2
    assert meta["training"]["seed"] == 0 and meta["training"]["steps"] == 20
    assert meta["training"]["train_patches"] + meta["training"]["val_patches"] == len(store)
    assert meta["training"]["val_patches"] > 0
    assert not model.training


def test_same_seed_gives_identical_weights_and_another_seed_does_not(trained, synthetic, tmp_path):
    out, _ = trained
    train([synthetic[1]], tmp_path / "again", seed=0)
    train([synthetic[1]], tmp_path / "other", seed=1)
    first = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    again = torch.load(tmp_path / "again" / "model.pt", weights_only=True)["state_dict"]
    other = torch.load(tmp_path / "other" / "model.pt", weights_only=True)["state_dict"]
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "logs" / "history.tsv", sep="\t").drop(columns="seconds"),
        pd.read_csv(tmp_path / "again" / "logs" / "history.tsv", sep="\t").drop(columns="seconds"))


def test_training_loss_decreases_on_easy_data(synthetic, tmp_path):
    metrics = train([synthetic[1]], tmp_path, seed=0, steps=60, learning_rate=1e-3, validation_fraction=0.0)
    history = pd.read_csv(tmp_path / "logs" / "history.tsv", sep="\t")
    assert history.step.tolist() == [10, 20, 30, 40, 50, 60]  # each row: mean training loss of 10 steps
    assert "val_loss" not in history and metrics["selected"] == "last"
    first, last = history.train_loss.iloc[0], history.train_loss.iloc[-1]
    assert last < 0.8 * first, history.train_loss.tolist()


def test_triplet_loss_with_classical_sampling_trains(synthetic, tmp_path):
    metrics = train([synthetic[1]], tmp_path, steps=4, validate_every=2, loss="triplet", sampling="classical")
    assert math.isfinite(metrics["train_loss_final"]) and metrics["steps"] == 4
    _, meta = load_checkpoint(tmp_path / "model.pt")
    assert meta["training"]["loss"] == "triplet" and meta["training"]["sampling"] == "classical"


@pytest.mark.parametrize("crop, message", [(20, "multiple of 8"), (32, "<= the patch size 24")])
def test_training_rejects_a_crop_the_encoder_cannot_take(synthetic, tmp_path, crop, message):
    with pytest.raises(ValueError, match=message):
        train([synthetic[1]], tmp_path, crop=crop)
    assert not (tmp_path / "model.pt").exists()


def test_training_settings_round_trip_and_checks():
    parsed = TrainingSettings.from_dict({"steps": 5, "tau": 2, "augment": {"noise_std": 0.1}})
    assert parsed.tau == (2, 2) and parsed.augment.noise_std == 0.1
    assert TrainingSettings.from_dict({"tau": [1, 3]}).tau == (1, 3)
    assert TrainingSettings.from_dict(parsed.to_dict()) == parsed
    with pytest.raises(ValueError, match="loss 'mse'"):
        TrainingSettings(loss="mse")
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        TrainingSettings(batch_size=1)


# --- embedding ------------------------------------------------------------------------------------

def test_embeddings_cover_every_patch_in_store_order(trained, synthetic, tmp_path):
    out, _ = trained
    store = PatchStore(synthetic[1])
    n_rows = embed_with_checkpoint(synthetic[1], out / "model.pt", tmp_path / "emb.parquet", dataset="ds0",
                                   batch_size=7)  # 7 does not divide the patch count: a short last row group
    written = pd.read_parquet(tmp_path / "emb.parquet")
    assert n_rows == len(written)
    features, projections = [f"f_{i}" for i in range(16)], [f"p_{i}" for i in range(8)]
    assert list(written.columns) == list(store.index.columns) + features + projections
    assert len(written) == len(store) == len(synthetic[3])
    pd.testing.assert_frame_equal(written[list(store.index.columns)], store.index)
    values = written[features + projections].to_numpy()
    assert values.dtype == np.float32 and np.isfinite(values).all()
    assert np.ptp(values, axis=0).max() > 0  # not one vector for every patch

    model, _ = load_checkpoint(out / "model.pt")  # by hand: normalize, crop the centre 16 of 24, encode
    rows = np.array([0, 17, len(store) - 1])
    x = store.read_normalized(rows, NORMALIZATION)[..., 4:20, 4:20]
    with torch.no_grad():
        f, p = model(torch.from_numpy(x))
    np.testing.assert_allclose(written.loc[rows, features].to_numpy(), f.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(written.loc[rows, projections].to_numpy(), p.numpy(), rtol=1e-4, atol=1e-5)

    embed_with_checkpoint(synthetic[1], out / "model.pt", tmp_path / "emb2.parquet", batch_size=256)
    whole = pd.read_parquet(tmp_path / "emb2.parquet")
    np.testing.assert_allclose(whole[features + projections].to_numpy(), values, rtol=1e-4, atol=1e-5)


def test_incompatible_patches_are_input_errors(trained, synthetic, tmp_path):
    out, _ = trained
    image, folder, _, tracks = synthetic
    extract_patches(image, tracks, tmp_path / "one", PatchSpec(size=24), channels=["a"], stats_stride=4)
    with pytest.raises(InputError, match=r"dataset 'x'.*trained on 2 channels \['a', 'b'\].*have 1"):
        embed_with_checkpoint(tmp_path / "one", out / "model.pt", tmp_path / "emb.parquet", dataset="x")
    assert not (tmp_path / "emb.parquet").exists()

    _, meta = load_checkpoint(out / "model.pt")
    store = PatchStore(folder)
    check_compatible(store, meta)
    with pytest.raises(InputError, match="z window of 3 slices, the patches have 1"):
        check_compatible(store, {**meta, "patch": {**meta["patch"], "z_window": 3}})
    with pytest.raises(InputError, match="patches of 24 px are smaller than the encoder input 32"):
        check_compatible(store, {**meta, "patch": {**meta["patch"], "crop": 32}})


# --- helpers --------------------------------------------------------------------------------------

def test_tau_in_frames():
    assert tau_in_frames([30, 90], [10.0, 10.0], ["a", "b"]) == (3, 9)
    assert tau_in_frames([4, 16], [10.0], ["a"]) == (1, 2)  # at least one frame, rounded
    assert tau_in_frames([20, 5], [10.0], ["a"]) == (2, 2)  # the upper end never below the lower
    assert tau_in_frames([7.5, 7.5], [2.5], ["a"]) == (3, 3)
    with pytest.raises(ValueError, match=r"one time interval.*\['a', 'b'\] have \[5.0, 10.0\]"):
        tau_in_frames([10, 20], [5.0, 10.0], ["a", "b"])
    for interval in (0.0, float("nan")):
        with pytest.raises(ValueError, match="register time_interval"):
            tau_in_frames([10, 20], [interval], ["a"])


def test_patch_pool_makes_ids_unique_across_stores(synthetic, tmp_path):
    image, folder, _, tracks = synthetic
    subset = tracks[tracks.track_id.isin([1, 9, 10, 11])]
    extract_patches(image, subset, tmp_path / "second", PatchSpec(size=24), stats_stride=4)
    stores = [PatchStore(folder), PatchStore(tmp_path / "second")]
    pool = PatchPool(stores, ["first", "second"])
    index = pool.index
    assert len(index) == len(stores[0]) + len(stores[1])
    assert index.source.tolist() == [0] * len(stores[0]) + [1] * len(stores[1])
    local = pd.concat([s.index for s in stores], ignore_index=True)
    for column in ("track_id", "lineage_id"):
        pairs = set(zip(index.source, local[column], index[column]))
        assert len({(s, k) for s, k, _ in pairs}) == len({g for _, _, g in pairs}) == len(pairs)
    assert index.track_id.nunique() == 11 + 4 and index.lineage_id.nunique() == 9 + 2
    global_track = dict(zip(zip(index.source, local.track_id), index.track_id))
    for source, parent, pooled_parent in zip(index.source, local.parent_track_id, index.parent_track_id):
        assert pooled_parent == (global_track[(source, parent)] if parent >= 0 else -1)
    rows = np.array([len(stores[0]) + 2, 3, len(stores[0]), 3])
    expected = [stores[s].read_normalized([r], NORMALIZATION)[0] for s, r in zip(index.source[rows], index.row[rows])]
    np.testing.assert_array_equal(pool.read(rows, NORMALIZATION), expected)


def test_patch_pool_rejects_stores_with_other_channels_or_sizes(synthetic, tmp_path):
    image, folder, _, tracks = synthetic
    extract_patches(image, tracks, tmp_path / "one", PatchSpec(size=24), channels=["b"], stats_stride=4)
    extract_patches(image, tracks, tmp_path / "small", PatchSpec(size=16), stats_stride=4)
    for other in ("one", "small"):
        with pytest.raises(ValueError, match="dataset 'other'.*differ from 'first'"):
            PatchPool([PatchStore(folder), PatchStore(tmp_path / other)], ["first", "other"])
    with pytest.raises(ValueError, match="no patch stores"):
        PatchPool([], [])


def test_retrieval_accuracy():
    anchor = torch.randn(6, 4)
    assert retrieval_accuracy(anchor, anchor) == 1.0
    assert retrieval_accuracy(anchor, 3.0 * anchor + 1e-3 * torch.randn(6, 4)) == 1.0  # cosine: scale-free
    one_hot = torch.eye(5)
    assert retrieval_accuracy(one_hot, one_hot[[1, 2, 3, 4, 0]]) == 0.0  # every positive belongs to another
    assert retrieval_accuracy(one_hot, one_hot[[0, 1, 3, 2, 4]]) == pytest.approx(0.6)
