# Linking of frame pairs, lineage assembly, CTC export and tracking metrics.


rule link_block:
    input:
        detections="results/{dataset}/detections.parquet",
        candidates="results/{dataset}/candidates.parquet",
        image="results/{dataset}/image.ome.zarr",
    output:
        temp("results/{dataset}/link/pairs_{start}-{stop}.parquet"),
    params:
        link=config["link"],
    log:
        "logs/link_block/{dataset}/pairs_{start}-{stop}.log",
    benchmark:
        "benchmarks/link_block/{dataset}/pairs_{start}-{stop}.tsv"
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(60),
    conda:
        ENV_IMAGING
    script:
        "../scripts/link_block.py"


rule lineage:
    input:
        detections="results/{dataset}/detections.parquet",
        candidates="results/{dataset}/candidates.parquet",
        edges=link_blocks,
        image="results/{dataset}/image.ome.zarr",
    output:
        tracks="results/{dataset}/tracks.parquet",
        napari="results/{dataset}/napari_tracks.csv",
        ctc=directory("results/{dataset}/ctc"),
    params:
        link=config["link"],
        lineage=config["lineage"],
        masks=config["ctc_masks"],
        channel=config["detector"]["channel"],
    log:
        "logs/lineage/{dataset}.log",
    benchmark:
        "benchmarks/lineage/{dataset}.tsv"
    resources:
        mem_mb=lineage_memory,
        runtime=scaled(120),
    conda:
        ENV_IMAGING
    script:
        "../scripts/lineage.py"


rule evaluate_tracking:
    input:
        ctc="results/{dataset}/ctc",
        tracks="results/{dataset}/tracks.parquet",
        truth=tracking_truth_of,
        image="results/{dataset}/image.ome.zarr",
    output:
        "results/{dataset}/metrics/tracking.json",
    log:
        "logs/evaluate_tracking/{dataset}.log",
    benchmark:
        "benchmarks/evaluate_tracking/{dataset}.tsv"
    resources:
        mem_mb=evaluate_tracking_memory,
        runtime=scaled(60),
    conda:
        ENV_IMAGING
    script:
        "../scripts/evaluate_tracking.py"
