"""DynaCLR's contrastive losses on the encoder's projections: NT-Xent (default) and triplet.

* :func:`nt_xent`: NT-Xent / InfoNCE (SimCLR), exactly as DynaCLR computes it with
  pytorch_metric_learning's ``NTXentLoss`` on ``[anchor; positive]`` with labels ``0..B-1`` twice:
  over the 2B L2-normalised rows, cosine similarity / temperature; each row's positive is its
  partner (anchor i <-> positive i) and its negatives are all other rows but itself; the loss of a
  row is ``-log(exp(s_pos) / (exp(s_pos) + sum_neg exp(s_neg)))``, averaged over the 2B rows.
  Positives are the same cell at t and t + tau (DynaCLR's time-aware sampling) or two augmentations
  of one patch.

  **False negatives can be masked** (``same_group``; VisCy issue #136): a batch may hold two
  patches of the same track or lineage, whose embeddings should be close, yet plain NT-Xent pushes
  them apart as negatives. Rows ``j`` with ``same_group[i mod B, j mod B]`` are removed from row
  ``i``'s negatives (they do not become positives). A row left without negatives contributes
  log(1) = 0. Computed in float32 (safe under mixed precision).
* :func:`triplet`: ``torch.nn.functional.triplet_margin_loss`` (Euclidean), margin 0.5, as
  DynaCLR's ``TripletMarginLoss``; the negative is another cell, chosen by the sampler.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("ntxent", "triplet")


def nt_xent(anchor: Tensor, positive: Tensor, temperature: float = 0.2, same_group: Tensor | None = None) -> Tensor:
    """NT-Xent of (B, D) anchors and their (B, D) positives; ``same_group`` (B, B) bool masks negatives.

    ``same_group[i, j]`` True removes anchor j and positive j from the negatives of anchor i and
    positive i (normally symmetric, e.g. "same track"; the diagonal is ignored). Returns a scalar.
    """
    if anchor.ndim != 2 or anchor.shape != positive.shape:
        raise ValueError(f"nt_xent expects anchor and positive of the same shape (B, D), got "
                         f"{tuple(anchor.shape)} and {tuple(positive.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b = anchor.shape[0]
    if same_group is not None and (same_group.shape != (b, b) or same_group.dtype != torch.bool):
        raise ValueError(f"same_group must be a ({b}, {b}) bool tensor, got {same_group.dtype} "
                         f"{tuple(same_group.shape)}")
    z = F.normalize(torch.cat([anchor, positive]).float(), dim=1)
    logits = z @ z.T / temperature
    rows = torch.arange(2 * b, device=z.device)
    pair = rows % b
    positive_logit = logits[rows, (rows + b) % (2 * b)]
    excluded = pair[:, None] == pair[None, :]  # itself and its partner
    if same_group is not None:
        excluded = excluded | same_group.to(z.device)[pair[:, None], pair[None, :]]
    negatives = logits.masked_fill(excluded, float("-inf"))
    log_denominator = torch.logsumexp(torch.cat([positive_logit[:, None], negatives], dim=1), dim=1)
    return (log_denominator - positive_logit).mean()


def triplet(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 0.5) -> Tensor:
    """Mean of relu(||a - p|| - ||a - n|| + margin) over the batch (Euclidean, (B, D) inputs)."""
    return F.triplet_margin_loss(anchor, positive, negative, margin=margin, p=2)
