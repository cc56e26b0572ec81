"""Threshold search, F1 at a threshold and graph reconstruction on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from hpsearch.errors import DataError, NonFiniteLossError
from hpsearch.metrics.edges import best_threshold_f1, f1_at_threshold, graph_reconstruction


def brute_force(pos, neg):
    best = (None, -1.0)
    for t in sorted(set(pos + neg)):
        tp = sum(e <= t for e in pos)
        fp = sum(e <= t for e in neg)
        f1 = 2 * tp / (2 * tp + fp + (len(pos) - tp))
        if f1 > best[1]:
            best = (t, f1)
    return best


def test_best_threshold_hand_case():
    # sorted: 0.1+ 0.2+ 0.3- 0.4+ 0.9-; cuts: k=1 F1=2/5, k=2 4/6, k=3 4/7, k=4 6/7, k=5 6/8
    t, f1, p, r = best_threshold_f1(torch.tensor([0.1, 0.2, 0.4]), torch.tensor([0.3, 0.9]))
    assert t == pytest.approx(0.4)
    assert f1 == pytest.approx(6 / 7)
    assert p == pytest.approx(3 / 4)
    assert r == pytest.approx(1.0)


def test_ties_are_predicted_together_and_first_max_wins():
    # energies 0 for 2 pos and 2 neg (tie); one pos at 1: cut at 0 -> tp=2, k=4: F1=4/7;
    # cut at 1 -> tp=3, k=5: F1=6/8. Splitting the tie would be illegal.
    t, f1, p, r = best_threshold_f1(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 0.0]))
    assert (t, f1) == (1.0, pytest.approx(0.75))
    # equal F1 at two thresholds: the smaller one is returned
    t, f1, _, _ = best_threshold_f1(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.5, 4.0]))
    assert brute_force([1.0, 3.0], [2.0, 2.5, 4.0]) == (1.0, pytest.approx(2 / 3))
    assert (t, f1) == (1.0, pytest.approx(2 / 3))


@pytest.mark.parametrize("seed", range(5))
def test_best_threshold_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, 8, (20,), generator=g).double() / 4
    neg = torch.randint(2, 12, (50,), generator=g).double() / 4
    t, f1, _, _ = best_threshold_f1(pos, neg)
    bt, bf1 = brute_force(pos.tolist(), neg.tolist())
    assert t == bt
    assert f1 == pytest.approx(bf1)


def test_midpoint_threshold_hand_case():
    # sorted: 0.1+ 0.2+ 0.3- 0.4+ 0.9-: best cut after 0.4, next energy 0.9 -> t = 0.65
    pos, neg = torch.tensor([0.1, 0.2, 0.4]), torch.tensor([0.3, 0.9])
    t, f1, p, r = best_threshold_f1(pos, neg, placement="midpoint")
    assert t == pytest.approx(0.65)
    assert (f1, p, r) == (pytest.approx(6 / 7), pytest.approx(3 / 4), pytest.approx(1.0))
    # a separated set: lowest = the largest positive energy, midpoint halfway to the negatives
    pos, neg = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([4.0, 5.0])
    assert best_threshold_f1(pos, neg)[0] == 2.0
    assert best_threshold_f1(pos, neg, placement="midpoint")[0] == 3.0
    # a held-out positive at 2.5 is missed by the published threshold, kept by the midpoint
    assert f1_at_threshold(torch.tensor([2.5]), neg, 2.0)[0] == 0.0
    assert f1_at_threshold(torch.tensor([2.5]), neg, 3.0)[0] == 1.0
    # best cut at the largest energy: nothing above it, both placements return it
    t, f1, _, _ = best_threshold_f1(torch.tensor([5.0]), torch.tensor([1.0]), placement="midpoint")
    assert (t, f1) == (5.0, pytest.approx(2 / 3))


def test_midpoint_threshold_adjacent_floats_keeps_the_cut():
    lo = 1.0
    hi = math.nextafter(lo, 2.0)
    pos, neg = torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64)
    t, f1, _, _ = best_threshold_f1(pos, neg, placement="midpoint")
    assert t == lo and f1 == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_midpoint_threshold_keeps_the_optimal_f1(seed):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(30, generator=g).double()
    neg = (torch.randn(80, generator=g) + 1.5).double()
    lo, f1, p, r = best_threshold_f1(pos, neg)
    mid, f1m, pm, rm = best_threshold_f1(pos, neg, placement="midpoint")
    assert (f1m, pm, rm) == (f1, p, r)
    above = torch.cat([pos, neg])[torch.cat([pos, neg]) > lo]
    assert lo < mid < float(above.min())  # strictly inside the interval to the next energy
    assert f1_at_threshold(pos, neg, mid)[0] == pytest.approx(f1)


def test_best_threshold_errors():
    with pytest.raises(DataError, match="positive"):
        best_threshold_f1(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(NonFiniteLossError):
        best_threshold_f1(torch.tensor([math.nan]), torch.tensor([1.0]))
    with pytest.raises(DataError, match="placement 'middle'"):
        best_threshold_f1(torch.tensor([1.0]), torch.tensor([2.0]), placement="middle")


def test_f1_at_threshold_hand_case():
    f1, p, r = f1_at_threshold(torch.tensor([0.1, 0.2, 0.4]), torch.tensor([0.3, 0.9]), 0.25)
    # tp=2, fp=0, fn=1
    assert (f1, p, r) == (pytest.approx(0.8), 1.0, pytest.approx(2 / 3))
    f1, p, r = f1_at_threshold(torch.tensor([0.5]), torch.tensor([0.3]), 0.1)
    assert (f1, p, r) == (0.0, 0.0, 0.0)


def test_graph_reconstruction_hand_case_and_chunks():
    # 3 nodes, true edges 0->1, 0->2; the diagonal is ignored
    e = torch.tensor([[9.0, 0.0, 0.5],
                      [0.2, 9.0, 1.0],
                      [3.0, 0.1, 9.0]])
    pos = torch.tensor([[0, 1], [0, 2]])
    # pos energies 0.0, 0.5; neg 0.2, 1.0, 3.0, 0.1. sorted: 0+ .1- .2- .5+ 1- 3-
    # k=1: 2/3; k=4: tp=2 -> 4/6. best t=0 with F1 2/3 (first max)
    out = graph_reconstruction(e, pos)
    assert out["threshold"] == 0.0
    assert out["f1"] == pytest.approx(2 / 3)
    assert out["tpr"] == pytest.approx(0.5)
    assert out["tnr"] == pytest.approx(1.0)
    chunked = graph_reconstruction([e[:2], e[2:]], pos)
    assert chunked == pytest.approx(out)
    with pytest.raises(DataError, match="cover"):
        graph_reconstruction([e[:2]], pos)
