"""DynaCLR: time-aware contrastive embeddings of single-cell patches.

Modules, in pipeline order: :mod:`.normalization` (per-channel frame statistics),
:mod:`.patches` (patch store around track positions), :mod:`.sampling` (classical, cell-aware
and time-aware positives), :mod:`.model` (stem + ConvNeXt + projection), :mod:`.augment`,
:mod:`.losses` (NT-Xent, triplet), :mod:`.train`, :mod:`.checkpoint`, :mod:`.embed` and
:mod:`.quality` (smoothness, dynamic range, PCA).
"""
