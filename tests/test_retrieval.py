"""Retrieval metrics: a hand-computed 4-item case, a literal per-query reference of Barz &
Denzler's protocol, chunking, ties, balanced accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpsearch.errors import ConfigError
from hpsearch.metrics.retrieval import (
    average_hierarchical_precision,
    balanced_accuracy,
    hierarchical_precision_at_k,
    hierarchical_precision_curve,
    ideal_cumulative_similarity,
    mahp_at_k,
    rank_database,
    retrieval_metrics,
)

# classes a, b (siblings, s = 0.5) and c (unrelated, s = 0)
SIM = torch.tensor([[1, .5, 0], [.5, 1, 0], [0, 0, 1.]])
# items on a line: x0 (a) at 0, x1 (a) at 4, x2 (b) at 1, x3 (c) at 2.4
X = torch.tensor([[0.], [4.], [1.], [2.4]])
Y = torch.tensor([0, 0, 1, 2])


def test_hand_case_ranking_and_hp():
    r = rank_database(X, 3, metric="euclidean")
    assert r.tolist() == [[2, 3, 1], [3, 2, 0], [0, 3, 1], [2, 1, 0]]
    hp = hierarchical_precision_curve(r, Y, SIM)
    # q0: got 0.5, 0.5, 1.5 vs ideal 1, 1.5, 1.5;  q1: 0, .5, 1.5 vs 1, 1.5, 1.5
    # q2: .5, .5, 1 vs .5, 1, 1;  q3: all similarities 0 -> HP = 1 by convention
    expected = [[.5, 1 / 3, 1], [0, 1 / 3, 1], [1, .5, 1], [1, 1, 1]]
    np.testing.assert_allclose(hp.numpy(), expected, atol=1e-12)
    # AHP@3 = (sum - (first + last)/2) / 3: 13/36, 10/36, 18/36, 24/36
    np.testing.assert_allclose(average_hierarchical_precision(hp).numpy(),
                               [13 / 36, 10 / 36, 18 / 36, 24 / 36], atol=1e-12)
    assert mahp_at_k(X, Y, SIM, 3, metric="euclidean") == pytest.approx(65 / 144)
    assert hierarchical_precision_at_k(X, Y, SIM, 2, metric="euclidean") == pytest.approx(
        (1 / 3 + 1 / 3 + 1 / 2 + 1) / 4)
    m = retrieval_metrics(X, Y, {"": SIM, "_x": SIM}, ks=(1, 2, 3, 50), ahp_k=3,
                          metric="euclidean")
    assert m["mahp_3"] == pytest.approx(65 / 144) and m["mahp_3_x"] == m["mahp_3"]
    assert m["hp_at_1"] == pytest.approx(.625)
    assert "hp_at_50" not in m  # beyond the split size


def test_perfect_ranking_tops_out_at_k_minus_1_over_k():
    # embeddings = class similarities' Cholesky rows: ranking by dot product is ideal
    E = torch.linalg.cholesky(SIM.double())
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    hp = hierarchical_precision_curve(rank_database(E[y], 7), y, SIM)
    np.testing.assert_allclose(hp.numpy(), 1.0, atol=1e-12)
    assert mahp_at_k(E[y], y, SIM, 5) == pytest.approx(4 / 5)


def test_ideal_excludes_the_query():
    y = torch.tensor([0, 1, 1, 2])
    ideal = ideal_cumulative_similarity(y, SIM, 3)
    # query 0 (a): others b, b, c -> .5, 1, 1;  query 1 (b): b, a, c -> 1, 1.5, 1.5
    np.testing.assert_allclose(ideal[0].numpy(), [.5, 1, 1])
    np.testing.assert_allclose(ideal[1].numpy(), [1, 1.5, 1.5])
    np.testing.assert_allclose(ideal[3].numpy(), [0, 0, 0])


def _reference_mahp(x: np.ndarray, y: np.ndarray, sim: np.ndarray, k: int) -> tuple:
    """Their protocol, literally, per query: rank everything (self included) by -dot, build the
    ideal cumsum with the query, then drop the query from both and shift the ideal by 1."""
    hps, ahps = [], []
    for q in range(len(x)):
        ret = list(np.argsort(-(x @ x[q]), kind="stable"))
        s = [sim[y[q], y[r]] for r in ret]
        best = np.cumsum(sorted(s, reverse=True))
        i = ret.index(q)
        del s[i]
        best = np.concatenate([best[:i], best[i + 1:] - 1.0])
        curve = np.cumsum(s[:k]) / best[:k]
        hps.append(curve[-1])
        ahps.append(np.trapezoid(curve, dx=1 / k) if hasattr(np, "trapezoid")
                    else np.trapz(curve, dx=1 / k))
    return float(np.mean(hps)), float(np.mean(ahps))


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_protocol(seed):
    rng = np.random.default_rng(seed)
    n, c, k = 40, 5, 12
    y = rng.integers(0, c, n)
    x = rng.normal(size=(n, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a = rng.uniform(0, 1, (c, c))
    sim = np.minimum((a + a.T) / 2, 0.9)
    np.fill_diagonal(sim, 1.0)
    hp_ref, ahp_ref = _reference_mahp(x, y, sim, k)
    assert hierarchical_precision_at_k(x, y, sim, k) == pytest.approx(hp_ref, abs=1e-12)
    assert mahp_at_k(x, y, sim, k) == pytest.approx(ahp_ref, abs=1e-12)


def test_chunking_and_ties():
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(37, 4)))
    full = rank_database(x, 10)
    np.testing.assert_array_equal(rank_database(x, 10, chunk_size=5).numpy(), full.numpy())
    # ties: identical vectors rank by index, query excluded
    z = torch.ones(5, 2)
    assert rank_database(z, 4).tolist() == [[1, 2, 3, 4], [0, 2, 3, 4], [0, 1, 3, 4],
                                            [0, 1, 2, 4], [0, 1, 2, 3]]
    # bf16 input is accepted
    assert rank_database(x.to(torch.bfloat16), 3).shape == (37, 3)


def test_errors_name_the_bad_value():
    with pytest.raises(ConfigError, match="k=4"):
        mahp_at_k(X, Y, SIM, 4)
    with pytest.raises(ConfigError, match="k=1"):
        mahp_at_k(X, Y, SIM, 1)
    with pytest.raises(ConfigError, match="0..2"):
        mahp_at_k(X, torch.tensor([0, 0, 1, 3]), SIM, 2)
    with pytest.raises(ConfigError, match="allowed"):
        rank_database(X, 2, metric="cosine")  # type: ignore[arg-type]


def test_balanced_accuracy_by_hand():
    # class 0: 2/3 correct, class 1: 1/1 -> (2/3 + 1) / 2
    assert balanced_accuracy([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(5 / 6)
    # absent class 1 is not averaged in (their code would divide by 3 here)
    assert balanced_accuracy(torch.tensor([0, 2, 2]), torch.tensor([0, 2, 0])) == \
        pytest.approx((1 / 2 + 1) / 2)
    with pytest.raises(ConfigError, match="equal length"):
        balanced_accuracy([0, 1], [0])
