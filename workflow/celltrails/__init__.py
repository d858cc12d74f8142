"""celltrails: cell lineages and cell-state dynamics from fluorescence time-lapses.

The importable library behind the Snakemake workflow: I/O (OME-Zarr, TIFF, CTC), dataset
registration, the synthetic data generator and, stage by stage, detection, linking, lineage
and DynaCLR analysis. Workflow scripts are thin adapters around these modules.
"""

__version__ = "0.1.0"
