"""Hierarchy-aware classification metrics: how *bad* the mistakes are, not only how many.

All functions are pure and vectorised over samples (numpy); they accept numpy arrays or torch
tensors (moved to the CPU). Leaf indices are rows/columns of an LCA-height matrix ``H``
(``[C, C]``, by default over the last level in local index order, see :func:`leaf_lca_heights`):
``H[a, b]`` is the height of the lowest common ancestor of leaves ``a`` and ``b`` (0 iff
``a == b``; ``max_height + 1`` for leaves under different roots of a forest, i.e. the virtual
root of :class:`~hpsearch.hierarchy.Hierarchy`).

Top-k sets and ranks break ties by the *lower class index* (the order of a stable descending
sort), so results are deterministic and ``hit@k`` agrees with the top-k set used by
``hdist@k``.

Errors: malformed arrays (shapes, out-of-range labels, NaN scores) raise
:class:`~hpsearch.errors.DataError`; a bad ``k`` or bucket specification raises
:class:`~hpsearch.errors.ConfigError`; a hierarchy that is not a leveled tree raises
:class:`~hpsearch.errors.HierarchyError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from hpsearch.errors import ConfigError, DataError
from hpsearch.hierarchy import Hierarchy

__all__ = [
    "BucketRow",
    "LabelRow",
    "f1_by_count_bucket",
    "hierarchical_distance_at_k",
    "hierarchical_metric_suite",
    "hit_at_k",
    "leaf_lca_heights",
    "mistake_severity",
    "path_consistency",
    "per_label_f1_vs_train_size",
    "train_counts_from_labels",
]

DEFAULT_BUCKETS: tuple[int, ...] = (1, 10, 50, 200)  # -> 1-9, 10-49, 50-199, 200+


# ---------------------------------------------------------------------------------- helpers
def _np(x: Any) -> np.ndarray:
    """numpy view of an array-like or a (possibly CUDA, grad-tracking) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _labels(x: Any, name: str, n: int | None = None, ndim: int = 1) -> np.ndarray:
    a = _np(x)
    if a.ndim != ndim or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise DataError(f"{name} must be an integer array with {ndim} dim(s), got dtype "
                        f"{a.dtype} and shape {tuple(a.shape)}")
    if n is not None and a.shape[0] != n:
        raise DataError(f"{name} has {a.shape[0]} rows but {n} were expected (one per sample)")
    return a.astype(np.int64, copy=False)


def _check_range(a: np.ndarray, n: int, name: str) -> None:
    if a.size and (a.min() < 0 or a.max() >= n):
        bad = a.min() if a.min() < 0 else a.max()
        raise DataError(f"{name} holds index {int(bad)} but only 0..{n - 1} are valid")


def _lca_matrix(lca_height_matrix: Any) -> np.ndarray:
    h = _np(lca_height_matrix)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise DataError(f"lca_height_matrix must be square [C, C], got shape {tuple(h.shape)}")
    return h


def _scores(x: Any, name: str, n: int | None = None, c: int | None = None) -> np.ndarray:
    s = _np(x)
    if s.ndim != 2:
        raise DataError(f"{name} must be [N, C] scores, got shape {tuple(s.shape)}")
    if n is not None and s.shape[0] != n:
        raise DataError(f"{name} has {s.shape[0]} rows but there are {n} samples")
    if c is not None and s.shape[1] != c:
        raise DataError(f"{name} has {s.shape[1]} columns but {c} classes were expected")
    if np.issubdtype(s.dtype, np.floating) and np.isnan(s).any():
        raise DataError(f"{name} contains {int(np.isnan(s).sum())} NaN scores; ranks and "
                        "top-k sets are undefined (check the model outputs)")
    return s


