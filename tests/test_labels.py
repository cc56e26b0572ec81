"""Label-only hierarchy sources: closure, splits, WordNet parsing, registry errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hpsearch.data.labels import (
    LABEL_SOURCES,
    LabelGraph,
    load_label_hierarchy,
    read_wordnet_nouns,
    register_label_source,
)
from hpsearch.errors import ConfigError, DataError, HierarchyError
from hpsearch.hierarchy import transitive_closure, transitive_reduction

SHARED = Path(os.environ.get("HPSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
ETHEC_META = [SHARED / "data" / "ethec" / f for f in ("val.json", "test.json")]
BARZ_CIFAR = SHARED / "data" / "hierarchies" / "barz_Cifar-Hierarchy_cifar.parent-child.txt"
WORDNET = Path("/usr/share/wordnet")


def named(g: LabelGraph, edges: np.ndarray) -> set[tuple[str, str]]:
    return set(g.names_of(edges))


def test_registered_sources():
    assert {"dataset", "ethec", "parent_child", "closure_tsv", "wordnet"} <= set(LABEL_SOURCES)


def test_closure_and_reduction_of_a_dag():
    # 0 -> 1 -> 3, 0 -> 2 -> 3, plus the redundant shortcut 0 -> 3
    edges = np.array([[0, 1], [0, 2], [1, 3], [2, 3], [0, 3]])
    c = transitive_closure(edges, 4)
    assert c.tolist() == [[0, 1], [0, 2], [0, 3], [1, 3], [2, 3]]
    assert transitive_reduction(c, 4).tolist() == [[0, 1], [0, 2], [1, 3], [2, 3]]


def test_cycle_is_an_error():
    with pytest.raises(HierarchyError, match="cycle"):
        transitive_closure(np.array([[0, 1], [1, 2], [2, 0]]), 3)


def test_parent_child_source(tmp_path):
    f = tmp_path / "h.txt"
    f.write_text("# comment\nroot a\nroot b\na a1\na a2\nb b1\n")
    g = load_label_hierarchy("parent_child", path=str(f))
    assert g.nodes == g.hierarchy.names
    assert named(g, g.closure) == {
        ("root", "a"), ("root", "b"), ("root", "a1"), ("root", "a2"), ("root", "b1"),
        ("a", "a1"), ("a", "a2"), ("b", "b1")}
    assert named(g, g.basic_edges) == {("root", "a"), ("root", "b"), ("a", "a1"), ("a", "a2"),
                                       ("b", "b1")}
    assert named(g, g.non_basic_edges) == {("root", "a1"), ("root", "a2"), ("root", "b1")}
    assert not g.has_splits
    with pytest.raises(DataError, match="defines no 'train'"):
        g.split("train")
    # child_parent flips the columns
    f2 = tmp_path / "h2.txt"
    f2.write_text("a root\n")
    g2 = load_label_hierarchy("parent_child", path=str(f2), child_parent=True)
    assert named(g2, g2.closure) == {("root", "a")}


def test_unknown_param_and_source_name_the_value():
    with pytest.raises(ConfigError, match="bogus"):
        load_label_hierarchy("parent_child", path="x", bogus=1)
    with pytest.raises(ConfigError, match="nope.*allowed"):
        load_label_hierarchy("nope")


def test_register_label_source():
    name = "test_only_two_nodes"
    if name not in LABEL_SOURCES:
        @register_label_source(name)
        def _two(**params):
            return LabelGraph(hierarchy=None, nodes=("p", "c"), closure=np.array([[0, 1]]))
    g = load_label_hierarchy(name)
    assert g.meta["source"] == name and g.closure.tolist() == [[0, 1]]


def test_labelgraph_rejects_bad_indices():
    with pytest.raises(HierarchyError, match="outside"):
        LabelGraph(hierarchy=None, nodes=("a", "b"), closure=np.array([[0, 2]]))
    with pytest.raises(HierarchyError, match=r"\[E, 2\]"):
        LabelGraph(hierarchy=None, nodes=("a", "b"), closure=np.zeros((2, 3), dtype=np.int64))


def test_dataset_source_without_images():
    g = load_label_hierarchy("dataset", name="cifar10")
    assert g.hierarchy.level_sizes == (2, 4, 10)
    assert len(g.closure) == 10 * 2 + 4 * 1  # every class: 2 ancestors; every group: 1
    assert ("living", "cat") in named(g, g.closure)
    assert ("non-living", "airplane") in named(g, g.closure)
    g = load_label_hierarchy("dataset", name="fashion_mnist")
    assert g.hierarchy.level_sizes == (3, 10) and len(g.closure) == 10


def test_closure_tsv_with_vocab_splits(tmp_path):
    # Poincaré / hyperbolic-cones layout: full closure as child<TAB>parent names (root kept),
    # split files as ancestor<TAB>descendant vocab ids (root dropped).
    full = tmp_path / "toy_closure.tsv"
    full.write_text("b\ta\nc\tb\nc\ta\nd\ta\nb\tr\nc\tr\nd\tr\na\tr\n")
    prefix = tmp_path / "toy_closure.tsv"
    Path(f"{prefix}.vocab").write_text("0\ta\n1\tb\n2\tc\n3\td\n")
    Path(f"{prefix}.train_0percent").write_text("0\t1\n1\t2\n0\t3\n")
    Path(f"{prefix}.valid").write_text("0\t2\n")
    Path(f"{prefix}.valid_neg").write_text("3\t2\n")
    Path(f"{prefix}.test").write_text("0\t2\n")
    Path(f"{prefix}.test_neg").write_text("1\t3\n2\t1\n")
    g = load_label_hierarchy("closure_tsv", path=str(full), split_prefix=str(prefix))
    assert set(g.nodes) == {"r", "a", "b", "c", "d"}
    assert g.nodes == g.hierarchy.names and g.hierarchy.level_sizes == (1, 1, 2, 1)
    assert named(g, g.closure) == {("a", "b"), ("b", "c"), ("a", "c"), ("a", "d"), ("r", "b"),
                                   ("r", "c"), ("r", "d"), ("r", "a")}
    assert named(g, g.train) == {("a", "b"), ("b", "c"), ("a", "d")}
    assert g.names_of(g.valid) == [("a", "c")]
    assert g.names_of(g.valid_neg) == [("d", "c")]
    assert g.names_of(g.test_neg) == [("b", "d"), ("c", "b")]
    # the only train file is picked automatically; a wrong percentage is an error
    with pytest.raises(DataError, match="train_25percent"):
        load_label_hierarchy("closure_tsv", path=str(full), split_prefix=str(prefix),
                             train_percent=25)


FAKE_DATA_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00001740 03 n 01 entity 0 001 ~ 00002000 n 0000 | that which exists
00002000 03 n 02 animal 0 beast 0 002 @ 00001740 n 0000 ~ 00003000 n 0000 | a living being
00003000 05 n 01 Dog 0 003 @ 00002000 n 0000 + 01234567 v 0101 ~ 00004000 n 0000 | a canine
00004000 05 n 01 Rex 0 001 @i 00003000 n 0000 | a famous dog
00005000 03 n 01 dog 0 001 @ 00001740 n 0000 | an unpleasant person
"""
FAKE_INDEX_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by
animal n 1 2 @ ~ 1 0 00002000
beast n 1 1 @ 1 0 00002000
dog n 2 2 @ ~ 2 1 00005000 00003000
entity n 1 1 ~ 1 0 00001740
rex n 1 1 @i 1 0 00004000
"""


@pytest.fixture
def fake_wordnet(tmp_path):
    (tmp_path / "data.noun").write_text(FAKE_DATA_NOUN)
    (tmp_path / "index.noun").write_text(FAKE_INDEX_NOUN)
    return tmp_path


def test_wordnet_parser_on_a_fake_database(fake_wordnet):
    names, edges = read_wordnet_nouns(fake_wordnet)
    # "dog" lists 00005000 first in index.noun, so the canine is the second sense
    assert names == ["entity.n.01", "animal.n.01", "dog.n.02", "rex.n.01", "dog.n.01"]
    assert sorted(edges.tolist()) == [[0, 1], [0, 4], [1, 2], [2, 3]]  # verb pointer ignored
    _, no_inst = read_wordnet_nouns(fake_wordnet, instances=False)
    assert sorted(no_inst.tolist()) == [[0, 1], [0, 4], [1, 2]]


def test_wordnet_source_subtree(fake_wordnet):
    g = load_label_hierarchy("wordnet", dir=str(fake_wordnet), root="animal.n.01")
    assert set(g.nodes) == {"animal.n.01", "dog.n.02", "rex.n.01"}
    assert named(g, g.closure) == {("animal.n.01", "dog.n.02"), ("animal.n.01", "rex.n.01"),
                                   ("dog.n.02", "rex.n.01")}
    g = load_label_hierarchy("wordnet", dir=str(fake_wordnet), root="entity.n.01",
                             include_root=False)
    assert "entity.n.01" not in g.nodes and len(g.nodes) == 4
    with pytest.raises(ConfigError, match="cat.n.01"):
        load_label_hierarchy("wordnet", dir=str(fake_wordnet), root="cat.n.01")


def test_wordnet_malformed_line_names_the_file(tmp_path):
    (tmp_path / "data.noun").write_text("00001740 03 n zz entity\n")
    (tmp_path / "index.noun").write_text("")
    with pytest.raises(DataError, match="data.noun:1"):
        read_wordnet_nouns(tmp_path)


@pytest.mark.skipif(not (WORDNET / "data.noun").is_file(), reason="wordnet-base not installed")
def test_real_wordnet_counts():
    # Nickel & Kiela's noun closure: 82,115 synsets and 743,241 (hyponym, hypernym) pairs
    # (hyperbolic cones: 661,127 after dropping the 82,114 pairs into entity.n.01).
    g = load_label_hierarchy("wordnet", root="entity.n.01", build_hierarchy=False)
    assert g.num_nodes == 82115 and len(g.closure) == 743241
    m = load_label_hierarchy("wordnet", root="mammal.n.01")
    assert m.num_nodes == 1182 and len(m.closure) == 6542
    assert m.hierarchy.names[0] == "mammal.n.01" and m.hierarchy.roots == (0,)
    assert ("canine.n.02", "dog.n.01") in named(m, m.basic_edges)


@pytest.mark.skipif(not all(p.is_file() for p in ETHEC_META), reason="shared ETHEC absent")
def test_ethec_source_on_shared_metadata():
    g = load_label_hierarchy("ethec", paths=[str(p) for p in ETHEC_META])
    assert g.hierarchy.level_sizes == (6, 21, 135, 561)
    # implementations.md §3: closure 1974 = 561*3 + 135*2 + 21, basic 717, non-basic 1257
    assert len(g.closure) == 1974 and len(g.basic_edges) == 717
    assert len(g.non_basic_edges) == 1257
    small = load_label_hierarchy("ethec", paths=[str(p) for p in ETHEC_META], small=True)
    assert small.hierarchy.level_sizes == (5, 6, 9, 12)


@pytest.mark.skipif(not BARZ_CIFAR.is_file(), reason="shared Barz hierarchy absent")
def test_barz_parent_child_is_a_non_leveled_tree():
    g = load_label_hierarchy("parent_child", path=str(BARZ_CIFAR))
    assert g.num_nodes == 163 and g.hierarchy.is_tree and not g.hierarchy.is_leveled
    assert len(g.basic_edges) == 162
