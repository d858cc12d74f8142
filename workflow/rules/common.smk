# Dataset registration and the input functions every stage uses; rule files hold no logic.

from snakemake.exceptions import WorkflowError

from celltrails.config import is_range
from celltrails.datasets import load_datasets
from celltrails.errors import InputError
from celltrails.memory import detect_memory_mb, evaluate_memory_mb, lineage_memory_mb

try:
    DATASETS = load_datasets(config["datasets"], base=Path.cwd())
except InputError as err:
    raise WorkflowError(str(err)) from None

ENV_IMAGING = str(REPO / "envs" / "imaging.yaml")


def scaled(base):
    """A memory (MB) or runtime (min) request that grows with the attempt: a job killed for running
    out of either is retried (`retries:` in profiles/slurm) with twice, then three times as much."""
    return lambda wildcards, attempt: base * attempt


ENV_TORCH = str(REPO / "envs" / "torch.yaml")


def dataset_of(wildcards):
    return DATASETS[wildcards.dataset]


def source_of(wildcards):
    """The source that convert reads (the registered one, or the generated synthetic series)."""
    dataset = dataset_of(wildcards)
    if dataset.is_synthetic:
        return f"results/{dataset.name}/synthetic"
    return str(dataset.path)


def ground_truth_source_of(wildcards):
    dataset = dataset_of(wildcards)
    if dataset.is_synthetic:
        return f"results/{dataset.name}/synthetic"
    return str(dataset.ground_truth)


def detector_available():
    """Tracking runs when there is a model: trained here, given, or shipped with the workflow."""
    return bool(config["detector"]["train_on"] or config["detector"]["checkpoint"]
                or all(path.is_file() for path in SHIPPED_DETECTORS.values()))


def all_targets():
    return [*per_dataset_targets(), "results/report.html"]


def per_dataset_targets():
    targets = []
    track = detector_available()
    for name, dataset in DATASETS.items():
        targets += [f"results/{name}/image.ome.zarr", f"results/{name}/qc/overview.png"]
        if dataset.has_ground_truth:
            targets.append(f"results/{name}/ground_truth.parquet")
        if track:
            targets += [f"results/{name}/detections.parquet", f"results/{name}/tracks.parquet"]
            if dataset.has_ground_truth:
                targets += [f"results/{name}/metrics/detection.json", f"results/{name}/metrics/tracking.json"]
        targets += dynaclr_targets(name, track)
        targets += analysis_targets(name, track)
    return targets


# --- detector -------------------------------------------------------------------------------

SHIPPED_DETECTORS = {2: REPO / "workflow" / "models" / "detector_2d.pt", 3: REPO / "workflow" / "models" / "detector_3d.pt"}
TRAINED_DETECTOR_DIR = f"results/models/{config['detector']['model_name']}"
TRAINED_DETECTOR = f"{TRAINED_DETECTOR_DIR}/detector.pt"


def _check_training_datasets(key):
    unknown = [d for d in config[key]["train_on"] if d not in DATASETS]
    without_truth = [d for d in config[key]["train_on"] if d in DATASETS and not DATASETS[d].has_ground_truth]
    if unknown:
        raise WorkflowError(f"config {key}.train_on: datasets {unknown} are not registered in {config['datasets']}")
    if without_truth:
        raise WorkflowError(f"config {key}.train_on: datasets {without_truth} have no ground truth to train on")


_check_training_datasets("detector")


def _check_detector_augmentation():
    # The schema checks each bound, not their order (the rule Augmentation applies, without torch).
    for key in ("intensity_scale", "gamma"):
        low, high = config["detector"]["training"][key]
        if not is_range((low, high), positive=True):
            raise WorkflowError(f"config detector.training.{key}: [{low}, {high}] is not a range [low, high]")


_check_detector_augmentation()


def converted_image_meta(wildcards):
    """Metadata of the converted image (waits for the `convert` checkpoint)."""
    from celltrails.ome_zarr_io import read_image_meta

    return read_image_meta(checkpoints.convert.get(dataset=wildcards.dataset).output[0])


def detector_checkpoint(wildcards):
    """The trained model if `detector.train_on` is set, else a given or the shipped checkpoint."""
    if config["detector"]["train_on"]:
        return TRAINED_DETECTOR
    if config["detector"]["checkpoint"]:
        return config["detector"]["checkpoint"]
    return str(SHIPPED_DETECTORS[3 if converted_image_meta(wildcards).is_3d else 2])


def detection_blocks(wildcards):
    """One detection job per block of `detector.frames_per_job` frames."""
    n_frames = converted_image_meta(wildcards).n_frames
    size = config["detector"]["frames_per_job"]
    return [f"results/{wildcards.dataset}/detect/frames_{start:06d}-{min(start + size, n_frames):06d}.parquet"
            for start in range(0, n_frames, size)]


# --- linking and lineage ---------------------------------------------------------------------


def link_blocks(wildcards):
    """One linking job per block of `link.pairs_per_job` frame pairs (t, t+1)."""
    n_pairs = converted_image_meta(wildcards).n_frames - 1
    size = config["link"]["pairs_per_job"]
    return [f"results/{wildcards.dataset}/link/pairs_{start:06d}-{min(start + size, n_pairs):06d}.parquet"
            for start in range(0, n_pairs, size)]


def tracking_truth_of(wildcards):
    """The ground truth tracking is scored against: CTC TRA masks where they exist, else points."""
    dataset = dataset_of(wildcards)
    if dataset.is_synthetic:  # the generator's folder; its CTC ground truth is GT/TRA inside
        return f"results/{dataset.name}/synthetic"
    tra = dataset.ground_truth / "TRA"
    if tra.is_dir():
        return str(tra)
    return f"results/{dataset.name}/ground_truth.parquet"


