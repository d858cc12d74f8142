"""Time-aware vs classical (vs cell-aware) DynaCLR sampling: smoothness, dynamic range and a linear probe.

For each sampling mode, an encoder is trained on the patches of a training series (cut around
its ground-truth tracks) and then embeds a held-out series it has never seen. Reported per mode,
on the held-out cells: smoothness and dynamic range (:mod:`celltrails.dynaclr.quality`) and the
F1 of a logistic-regression probe (StandardScaler + balanced LogisticRegression) fitted on the
training series' embeddings and scored on the held-out series. The probe's label is the
synthetic ground-truth ``state`` (``--label state``) or mitosis vs interphase derived from the
lineage (``--label division``: dividing within ``--before`` frames vs >= 3 frames from any
division; :func:`celltrails.lineage_labels.division_labels`).

Inputs are workflow result folders holding ``image.ome.zarr`` and ``ground_truth.parquet``
(e.g. ``results/train3d`` and ``results/heldout3d`` after
``snakemake --configfile config/training/detector_3d.yaml results/train3d/ground_truth.parquet ...``).

    python benchmarks/bench_dynaclr_sampling.py --train results/train3d --test results/heldout3d \\
        --label state --out benchmarks/results/dynaclr_sampling_synthetic.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pandas as pd
from celltrails.dynaclr.embed import embed_with_checkpoint
from celltrails.dynaclr.patches import PatchSpec, PatchStore, extract_patches, tracks_from_ground_truth
from celltrails.dynaclr.quality import feature_matrix, smoothness_metrics
from celltrails.dynaclr.train import TrainingSettings, train_dynaclr
from celltrails.lineage_labels import MITOSIS, division_labels
from celltrails.ome_zarr_io import read_image_meta
from celltrails.serialize import plain_data
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

log = logging.getLogger("bench_dynaclr_sampling")


def patches_for(folder: Path, work: Path, size: int, z_window: int, downsample: int, channels: list[str]) -> Path:
    out = work / f"patches_{folder.name}"
    if not out.exists():
        meta = read_image_meta(folder / "image.ome.zarr")
        tracks = tracks_from_ground_truth(pd.read_parquet(folder / "ground_truth.parquet"))
        extract_patches(folder / "image.ome.zarr", tracks, out, PatchSpec(size, z_window if meta.is_3d else 1, downsample_yx=downsample),
                        channels=channels, dataset=folder.name, logger=log)
    return out


def labels_of(table: pd.DataFrame, label: str, before: int) -> pd.Series:
    if label == "state":
        return table["state"].astype(object)
    names = division_labels(table, before=before, after=0)
    return names.map({MITOSIS: 1, "interphase": 0})


def probe_f1(train: pd.DataFrame, test: pd.DataFrame, label: str, before: int, seed: int) -> dict:
    y_train, y_test = labels_of(train, label, before), labels_of(test, label, before)
    keep_train, keep_test = y_train.notna().to_numpy(), y_test.notna().to_numpy()
    x_train, x_test = feature_matrix(train)[keep_train], feature_matrix(test)[keep_test]
    y_train, y_test = y_train[keep_train].astype(int), y_test[keep_test].astype(int)
    probe = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000,
                                                               random_state=seed))
    probe.fit(x_train, y_train)
    predicted = probe.predict(x_test)
    return {"f1": float(f1_score(y_test, predicted)), "n_train": int(keep_train.sum()),
            "n_test": int(keep_test.sum()), "positives_train": int(y_train.sum()),
            "positives_test": int(y_test.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--label", choices=("state", "division"), default="state")
    parser.add_argument("--before", type=int, default=2, help="division label: frames before a division")
    parser.add_argument("--modes", nargs="+", default=["classical", "time_aware"])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--patch-size", type=int, default=48)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--z-window", type=int, default=5)
    parser.add_argument("--downsample", type=int, default=1, help="average f x f pixel blocks (large nuclei)")
    parser.add_argument("--channels", nargs="*", default=[])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/dynaclr_sampling"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)

    train_patches = patches_for(args.train, args.work, args.patch_size, args.z_window, args.downsample,
                                args.channels)
    test_patches = patches_for(args.test, args.work, args.patch_size, args.z_window, args.downsample,
                                args.channels)
    results = {"train": str(args.train), "test": str(args.test), "label": args.label, "steps": args.steps,
               "batch_size": args.batch_size, "learning_rate": args.learning_rate, "patch_size": args.patch_size,
               "downsample_yx": args.downsample,
               "crop": args.crop, "seed": args.seed,
               "modes": {}}
    for mode in args.modes:
        checkpoint = args.work / f"{mode}_{args.train.name}.pt"
        start = time.perf_counter()
        metrics = train_dynaclr([PatchStore(train_patches)], [args.train.name], checkpoint,
                                settings=TrainingSettings(steps=args.steps, batch_size=args.batch_size,
                                                          learning_rate=args.learning_rate, sampling=mode,
                                                          crop=args.crop),
                                seed=args.seed, threads=args.threads, log_dir=args.work / f"log_{mode}", logger=log)
        train_seconds = time.perf_counter() - start
        embedded = {}
        for name, folder in (("train", train_patches), ("test", test_patches)):
            path = args.work / f"{mode}_{name}.parquet"
            embed_with_checkpoint(folder, checkpoint, path, threads=args.threads, logger=log)
            embedded[name] = pd.read_parquet(path)
        test = embedded["test"]
        quality = smoothness_metrics(feature_matrix(test), test["track_id"].to_numpy(), test["t"].to_numpy(),
                                     seed=args.seed)
        results["modes"][mode] = {"train_seconds": train_seconds, "validation": metrics, "held_out": quality,
                                  "probe": probe_f1(embedded["train"], test, args.label, args.before, args.seed)}
        row = results["modes"][mode]
        print(f"{mode:12s} smoothness {quality['smoothness']:.3f}  dynamic range {quality['dynamic_range']:.3f}  "
              f"probe F1 ({args.label}) {row['probe']['f1']:.3f}  train {train_seconds:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(plain_data(results), indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
