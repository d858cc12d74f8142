"""The benchmark suite behind ``benchmarks/run_suite.py``: one module per job (datasets, each tool's
runner, linking throughput, scaling, report). Imports here stay light: ``measure`` and
``ultrack_runner`` also run under ultrack's own virtual environment, which lacks celltrails' deps.
"""
