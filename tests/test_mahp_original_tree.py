"""Retrieval metrics use the original tree's LCS heights, not the `leveling: pad` ones (issue 14).

Hand-made tree T = root -> {A -> {A1 -> {a1, a2}, a3}, B -> {b1, b2}}: a1, a2 at depth 3, a3, b1,
b2 at depth 2. Original heights: root 3, A 2, A1 1, B 1. Padding adds a3~2, b1~2, b2~2 (A -> a3~2
-> a3, B -> b1~2 -> b1, ...), so height(B) = 2 there. LCS-height similarity (H = 3):

    pair       lcs   original         padded
    a1, a2     A1    1 - 1/3 = 2/3    2/3
    a1, a3     A     1 - 2/3 = 1/3    1/3
    b1, b2     B     1 - 1/3 = 2/3    1 - 2/3 = 1/3
    a*, b*     root  0                0
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hpsearch.class_embeddings import lcs_height_similarity, wup_similarity
from hpsearch.data._io import leaf_level_labels, pad_to_leveled
from hpsearch.hierarchy import Hierarchy, pad_nodes, unpadded
from hpsearch.metrics.retrieval import (
    average_hierarchical_precision,
    hierarchical_precision_curve,
    leaf_class_similarity,
)
from hpsearch.models.semantic import SemanticEmbeddingHead, SemanticParams
from hpsearch.tasks.classifier.loop import leaf_similarity

CIFAR_TREE = (Path(__file__).resolve().parents[2] / "shared" / "data" / "hierarchies"
              / "barz_Cifar-Hierarchy_cifar.parent-child.txt")

T_EDGES = [("root", "A"), ("root", "B"), ("A", "A1"), ("A", "a3"), ("A1", "a1"), ("A1", "a2"),
           ("B", "b1"), ("B", "b2")]


def _padded() -> Hierarchy:
    h, _ = leaf_level_labels(Hierarchy.from_edges(T_EDGES), ["a1"], leveling="pad")
    return h


def _by_name(h: Hierarchy, sim: np.ndarray, a: str, b: str) -> float:
    leaves = [h.names[g] for g in h.levels[-1]]
    return float(sim[leaves.index(a), leaves.index(b)])


def test_unpadded_recovers_the_original_tree() -> None:
    orig = Hierarchy.from_edges(T_EDGES)
    p = _padded()
    assert {p.names[i] for i in pad_nodes(p)} == {"a3~2", "b1~2", "b2~2"}
    u = unpadded(p)
    edges = {(u.names[q], u.names[c]) for c, ps in enumerate(u.parents) for q in ps}
    assert edges == set(T_EDGES)
    assert u.max_height == orig.max_height == 3
    assert int(u.height[u.index["B"]]) == 1 and int(p.height[p.index["B"]]) == 2
    assert not pad_nodes(orig) and unpadded(orig) is orig


def test_similarity_is_the_original_trees() -> None:
    p = _padded()
    padded = lcs_height_similarity(p, list(p.levels[-1]))  # what the metric used before
    ours = leaf_class_similarity(p)
    assert _by_name(p, padded, "b1", "b2") == pytest.approx(1 / 3)
    assert _by_name(p, ours, "b1", "b2") == pytest.approx(2 / 3)
    for a, b, v in [("a1", "a2", 2 / 3), ("a1", "a3", 1 / 3), ("a2", "b1", 0.0),
                    ("b2", "b2", 1.0)]:
        assert _by_name(p, ours, a, b) == pytest.approx(v)
        assert _by_name(p, padded, a, b) == pytest.approx(v)
    # both callers of the metric see the original-tree matrix
    torch.testing.assert_close(leaf_similarity(p), torch.tensor(ours, dtype=torch.float32))
    head = SemanticEmbeddingHead(4, p, SemanticParams())
    torch.testing.assert_close(head.sim_lcs, torch.tensor(ours))
    torch.testing.assert_close(head.sim_wup, torch.tensor(leaf_class_similarity(p, "wup")))


def test_mahp_on_a_hand_ranking() -> None:
    """Items 0: b1, 1: b1, 2: b2, 3: a1; k = 2; s = s(b1, b2) (2/3 original, 1/3 padded).

    q0 (b1) retrieves [2, 1]: sims [s, 1], ideal cum [1, 1 + s] -> HP [s, 1], AHP = (s + 1)/4
    q1 (b1) retrieves [0, 2]: sims [1, s] = ideal             -> HP [1, 1], AHP = 1/2
    q2 (b2) retrieves [3, 0]: sims [0, s], ideal cum [s, 2s]  -> HP [0, 1/2], AHP = 1/8
    q3 (a1): every other item has s = 0                        -> HP [1, 1], AHP = 1/2
    (AHP = trapz(HP, dx = 1/2) = (HP1 + HP2)/4.)  mAHP = ((s + 1)/4 + 9/8) / 4:
    original 37/96 = 0.3854, padded 35/96 = 0.3646.
    """
    p = _padded()
    leaves = [p.names[g] for g in p.levels[-1]]
    y = torch.tensor([leaves.index(n) for n in ("b1", "b1", "b2", "a1")])
    ranking = torch.tensor([[2, 1], [0, 2], [3, 0], [0, 1]])

    def mahp(sim: np.ndarray) -> float:
        hp = hierarchical_precision_curve(ranking, y, torch.tensor(sim))
        return float(average_hierarchical_precision(hp).mean())

    assert mahp(leaf_class_similarity(p)) == pytest.approx(37 / 96)
    assert mahp(lcs_height_similarity(p, list(p.levels[-1]))) == pytest.approx(35 / 96)


def test_wup_uses_original_depths() -> None:
    """root -> {A -> {a1, a2}, b}: LCS heights survive padding (height(root) = 2 either way),
    Wu-Palmer does not: depth1(b) = 2 originally, 3 padded -> wup(a1, b) = 2·1/(3 + 2) = 0.4
    vs 2·1/(3 + 3) = 1/3; wup(a1, a2) = 2·2/(3 + 3) = 2/3 in both."""
    h = Hierarchy.from_edges([("root", "A"), ("root", "b"), ("A", "a1"), ("A", "a2")])
    p = pad_to_leveled(h)
    np.testing.assert_allclose(leaf_class_similarity(p), lcs_height_similarity(p, p.levels[-1]))
    assert _by_name(p, leaf_class_similarity(p, "wup"), "a1", "b") == pytest.approx(0.4)
    assert _by_name(p, wup_similarity(p, p.levels[-1]), "a1", "b") == pytest.approx(1 / 3)
    assert _by_name(p, leaf_class_similarity(p, "wup"), "a1", "a2") == pytest.approx(2 / 3)


def test_balanced_tree_is_unchanged() -> None:
    h = Hierarchy.from_edges([("r", "A"), ("r", "B"), ("A", "a1"), ("A", "a2"), ("B", "b1")])
    assert h.is_leveled and unpadded(h) is h
    np.testing.assert_array_equal(leaf_class_similarity(h), lcs_height_similarity(h, h.levels[-1]))
    np.testing.assert_array_equal(leaf_class_similarity(h, "wup"), wup_similarity(h, h.levels[-1]))


@pytest.mark.skipif(not CIFAR_TREE.exists(), reason="../shared/data/hierarchies is absent")
def test_barz_cifar100_tree() -> None:
    """Barz's CIFAR-100 tree: leaves at depths 2..8, max height 8 padded and original; padding
    adds 293 nodes and raises inner heights, so 1444 of the 100 x 100 similarities change."""
    h = Hierarchy.from_parent_child_file(CIFAR_TREE)
    assert not h.is_leveled
    p = pad_to_leveled(h)
    u = unpadded(p)
    assert len(pad_nodes(p)) == p.num_nodes - h.num_nodes
    assert sorted(u.names) == sorted(h.names) and u.max_height == h.max_height == p.max_height
    ours = leaf_class_similarity(p)
    want = lcs_height_similarity(h, [h.index[p.names[g]] for g in p.levels[-1]])
    np.testing.assert_allclose(ours, want)
    assert not np.allclose(ours, lcs_height_similarity(p, p.levels[-1]))
