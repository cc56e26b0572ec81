"""The values of the imbalance weights (hpsearch/data/samplers.py, thesis §4.4), worked out by
hand on a small imbalanced 2-level tree, not by re-running the formulas under test.

Tree: roots A, B; leaves a1, a2 under A and b1, b2 under B. Training counts per leaf:
a1 = 1, a2 = 3, b1 = 6, b2 = 0 (a label the training set never shows), so A = 4, B = 6.
Samples are ordered a1, a2 x 3, b1 x 6 (n = 10).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpsearch.data.samplers import class_weights, label_counts, resample_weights
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.hierarchy import Hierarchy

LEAF_COUNTS = {"a1": 1, "a2": 3, "b1": 6, "b2": 0}
PARENT = {"a1": "A", "a2": "A", "b1": "B", "b2": "B"}


@pytest.fixture(scope="module")
def tree():
    h = Hierarchy.from_edges([(p, c) for c, p in PARENT.items()])
    assert h.num_levels == 2 and h.level_sizes == (2, 4)

    def loc(name: str) -> int:  # local index of a node inside its level
        return h.local_index(h.name_to_index(name))

    leaves = [leaf for leaf, n in LEAF_COUNTS.items() for _ in range(n)]
    labels = np.array([[loc(PARENT[leaf]), loc(leaf)] for leaf in leaves], dtype=np.int64)
    return h, labels, leaves, loc


def shares(w: np.ndarray, leaves: list[str]) -> dict[str, float]:
    """Expected share of the draws that land on each leaf class (weights sum to 1)."""
    out = dict.fromkeys(LEAF_COUNTS, 0.0)
    for wi, leaf in zip(w, leaves):
        out[leaf] += float(wi)
    return out


def by_leaf(w: np.ndarray, leaves: list[str]) -> dict[str, float]:
    """The (single) per-sample weight of each leaf class that has samples."""
    vals: dict[str, set[float]] = {}
    for wi, leaf in zip(w, leaves):
        vals.setdefault(leaf, set()).add(round(float(wi), 12))
    assert all(len(v) == 1 for v in vals.values()), vals  # same label -> same weight
    return {k: v.pop() for k, v in vals.items()}


def test_counts(tree):
    h, labels, _, loc = tree
    roots, leaf = label_counts(labels, h)
    assert roots[loc("A")] == 4 and roots[loc("B")] == 6
    assert [leaf[loc(n)] for n in ("a1", "a2", "b1", "b2")] == [1, 3, 6, 0]


def test_none_means_uniform_draws(tree):
    h, labels, _, _ = tree
    assert resample_weights(labels, h, "none") is None


def test_inverse_leaf_values(tree):
    """w_i = (1 / c_leaf(i)) / sum_j 1 / c_leaf(j); the sum is 1*1 + 3*(1/3) + 6*(1/6) = 3."""
    h, labels, leaves, _ = tree
    w = resample_weights(labels, h, "inverse")
    assert w.shape == (10,) and w.sum() == pytest.approx(1.0)
    assert by_leaf(w, leaves) == pytest.approx({"a1": 1 / 3, "a2": 1 / 9, "b1": 1 / 18})
    # every seen leaf class gets the same expected share of the draws: 1/3 each
    assert shares(w, leaves) == pytest.approx({"a1": 1 / 3, "a2": 1 / 3, "b1": 1 / 3, "b2": 0})


def test_inverse_sqrt_leaf_values(tree):
    """w_i = c_leaf(i)^-1/2 / S with S = 1*1 + 3/sqrt(3) + 6/sqrt(6) = 1 + sqrt(3) + sqrt(6)."""
    h, labels, leaves, _ = tree
    w = resample_weights(labels, h, "inverse_sqrt")
    s = 1 + math.sqrt(3) + math.sqrt(6)  # 5.1815...
    assert w.sum() == pytest.approx(1.0)
    assert by_leaf(w, leaves) == pytest.approx(
        {"a1": 1 / s, "a2": 1 / math.sqrt(3) / s, "b1": 1 / math.sqrt(6) / s})
    # class share = c / sqrt(c) / S = sqrt(c) / S
    assert shares(w, leaves) == pytest.approx(
        {"a1": 1 / s, "a2": math.sqrt(3) / s, "b1": math.sqrt(6) / s, "b2": 0})


def test_inverse_sqrt_lies_between_none_and_inverse(tree):
    """The imbalance it leaves is the geometric mean of none's and inverse's: the ratio of the
    largest to the smallest class share is 6 (none), sqrt(6) (inverse_sqrt), 1 (inverse).
    (Elementwise the shares need not lie between: a2 gets sqrt(3)/S = 0.3343 > 1/3.)"""
    h, labels, leaves, _ = tree
    none = {"a1": 1 / 10, "a2": 3 / 10, "b1": 6 / 10}  # uniform draws over the 10 samples

    def ratio(sh: dict[str, float]) -> float:
        seen = [sh[k] for k in none]
        return max(seen) / min(seen)

    inv = shares(resample_weights(labels, h, "inverse"), leaves)
    sq = shares(resample_weights(labels, h, "inverse_sqrt"), leaves)
    assert ratio(none) == pytest.approx(6.0)
    assert ratio(sq) == pytest.approx(math.sqrt(6))
    assert ratio(inv) == pytest.approx(1.0)
    assert ratio(inv) < ratio(sq) < ratio(none)
    # the rarest class gains, the most frequent loses, monotonically with the strength
    assert none["a1"] < sq["a1"] < inv["a1"]
    assert none["b1"] > sq["b1"] > inv["b1"]


def test_inverse_at_the_root_level(tree):
    """level=0: counts A = 4, B = 6; w = (1/4 or 1/6) / (4/4 + 6/6 = 2)."""
    h, labels, leaves, _ = tree
    w = resample_weights(labels, h, "inverse", level=0)
    assert by_leaf(w, leaves) == pytest.approx({"a1": 1 / 8, "a2": 1 / 8, "b1": 1 / 12})
    sh = shares(w, leaves)
    assert sh["a1"] + sh["a2"] == pytest.approx(0.5) and sh["b1"] == pytest.approx(0.5)
    # -1 is the leaf level, the same as level 1
    assert np.allclose(resample_weights(labels, h, "inverse", level=-1),
                       resample_weights(labels, h, "inverse", level=1))


def test_unknown_mode_is_a_one_line_config_error(tree):
    h, labels, _, _ = tree
    with pytest.raises(ConfigError) as e:
        resample_weights(labels, h, "inv")
    assert isinstance(e.value, HpsearchError) and "\n" not in str(e.value)
    assert "'inv'" in str(e.value) and "inverse_sqrt" in str(e.value)


def test_class_weights_values(tree):
    """w_k = (1 / c_k) / mean over seen labels of 1 / c; unseen labels get 0.

    Leaves: 1/c = 1, 1/3, 1/6 (b2 unseen), mean (1 + 1/3 + 1/6) / 3 = 1/2 -> 2, 2/3, 1/3, 0.
    Roots: 1/c = 1/4, 1/6, mean 5/24 -> 6/5, 4/5.
    """
    h, labels, _, loc = tree
    roots, leaf = class_weights(labels, h)
    assert roots.dtype == np.float32 and leaf.dtype == np.float32
    assert [leaf[loc(n)] for n in ("a1", "a2", "b1", "b2")] == pytest.approx(
        [2.0, 2 / 3, 1 / 3, 0.0])
    assert [roots[loc(n)] for n in ("A", "B")] == pytest.approx([6 / 5, 4 / 5])


def test_class_weights_equalise_each_classs_total_loss_weight(tree):
    """count x weight is the same for every seen label of a level (each class carries the same
    total weight in the training loss), and the seen weights average 1."""
    h, labels, _, loc = tree
    counts = label_counts(labels, h)
    for lvl, w in enumerate(class_weights(labels, h)):
        seen = counts[lvl] > 0
        totals = counts[lvl][seen] * w[seen]
        assert totals == pytest.approx(np.full(seen.sum(), totals[0]), rel=1e-6)
        assert w[seen].mean() == pytest.approx(1.0, rel=1e-6)
        assert np.all(w[~seen] == 0)
    assert class_weights(labels, h)[1][loc("b2")] == 0.0
