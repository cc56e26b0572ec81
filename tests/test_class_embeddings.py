"""Barz & Denzler class embeddings: hand-checked similarities, exact and approximate embeddings
on synthetic trees and on the published hierarchies (skipped when /work/shared is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hpsearch.class_embeddings import (
    approx_embedding,
    class_embedding,
    class_embeddings_command,
    default_classes,
    lcs_height_matrix,
    lcs_height_similarity,
    load_class_embedding,
    save_class_embedding,
    unitsphere_embedding,
    wup_similarity,
)
from hpsearch.errors import ConfigError, DataError
from hpsearch.hierarchy import Hierarchy

SHARED = Path(os.environ.get("HPSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
HIER = SHARED / "data" / "hierarchies"

# R -> A -> {a1, a2};  R -> B -> {C -> c1, b1}: leaves at depths 2, 2, 2, 3.
FOUR_LEAF = [("R", "A"), ("R", "B"), ("A", "a1"), ("A", "a2"), ("B", "C"), ("B", "b1"),
             ("C", "c1")]


@pytest.fixture
def four_leaf() -> Hierarchy:
    return Hierarchy.from_edges(FOUR_LEAF)


def test_four_leaf_lcs_similarity_by_hand(four_leaf):
    # heights: leaves 0, A 1, C 1, B 2, R 3 -> s = 1 - h(lcs)/3
    assert [four_leaf.names[g] for g in default_classes(four_leaf)] == ["a1", "a2", "b1", "c1"]
    expected = np.array([
        [1, 2 / 3, 0, 0],
        [2 / 3, 1, 0, 0],
        [0, 0, 1, 1 / 3],
        [0, 0, 1 / 3, 1],
    ])
    np.testing.assert_allclose(lcs_height_similarity(four_leaf), expected, atol=1e-12)


def test_four_leaf_wup_by_hand(four_leaf):
    # Barz depths (root = 1): R 1, A 2, B 2, C 3, a1 3, a2 3, b1 3, c1 4
    # wup = 2 d(lcs) / (d(a) + d(b))
    expected = np.array([
        [1, 4 / 6, 2 / 6, 2 / 7],
        [4 / 6, 1, 2 / 6, 2 / 7],
        [2 / 6, 2 / 6, 1, 4 / 7],
        [2 / 7, 2 / 7, 4 / 7, 1],
    ])
    np.testing.assert_allclose(wup_similarity(four_leaf), expected, atol=1e-12)


def test_dag_wup_uses_shortest_path_to_lcs():
    # x has parents P (depth 1) and Q (depth 2 via P2); lcs(x, y) = Q (deepest); spl(x, Q) = 1
    h = Hierarchy.from_edges([("R", "P"), ("R", "P2"), ("P2", "Q"), ("P", "x"), ("Q", "x"),
                              ("Q", "y")], require_tree=False)
    x, y = h.name_to_index("x"), h.name_to_index("y")
    w = wup_similarity(h, [x, y])
    # Barz depth(Q) = 3, spl(x, Q) = spl(y, Q) = 1 -> 2*3 / (4 + 4)
    assert w[0, 1] == pytest.approx(6 / 8)


def test_forest_uses_virtual_root():
    h = Hierarchy.from_edges([("F1", "a"), ("F1", "b"), ("F2", "c")])  # max_height 1
    S = lcs_height_similarity(h, [h.name_to_index(n) for n in "abc"])
    # normalised by the virtual root's height 2: s(a, b) = 1 - 1/2, s(a, c) = 0
    np.testing.assert_allclose(S, [[1, .5, 0], [.5, 1, 0], [0, 0, 1]])
    assert wup_similarity(h, [h.name_to_index(n) for n in "ac"])[0, 1] == 0
    _, E = class_embedding(h)
    np.testing.assert_allclose(E @ E.T, lcs_height_similarity(h), atol=1e-12)


def test_unitsphere_on_hand_matrix_is_cholesky(four_leaf):
    S = lcs_height_similarity(four_leaf)
    phi = unitsphere_embedding(S)
    np.testing.assert_allclose(phi, np.linalg.cholesky(S), atol=1e-12)
    np.testing.assert_allclose(phi[0], [1, 0, 0, 0])
    np.testing.assert_allclose(phi[1], [2 / 3, np.sqrt(5) / 3, 0, 0], atol=1e-12)


def test_unitsphere_rejects_non_psd_and_bad_diagonal():
    bad = np.array([[1, .9, -.9], [.9, 1, .9], [-.9, .9, 1]])  # not PSD
    with pytest.raises(ConfigError, match="class #2"):
        unitsphere_embedding(bad)
    with pytest.raises(ConfigError, match="approx"):
        unitsphere_embedding(bad)
    with pytest.raises(ConfigError, match="s\\(c, c\\) = 1"):
        unitsphere_embedding(np.array([[1, 0], [0, .5]]))


def test_approx_full_rank_reproduces_s_and_low_rank_is_best(four_leaf):
    S = lcs_height_similarity(four_leaf)
    E = approx_embedding(S)
    assert E.shape == (4, 4)
    np.testing.assert_allclose(E @ E.T, S, atol=1e-12)
    E2 = approx_embedding(S, 2)
    lam = np.linalg.eigvalsh(S)
    # Eckart-Young: the Frobenius error of the rank-2 approximation is the dropped eigenvalues
    assert np.linalg.norm(E2 @ E2.T - S) == pytest.approx(np.linalg.norm(lam[:2]), abs=1e-12)
    En = approx_embedding(S, 2, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(En, axis=1), 1.0)


def test_approx_tolerance_and_error():
    S = np.eye(3)
    E = approx_embedding(np.diag([1.0, 1.0, -1e-10]))  # rounding-size negative: clipped
    np.testing.assert_allclose(E @ E.T, np.diag([1.0, 1.0, 0.0]))
    with pytest.raises(ConfigError, match="-0.5"):
        approx_embedding(np.diag([1.0, 1.0, -0.5]))
    with pytest.raises(ConfigError, match="1..3"):
        approx_embedding(S, 4)


def test_class_embedding_validation(four_leaf):
    with pytest.raises(ConfigError, match="exactly 4 dimensions"):
        class_embedding(four_leaf, method="unitsphere", dim=2)
    with pytest.raises(ConfigError, match="allowed"):
        class_embedding(four_leaf, method="mds")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="twice"):
        class_embedding(four_leaf, ["a1", "a1"])
    names, E = class_embedding(four_leaf, ["c1", "A"], method="approx", dim=2)
    assert names == ["c1", "A"] and E.shape == (2, 2)
    # inner-node class: s(A, A) = 1 (diagonal), s(c1, A) = 1 - h(R)/3 = 0
    np.testing.assert_allclose(E @ E.T, np.eye(2), atol=1e-12)


def _random_tree(rng: np.random.Generator, n_nodes: int) -> Hierarchy:
    edges = [(str(int(rng.integers(0, i))), str(i)) for i in range(1, n_nodes)]
    return Hierarchy.from_edges(edges)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_random_tree(seed):
    h = _random_tree(np.random.default_rng(seed), 60)
    np.testing.assert_array_equal(lcs_height_matrix(h), h.lca_height_matrix(default_classes(h)))
    names, E = class_embedding(h)
    assert names == sorted(names, key=int)  # integer ids sort numerically
    S = lcs_height_similarity(h)
    np.testing.assert_allclose(E @ E.T, S, atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-8)
    assert np.all((S >= 0) & (S <= 1))


def test_save_load_roundtrip(tmp_path, four_leaf):
    names, E = class_embedding(four_leaf)
    p = save_class_embedding(tmp_path / "emb.npz", names, E, {"method": "unitsphere"})
    assert p == tmp_path / "emb.npz" and p.is_file()
    names2, E2, meta = load_class_embedding(p)
    assert names2 == names and meta == {"method": "unitsphere"}
    np.testing.assert_array_equal(E2, E)
    with pytest.raises(DataError, match="does not exist"):
        load_class_embedding(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_text("nope")
    with pytest.raises(DataError, match="not a class embedding"):
        load_class_embedding(tmp_path / "junk.npz")


def test_command_writes_file(tmp_path):
    hf = tmp_path / "h.txt"
    hf.write_text("\n".join(f"{c} {p}" for p, c in FOUR_LEAF) + "\n")  # child parent lines
    cl = tmp_path / "classes.txt"
    cl.write_text("b1 first\n\na1\nc1 x\n")
    line = class_embeddings_command(str(hf), str(tmp_path / "o.npz"), "unitsphere", None,
                                    True, str(cl))
    assert "3 classes in 3 dimensions" in line and "\n" not in line
    names, E, meta = load_class_embedding(tmp_path / "o.npz")
    assert names == ["b1", "a1", "c1"] and meta["is_a"] is True
    assert meta["max_abs_error"] < 1e-12
    np.testing.assert_allclose(E @ E.T, [[1, 0, 1 / 3], [0, 1, 0], [1 / 3, 0, 1]], atol=1e-12)


# ------------------------------------------------------------------ published hierarchies
REAL = [
    # file, child_parent, number of leaves
    ("barz_Cifar-Hierarchy_cifar.parent-child.txt", False, 100),
    ("barz_CUB-Hierarchy_cub_wikispecies.parent-child.txt", False, 200),
    ("barz_NAB-Hierarchy_hierarchy.txt", True, 555),  # "child parent" int ids, root 0 = Birds
    ("barz_ILSVRC_wordnet.parent-child.mintree.txt", False, 1000),
]


@pytest.mark.parametrize("fname,child_parent,n_leaves", REAL, ids=[r[0][:14] for r in REAL])
def test_real_hierarchies(fname, child_parent, n_leaves):
    path = HIER / fname
    if not path.is_file():
        pytest.skip(f"{path} not available")
    h = Hierarchy.from_parent_child_file(path, child_parent=child_parent)  # all are trees
    assert h.is_tree and len(h.roots) == 1
    names, E = class_embedding(h)
    assert len(names) == n_leaves and E.shape == (n_leaves, n_leaves)
    S = lcs_height_similarity(h)
    np.testing.assert_allclose(E @ E.T, S, atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-8)
    if n_leaves <= 200:  # the O(n^2) reference LCA is slow on ILSVRC
        np.testing.assert_array_equal(lcs_height_matrix(h),
                                      h.lca_height_matrix(default_classes(h)))
        Ea = approx_embedding(S)
        np.testing.assert_allclose(Ea @ Ea.T, S, atol=1e-8)
