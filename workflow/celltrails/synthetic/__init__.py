"""Synthetic 3D+t (or 2D+t) fluorescence time-lapses with exact ground truth.

The workflow's embedded default dataset, the training source of its networks, and its only
3D tracking ground truth. A YAML recipe (:func:`load_params`, validated against
``workflow/schemas/synthetic.schema.yaml``) drives a cell-population simulation
(:mod:`.simulate`: motion, tissue flow, divisions, death, entry and exit, fading, state
switches), a renderer (:mod:`.render`: nuclei, state reporter, PSF, background, camera noise)
and a streaming writer (:func:`generate_series`: OME-Zarr image, CTC ground truth, per-cell
table).
"""

from celltrails.synthetic.params import SyntheticParams, load_params
from celltrails.synthetic.write import generate_series

__all__ = ["SyntheticParams", "generate_series", "load_params"]
