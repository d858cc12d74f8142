# Every registered source -> results/{dataset}/image.ome.zarr, and ground truth -> one table.


checkpoint convert:
    # A checkpoint: the number of frames (and so the detection blocks) is known once it ran.
    input:
        source_of,
    output:
        directory("results/{dataset}/image.ome.zarr"),
    params:
        dataset=dataset_of,
        tile_yx=config["convert"]["tile_yx"],
    threads: config["convert"]["threads"]
    log:
        "logs/convert/{dataset}.log",
    benchmark:
        "benchmarks/convert/{dataset}.tsv"
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(120),
    conda:
        ENV_IMAGING
    script:
        "../scripts/convert.py"


rule ground_truth:
    input:
        source=ground_truth_source_of,
        image="results/{dataset}/image.ome.zarr",
    output:
        "results/{dataset}/ground_truth.parquet",
    params:
        dataset=dataset_of,
    log:
        "logs/ground_truth/{dataset}.log",
    benchmark:
        "benchmarks/ground_truth/{dataset}.tsv"
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(30),
    conda:
        ENV_IMAGING
    script:
        "../scripts/ground_truth.py"
