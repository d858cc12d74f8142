# Figures to look at before trusting any later stage.


rule qc_overview:
    input:
        image="results/{dataset}/image.ome.zarr",
        ground_truth=lambda wc: (
            f"results/{wc.dataset}/ground_truth.parquet" if dataset_of(wc).has_ground_truth else []
        ),
    output:
        report(
            "results/{dataset}/qc/overview.png",
            caption="../report/qc_overview.rst",
            category="Quality control",
            labels={"dataset": "{dataset}", "figure": "overview"},
        ),
    params:
        n_frames=config["qc"]["montage_frames"],
    log:
        "logs/qc_overview/{dataset}.log",
    benchmark:
        "benchmarks/qc_overview/{dataset}.tsv"
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(20),
    conda:
        ENV_IMAGING
    script:
        "../scripts/qc_overview.py"
