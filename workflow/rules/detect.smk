# CELLECT-style detection: centres, radii, division probabilities and embeddings of every cell.


wildcard_constraints:
    start=r"\d{6}",
    stop=r"\d{6}",


rule train_detector:
    input:
        images=expand("results/{dataset}/image.ome.zarr", dataset=config["detector"]["train_on"]),
        ground_truth=expand("results/{dataset}/ground_truth.parquet", dataset=config["detector"]["train_on"]),
    output:
        model=TRAINED_DETECTOR,
        validation=f"{TRAINED_DETECTOR_DIR}/validation.tsv",
        curve=report(
            f"{TRAINED_DETECTOR_DIR}/loss_curve.png",
            caption="../report/detector_training.rst",
            category="Detector training",
        ),
    params:
        datasets=config["detector"]["train_on"],
        nucleus_radii=[DATASETS[name].nucleus_radius for name in config["detector"]["train_on"]],
        channel=config["detector"]["channel"],
        training=config["detector"]["training"],
        seed=config["seed"],
    threads: 2
    log:
        f"logs/train_detector/{config['detector']['model_name']}.log",
    benchmark:
        f"benchmarks/train_detector/{config['detector']['model_name']}.tsv"
    resources:
        gpu=1,
        mem_mb=scaled(8000),
        runtime=scaled(480),
    conda:
        ENV_TORCH
    script:
        "../scripts/train_detector.py"


rule detect_block:
    input:
        image="results/{dataset}/image.ome.zarr",
        model=detector_checkpoint,
    output:
        temp("results/{dataset}/detect/frames_{start}-{stop}.parquet"),
    params:
        settings=config["detector"],
        nucleus_radius=lambda wildcards: dataset_of(wildcards).nucleus_radius,
    threads: 2
    log:
        "logs/detect_block/{dataset}/frames_{start}-{stop}.log",
    benchmark:
        "benchmarks/detect_block/{dataset}/frames_{start}-{stop}.tsv"
    resources:
        gpu=1,
        mem_mb=detect_block_memory,
        runtime=scaled(120),
    conda:
        ENV_TORCH
    script:
        "../scripts/detect_block.py"


rule merge_detections:
    input:
        blocks=detection_blocks,
        model=detector_checkpoint,
    output:
        detections="results/{dataset}/detections.parquet",
        candidates="results/{dataset}/candidates.parquet",
        threshold="results/{dataset}/metrics/detection_threshold.json",
        histogram=report(
            "results/{dataset}/qc/detection_threshold.png",
            caption="../report/detection_threshold.rst",
            category="Quality control",
            labels={"dataset": "{dataset}", "figure": "detection threshold"},
        ),
    params:
        settings=config["detector"],
        image="results/{dataset}/image.ome.zarr",
        block_logs="logs/detect_block/{dataset}/",
    log:
        "logs/merge_detections/{dataset}.log",
    benchmark:
        "benchmarks/merge_detections/{dataset}.tsv"
    conda:
        ENV_TORCH
    script:
        "../scripts/merge_detections.py"


rule evaluate_detections:
    input:
        detections="results/{dataset}/detections.parquet",
        ground_truth="results/{dataset}/ground_truth.parquet",
        image="results/{dataset}/image.ome.zarr",
    output:
        "results/{dataset}/metrics/detection.json",
    log:
        "logs/evaluate_detections/{dataset}.log",
    benchmark:
        "benchmarks/evaluate_detections/{dataset}.tsv"
    conda:
        ENV_TORCH
    script:
        "../scripts/evaluate_detections.py"


localrules:
    merge_detections,
