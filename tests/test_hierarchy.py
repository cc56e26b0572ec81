from __future__ import annotations

import numpy as np
import pytest

from hpsearch.errors import DataError, HierarchyError
from hpsearch.hierarchy import Hierarchy, encode_level_labels

from .conftest import SHARED


def test_levels_offsets_and_local_indices(tiny_hierarchy):
    h = tiny_hierarchy
    assert h.level_sizes == (2, 3, 5)
    assert h.offsets == (0, 2, 5)
    assert h.num_nodes == 10 and h.num_levels == 3 and h.is_leveled
    a1y = h.index["a1y"]
    assert h.level_of(a1y) == 2 and h.local_index(a1y) == 1
    assert [h.names[i] for i in h.root_path(a1y)] == ["a", "a1", "a1y"]
    assert sorted(h.names[c] for c in h.children[h.index["a1"]]) == ["a1x", "a1y"]
    assert len(h.leaves) == 5 and h.roots == (0, 1)


def test_closure_basic_and_non_basic(tiny_hierarchy):
    h = tiny_hierarchy
    # 8 parent-child edges; each of 5 leaves adds one grandparent edge
    assert len(h.basic_edges) == 8
    assert len(h.closure_edges) == 13
    assert len(h.non_basic_edges) == 5
    assert h.is_ancestor(h.index["a"], h.index["a2x"])
    assert not h.is_ancestor(h.index["a2x"], h.index["a"])


def test_lca_and_heights(tiny_hierarchy):
    h = tiny_hierarchy
    i = h.index
    assert h.lca(i["a1x"], i["a1y"]) == i["a1"]
    assert h.lca_height(i["a1x"], i["a1y"]) == 1
    assert h.lca_height(i["a1x"], i["a2x"]) == 2
    assert h.lca(i["a1x"], i["b1x"]) == -1  # forest: virtual root
    assert h.lca_height(i["a1x"], i["b1x"]) == 3
    assert h.lca_height(i["a1x"], i["a1x"]) == 0
    m = h.lca_height_matrix()
    assert m.shape == (5, 5) and (m == m.T).all() and (np.diag(m) == 0).all()


def test_dag_and_transitive_reduction():
    h = Hierarchy.from_edges([("r", "a"), ("r", "b"), ("a", "c"), ("b", "c"), ("r", "c")],
                             require_tree=False)
    assert not h.is_tree
    basic = {(h.names[p], h.names[c]) for p, c in h.basic_edges}
    assert basic == {("r", "a"), ("r", "b"), ("a", "c"), ("b", "c")}  # r->c is implied


def test_refuses_cycles_two_parents_and_unknown_labels(tiny_hierarchy):
    with pytest.raises(HierarchyError, match="cycle"):
        Hierarchy.from_edges([("a", "b"), ("b", "c"), ("c", "a")])
    with pytest.raises(HierarchyError, match="'c' has two parents"):
        Hierarchy.from_edges([("a", "c"), ("b", "c")])
    with pytest.raises(HierarchyError, match="'zz' is not in the hierarchy"):
        encode_level_labels(tiny_hierarchy, [("a", "a1", "zz")])
    with pytest.raises(HierarchyError, match="not a child"):
        encode_level_labels(tiny_hierarchy, [("b", "a1", "a1x")])


def test_parent_child_file_orders_and_int_ids(tmp_path):
    f = tmp_path / "h.txt"
    f.write_text("# comment\n1 2\n1 3\n\n2 4\n")
    h = Hierarchy.from_parent_child_file(f)
    assert h.level_sizes == (1, 2, 1) and h.names[0] == "1"
    g = tmp_path / "isa.txt"
    g.write_text("2 1\n3 1\n4 2\n")
    h2 = Hierarchy.from_parent_child_file(g, child_parent=True)
    assert h2.names == h.names and h2.parents == h.parents
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n")
    with pytest.raises(DataError, match="bad.txt:1"):
        Hierarchy.from_parent_child_file(bad)


def test_roundtrip_dict(tiny_hierarchy):
    h2 = Hierarchy.from_dict(tiny_hierarchy.to_dict())
    assert h2.names == tiny_hierarchy.names and h2.offsets == tiny_hierarchy.offsets


@pytest.mark.skipif(not (SHARED / "data/hierarchies").exists(), reason="shared data absent")
def test_real_cifar100_hierarchy_file():
    h = Hierarchy.from_parent_child_file(
        SHARED / "data/hierarchies/barz_Cifar-Hierarchy_cifar.parent-child.txt")
    assert len(h.leaves) == 100 and len(h.roots) == 1


def test_constructor_errors_name_the_bad_input(tmp_path):
    with pytest.raises(HierarchyError, match="self-loop on node 'a'"):
        Hierarchy.from_edges([("a", "a")])
    with pytest.raises(HierarchyError, match="empty hierarchy"):
        Hierarchy.from_edges([])
    with pytest.raises(HierarchyError, match=r"1 level names given for 2 levels: \['x'\]"):
        Hierarchy.from_edges([("a", "b")], level_names=("x",))
    with pytest.raises(HierarchyError, match="no label tuples given"):
        Hierarchy.from_level_labels([])
    with pytest.raises(HierarchyError, match=r"label tuple \['a'\] has 1 levels, expected 2"):
        Hierarchy.from_level_labels([("a", "b"), ("a",)])
    with pytest.raises(HierarchyError, match="a label name is reused on two levels"):
        Hierarchy.from_level_labels([("a", "b"), ("b", "c")])
    with pytest.raises(DataError, match="does not exist"):
        Hierarchy.from_parent_child_file(tmp_path / "missing.txt")


def test_graph_functions_on_a_small_dag():
    """The pure functions behind the cached properties, on r -> {a, b} -> c plus r -> c."""
    from hpsearch.hierarchy import build, graph

    names, parents = build.nodes_from_edges(
        [("r", "a"), ("r", "b"), ("a", "c"), ("b", "c"), ("r", "c")], require_tree=False)
    assert names == ("r", "a", "b", "c") and parents == ((), (0,), (0,), (1, 2, 0))
    children = graph.children_lists(parents)
    assert children == ((1, 2, 3), (3,), (3,), ())
    assert graph.node_depths(parents).tolist() == [0, 1, 1, 2]
    assert graph.node_heights(children).tolist() == [2, 1, 1, 0]
    anc = graph.strict_ancestors(parents)
    assert anc == (frozenset(), {0}, {0}, {0, 1, 2})
    assert graph.first_parent_path(parents, 3) == (0, 1, 3)
    depth = graph.node_depths(parents)
    assert graph.lowest_common_ancestor(anc, depth, 3, 3) == 3
    assert graph.lowest_common_ancestor(anc, depth, 1, 2) == 0
    m = graph.lca_heights(anc, depth, graph.node_heights(children), [1, 2, 3])
    assert m.tolist() == [[1, 2, 1], [2, 1, 1], [1, 1, 0]]  # diagonal: own height
    closure = graph.transitive_closure(graph.parent_child_pairs(parents), 4)
    basic = graph.transitive_reduction(closure, 4)
    assert graph.edge_difference(closure, basic, 4).tolist() == [[0, 3]]


def test_lca_of_two_roots_is_the_virtual_root(tiny_hierarchy):
    h = tiny_hierarchy
    a, b = h.index["a"], h.index["b"]
    assert h.lca(a, b) == -1 and h.lca_height(a, b) == h.max_height + 1 == 3
