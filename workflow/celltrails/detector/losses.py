"""Detector losses. Every dense loss is masked: it only looks where the annotations say something
(see :mod:`celltrails.detector.targets`).

* centre: penalty-reduced pixel-wise focal loss (CenterNet, Zhou et al. 2019; alpha 2, beta 4):
  positives are the voxels where the Gaussian target is exactly 1 (the centres); negatives are
  down-weighted by (1 - target)^beta near a centre, so a peak one voxel off costs little; the sum
  is divided by the number of centres (per batch).
* foreground: binary cross-entropy, mean over the masked voxels.
* radius: L1 (xy pixels) on the foreground voxels of cells with a known radius, weight 0.1
  (``detector.training.radius_weight``; README, "Radius loss weight": 1.0 taught the Fluo-N2DH-GOWT1
  recipe nucleus size and cost the SIM+ one divisions).
* division: weighted BCE, positives weighted ``division_pos_weight`` (default 5: they are rare),
  mean over masked voxels, each channel with its own mask (ch0 frame t, ch1 frame t+1). A weight
  w multiplies the learnt odds by about w, and the linker reads the probability as a likelihood,
  so the weight stays small (20 made the detector call 4-5x more divisions than there were).
  Its **loss weight is 30**, not 1: the masked mean is tiny (~20 positive voxels per 64^2 crop
  around a mother, none in most crops; ~0.03 against ~1 for the rest), so with weight 1 the
  shared trunk never learnt a division feature. Measured on Fluo-N2DH-SIM+ 01 (binned 5x, 800
  steps, base 8, division_bias 0.3, whole training frames): AUROC of the mother channel at the
  27 mothers among all cells 0.38 with weight 1, 0.99 with weight 30 (daughters 0.39 -> 0.99),
  validation detection F1 0.955 vs 0.942. The weight rescales the gradient only, not the
  optimum, so the probabilities keep their meaning; ``division_pos_weight`` 1 at weight 30 did
  not learn in the same 800 steps (AUROC 0.68).
* embedding: a metric loss on the unit-length embeddings read at annotated centres, within each
  training sample (frames t, t+1 from two passes; pair relations from
  :func:`celltrails.detector.targets.embedding_relations`). Two are implemented:

  - ``triplet``: batch-hard triplet (Hermans et al. 2017, as in CELLECT): for each anchor the
    farthest positive and the nearest negative, ``relu(d_pos - d_neg + margin)``, Euclidean,
    margin 0.3 (on unit vectors, distances are in [0, 2]);
  - ``ntxent``: multi-positive NT-Xent / SupCon (Khosla et al. 2020): cosine similarities over a
    temperature (0.1), -mean over positives of the log-softmax against all non-ignored pairs.

  **Choice: NT-Xent (default); triplet remains available** (``LossWeights(embedding_loss=...)``).
  Measured on synthetic 2D series generated from ``config/synthetic/demo2d.yaml`` (128 x 128,
  radius ~5 px): trained on seed 101 (32 frames, last 15 % held out), evaluated on whole frames
  of an unseen series (seed 202, 16 frames, 476 cells, 422 with a successor, 312 of them
  ambiguous, i.e. >= 2 cells within max(10, 3 r) px). Same data, model (DetectorConfig(2)),
  seed and steps; only the embedding loss differs. CPU, batch 4.

  ==========================  =====  ================  ============  =========  ========  ========
  run                         loss   successor acc.    whole frame   p90 ratio  F1        F1
                                     all / ambiguous   ambiguous     true/other unseen    held-out
  ==========================  =====  ================  ============  =========  ========  ========
  1000 steps, 64^2, seed 0    trip.  0.976 / 0.968     0.941         0.71       0.979     0.971
  1000 steps, 64^2, seed 0    NTX    0.988 / 0.984     0.964         0.52       0.976     0.947
  1000 steps, 64^2, seed 1    trip.  0.974 / 0.965     0.929         0.66       0.980     0.979
  1000 steps, 64^2, seed 1    NTX    0.986 / 0.981     0.950         0.54       0.977     0.944
  1400 steps, 96^2, seed 0    trip.  0.988 / 0.984                             0.977     0.979
  1400 steps, 96^2, seed 0    NTX    0.998 / 0.997                             0.972     0.964
  ==========================  =====  ================  ============  =========  ========  ========

  ("whole frame": the successor must be the nearest embedding among *all* cells of the next
  frame; "p90 ratio": 90th percentile of d(true successor) / d(nearest other candidate), lower is
  a wider margin; "held-out": whole held-out frames of the training series.) NT-Xent halves to
  fifths the embedding errors in every comparison, and separates identities with a wider
  margin; it costs some detection recall early in training (validation-crop F1 0.940 vs 0.980
  after 280 steps, 0.992 vs 0.997 after 1400), presumably because its larger gradients compete
  with the centre head in the shared trunk. Identity is what the embedding is for (the linker
  relies on it exactly where positions are ambiguous), so NT-Xent is the default; its cosine
  similarity also matches the L2-normalised embedding the model outputs. Division calls were
  still poor for both after these short runs (recall ~0.2), a matter of training length.

  Anchors need at least one positive and one negative; without any, the loss is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

EMBEDDING_LOSSES = ("triplet", "ntxent")


@dataclass(frozen=True)
class LossWeights:
    """Weights and parameters of the detector loss."""

    center: float = 1.0
    foreground: float = 1.0
    radius: float = 0.1
    division: float = 30.0  # see the module docstring: the masked mean is tiny
    embedding: float = 1.0
    division_pos_weight: float = 5.0
    focal_alpha: float = 2.0
    focal_beta: float = 4.0
    embedding_loss: str = "ntxent"  # or "triplet"
    triplet_margin: float = 0.3
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if self.embedding_loss not in EMBEDDING_LOSSES:
            raise ValueError(f"embedding_loss must be one of {EMBEDDING_LOSSES}, got {self.embedding_loss!r}")


def focal_center_loss(logits: Tensor, target: Tensor, mask: Tensor | None = None, alpha: float = 2.0,
                      beta: float = 4.0) -> Tensor:
    """CenterNet focal loss summed over (masked) voxels / max(1, number of masked centres)."""
    logits, target = logits.float(), target.float()
    mask = torch.ones_like(target) if mask is None else mask.float()
    p = torch.sigmoid(logits)
    pos = (target >= 1.0).float() * mask
    neg = (1.0 - (target >= 1.0).float()) * mask
    pos_loss = -((1 - p) ** alpha) * F.logsigmoid(logits) * pos
    neg_loss = -((1 - target) ** beta) * (p ** alpha) * F.logsigmoid(-logits) * neg
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


def masked_bce(logits: Tensor, target: Tensor, mask: Tensor, pos_weight: float = 1.0) -> Tensor:
    """BCE weighted (1 + (pos_weight - 1) * target), mean over the mask."""
    target, mask = target.float(), mask.float()
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    weight = (1.0 + (pos_weight - 1.0) * target) * mask
    return (bce * weight).sum() / mask.sum().clamp(min=1.0)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    mask = mask.float()
    return ((pred.float() - target.float()).abs() * mask).sum() / mask.sum().clamp(min=1.0)


def _valid_anchors(relation: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    positive = relation == 1
    negative = relation == 0
    valid = positive.any(dim=1) & negative.any(dim=1)
    return positive, negative, valid


def batch_hard_triplet(embeddings: Tensor, relation: Tensor, margin: float = 0.3) -> Tensor:
    """Mean over valid anchors of relu(max_pos d - min_neg d + margin), Euclidean d.

    ``relation`` (n, n): 1 positive, 0 negative, -1 ignore (e.g. the diagonal, other samples).
    """
    positive, negative, valid = _valid_anchors(relation)
    if not bool(valid.any()):
        return embeddings.sum() * 0.0
    e = embeddings.float()
    # Explicit differences (not cdist): exact and with finite gradients at zero distance.
    d = ((e[:, None, :] - e[None, :, :]) ** 2).sum(dim=-1).clamp(min=1e-12).sqrt()
    hardest_pos = torch.where(positive, d, torch.full_like(d, -1.0)).max(dim=1).values
    hardest_neg = torch.where(negative, d, torch.full_like(d, float("inf"))).min(dim=1).values
    loss = F.relu(hardest_pos - hardest_neg + margin)
    return loss[valid].mean()


def nt_xent(embeddings: Tensor, relation: Tensor, temperature: float = 0.1) -> Tensor:
    """Multi-positive NT-Xent (SupCon) on cosine similarities; mean over valid anchors."""
    positive, negative, valid = _valid_anchors(relation)
    if not bool(valid.any()):
        return embeddings.sum() * 0.0
    z = F.normalize(embeddings.float(), dim=1)
    sim = z @ z.T / temperature
    considered = positive | negative
    log_denominator = torch.logsumexp(sim.masked_fill(~considered, float("-inf")), dim=1, keepdim=True)
    log_prob = sim - log_denominator
    per_anchor = -(log_prob * positive).sum(dim=1) / positive.sum(dim=1).clamp(min=1)
    return per_anchor[valid].mean()


def embedding_loss(embeddings: Tensor, relation: Tensor, weights: LossWeights) -> Tensor:
    if weights.embedding_loss == "triplet":
        return batch_hard_triplet(embeddings, relation, weights.triplet_margin)
    return nt_xent(embeddings, relation, weights.temperature)


def dense_losses(outputs: dict[str, Tensor], targets: dict[str, Tensor],
                 weights: LossWeights) -> dict[str, Tensor]:
    """Unweighted centre, foreground, radius and division losses of a batch of passes."""
    mask_a = targets["mask"][:, :1]
    return {
        "center": focal_center_loss(outputs["center"], targets["center"], mask_a, weights.focal_alpha,
                                    weights.focal_beta),
        "foreground": masked_bce(outputs["foreground"], targets["foreground"], mask_a),
        "radius": masked_l1(outputs["radius"], targets["radius"], targets["radius_mask"]),
        "division": masked_bce(outputs["division"], targets["division"], targets["mask"],
                               weights.division_pos_weight),
    }


def total_loss(parts: dict[str, Tensor], weights: LossWeights) -> Tensor:
    return sum(getattr(weights, name) * value for name, value in parts.items())
