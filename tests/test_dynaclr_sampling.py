"""DynaCLR sampling: positives per mode, lineage-aware batches, triplet negatives, the lineage split."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from celltrails.dynaclr.patches import lineage_ids
from celltrails.dynaclr.sampling import ContrastiveSampler, split_by_lineage

# track: (parent, first frame, last frame, missing frames)
TRACKS = {
    1: (-1, 0, 3, ()),  # the mother: divides after t=3
    2: (1, 4, 8, ()),  # daughter; alone at t=8
    3: (1, 4, 7, ()),  # daughter
    4: (-1, 0, 7, ()),
    5: (-1, 2, 5, ()),
    6: (-1, 7, 7, ()),  # one frame only: never an anchor in time-aware mode
    7: (-1, 0, 5, (2, 3)),  # missed at t=2 and 3 (a gap, same track id)
    **{k: (-1, 0, 3, ()) for k in range(10, 16)},
}


def make_index(tracks: dict = TRACKS, seed: int = 0) -> pd.DataFrame:
    """A patch index (t, track_id, parent_track_id, lineage_id) of ``tracks``, rows in random order."""
    rows = [(t, track, parent) for track, (parent, first, last, gaps) in tracks.items()
            for t in range(first, last + 1) if t not in gaps]
    index = pd.DataFrame(rows, columns=["t", "track_id", "parent_track_id"])
    index = index.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    index["lineage_id"] = lineage_ids(index["track_id"].to_numpy(), index["parent_track_id"].to_numpy())
    return index


def row_of(index: pd.DataFrame, track: int, t: int) -> int:
    """The row number of one track at one frame."""
    rows = np.flatnonzero((index.track_id == track) & (index.t == t))
    assert rows.size == 1
    return int(rows[0])


def draw_pairs(sampler: ContrastiveSampler, n_batches: int, batch_size: int):
    """All (anchor, positive, negative) rows drawn in ``n_batches`` batches."""
    triples = []
    for _ in range(n_batches):
        batch = sampler.batch(batch_size)
        triples += list(zip(batch.anchor.tolist(), batch.positive.tolist(), batch.negative.tolist()))
    return triples


def positives_by_anchor(triples) -> dict[int, set[int]]:
    """Which positives were drawn for each anchor."""
    out: dict[int, set[int]] = {}
    for a, p, _ in triples:
        out.setdefault(a, set()).add(p)
    return out


def test_lineage_ids_of_the_test_index():
    index = make_index()
    lineage = dict(zip(index.track_id, index.lineage_id))
    assert lineage[2] == lineage[3] == lineage[1] == 1
    assert all(lineage[k] == k for k in (4, 5, 6, 7, *range(10, 16)))


def test_classical_positive_is_the_anchor():
    index = make_index()
    sampler = ContrastiveSampler(index, "classical", seed=1)
    assert sampler.anchors.size == len(index)
    for a, p, _ in draw_pairs(sampler, 30, 8):
        assert a == p


def test_cell_aware_positive_is_another_row_of_the_same_track():
    index = make_index()
    sampler = ContrastiveSampler(index, "cell_aware", seed=2)
    track, t = index.track_id.to_numpy(), index.t.to_numpy()
    lengths = Counter(track.tolist())
    triples = draw_pairs(sampler, 100, 12)
    for a, p, _ in triples:
        assert track[p] == track[a]
        assert (p != a) if lengths[track[a]] > 1 else (p == a)
    single = row_of(index, 6, 7)
    assert any(a == single for a, _, _ in triples)
    gaps = {t[p] - t[a] for a, p, _ in triples if track[a] == 4}
    assert len(gaps) > 4 and min(gaps) < 0 < max(gaps)  # any time, before or after


def test_time_aware_tau_one_positive_is_the_next_frame_or_a_daughter():
    index = make_index()
    sampler = ContrastiveSampler(index, "time_aware", tau=(1, 1), seed=3)
    track, t = index.track_id.to_numpy(), index.t.to_numpy()
    last = index.groupby("track_id").t.max().to_dict()
    expected_anchors = {r for r in range(len(index)) if t[r] < last[track[r]] or track[r] == 1}
    expected_anchors -= {row_of(index, 7, 1)}  # the gap: nothing at t=2
    assert set(sampler.anchors.tolist()) == expected_anchors
    triples = draw_pairs(sampler, 300, 12)
    mother_end = row_of(index, 1, 3)
    for a, p, _ in triples:
        assert a in expected_anchors and t[p] == t[a] + 1
        assert track[p] == track[a] or (a == mother_end and track[p] in (2, 3))
    drawn = positives_by_anchor(triples)
    assert drawn[mother_end] == {row_of(index, 2, 4), row_of(index, 3, 4)}  # both daughters, at random
    assert set(drawn) == expected_anchors  # every anchor is used


def test_time_aware_tau_range_reaches_one_to_three_frames_later_across_division_and_gap():
    index = make_index()
    sampler = ContrastiveSampler(index, "time_aware", tau=(1, 3), seed=4)
    t, lineage = (index[c].to_numpy() for c in ("t", "lineage_id"))
    triples = draw_pairs(sampler, 600, 12)
    for a, p, _ in triples:
        assert 1 <= t[p] - t[a] <= 3 and lineage[p] == lineage[a]
    assert {t[p] - t[a] for a, p, _ in triples} == {1, 2, 3}
    drawn = positives_by_anchor(triples)
    assert drawn[row_of(index, 1, 1)] == {row_of(index, 1, 2), row_of(index, 1, 3), row_of(index, 2, 4),
                                         row_of(index, 3, 4)}
    assert drawn[row_of(index, 1, 3)] == {row_of(index, k, s) for k in (2, 3) for s in (4, 5, 6)}
    assert drawn[row_of(index, 7, 1)] == {row_of(index, 7, 4)}  # over the gap
    never = {row_of(index, 2, 8), row_of(index, 4, 7), row_of(index, 6, 7), row_of(index, 7, 5)}
    assert never.isdisjoint(sampler.anchors.tolist())


def test_time_aware_needs_a_track_longer_than_tau():
    with pytest.raises(ValueError, match="no track has an observation 9-9 frames later"):
        ContrastiveSampler(make_index(), "time_aware", tau=(9, 9))
    singles = make_index({k: (-1, k, k, ()) for k in range(5)})
    with pytest.raises(ValueError, match="tracks longer than tau"):
        ContrastiveSampler(singles, "time_aware")
    ContrastiveSampler(singles, "cell_aware")  # the other modes do not need successors


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "random"}, "sampling mode 'random'"),
    ({"mode": "time_aware", "tau": (0, 1)}, "tau range"),
    ({"mode": "time_aware", "tau": (3, 2)}, "tau range"),
    ({"mode": "classical", "rows": np.array([], dtype=int)}, "no patches"),
])
def test_sampler_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ContrastiveSampler(make_index(), **kwargs)


@pytest.mark.parametrize("mode", ["classical", "cell_aware", "time_aware"])
def test_batches_hold_one_anchor_per_track_and_per_lineage_while_lineages_last(mode):
    index = make_index()
    track, t, lineage = (index[c].to_numpy() for c in ("track_id", "t", "lineage_id"))
    for seed in range(4):
        sampler = ContrastiveSampler(index, mode, seed=seed)
        n_lineages = len(set(lineage[sampler.anchors]))
        n_tracks = len(set(track[sampler.anchors]))
        assert sampler.n_lineages == n_lineages == (11 if mode != "time_aware" else 10)
        for batch_size in (4, n_lineages, 12, 20):
            for _ in range(25):
                batch = sampler.batch(batch_size)
                a = batch.anchor
                assert len(a) == len(batch.positive) == len(batch.negative) == min(batch_size, n_tracks)
                assert len(set(track[a])) == len(a)
                if batch_size <= n_lineages:
                    assert len(set(lineage[a])) == len(a)
                else:
                    assert set(lineage[a]) == set(lineage[sampler.anchors])
                same = sampler.same_group(batch)
                expected = [[lineage[i] == lineage[j] for j in a] for i in a]
                np.testing.assert_array_equal(same, expected)
                assert same.dtype == bool and same.diagonal().all()
                for anchor, positive, negative in zip(a, batch.positive, batch.negative):
                    assert lineage[negative] != lineage[anchor]
                    others_in_frame = (t == t[positive]) & (lineage != lineage[anchor])
                    if others_in_frame.any():
                        assert t[negative] == t[positive]


def test_negative_comes_from_another_frame_when_the_positive_frame_has_only_the_lineage():
    index = make_index()
    lineage, t = index.lineage_id.to_numpy(), index.t.to_numpy()
    assert set(lineage[t == 8]) == {1}  # only daughter 2 lives at t=8
    sampler = ContrastiveSampler(index, "time_aware", seed=5)
    anchor = row_of(index, 2, 7)
    negatives = [n for a, p, n in draw_pairs(sampler, 200, 10) if a == anchor]
    assert len(negatives) > 5
    assert all(lineage[n] != 1 for n in negatives)
    assert len({t[n] for n in negatives}) > 1  # drawn from all rows, not one frame


def test_a_single_lineage_has_no_negatives():
    index = make_index({1: (-1, 0, 3, ()), 2: (1, 4, 6, ()), 3: (1, 4, 5, ())})
    sampler = ContrastiveSampler(index, "time_aware", seed=0)
    with pytest.raises(ValueError, match="one lineage"):
        sampler.batch(2)


def test_rows_restrict_anchors_positives_and_negatives():
    index = make_index()
    track = index.track_id.to_numpy()
    rows = np.flatnonzero(~np.isin(track, [3, 11]))[::-1]  # unsorted on purpose
    sampler = ContrastiveSampler(index, "time_aware", rows=rows, seed=6)
    triples = draw_pairs(sampler, 200, 8)
    assert set(np.ravel(triples)) <= set(rows.tolist())
    drawn = positives_by_anchor(triples)
    assert drawn[row_of(index, 1, 3)] == {row_of(index, 2, 4)}  # daughter 3 is not among the rows


@pytest.mark.parametrize("mode", ["classical", "cell_aware", "time_aware"])
def test_batches_are_reproducible_with_the_seed(mode):
    index = make_index()

    def run(seed):
        sampler = ContrastiveSampler(index, mode, tau=(1, 2), seed=seed)
        return [np.stack([b.anchor, b.positive, b.negative]) for b in (sampler.batch(6) for _ in range(5))]

    first, again, other = run(7), run(7), run(8)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other))


def test_split_by_lineage_keeps_lineages_whole():
    index = make_index({**TRACKS, **{k: (-1, 0, k % 4, ()) for k in range(20, 29)}})  # 20 lineages
    lineage = index.lineage_id.to_numpy()
    n_lineages = len(set(lineage))
    assert n_lineages == 20
    train, val = split_by_lineage(index, 0.25, seed=0)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(index)))
    assert set(lineage[train]).isdisjoint(lineage[val])
    assert len(set(lineage[val])) == 5
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    again = split_by_lineage(index, 0.25, seed=0)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    held_out = {frozenset(lineage[split_by_lineage(index, 0.25, seed=s)[1]]) for s in range(6)}
    assert len(held_out) > 1  # the seed matters


@pytest.mark.parametrize("fraction, n_val", [(0.01, 1), (0.5, 1), (0.99, 1), (0.0, 0)])
def test_split_by_lineage_keeps_two_lineages_for_training(fraction, n_val):
    three = make_index({1: (-1, 0, 3, ()), 2: (1, 4, 5, ()), 4: (-1, 0, 2, ()), 6: (-1, 0, 2, ())})
    train, val = split_by_lineage(three, fraction, seed=1)
    lineage = three.lineage_id.to_numpy()
    assert len(set(lineage[val])) == n_val and len(set(lineage[train])) == 3 - n_val
    two = make_index({1: (-1, 0, 3, ()), 2: (1, 4, 5, ()), 4: (-1, 0, 2, ())})  # two lineages: 1 and 4
    train, val = split_by_lineage(two, fraction, seed=1)
    assert val.size == 0 and train.size == len(two)  # both are needed for training
