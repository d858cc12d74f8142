"""celltrails: cell lineages and cell-state dynamics from fluorescence time-lapses.

Run from the repository root with `snakemake --cores N`, or from anywhere with
`snakemake -s <repo>/Snakefile -d <workdir> --configfile <workdir>/config.yaml --cores N`.
This file only loads and validates the configuration and wires the stages together.
"""

import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.19")

REPO = Path(workflow.basedir)
WORKFLOW_DIR = REPO / "workflow"
# The library lives in workflow/celltrails: importable here and in every job's script,
# with or without `pip install -e .` (conda environments from envs/ do not install it).
sys.path.insert(0, str(WORKFLOW_DIR))
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [str(WORKFLOW_DIR), os.environ.get("PYTHONPATH")])))


from celltrails.config import config_problems


configfile: REPO / "config" / "config.yaml"


CONFIG_SCHEMA = WORKFLOW_DIR / "schemas" / "config.schema.yaml"
if problems := config_problems(config, CONFIG_SCHEMA):
    raise WorkflowError("invalid configuration (see workflow/schemas/config.schema.yaml):\n  " + "\n  ".join(problems))
validate(config, CONFIG_SCHEMA)  # fills in the defaults


include: "workflow/rules/common.smk"


wildcard_constraints:
    dataset="|".join(DATASETS),


include: "workflow/rules/synthetic.smk"
include: "workflow/rules/convert.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/detect.smk"
include: "workflow/rules/track.smk"
include: "workflow/rules/dynaclr.smk"
include: "workflow/rules/analyze.smk"


rule all:
    default_target: True
    input:
        all_targets(),
