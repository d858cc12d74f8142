"""DynaCLR's losses: NT-Xent (with false-negative masking) and triplet, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from celltrails.dynaclr.losses import LOSSES, nt_xent, triplet


def _reference_nt_xent(anchor: torch.Tensor, positive: torch.Tensor, temperature: float,
                       removed: set[tuple[int, int]] = frozenset()) -> float:
    """Row by row in plain Python: row i's positive is its partner, its negatives all other rows
    except itself and the (i, j) pairs in ``removed``."""
    rows = [[float(v) for v in r] for r in torch.cat([anchor, positive])]
    unit = [[v / math.sqrt(sum(w * w for w in r)) for v in r] for r in rows]
    n, b = len(unit), len(unit) // 2

    def sim(i: int, j: int) -> float:
        return sum(p * q for p, q in zip(unit[i], unit[j])) / temperature

    total = 0.0
    for i in range(n):
        partner = (i + b) % n
        negatives = [j for j in range(n) if j not in (i, partner) and (i, j) not in removed]
        denominator = math.exp(sim(i, partner)) + sum(math.exp(sim(i, j)) for j in negatives)
        total += -math.log(math.exp(sim(i, partner)) / denominator)
    return total / n


def test_nt_xent_matches_a_hand_computed_value():
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positive = torch.tensor([[2.0, 2.0], [0.0, 3.0]])  # unit: (s, s) and (0, 1), s = 1/sqrt(2)
    t, s = 0.5, 1 / math.sqrt(2)
    # rows a0=(1,0), a1=(0,1), p0=(s,s), p1=(0,1); cosines: a0.a1=0, a0.p0=s, a0.p1=0, a1.p0=s, a1.p1=1, p0.p1=s
    e = math.exp
    rows = [
        -math.log(e(s / t) / (e(s / t) + e(0 / t) + e(0 / t))),  # a0: positive p0; negatives a1, p1
        -math.log(e(1 / t) / (e(1 / t) + e(0 / t) + e(s / t))),  # a1: positive p1; negatives a0, p0
        -math.log(e(s / t) / (e(s / t) + e(s / t) + e(s / t))),  # p0: positive a0; negatives a1, p1
        -math.log(e(1 / t) / (e(1 / t) + e(0 / t) + e(s / t))),  # p1: positive a1; negatives a0, p0
    ]
    expected = sum(rows) / 4
    assert nt_xent(anchor, positive, temperature=t).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(_reference_nt_xent(anchor, positive, t), rel=1e-9)


def test_nt_xent_rewards_matching_pairs():
    basis = torch.eye(4)
    matched = nt_xent(basis, basis.clone())
    swapped = nt_xent(basis, basis[[1, 0, 3, 2]])  # each positive is another anchor's vector
    assert matched < swapped
    assert matched.item() == pytest.approx(math.log(1 + 6 * math.exp(-1 / 0.2)), rel=1e-5)


def test_same_group_removes_exactly_those_negatives():
    torch.manual_seed(0)
    anchor, positive = torch.randn(4, 5), torch.randn(4, 5)
    same_group = torch.zeros(4, 4, dtype=torch.bool)
    same_group[0, 2] = same_group[2, 0] = True  # e.g. patches 0 and 2 come from one track
    same_group[1, 1] = True  # the diagonal is ignored
    # rows 0, 4 (anchor/positive 0) lose rows 2, 6; rows 2, 6 lose rows 0, 4
    removed = {(i, j) for i in (0, 4) for j in (2, 6)} | {(i, j) for i in (2, 6) for j in (0, 4)}
    plain = nt_xent(anchor, positive, 0.3)
    masked = nt_xent(anchor, positive, 0.3, same_group=same_group)
    assert plain.item() == pytest.approx(_reference_nt_xent(anchor, positive, 0.3), rel=1e-5)
    assert masked.item() == pytest.approx(_reference_nt_xent(anchor, positive, 0.3, removed), rel=1e-5)
    assert masked < plain


def test_no_nan_when_every_negative_is_masked():
    anchor = torch.randn(3, 4, requires_grad=True)
    positive = torch.randn(3, 4)
    loss = nt_xent(anchor, positive, same_group=torch.ones(3, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(anchor.grad).all()
    one = nt_xent(torch.randn(1, 4), torch.randn(1, 4))  # a batch of one has no negatives either
    assert one.item() == 0.0


def test_nt_xent_gradients_and_input_checks():
    anchor = torch.randn(5, 8, requires_grad=True)
    positive = torch.randn(5, 8, requires_grad=True)
    nt_xent(anchor, positive).backward()
    assert anchor.grad.abs().sum() > 0 and positive.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(torch.randn(5, 8), torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"same_group must be a \(5, 5\) bool tensor"):
        nt_xent(torch.randn(5, 8), torch.randn(5, 8), same_group=torch.zeros(5, 5))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(5, 8), torch.randn(5, 8), temperature=0)


def test_triplet_matches_a_hand_computed_value():
    anchor = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    positive = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # distances 5 and 1
    negative = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # distances 1 and 3
    expected = (max(5 - 1 + 0.5, 0) + max(1 - 3 + 0.5, 0)) / 2  # 2.25
    assert triplet(anchor, positive, negative).item() == pytest.approx(expected, abs=1e-5)
    assert triplet(anchor, positive, negative, margin=2.0).item() == pytest.approx((6 + 0) / 2, abs=1e-5)
    assert LOSSES == ("ntxent", "triplet")
