"""Edge splits (thesis §5.5) and the vectorised negative sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hpsearch.data.edge_splits import make_edge_splits, node_levels, predefined_edge_splits
from hpsearch.data.ethec import default_ethec_metadata
from hpsearch.data.negatives import NegativeSampler
from hpsearch.errors import ConfigError, DataError
from hpsearch.hierarchy import Hierarchy, transitive_reduction


def tree(branching=(4, 4, 3), roots=3) -> Hierarchy:
    """Leveled tree: ``roots`` roots, then every node has ``branching[l]`` children."""
    rows = [[f"r{i}"] for i in range(roots)]
    for lvl, b in enumerate(branching):
        rows = [row + [f"{row[-1]}_{lvl}{j}"] for row in rows for j in range(b)]
    return Hierarchy.from_level_labels(rows)


def codes(e, n):
    e = np.asarray(e).reshape(-1, 2)
    return set((e[:, 0] * n + e[:, 1]).tolist())


@pytest.fixture(scope="module")
def h():
    return tree()  # 3 + 12 + 48 + 144 = 207 nodes, closure 12 + 96 + 432 = 540, basic 204


def test_reduction_and_levels_match_hierarchy(h):
    assert len(h.closure_edges) == 540 and len(h.basic_edges) == 204
    assert np.array_equal(transitive_reduction(h.closure_edges, h.num_nodes), h.basic_edges)
    assert np.array_equal(node_levels(h.closure_edges, h.num_nodes), h.depth)
    # a DAG with a shortcut: a->b->c plus a->c; the reduction drops a->c
    closure = np.array([[0, 1], [0, 2], [1, 2]])
    assert transitive_reduction(closure, 3).tolist() == [[0, 1], [1, 2]]
    assert node_levels(closure, 3).tolist() == [0, 1, 2]


def test_split_protocol_counts_and_disjointness(h):
    n = h.num_nodes
    s = make_edge_splits(n, h.closure_edges, non_basic_fraction=0.5, seed=3)
    nb = 540 - 204
    assert len(s.val) == len(s.test) == math.floor(0.05 * nb) == 16
    assert len(s.train) == 204 + math.floor(0.5 * nb)
    basic, train = codes(h.basic_edges, n), codes(s.train, n)
    val, test = codes(s.val, n), codes(s.test, n)
    assert basic <= train
    assert not (val & test) and not (val & train) and not (test & train)
    assert (val | test | train) <= codes(h.closure_edges, n)
    assert not (val & basic) and not (test & basic)


def test_val_test_do_not_depend_on_train_fraction_and_seed_matters(h):
    n = h.num_nodes
    a = make_edge_splits(n, h.closure_edges, non_basic_fraction=0.1, seed=0)
    b = make_edge_splits(n, h.closure_edges, non_basic_fraction=0.8, seed=0)
    c = make_edge_splits(n, h.closure_edges, non_basic_fraction=0.1, seed=1)
    assert np.array_equal(a.val, b.val) and np.array_equal(a.test, b.test)
    assert np.array_equal(a.val_neg, b.val_neg) and np.array_equal(a.test_neg, b.test_neg)
    assert codes(a.train, n) < codes(b.train, n) or len(a.train) < len(b.train)
    assert not np.array_equal(a.val, c.val)
    # any float fraction, floor semantics
    d = make_edge_splits(n, h.closure_edges, non_basic_fraction=0.123, seed=0)
    assert len(d.train) == 204 + math.floor(0.123 * 336)


def test_too_large_fraction_names_the_maximum(h):
    with pytest.raises(ConfigError, match="at most 0.904"):
        make_edge_splits(h.num_nodes, h.closure_edges, non_basic_fraction=1.0)
    with pytest.raises(ConfigError, match="non_basic_fraction"):
        make_edge_splits(h.num_nodes, h.closure_edges, non_basic_fraction=-0.1)


@pytest.mark.parametrize("strategy", ["uniform", "per_level"])
def test_fixed_negatives_are_true_negatives(h, strategy):
    n = h.num_nodes
    s = make_edge_splits(n, h.closure_edges, non_basic_fraction=0.25, negative_strategy=strategy,
                         node_level=h.depth, seed=0)
    closure = codes(h.closure_edges, n)
    for pos, neg in ((s.val, s.val_neg), (s.test, s.test_neg)):
        assert len(neg) == 10 * len(pos)  # every positive of this tree has valid corruptions
        assert not (codes(neg, n) & closure)
        assert (neg[:, 0] != neg[:, 1]).all()
        # every negative keeps one endpoint of some positive
        us, vs = set(pos[:, 0].tolist()), set(pos[:, 1].tolist())
        assert all(a in us or b in vs for a, b in neg.tolist())


def test_predefined_splits_are_validated(h):
    n, c = h.num_nodes, h.closure_edges
    neg = np.array([[c[0, 1], c[0, 0]]])  # a reversed edge is a valid negative
    s = predefined_edge_splits(n, c, train=c[:10], valid=c[10:12], valid_neg=neg,
                               test=c[12:14], test_neg=neg)
    assert s.meta["kind"] == "predefined" and len(s.train) == 10
    with pytest.raises(DataError, match="valid_neg"):
        predefined_edge_splits(n, c, train=c[:10], valid=c[10:12], valid_neg=c[:1],
                               test=c[12:14], test_neg=neg)
    with pytest.raises(DataError, match="'test'"):
        predefined_edge_splits(n, c, train=c[:10], valid=c[10:12], valid_neg=neg,
                               test=neg, test_neg=neg)


# ------------------------------------------------------------------ sampler
def test_sampler_layout_validity_and_determinism(h):
    n = h.num_nodes
    sm = NegativeSampler(n, h.closure_edges, strategy="uniform", negatives_per_side=4)
    pos = torch.as_tensor(h.closure_edges[::7])
    neg, ok = sm.sample(pos, generator=torch.Generator().manual_seed(0))
    assert neg.shape == (len(pos), 8, 2) and ok.shape == (len(pos), 8)
    assert ok.all()
    assert (neg[:, :4, 0] == pos[:, None, 0]).all()  # (u, v') keeps the parent
    assert (neg[:, 4:, 1] == pos[:, None, 1]).all()  # (u', v) keeps the child
    flat = neg.reshape(-1, 2).numpy()
    assert not (codes(flat, n) & codes(h.closure_edges, n))
    assert (flat[:, 0] != flat[:, 1]).all()
    again, _ = sm.sample(pos, generator=torch.Generator().manual_seed(0))
    assert torch.equal(neg, again)
    u, v = torch.as_tensor(h.closure_edges).T
    assert sm.is_edge(u, v).all() and not sm.is_edge(v, u).any()


def test_per_level_passes_walk_through_the_levels(h):
    n = h.num_nodes
    k = 5  # 4 levels + the "any" slot: one corruption per level, then one unrestricted
    sm = NegativeSampler(n, h.closure_edges, node_level=h.depth, strategy="per_level",
                         negatives_per_side=k, max_rounds=64)
    leaves = torch.tensor([i for i in range(n) if h.depth[i] == 3])
    parents = torch.tensor([h.parents[i][0] for i in leaves.tolist()])
    pos = torch.stack([parents, leaves], dim=1)  # genus -> species
    neg, ok = sm.sample(pos, generator=torch.Generator().manual_seed(1))
    assert ok.all()
    depth = torch.as_tensor(h.depth)
    # corrupted parents (u', v): a leaf has valid nodes on every level, so the 5 passes hit
    # levels 0..3 exactly once each (plus one unrestricted pass), in rotated order
    lv = depth[neg[:, k:, 0]]  # [P, 5]
    for row in lv.tolist():
        assert {0, 1, 2, 3} <= set(row)
    counts = torch.bincount(depth[neg[:, :k, 1]].reshape(-1), minlength=4)
    assert (counts > 0).all()  # every level is used across positives
    # a single corruption per side still covers all levels across positives (rotation)
    one = NegativeSampler(n, h.closure_edges, node_level=h.depth, strategy="per_level",
                          negatives_per_side=1)
    neg1, _ = one.sample(pos, generator=torch.Generator().manual_seed(2))
    assert set(depth[neg1[:, 1, 0]].tolist()) == {0, 1, 2, 3}


def test_no_valid_corruption_is_masked_not_raised():
    h = tree(branching=(2, 2), roots=1)  # single root reaches every node
    sm = NegativeSampler(h.num_nodes, h.closure_edges, node_level=h.depth,
                         strategy="per_level", negatives_per_side=3, max_rounds=4)
    pos = torch.as_tensor(h.closure_edges[:2])  # root -> child
    assert (pos[:, 0] == 0).all()
    neg, ok = sm.sample(pos, generator=torch.Generator().manual_seed(0))
    assert not ok[:, :3].any()  # (root, v') is always an edge or a self pair
    assert ok[:, 3:].float().mean() > 0  # (u', child) exists (siblings, leaves)


def test_sampler_scales_to_wordnet_size():
    n, e = 82_115, 660_000
    g = np.random.default_rng(0)
    closure = np.unique(g.integers(0, n, size=(e, 2)), axis=0)
    closure = closure[closure[:, 0] != closure[:, 1]]
    level = g.integers(0, 18, size=n)
    sm = NegativeSampler(n, closure, node_level=level, strategy="per_level",
                         negatives_per_side=5)
    pos = torch.as_tensor(closure[:20_000])
    neg, ok = sm.sample(pos, generator=torch.Generator().manual_seed(0))
    assert ok.float().mean() > 0.999
    flat = neg[ok].numpy()
    assert not np.isin(flat[:, 0] * n + flat[:, 1], closure[:, 0] * n + closure[:, 1]).any()


@pytest.mark.skipif(not default_ethec_metadata(), reason="shared ETHEC metadata not present")
def test_ethec_split_counts():
    from hpsearch.data.labels import load_label_hierarchy

    g = load_label_hierarchy("ethec")
    s = make_edge_splits(g.num_nodes, g.closure, non_basic_fraction=0.5,
                         node_level=g.hierarchy.depth, negative_strategy="per_level", seed=0)
    assert s.summary() == {"closure": 1974, "basic": 717, "train": 717 + 628, "val": 62,
                           "val_neg": 620, "test": 62, "test_neg": 620}