def truth_has_masks(wildcards):
    """Whether tracking is scored on CTC masks (the whole series is loaded) rather than points."""
    return not tracking_truth_of(wildcards).endswith(".parquet")


# --- memory of the jobs that grow with the image --------------------------------------------
# celltrails.memory's estimates for the converted image, times the attempt as in `scaled`. These
# jobs only exist once `convert` (a checkpoint) has written the image, so its metadata is there.

def detect_block_memory(wildcards, attempt):
    return detect_memory_mb(converted_image_meta(wildcards)) * attempt


def lineage_memory(wildcards, attempt):
    return lineage_memory_mb(converted_image_meta(wildcards), config["ctc_masks"]["shape"]) * attempt


def evaluate_tracking_memory(wildcards, attempt):
    return evaluate_memory_mb(converted_image_meta(wildcards), masks=truth_has_masks(wildcards)) * attempt


# --- DynaCLR ----------------------------------------------------------------------------------

SHIPPED_DYNACLR = {2: REPO / "workflow" / "models" / "dynaclr_2d.pt", 3: REPO / "workflow" / "models" / "dynaclr_3d.pt"}
TRAINED_DYNACLR_DIR = f"results/models/{config['dynaclr']['model_name']}"
TRAINED_DYNACLR = f"{TRAINED_DYNACLR_DIR}/dynaclr.pt"


def _check_dynaclr_datasets():
    unknown = [d for d in config["dynaclr"]["train_on"] if d not in DATASETS]
    if unknown:
        raise WorkflowError(f"config dynaclr.train_on: datasets {unknown} are not registered in {config['datasets']}")
    if config["dynaclr"]["model_name"] == config["detector"]["model_name"]:
        raise WorkflowError(f"config: detector.model_name and dynaclr.model_name are both "
                            f"{config['detector']['model_name']!r}; both models land in results/models/<name>/")


_check_dynaclr_datasets()


def uses_ground_truth_tracks(name):
    return config["dynaclr"]["tracks"] == "ground_truth" and DATASETS[name].has_ground_truth


def patch_tracks_of(wildcards):
    """The cell positions patches are cut around: predicted tracks or the registered ground truth."""
    if uses_ground_truth_tracks(wildcards.dataset):
        return f"results/{wildcards.dataset}/ground_truth.parquet"
    return f"results/{wildcards.dataset}/tracks.parquet"


def dynaclr_available():
    return bool(config["dynaclr"]["train_on"] or config["dynaclr"]["checkpoint"]
                or all(path.is_file() for path in SHIPPED_DYNACLR.values()))


def dynaclr_checkpoint(wildcards):
    """The trained encoder if `dynaclr.train_on` is set, else a given or the shipped checkpoint."""
    if config["dynaclr"]["train_on"]:
        return TRAINED_DYNACLR
    if config["dynaclr"]["checkpoint"]:
        return config["dynaclr"]["checkpoint"]
    return str(SHIPPED_DYNACLR[3 if converted_image_meta(wildcards).is_3d else 2])


def dynaclr_targets(name, track):
    """Embeddings and their quality metrics where there are tracks to cut patches around."""
    if not dynaclr_available() or not (track or uses_ground_truth_tracks(name)):
        return []
    return [f"results/{name}/embeddings.parquet", f"results/{name}/metrics/embedding.json"]


# --- analysis ---------------------------------------------------------------------------------


def derives_annotations(name):
    """No annotations registered, but ground truth to draw sparse ones from (analyze.annotations_from_ground_truth)."""
    dataset = DATASETS[name]
    return dataset.annotations is None and dataset.has_ground_truth and config["analyze"]["annotations_from_ground_truth"]


def annotations_of(wildcards):
    """The dataset's annotation CSV: registered, or derived from its ground truth."""
    dataset = dataset_of(wildcards)
    if dataset.annotations is not None:
        return str(dataset.annotations)
    return f"results/{dataset.name}/analysis/annotations.csv"


def true_labels_of(wildcards):
    """Full ground-truth labels of every embedded cell, where they were derived (to score predictions)."""
    return f"results/{wildcards.dataset}/analysis/true_labels.parquet" if derives_annotations(wildcards.dataset) else []


def classifies(name):
    return bool(config["analyze"]["classifier"] or DATASETS[name].annotations is not None or derives_annotations(name))


def analysis_targets(name, track):
    """Figures, classifier outputs and pseudo-time of a dataset, as far as its inputs exist."""
    targets = []
    if track:
        targets += [f"results/{name}/analysis/tracks_montage.png", f"results/{name}/analysis/lineage_trees.png"]
    if dynaclr_targets(name, track) and classifies(name):
        targets += [f"results/{name}/analysis/predictions.parquet", f"results/{name}/analysis/pseudotime.parquet"]
    return targets


def missing_sections(name, track):
    """Why the report lacks a section of a dataset (shown in the report instead of the section)."""
    reasons = {}
    if not track:
        reasons["tracking"] = "no detector checkpoint: tracking did not run"
    if not dynaclr_targets(name, track):
        reasons["embeddings"] = "no DynaCLR encoder or no tracks: embeddings were not computed"
    if not classifies(name):
        reasons["states"] = "no annotations registered (column `annotations` of the dataset sheet) and no ground truth to derive them"
        reasons["pseudotime"] = "needs predicted states (annotations) to find the transition"
    return reasons


REPORT_INPUTS = per_dataset_targets()
