# Analysis of the embeddings: classifiers from sparse annotations, DTW pseudo-time, figures, the report.


rule derive_annotations:
    input:
        tracks=patch_tracks_of,
        ground_truth="results/{dataset}/ground_truth.parquet",
        image="results/{dataset}/image.ome.zarr",
    output:
        annotations="results/{dataset}/analysis/annotations.csv",
        labels="results/{dataset}/analysis/true_labels.parquet",
    params:
        fraction=config["analyze"]["annotation_fraction"],
        max_cells=config["analyze"]["max_annotated_cells"],
        seed=config["seed"],
    log:
        "logs/derive_annotations/{dataset}.log",
    benchmark:
        "benchmarks/derive_annotations/{dataset}.tsv"
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(30),
    conda:
        ENV_IMAGING
    script:
        "../scripts/derive_annotations.py"


rule classify:
    input:
        embeddings="results/{dataset}/embeddings.parquet",
        annotations=lambda wc: [] if config["analyze"]["classifier"] else annotations_of(wc),
        labels=true_labels_of,
        image="results/{dataset}/image.ome.zarr",
    output:
        predictions="results/{dataset}/analysis/predictions.parquet",
        metrics="results/{dataset}/analysis/classifier_metrics.json",
        figures=report(
            directory("results/{dataset}/analysis/states"),
            patterns=["{name}.png"],
            caption="../report/states.rst",
            category="Cell states",
            subcategory="{dataset}",
        ),
    params:
        classifier=config["analyze"]["classifier"],
        pca_components=config["analyze"]["pca_components"],
        n_splits=config["analyze"]["n_splits"],
        time_known=lambda wc: dataset_of(wc).is_synthetic or dataset_of(wc).time_interval is not None,
        derived=lambda wc: derives_annotations(wc.dataset),
        seed=config["seed"],
    log:
        "logs/classify/{dataset}.log",
    benchmark:
        "benchmarks/classify/{dataset}.tsv"
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(60),
    conda:
        ENV_IMAGING
    script:
        "../scripts/classify.py"


rule pseudotime:
    input:
        embeddings="results/{dataset}/embeddings.parquet",
        predictions="results/{dataset}/analysis/predictions.parquet",
        annotations=lambda wc: [] if config["analyze"]["classifier"] else annotations_of(wc),
        labels=true_labels_of,
    output:
        table="results/{dataset}/analysis/pseudotime.parquet",
        summary="results/{dataset}/analysis/pseudotime_summary.json",
        components=report(
            "results/{dataset}/analysis/pseudotime_components.png",
            caption="../report/pseudotime.rst",
            category="Pseudo-time",
            subcategory="{dataset}",
        ),
        examples=report(
            "results/{dataset}/analysis/pseudotime_examples.png",
            caption="../report/pseudotime.rst",
            category="Pseudo-time",
            subcategory="{dataset}",
        ),
    params:
        settings=config["analyze"]["pseudotime"],
        seed=config["seed"],
    log:
        "logs/pseudotime/{dataset}.log",
    benchmark:
        "benchmarks/pseudotime/{dataset}.tsv"
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(60),
    conda:
        ENV_IMAGING
    script:
        "../scripts/pseudotime.py"


rule track_figures:
    input:
        tracks="results/{dataset}/tracks.parquet",
        image="results/{dataset}/image.ome.zarr",
    output:
        montage=report(
            "results/{dataset}/analysis/tracks_montage.png",
            caption="../report/tracks_montage.rst",
            category="Tracking",
            subcategory="{dataset}",
        ),
        trees=report(
            "results/{dataset}/analysis/lineage_trees.png",
            caption="../report/lineage_trees.rst",
            category="Tracking",
            subcategory="{dataset}",
        ),
    params:
        frames=config["analyze"]["montage_frames"],
        trees=config["analyze"]["lineage_trees"],
    log:
        "logs/track_figures/{dataset}.log",
    benchmark:
        "benchmarks/track_figures/{dataset}.tsv"
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(30),
    conda:
        ENV_IMAGING
    script:
        "../scripts/track_figures.py"


rule report_html:
    input:
        REPORT_INPUTS,
    output:
        "results/report.html",
    params:
        datasets=list(DATASETS),
        reasons={name: missing_sections(name, detector_available()) for name in DATASETS},
        config=config,
        repo=str(REPO),
    log:
        "logs/report_html/report.log",
    benchmark:
        "benchmarks/report_html/report.tsv"
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(30),
    conda:
        ENV_IMAGING
    script:
        "../scripts/report_html.py"
