"""The generated ``tree`` label source: thesis Fig. 6.3's full b-ary toy trees (issue 14)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from hpsearch.data.labels import LABEL_SOURCES, load_label_hierarchy
from hpsearch.errors import ConfigError
from hpsearch.tasks.config import TrialConfig


def test_registered():
    assert "tree" in LABEL_SOURCES


# sizes by hand: level d holds b**d labels, the root is not a label (thesis level counting)
@pytest.mark.parametrize("levels,b,sizes", [
    (4, 3, (3, 9, 27, 81)),      # Fig. 6.3 (a), (c): 120 labels
    (3, 7, (7, 49, 343)),        # Fig. 6.3 (b), (d): 399 labels
    (1, 5, (5,)),
])
def test_level_sizes_and_counts(levels, b, sizes):
    g = load_label_hierarchy("tree", levels=levels, branching=b)
    h = g.hierarchy
    assert h.level_sizes == sizes
    assert g.num_nodes == sum(sizes) and g.nodes == h.names
    # closure: every level-d node (1-based) has d - 1 strict ancestors
    assert len(g.closure) == sum(n * d for d, n in enumerate(sizes))
    assert len(g.basic_edges) == sum(sizes[1:])
    assert g.meta == {"source": "tree", "levels": levels, "branching": b,
                      "include_root": False}


@pytest.mark.parametrize("levels,b", [(4, 3), (3, 7)])
def test_one_parent_and_b_children(levels, b):
    g = load_label_hierarchy("tree", levels=levels, branching=b)
    h = g.hierarchy
    assert h.is_tree and len(h.roots) == b
    depth = np.asarray(h.depth)
    for i, name in enumerate(g.nodes):
        parts = name.split(".")
        assert parts[0] == "n" and len(parts) == depth[i] + 2  # "n" + one index per level
        assert all(0 <= int(x) < b for x in parts[1:])
        if depth[i] == 0:
            assert h.parents[i] == ()
        else:
            assert len(h.parents[i]) == 1
            assert g.nodes[h.parents[i][0]] == name.rsplit(".", 1)[0]
        want = 0 if depth[i] == levels - 1 else b
        assert len(h.children[i]) == want, name
    assert set(h.leaves) == set(np.flatnonzero(depth == levels - 1).tolist())
    parent_edges = g.names_of(g.basic_edges)
    assert Counter(p for p, _ in parent_edges) == {
        n: b for n in g.nodes if n.count(".") < levels}


def test_deterministic_names_and_order():
    a = load_label_hierarchy("tree", levels=3, branching=3)
    b = load_label_hierarchy("tree", levels=3, branching=3)
    assert a.nodes == b.nodes and np.array_equal(a.closure, b.closure)
    assert a.nodes[:4] == ("n.0", "n.1", "n.2", "n.0.0")
    assert a.nodes[-1] == "n.2.2.2" and "n.0.2.1" in a.index
    pairs = set(a.names_of(a.closure))
    assert ("n.0", "n.0.2.1") in pairs and ("n.0.2", "n.0.2.1") in pairs
    assert ("n.1", "n.0.2.1") not in pairs


def test_include_root_adds_one_node_on_top():
    g = load_label_hierarchy("tree", levels=2, branching=2, include_root=True)
    assert g.nodes == ("n", "n.0", "n.1", "n.0.0", "n.0.1", "n.1.0", "n.1.1")
    assert g.hierarchy.level_sizes == (1, 2, 4) and g.hierarchy.roots == (0,)
    assert len(g.closure) == 2 * 1 + 4 * 2


@pytest.mark.parametrize("params,match", [
    ({"levels": 0}, r"levels must be a positive int, got 0"),
    ({"levels": -2}, r"levels must be a positive int"),
    ({"branching": 2.5}, r"branching must be a positive int, got 2\.5"),
    ({"branching": "3"}, r"branching must be a positive int, got '3'"),
    ({"levels": True}, r"levels must be a positive int, got True"),
    ({"include_root": "yes"}, r"include_root must be true or false"),
    ({"levels": 30, "branching": 10}, r"levels=30, branching=10 gives more than 100000 labels"
                                      r".*use fewer levels or a smaller branching"),
    ({"levels": 10**9, "branching": 10**9}, r"gives more than 100000 labels"),
    ({"levels": 90_000, "branching": 1}, r"2000000 closure pairs"),  # a chain: N²/2 pairs
    ({"depth": 3}, r"unknown option\(s\) \['depth'\]; allowed: branching, include_root, "
                   r"levels"),
])
def test_bad_params_one_line_config_error(params, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_label_hierarchy("tree", **params)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("label source 'tree'")


@pytest.mark.slow
def test_euclidean_cone_trial_on_a_toy_tree(tmp_path):
    from hpsearch.api import train
    from hpsearch.tasks import build_experiment

    cfg = TrialConfig.from_flat({
        "model.family": "euclidean_cone",
        "data.params": {"label_source": "tree", "levels": 3, "branching": 3},
        "optim.epochs": 1, "optim.batch_size": 16, "optim.schedule": "none",
        "optim.lr": 0.05, "metric": "val_edge_f1", "model.params": {"dim": 4}})
    assert build_experiment(cfg).splits.num_nodes == 3 + 9 + 27  # the config reads the tree
    best = train(cfg, tmp_path / "ck")
    assert best.epoch == 0 and 0.0 <= best.value <= 1.0
    assert best.test is not None
    for k in ("edge_f1", "recon_tpr", "full_f1", "loss"):
        assert math.isfinite(best.test[k]), k
    assert (tmp_path / "ck" / "checkpoint.pt").exists()
