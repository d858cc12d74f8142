"""Snakemake adapter: the self-contained HTML report over all datasets (rule `report_html`)."""
# ruff: noqa: F821  (Snakemake injects the `snakemake` object into scripts)

from celltrails.logs import script_logging
from celltrails.report import collect_dataset, write_report

with script_logging(snakemake.log[0]) as log:
    reasons = snakemake.params.reasons
    datasets = [collect_dataset(name, f"results/{name}", reasons.get(name)) for name in snakemake.params.datasets]
    write_report(snakemake.output[0], datasets, snakemake.params.config, repo=snakemake.params.repo)
    log.info("report of %d dataset(s) -> %s", len(datasets), snakemake.output[0])
