# Dataset registration and the input functions every stage uses; rule files hold no logic.

from snakemake.exceptions import WorkflowError

from celltrails.datasets import load_datasets
from celltrails.errors import InputError

try:
    DATASETS = load_datasets(config["datasets"], base=Path.cwd())
except InputError as err:
    raise WorkflowError(str(err)) from None

ENV_IMAGING = str(REPO / "envs" / "imaging.yaml")


wildcard_constraints:
    dataset="|".join(DATASETS),


def dataset_of(wildcards):
    return DATASETS[wildcards.dataset]


def source_of(wildcards):
    """What the convert rule reads: the registered source, or the generated synthetic series."""
    dataset = dataset_of(wildcards)
    if dataset.is_synthetic:
        return f"results/{dataset.name}/synthetic"
    return str(dataset.path)


def ground_truth_source_of(wildcards):
    dataset = dataset_of(wildcards)
    if dataset.is_synthetic:
        return f"results/{dataset.name}/synthetic"
    return str(dataset.ground_truth)


def all_targets():
    targets = []
    for name, dataset in DATASETS.items():
        targets.append(f"results/{name}/image.ome.zarr")
        targets.append(f"results/{name}/qc/overview.png")
        if dataset.has_ground_truth:
            targets.append(f"results/{name}/ground_truth.parquet")
    return targets
