"""Hand-computed checks of hpsearch.metrics.hierarchical on a 2 -> 3 -> 5 tree.

Tree (local indices in brackets):
    A[0] -> a1[0] -> x1[0], x2[1]
         -> a2[1] -> x3[2]
    B[1] -> b1[2] -> x4[3], x5[4]
LCA heights between leaves: same leaf 0, siblings 1, same root 2, different roots 3 (virtual
root at max_height + 1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hpsearch.errors import ConfigError, DataError, HierarchyError
from hpsearch.hierarchy import Hierarchy
from hpsearch.metrics.hierarchical import (
    BucketRow,
    LabelRow,
    f1_by_count_bucket,
    hierarchical_distance_at_k,
    hierarchical_metric_suite,
    hit_at_k,
    leaf_lca_heights,
    mistake_severity,
    path_consistency,
    per_label_f1_vs_train_size,
    train_counts_from_labels,
)

H_EXPECTED = np.array([
    [0, 1, 2, 3, 3],
    [1, 0, 2, 3, 3],
    [2, 2, 0, 3, 3],
    [3, 3, 3, 0, 1],
    [3, 3, 3, 1, 0],
])


@pytest.fixture(scope="module")
def tree() -> Hierarchy:
    h = Hierarchy.from_level_labels([
        ("A", "a1", "x1"), ("A", "a1", "x2"), ("A", "a2", "x3"),
        ("B", "b1", "x4"), ("B", "b1", "x5"),
    ])
    assert h.names == ("A", "B", "a1", "a2", "b1", "x1", "x2", "x3", "x4", "x5")
    return h


@pytest.fixture(scope="module")
def H(tree) -> np.ndarray:
    return leaf_lca_heights(tree)


# ----------------------------------------------------------------------------- LCA matrix
def test_leaf_lca_heights_hand_values(tree, H):
    np.testing.assert_array_equal(H, H_EXPECTED)
    np.testing.assert_array_equal(H, tree.lca_height_matrix())


def test_leaf_lca_heights_matches_slow_reference_on_random_tree():
    rng = np.random.default_rng(0)
    rows = [(f"r{rng.integers(3)}", f"m{j % 7}", f"l{j}") for j in range(30)]
    # make every mid node have one root: the root of m_k is fixed by its first appearance
    first_root = {}
    rows = [(first_root.setdefault(m, r), m, leaf) for r, m, leaf in rows]
    h = Hierarchy.from_level_labels(rows)
    np.testing.assert_array_equal(leaf_lca_heights(h), h.lca_height_matrix())


def test_leaf_lca_heights_needs_leveled_tree():
    h = Hierarchy.from_edges([("R", "a"), ("R", "b"), ("a", "c")])  # leaf b on level 1
    with pytest.raises(HierarchyError):
        leaf_lca_heights(h)


# ----------------------------------------------------------------------------- severity
def test_mistake_severity_hand(H):
    true = np.array([0, 0, 2, 3, 4])
    pred = np.array([0, 1, 0, 4, 0])
    # mistakes: H[1,0]=1, H[0,2]=2, H[4,3]=1, H[0,4]=3 -> 7/4
    assert mistake_severity(pred, true, H) == {"mistake_severity": 1.75, "num_mistakes": 4.0}


def test_mistake_severity_no_mistakes_is_zero_not_nan(H):
    out = mistake_severity(np.array([1, 3]), np.array([1, 3]), H)
    assert out == {"mistake_severity": 0.0, "num_mistakes": 0.0}
    assert mistake_severity(np.array([], dtype=int), np.array([], dtype=int), H)[
        "mistake_severity"] == 0.0


def test_mistake_severity_accepts_torch(H):
    out = mistake_severity(torch.tensor([4]), torch.tensor([0]), torch.from_numpy(H))
    assert out == {"mistake_severity": 3.0, "num_mistakes": 1.0}


def test_mistake_severity_rejects_bad_input(H):
    with pytest.raises(DataError, match="index 5"):
        mistake_severity(np.array([5]), np.array([0]), H)
    with pytest.raises(DataError, match="rows"):
        mistake_severity(np.array([0, 1]), np.array([0]), H)
    with pytest.raises(DataError, match="square"):
        mistake_severity(np.array([0]), np.array([0]), H[:3])


# ----------------------------------------------------------------------------- hdist@k
SCORES = np.array([
    [0.10, 0.50, 0.20, 0.15, 0.05],  # true 0: top2 = {1, 2}
    [0.30, 0.30, 0.30, 0.05, 0.05],  # true 3: top2 = {0, 1} (tie broken to lower index)
])
TRUE = np.array([0, 3])


@pytest.mark.parametrize(("k", "expected"), [
    (1, (1 + 3) / 2),          # top1: leaf 1 (H=1); leaf 0 by tie (H=3)
    (2, ((1 + 2) / 2 + 3) / 2),  # 1.5 and 3.0
    (3, ((1 + 2 + 3) / 3 + 3) / 2),  # top3 of row 0 = {1, 2, 3}; row 1 = {0, 1, 2}
    (5, (9 / 5 + 10 / 5) / 2),  # every leaf: row means of H
])
def test_hdist_at_k_hand(H, k, expected):
    assert hierarchical_distance_at_k(SCORES, TRUE, H, k) == pytest.approx(expected)


def test_hdist_at_1_equals_severity_times_error_rate(H):
    rng = np.random.default_rng(1)
    scores = rng.random((200, 5))
    true = rng.integers(0, 5, 200)
    sev = mistake_severity(scores.argmax(1), true, H)
    hd1 = hierarchical_distance_at_k(scores, true, H, 1)
    assert hd1 == pytest.approx(sev["mistake_severity"] * sev["num_mistakes"] / 200)


def test_hdist_topk_matches_stable_sort_with_ties():
    rng = np.random.default_rng(2)
    c = 9
    h = rng.integers(0, 4, (c, c))
    scores = rng.integers(0, 3, (300, c)).astype(np.float32)  # many ties
    true = rng.integers(0, c, 300)
    order = np.argsort(-scores, axis=1, kind="stable")
    for k in (1, 2, 4, 8, 9):
        ref = h[order[:, :k], true[:, None]].mean()
        assert hierarchical_distance_at_k(scores, true, h, k) == pytest.approx(ref)
        ref_hit = (order[:, :k] == true[:, None]).any(1).mean()
        assert hit_at_k(scores, true, k) == pytest.approx(ref_hit)


@pytest.mark.parametrize("k", [0, 6, 2.0, True])
def test_hdist_rejects_bad_k(H, k):
    with pytest.raises(ConfigError, match="k must be"):
        hierarchical_distance_at_k(SCORES, TRUE, H, k)


def test_hdist_rejects_nan_and_wrong_width(H):
    bad = SCORES.copy()
    bad[0, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        hierarchical_distance_at_k(bad, TRUE, H, 2)
    with pytest.raises(DataError, match="columns"):
        hierarchical_distance_at_k(SCORES[:, :4], TRUE, H, 2)


# ----------------------------------------------------------------------------- hit@k
def test_hit_at_k_hand():
    true = np.array([0, 4])
    # row 0: three larger scores -> rank 3; row 1: three larger + tie with index 3 -> rank 4
    assert hit_at_k(SCORES, true, 3) == 0.0
    assert hit_at_k(SCORES, true, 4) == 0.5
    assert hit_at_k(SCORES, true, 5) == 1.0
    assert hit_at_k(SCORES, true, 50) == 1.0  # k beyond the class count: every label is in


# ----------------------------------------------------------------------------- consistency
def test_path_consistency_hand(tree):
    pred = np.array([
        [0, 0, 0],  # A a1 x1: ok
        [0, 1, 2],  # A a2 x3: ok
        [1, 0, 0],  # B a1: a1 is under A -> broken
        [1, 2, 0],  # B b1 x1: x1 is under a1 -> broken
    ])
    assert path_consistency(pred, tree) == 0.5
    assert path_consistency(torch.tensor(pred[:2]), tree) == 1.0


def test_path_consistency_rejects_bad_shapes(tree):
    with pytest.raises(DataError, match="3 levels"):
        path_consistency(np.zeros((2, 2), dtype=int), tree)
    with pytest.raises(DataError, match=r"pred_levels\[:, 1\]"):
        path_consistency(np.array([[0, 3, 0]]), tree)


# ----------------------------------------------------------------------------- per label
TRUE_LEVELS = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3]])
PRED_LEVELS = np.array([[0, 0, 0], [0, 0, 0], [1, 2, 3], [1, 2, 3]])
TRAIN_COUNTS = [np.array([100, 5]), np.array([60, 40, 5]), np.array([30, 30, 40, 5, 0])]


def _rows(tree):
    return per_label_f1_vs_train_size(PRED_LEVELS, TRUE_LEVELS, TRAIN_COUNTS, tree)


def test_per_label_rows_hand(tree):
    rows = _rows(tree)
    nan = math.nan
    expected = [
        # level, label, train, P, R, F1, support
        (0, "A", 100, 1.0, 2 / 3, 0.8, 3),
        (0, "B", 5, 0.5, 1.0, 2 / 3, 1),
        (1, "a1", 60, 1.0, 1.0, 1.0, 2),
        (1, "a2", 40, 0.0, 0.0, 0.0, 1),  # never predicted: P = 0 by convention
        (1, "b1", 5, 0.5, 1.0, 2 / 3, 1),
        (2, "x1", 30, 0.5, 1.0, 2 / 3, 1),
        (2, "x2", 30, 0.0, 0.0, 0.0, 1),
        (2, "x3", 40, 0.0, 0.0, 0.0, 1),
        (2, "x4", 5, 0.5, 1.0, 2 / 3, 1),
        (2, "x5", 0, nan, nan, nan, 0),  # neither true nor predicted: not scored
    ]
    assert all(isinstance(r, LabelRow) for r in rows)
    assert len(rows) == len(expected)
    for row, exp in zip(rows, expected, strict=True):
        assert row[:3] == exp[:3]
        assert row.support == exp[6]
        np.testing.assert_allclose(row[3:6], exp[3:6], equal_nan=True)


def test_per_label_macro_f1_agrees_with_classification(tree):
    from hpsearch.metrics.classification import levels_to_multihot, prf_from_multihot

    rows = _rows(tree)
    pred = levels_to_multihot(torch.from_numpy(PRED_LEVELS), tree.offsets, tree.num_nodes)
    true = levels_to_multihot(torch.from_numpy(TRUE_LEVELS), tree.offsets, tree.num_nodes)
    o, s = tree.offsets[2], tree.level_sizes[2]
    macro = prf_from_multihot(pred[:, o:o + s], true[:, o:o + s])["macro_f1"]
    level2 = [r.f1 for r in rows if r.level == 2]
    assert np.nanmean(level2) == pytest.approx(macro) == pytest.approx(1 / 3)


def test_train_counts_from_labels(tree):
    counts = train_counts_from_labels(TRUE_LEVELS, tree)
    np.testing.assert_array_equal(counts[0], [3, 1])
    np.testing.assert_array_equal(counts[1], [2, 1, 1])
    np.testing.assert_array_equal(counts[2], [1, 1, 1, 1, 0])


def test_per_label_rejects_wrong_counts(tree):
    with pytest.raises(DataError, match=r"train_counts\[1\]"):
        per_label_f1_vs_train_size(PRED_LEVELS, TRUE_LEVELS,
                                   [TRAIN_COUNTS[0], np.ones(2), TRAIN_COUNTS[2]], tree)


def test_f1_by_count_bucket_default(tree):
    out = f1_by_count_bucket(_rows(tree))
    assert all(isinstance(b, BucketRow) for b in out)
    assert [b.bucket for b in out] == ["1-9", "10-49", "50-199", "200+"]
    assert [b.num_labels for b in out] == [3, 4, 2, 0]  # x5 (0 images) is below the 1st edge
    np.testing.assert_allclose([b.mean_f1 for b in out], [2 / 3, 1 / 6, 0.9, np.nan],
                               equal_nan=True)


def test_f1_by_count_bucket_skips_unscored_and_per_level(tree):
    rows = _rows(tree)
    low, high = f1_by_count_bucket(rows, (0, 10))
    assert (low.bucket, low.num_labels, low.num_scored) == ("0-9", 4, 3)  # B, b1, x4, x5
    assert low.mean_f1 == pytest.approx(2 / 3)
    assert (high.bucket, high.high, high.num_labels) == ("10+", None, 6)
    assert high.mean_f1 == pytest.approx((0.8 + 1.0 + 2 / 3) / 6)
    lvl2 = [b for b in f1_by_count_bucket(rows, per_level=True) if b.level == 2]
    np.testing.assert_allclose([b.mean_f1 for b in lvl2], [2 / 3, 2 / 9, np.nan, np.nan],
                               equal_nan=True)


@pytest.mark.parametrize("buckets", [(), (10, 10), (50, 10), (-1, 5)])
def test_f1_by_count_bucket_rejects_bad_edges(tree, buckets):
    with pytest.raises(ConfigError, match="strictly increasing"):
        f1_by_count_bucket(_rows(tree), buckets)


# ----------------------------------------------------------------------------- suite
SUITE_LABELS = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3]])
SUITE_PROBS = [
    np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]]),  # ranks 0 0 1 0
    np.array([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]),  # 0 1 1 0
    np.array([  # ranks 0 1 2 1; argmax 0 0 3 4
        [0.6, 0.1, 0.1, 0.1, 0.1],
        [0.5, 0.2, 0.1, 0.1, 0.1],
        [0.05, 0.05, 0.1, 0.4, 0.4],
        [0.1, 0.1, 0.1, 0.3, 0.4],
    ]),
]
SUITE_EXPECTED = {
    "mistake_severity": 5 / 3,  # leaf mistakes H[0,1]=1, H[3,2]=3, H[4,3]=1
    "num_mistakes": 3.0,
    "hdist_at_1": 5 / 4,
    "hdist_at_5": (1.8 + 1.8 + 2.0 + 2.0) / 4,
    "path_consistency": 0.75,  # sample 1 predicts A, a2, x1
    "hit_at_1": (3 / 4 + 2 / 4 + 1 / 4) / 3,
    "hit_at_3": 1.0,
    "hit_at_5": 1.0,
}


def test_suite_hand(tree):
    out = hierarchical_metric_suite(SUITE_PROBS, SUITE_LABELS, tree)
    assert set(out) == set(SUITE_EXPECTED)
    for key, val in SUITE_EXPECTED.items():
        assert out[key] == pytest.approx(val), key
    assert all(isinstance(v, float) for v in out.values())


def test_suite_torch_and_cached_matrix(tree, H):
    probs = [torch.from_numpy(p).float() for p in SUITE_PROBS]
    out = hierarchical_metric_suite(probs, torch.from_numpy(SUITE_LABELS), tree, ks=(1, 2),
                                    hit_ks=(2,), lca_height_matrix=H)
    assert set(out) == {"mistake_severity", "num_mistakes", "hdist_at_1", "hdist_at_2",
                        "path_consistency", "hit_at_2"}
    # top2 leaves: {0,1}->(0+1), {0,1}->(1+0), {3,4}->(3+3), {3,4}->(0+1); /2 each, mean
    assert out["hdist_at_2"] == pytest.approx((0.5 + 0.5 + 3 + 0.5) / 4)
    # hit@2 per level: 4/4, 4/4, 3/4 (sample 2 has rank 2 at the leaf level)
    assert out["hit_at_2"] == pytest.approx((1 + 1 + 0.75) / 3)


def test_suite_clips_hdist_k_to_the_leaf_count(tree):
    out = hierarchical_metric_suite(SUITE_PROBS, SUITE_LABELS, tree, ks=(9,), hit_ks=())
    assert out["hdist_at_9"] == pytest.approx(SUITE_EXPECTED["hdist_at_5"])  # all 5 leaves


def test_suite_empty_split_is_nan_free(tree):
    probs = [np.zeros((0, n)) for n in tree.level_sizes]
    out = hierarchical_metric_suite(probs, np.zeros((0, 3), dtype=np.int64), tree)
    assert set(out) == set(SUITE_EXPECTED)
    assert all(v == 0.0 for v in out.values())


def test_suite_rejects_mismatches(tree, H):
    with pytest.raises(DataError, match="levels"):
        hierarchical_metric_suite(SUITE_PROBS[:2], SUITE_LABELS, tree)
    with pytest.raises(DataError, match="lca_height_matrix"):
        hierarchical_metric_suite(SUITE_PROBS, SUITE_LABELS, tree, lca_height_matrix=H[:4, :4])
    with pytest.raises(ConfigError, match="ks must be"):
        hierarchical_metric_suite(SUITE_PROBS, SUITE_LABELS, tree, ks=(0,))
    with pytest.raises(ConfigError, match="hit_ks must be"):
        hierarchical_metric_suite(SUITE_PROBS, SUITE_LABELS, tree, hit_ks=(0,))
    with pytest.raises(DataError, match=r"level_probs\[1\]"):
        hierarchical_metric_suite([SUITE_PROBS[0], SUITE_PROBS[2], SUITE_PROBS[2]],
                                  SUITE_LABELS, tree)


def test_suite_needs_leveled_tree():
    h = Hierarchy.from_edges([("R", "a"), ("R", "b"), ("a", "c")])
    with pytest.raises(HierarchyError):
        hierarchical_metric_suite([np.ones((1, 1)), np.ones((1, 2)), np.ones((1, 1))],
                                  np.zeros((1, 3), dtype=int), h)


def test_evaluate_scores_the_heads_own_prediction_not_the_per_level_argmax():
    """A marginalization head with ``prediction: leaf_path`` predicts the best leaf's root
    path, which can differ from the per-level argmax of its marginals: path consistency and
    mistake severity must score that prediction (review finding: they scored the argmax)."""
    import torch

    from hpsearch.models.marginalization import MarginalizationHead
    from hpsearch.tasks.classifier.loop import evaluate

    h = Hierarchy.from_level_labels([("A", "a1"), ("A", "a2"), ("A", "a3"), ("B", "b1")])
    head = MarginalizationHead(4, h, prediction="leaf_path")
    leaves = [h.names[n] for n in h.levels[1]]
    x = torch.zeros(1, 4)
    for name, p in (("a1", 0.3), ("a2", 0.3), ("a3", 1e-6), ("b1", 0.4)):
        x[0, leaves.index(name)] = float(np.log(p))
    # marginals: A 0.6 > B 0.4, leaf b1 0.4 is best: per-level argmax (A, b1) is no path
    truth = torch.tensor([[h.local_index(h.index["B"]), h.local_index(h.index["b1"])]])
    assert head.predict_levels(x).tolist() == truth.tolist()
    m = evaluate(head, x, truth)
    assert m["micro_f1"] == 1.0 and m["path_consistency"] == 1.0
    assert m["num_mistakes"] == 0


def test_evaluate_refuses_non_finite_outputs_for_every_head_kind():
    import torch

    from hpsearch.errors import NonFiniteLossError
    from hpsearch.models.multilabel import MultiLabelHead
    from hpsearch.models.per_level import PerLevelHead
    from hpsearch.tasks.classifier.loop import evaluate

    h = Hierarchy.from_level_labels([("A", "a1"), ("A", "a2"), ("B", "b1")])
    labels = torch.tensor([[0, 0], [1, 2]])
    for head in (PerLevelHead(4, h), MultiLabelHead(4, h)):
        out = torch.zeros(2, h.num_nodes)
        out[1, 0] = float("nan")
        with pytest.raises(NonFiniteLossError, match="NaN/inf for 1 of 2 evaluated images"):
            evaluate(head, out, labels, calibrate=True)