def _check_k(k: int, c: int, what: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= c:
        raise ConfigError(f"{what}: k must be an integer in 1..{c} (the number of classes), "
                          f"got k={k!r}")
    return int(k)


def _topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """``[N, k]`` column indices of the k largest scores per row, ties to the lower index.

    Same set as ``argsort(-scores, kind="stable")[:, :k]`` without the full O(C log C) sort:
    everything above the k-th largest value is in; of the values equal to it, the first
    ``k - #above`` columns are taken.
    """
    n, c = scores.shape
    if k == 1:
        return scores.argmax(1)[:, None]  # argmax returns the first maximum
    if k == c:
        return np.broadcast_to(np.arange(c), (n, c))
    kth = np.partition(scores, c - k, axis=1)[:, c - k, None]  # k-th largest per row
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(1, keepdims=True)
    mask = above | (tied & (np.cumsum(tied, axis=1) <= room))
    return np.nonzero(mask)[1].reshape(n, k)  # nonzero is row-major: exactly k per row


def _ranks(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based rank of ``target[i]`` in row ``i`` under the same tie rule as top-k.

    rank_i = #{c : s_ic > s_i,t} + #{c < t : s_ic = s_i,t}.
    """
    n, c = scores.shape
    st = scores[np.arange(n), target][:, None]
    before = np.arange(c)[None, :] < target[:, None]
    return (scores > st).sum(1) + ((scores == st) & before).sum(1)


# ---------------------------------------------------------------------------------- LCA
def leaf_lca_heights(hierarchy: Hierarchy) -> np.ndarray:
    """LCA heights between all last-level nodes of a leveled tree, ``[C, C]`` int64.

    In a leveled tree of ``L`` levels a node on level ``l`` has height ``L - 1 - l``, so with
    ``p`` = the number of leading levels on which the root paths of ``a`` and ``b`` agree,
    ``H[a, b] = L - p`` (``p = 0``: different roots, the virtual root at height ``L``).
    Equal to :meth:`Hierarchy.lca_height_matrix` but O(C^2 L) in numpy instead of Python
    loops (561 ETHEC leaves: milliseconds). Compute it once and pass it to the metrics.

    Raises:
        HierarchyError: the hierarchy is not a leveled tree.
    """
    paths = hierarchy.leaf_paths  # [C, L] local indices; raises if not leveled
    c, levels = paths.shape
    same = np.ones((c, c), dtype=bool)
    prefix = np.zeros((c, c), dtype=np.int64)
    for lvl in range(levels):
        same &= paths[:, lvl, None] == paths[None, :, lvl]
        prefix += same
    return levels - prefix


# ---------------------------------------------------------------------------------- metrics
def mistake_severity(pred_leaf: Any, true_leaf: Any, lca_height_matrix: Any) -> dict[str, float]:
    """Mean LCA height over the *wrong* top-1 predictions.

    severity = (1 / |M|) Σ_{i ∈ M} H[ŷ_i, y_i],   M = {i : ŷ_i ≠ y_i}

    Bertinetto et al. 2020, "Making Better Mistakes: Leveraging Class Hierarchies with Deep
    Networks", CVPR (arXiv:1912.09393): "mistake severity", the height of the LCA between a
    wrong prediction and the ground truth, averaged over the mistakes only (so it is not
    diluted by correct predictions; read it together with the error count).

    Args:
        pred_leaf: ``[N]`` predicted leaf index (row of ``lca_height_matrix``).
        true_leaf: ``[N]`` true leaf index.
        lca_height_matrix: ``[C, C]`` LCA heights (:func:`leaf_lca_heights`).

    Returns:
        ``{"mistake_severity": mean height (0.0 when there is no mistake),
        "num_mistakes": |M| as a float}``; never NaN.
    """
    h = _lca_matrix(lca_height_matrix)
    t = _labels(true_leaf, "true_leaf")
    p = _labels(pred_leaf, "pred_leaf", n=t.shape[0])
    _check_range(t, h.shape[0], "true_leaf")
    _check_range(p, h.shape[0], "pred_leaf")
    wrong = p != t
    m = int(wrong.sum())
    sev = float(h[p[wrong], t[wrong]].mean()) if m else 0.0
    return {"mistake_severity": sev, "num_mistakes": float(m)}


def hierarchical_distance_at_k(
    leaf_scores: Any, true_leaf: Any, lca_height_matrix: Any, k: int
) -> float:
    """Mean over samples of the mean LCA height between the truth and each top-k leaf.

    hdist@k = (1 / N) Σ_i (1 / k) Σ_{c ∈ top_k(s_i)} H[c, y_i]

    Bertinetto et al. 2020, "Making Better Mistakes", CVPR (arXiv:1912.09393): "average
    hierarchical distance of top-k". Correct predictions count with height 0, so hdist@1 is
    mistake severity × top-1 error rate. Ties in the top-k go to the lower leaf index.

    Args:
        leaf_scores: ``[N, C]`` scores (higher = more likely), e.g. leaf probabilities.
        true_leaf: ``[N]`` true leaf index.
        lca_height_matrix: ``[C, C]`` LCA heights (:func:`leaf_lca_heights`).
        k: size of the top-k set, ``1 <= k <= C``.

    Returns:
        The mean height; 0.0 for an empty split.
    """
    h = _lca_matrix(lca_height_matrix)
    t = _labels(true_leaf, "true_leaf")
    s = _scores(leaf_scores, "leaf_scores", n=t.shape[0], c=h.shape[0])
    k = _check_k(k, h.shape[0], "hierarchical_distance_at_k")
    _check_range(t, h.shape[0], "true_leaf")
    if t.shape[0] == 0:
        return 0.0
    top = _topk_indices(s, k)  # [N, k]
    return float(h[top, t[:, None]].mean())


def hit_at_k(scores: Any, target: Any, k: int) -> float:
    """Share of samples whose true label is among the k highest scores.

    hit@k = (1 / N) Σ_i 1[rank_i(y_i) < k]

    Dhall thesis eq. 4.6 (Hit@K). Ties rank the lower class index first. ``k`` larger than
    the number of classes is allowed (a level with 6 families has hit@10 = 1), as in the
    thesis' per-level hit@5 on ETHEC's 6 families.

    Returns:
        The hit rate; 0.0 for an empty split.
    """
    t = _labels(target, "target")
    s = _scores(scores, "scores", n=t.shape[0])
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"hit_at_k: k must be a positive integer, got k={k!r}")
    _check_range(t, s.shape[1], "target")
    if t.shape[0] == 0:
        return 0.0
    return float((_ranks(s, t) < k).mean())


def path_consistency(pred_levels: Any, hierarchy: Hierarchy) -> float:
    """Share of predictions whose per-level labels form a root-to-leaf path.

    consistency = (1 / N) Σ_i Π_{l=1}^{L-1} 1[parent(ŷ_i,l) = ŷ_i,l-1]

    Dhall thesis §3 (per-level classifiers predict each level independently and need not
    agree with the hierarchy; masked / marginalized heads do by construction).

    Args:
        pred_levels: ``[N, L]`` predicted local label per level.
        hierarchy: a leveled tree with ``L`` levels.

    Returns:
        The consistent share; 1.0 for a single-level hierarchy, 0.0 for an empty split.
    """
    hierarchy.require_leveled("path_consistency")
    p = _labels(pred_levels, "pred_levels", ndim=2)
    _check_levels(p, hierarchy, "pred_levels")
    if p.shape[0] == 0:
        return 0.0
    ok = np.ones(p.shape[0], dtype=bool)
    for lvl in range(1, hierarchy.num_levels):
        ok &= hierarchy.parent_local(lvl)[p[:, lvl]] == p[:, lvl - 1]
    return float(ok.mean())


def _check_levels(a: np.ndarray, hierarchy: Hierarchy, name: str) -> None:
    if a.shape[1] != hierarchy.num_levels:
        raise DataError(f"{name} has {a.shape[1]} columns but the hierarchy has "
                        f"{hierarchy.num_levels} levels")
    for lvl, n in enumerate(hierarchy.level_sizes):
        _check_range(a[:, lvl], n, f"{name}[:, {lvl}]")


# ---------------------------------------------------------------------------------- per label
class LabelRow(NamedTuple):
    """One label of thesis Fig. 4.1: test F1 against the number of training images.

    ``precision``/``recall`` are 0 when undefined (never predicted / no support) and all three
    scores are NaN for a label that is neither true nor predicted on the split (not scored,
    left out of macro averages and bucket means).
    """

    level: int
    label: str
    train_count: int
    precision: float
    recall: float
    f1: float
    support: int


class BucketRow(NamedTuple):
    """Mean test F1 of the labels whose train count falls in ``[low, high)``."""

    level: int | None  # None: all levels pooled
    bucket: str  # "1-9", "200+"
    low: int
    high: int | None  # None: unbounded
    num_labels: int  # labels in the bucket
    num_scored: int  # of which scored (F1 not NaN)
    mean_f1: float  # NaN when num_scored == 0


def train_counts_from_labels(train_level_labels: Any, hierarchy: Hierarchy) -> list[np.ndarray]:
    """Training images per label, one ``[n_l]`` int64 array per level (``bincount``)."""
    a = _labels(train_level_labels, "train_level_labels", ndim=2)
    _check_levels(a, hierarchy, "train_level_labels")
    return [np.bincount(a[:, lvl], minlength=n).astype(np.int64)
            for lvl, n in enumerate(hierarchy.level_sizes)]


def per_label_f1_vs_train_size(
    pred_levels: Any,
    true_levels: Any,
    train_counts: Sequence[Any],
    hierarchy: Hierarchy,
) -> list[LabelRow]:
    """Per-label precision, recall, F1 and support next to the label's training count.

    For label ``c`` of level ``l``, with one predicted and one true label per level:
    TP = #{i : ŷ_il = c = y_il}, FP = #{i : ŷ_il = c ≠ y_il}, FN = #{i : y_il = c ≠ ŷ_il};
    P = TP / (TP + FP), R = TP / (TP + FN), F1 = 2TP / (2TP + FP + FN).

    Dhall thesis Fig. 4.1 ("Per-label F1 performance across levels plotted against number of
    training samples") as a table; summarise it with :func:`f1_by_count_bucket`.

    Args:
        pred_levels: ``[N, L]`` predicted local labels.
        true_levels: ``[N, L]`` true local labels.
        train_counts: per level, ``[n_l]`` training images per label
            (:func:`train_counts_from_labels`).
        hierarchy: the label tree (names and level sizes).

    Returns:
        One :class:`LabelRow` per label, level-major, in local index order.
    """
    t = _labels(true_levels, "true_levels", ndim=2)
    p = _labels(pred_levels, "pred_levels", n=t.shape[0], ndim=2)
    _check_levels(t, hierarchy, "true_levels")
    _check_levels(p, hierarchy, "pred_levels")
    if len(train_counts) != hierarchy.num_levels:
        raise DataError(f"train_counts has {len(train_counts)} levels but the hierarchy has "
                        f"{hierarchy.num_levels}")
    rows: list[LabelRow] = []
    for lvl, n in enumerate(hierarchy.level_sizes):
        counts = _np(train_counts[lvl]).reshape(-1)
        if counts.shape[0] != n:
            raise DataError(f"train_counts[{lvl}] has {counts.shape[0]} entries but level "
                            f"{lvl} has {n} labels")
        pl, tl = p[:, lvl], t[:, lvl]
        tp = np.bincount(tl[pl == tl], minlength=n)
        predicted = np.bincount(pl, minlength=n)
        support = np.bincount(tl, minlength=n)
        fp, fn = predicted - tp, support - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            prec = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
            rec = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
            f1 = np.where(tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan)
        scored = tp + fp + fn > 0
        prec = np.where(scored, prec, np.nan)
        rec = np.where(scored, rec, np.nan)
        offset = hierarchy.offsets[lvl]
        for j in range(n):
            rows.append(LabelRow(
                level=lvl, label=hierarchy.names[offset + j], train_count=int(counts[j]),
                precision=float(prec[j]), recall=float(rec[j]), f1=float(f1[j]),
                support=int(support[j]),
            ))
    return rows


def _bucket_name(low: int, high: int | None) -> str:
    if high is None:
        return f"{low}+"
    return str(low) if high == low + 1 else f"{low}-{high - 1}"


def f1_by_count_bucket(
    rows: Iterable[LabelRow],
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    *,
    per_level: bool = False,
) -> list[BucketRow]:
    """Mean F1 of the scored labels per training-count bucket.

    Bucket ``b`` holds the labels with ``buckets[b] <= train_count < buckets[b + 1]`` (the last
    one is unbounded); labels below ``buckets[0]`` are left out. Mean over labels whose F1 is
    not NaN (labels absent from the split are not scored, as in the macro average).

    Dhall thesis §4.4 / Fig. 4.1: F1 rises in an S-shape with the number of training images.

    Args:
        rows: :func:`per_label_f1_vs_train_size` output.
        buckets: strictly increasing non-negative lower edges; default ``(1, 10, 50, 200)``
            gives the buckets 1-9, 10-49, 50-199, 200+.
        per_level: one set of buckets per level instead of all levels pooled.

    Returns:
        :class:`BucketRow` list, level-major when ``per_level``.
    """
    edges = [int(b) for b in buckets]
    if not edges or edges[0] < 0 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ConfigError(f"buckets must be strictly increasing non-negative lower edges such as "
                          f"(1, 10, 50, 200), got {tuple(buckets)}")
    rows = list(rows)
    groups: list[int | None] = (sorted({r.level for r in rows}) if per_level else [None])
    out: list[BucketRow] = []
    for lvl in groups:
        sel = [r for r in rows if lvl is None or r.level == lvl]
        counts = np.array([r.train_count for r in sel], dtype=np.int64)
        f1 = np.array([r.f1 for r in sel], dtype=np.float64)
        for b, low in enumerate(edges):
            high = edges[b + 1] if b + 1 < len(edges) else None
            inside = (counts >= low) & (counts < high if high is not None else True)
            scored = inside & ~np.isnan(f1)
            n_scored = int(scored.sum())
            out.append(BucketRow(
                level=lvl, bucket=_bucket_name(low, high), low=low, high=high,
                num_labels=int(inside.sum()), num_scored=n_scored,
                mean_f1=float(f1[scored].mean()) if n_scored else math.nan,
            ))
    return out


# ---------------------------------------------------------------------------------- suite
def hierarchical_metric_suite(
    level_probs: Sequence[Any],
    level_labels: Any,
    hierarchy: Hierarchy,
    ks: Sequence[int] = (1, 5),
    *,
    hit_ks: Sequence[int] = (1, 3, 5),
    lca_height_matrix: Any | None = None,
    pred_levels: Any | None = None,
) -> dict[str, float]:
    """Every hierarchy-aware metric of an argmax classifier in one pass, with stable names.

    The last level is the leaf level. The prediction (for ``mistake_severity`` and
    ``path_consistency``) is ``pred_levels`` when given: pass the head's own decision
    (e.g. the best leaf's root path for ``prediction: leaf_path``), else the argmax of each
    level (ties: lower index). ``hit_at_<k>`` and ``hdist_at_<k>`` rank the level scores, so
    for a head whose prediction is not the per-level argmax ``hit_at_1`` can differ from its
    per-level accuracy.

    Keys: ``mistake_severity``, ``num_mistakes`` (:func:`mistake_severity`),
    ``hdist_at_<k>`` for ``k`` in ``ks`` (:func:`hierarchical_distance_at_k`),
    ``path_consistency`` (:func:`path_consistency`), ``hit_at_<k>`` for ``k`` in ``hit_ks``:
    per-level hit@k averaged over levels, (1 / L) Σ_l hit@k_l, which equals the hits over all
    (image, level) pairs divided by L·N (Dhall thesis §6.2, Table 6.3).

    Args:
        level_probs: one ``[N, n_l]`` score array per level (higher = more likely).
        level_labels: ``[N, L]`` true local labels.
        hierarchy: a leveled tree.
        ks: the k of ``hdist_at_<k>``; a k above the number of leaves C is clipped to C
            (the top-k set is every leaf), so the key names stay stable on tiny trees.
        hit_ks: the k of ``hit_at_<k>``.
        lca_height_matrix: cached :func:`leaf_lca_heights` (computed here when None).
        pred_levels: ``[N, L]`` predicted local label per level (default: per-level argmax).

    Returns:
        ``dict[str, float]``, NaN-free for non-empty splits.
    """
    hierarchy.require_leveled("hierarchical_metric_suite")
    labels = _labels(level_labels, "level_labels", ndim=2)
    _check_levels(labels, hierarchy, "level_labels")
    if len(level_probs) != hierarchy.num_levels:
        raise DataError(f"level_probs has {len(level_probs)} levels but the hierarchy has "
                        f"{hierarchy.num_levels}")
    n = labels.shape[0]
    probs = [_scores(level_probs[lvl], f"level_probs[{lvl}]", n=n, c=size)
             for lvl, size in enumerate(hierarchy.level_sizes)]
    h = leaf_lca_heights(hierarchy) if lca_height_matrix is None else \
        _lca_matrix(lca_height_matrix)
    n_leaves = hierarchy.level_sizes[-1]
    if h.shape[0] != n_leaves:
        raise DataError(f"lca_height_matrix is {h.shape[0]}x{h.shape[1]} but the last level has "
                        f"{n_leaves} labels; pass leaf_lca_heights(hierarchy)")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"hierarchical_metric_suite: ks must be positive integers, "
                              f"got {tuple(ks)}")
    for k in hit_ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"hierarchical_metric_suite: hit_ks must be positive integers, "
                              f"got {tuple(hit_ks)}")

    if pred_levels is None:
        pred = np.stack([p.argmax(1) for p in probs], axis=1)  # [N, L], first maximum
    else:
        pred = _labels(pred_levels, "pred_levels", ndim=2)
        _check_levels(pred, hierarchy, "pred_levels")
        if pred.shape[0] != n:
            raise DataError(f"pred_levels has {pred.shape[0]} rows, level_labels {n}")
    true_leaf = labels[:, -1]
    out = mistake_severity(pred[:, -1], true_leaf, h)
    for k in ks:
        out[f"hdist_at_{k}"] = hierarchical_distance_at_k(probs[-1], true_leaf, h,
                                                          min(int(k), n_leaves))
    out["path_consistency"] = path_consistency(pred, hierarchy)
    ranks = [_ranks(p, labels[:, lvl]) for lvl, p in enumerate(probs)] if n else []
    for k in hit_ks:
        out[f"hit_at_{k}"] = float(np.mean([(r < k).mean() for r in ranks])) if n else 0.0
    return out
