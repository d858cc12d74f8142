# DynaCLR: single-cell patches, the contrastive encoder, embeddings and their quality.


rule patches:
    input:
        image="results/{dataset}/image.ome.zarr",
        tracks=patch_tracks_of,
    output:
        directory("results/{dataset}/patches"),
    params:
        patch=config["dynaclr"]["patch"],
        channels=config["dynaclr"]["channels"],
        seed=config["seed"],
    log:
        "logs/patches/{dataset}.log",
    benchmark:
        "benchmarks/patches/{dataset}.tsv"
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(120),
    conda:
        ENV_IMAGING
    script:
        "../scripts/patches.py"


rule train_dynaclr:
    input:
        patches=expand("results/{dataset}/patches", dataset=config["dynaclr"]["train_on"]),
    output:
        model=TRAINED_DYNACLR,
        history=f"{TRAINED_DYNACLR_DIR}/history.tsv",
        curve=report(
            f"{TRAINED_DYNACLR_DIR}/loss_curve.png",
            caption="../report/dynaclr_training.rst",
            category="DynaCLR training",
        ),
    params:
        datasets=config["dynaclr"]["train_on"],
        training=config["dynaclr"]["training"],
        encoder=config["dynaclr"]["encoder"],
        normalization=config["dynaclr"]["normalization"],
        time_known=[DATASETS[d].is_synthetic or DATASETS[d].time_interval is not None for d in config["dynaclr"]["train_on"]],
        seed=config["seed"],
    threads: 2
    log:
        f"logs/train_dynaclr/{config['dynaclr']['model_name']}.log",
    benchmark:
        f"benchmarks/train_dynaclr/{config['dynaclr']['model_name']}.tsv"
    resources:
        gpu=1,
        mem_mb=scaled(8000),
        runtime=scaled(480),
    conda:
        ENV_TORCH
    script:
        "../scripts/train_dynaclr.py"


rule embed:
    input:
        patches="results/{dataset}/patches",
        model=dynaclr_checkpoint,
    output:
        "results/{dataset}/embeddings.parquet",
    params:
        batch_size=config["dynaclr"]["batch_size"],
    threads: 2
    log:
        "logs/embed/{dataset}.log",
    benchmark:
        "benchmarks/embed/{dataset}.tsv"
    resources:
        gpu=1,
        mem_mb=scaled(4000),
        runtime=scaled(120),
    conda:
        ENV_TORCH
    script:
        "../scripts/embed.py"


rule embedding_quality:
    input:
        "results/{dataset}/embeddings.parquet",
    output:
        metrics="results/{dataset}/metrics/embedding.json",
        distances=report(
            "results/{dataset}/analysis/embedding_distances.png",
            caption="../report/embedding_distances.rst",
            category="Embeddings",
            subcategory="{dataset}",
        ),
        pca=report(
            "results/{dataset}/analysis/embedding_pca.png",
            caption="../report/embedding_pca.rst",
            category="Embeddings",
            subcategory="{dataset}",
        ),
    params:
        seed=config["seed"],
    log:
        "logs/embedding_quality/{dataset}.log",
    benchmark:
        "benchmarks/embedding_quality/{dataset}.tsv"
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(30),
    conda:
        ENV_IMAGING
    script:
        "../scripts/embedding_quality.py"
