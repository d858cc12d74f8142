# Synthetic 3D+t series with exact ground truth, generated from a recipe (layout `synthetic`).


rule synthesize:
    input:
        recipe=lambda wc: str(dataset_of(wc).path),
    output:
        directory("results/{dataset}/synthetic"),
    log:
        "logs/synthesize/{dataset}.log",
    benchmark:
        "benchmarks/synthesize/{dataset}.tsv"
    threads: 2
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(60),
    conda:
        ENV_IMAGING
    script:
        "../scripts/synthesize.py"
