"""Edge splits of a label hierarchy for label-only embeddings (thesis §5.5, Ganea et al. §5).

Protocol (thesis §5.5, published ``create_splits`` / ``split_wordnet_data.py``):

1. The *basic* edges (transitive reduction) are always in train: without them the closure is
   not recoverable.
2. val and test are ``floor(5%)`` each of the *non-basic* closure edges (ETHEC: 62 and 62 of
   1257), drawn without overlap.
3. train adds ``floor(p · |non-basic|)`` further non-basic edges, drawn from what val/test left
   (p = ``non_basic_fraction``; thesis: 0, 10, 25, 50%). val/test do not depend on p, so every
   p of a search is scored on the same held-out edges.
4. val/test negatives are drawn once, up front: for every positive (u, v), ``k`` corrupted
   children (u, v') and ``k`` corrupted parents (u', v) (k = 5), each a pair *outside the full
   closure* and not a self pair. ``per_level`` draws pass i from level (i + o) mod (L + 1),
   o a random rotation per positive, the last slot meaning "any node" (published val/test code,
   o = 0; with k = L + 1 each positive gets one per level either way); a pass whose level has
   no valid node
   falls back to any node, and a positive with no valid corruption at all (e.g. the single
   root of a tree as u) gets fewer negatives, as in Ganea et al.

All draws are seeded (``seed``); independent streams are used for val/test selection, train
selection and negatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from hpsearch.data.negatives import NegativeSampler
from hpsearch.errors import ConfigError, DataError
from hpsearch.hierarchy import transitive_reduction

Strategy = Literal["uniform", "per_level"]


@dataclass(frozen=True, eq=False)
class EdgeSplits:
    """Positive and negative ``(ancestor, descendant)`` int64 ``[E, 2]`` arrays.

    Attributes:
        num_nodes: number of labels.
        closure: every true edge (positives of the full graph), sorted.
        basic: the transitive reduction (always in ``train``).
        train: training positives (basic + a fraction of the non-basic edges).
        val, val_neg, test, test_neg: held-out positives and their fixed negatives.
        node_level: ``[num_nodes]`` longest-path depth (roots 0), for pick-per-level.
        meta: how the split was made (fractions, seed, or "predefined").
    """

    num_nodes: int
    closure: np.ndarray
    basic: np.ndarray
    train: np.ndarray
    val: np.ndarray
    val_neg: np.ndarray
    test: np.ndarray
    test_neg: np.ndarray
    node_level: np.ndarray
    meta: dict = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in
                ("closure", "basic", "train", "val", "val_neg", "test", "test_neg")}


# ---------------------------------------------------------------------- graph helpers
def _sorted_pairs(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, dtype=np.int64).reshape(-1, 2)
    return e[np.lexsort((e[:, 1], e[:, 0]))]


def node_levels(closure: np.ndarray, num_nodes: int) -> np.ndarray:
    """Longest-path depth of every node from the closure (roots 0): depth(v) = 1 + max depth
    of its ancestors; fixpoint iteration, one pass per level."""
    c = np.asarray(closure, dtype=np.int64).reshape(-1, 2)
    depth = np.zeros(num_nodes, dtype=np.int64)
    for _ in range(num_nodes + 1):
        new = np.zeros(num_nodes, dtype=np.int64)
        if len(c):
            np.maximum.at(new, c[:, 1], depth[c[:, 0]] + 1)
        if np.array_equal(new, depth):
            return depth
        depth = new
    raise DataError("the closure has a cycle (a node is its own ancestor)")


def _set_difference(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Rows of ``a`` that are not rows of ``b`` (pairs encoded as u·n + v)."""
    if len(b) == 0:
        return a
    ca, cb = a[:, 0] * n + a[:, 1], np.unique(b[:, 0] * n + b[:, 1])
    return a[~np.isin(ca, cb)]


# ---------------------------------------------------------------------- splits
def _count(frac: float, n: int, name: str) -> int:
    if not 0 <= frac <= 1:
        raise ConfigError(f"{name} must lie in [0, 1], got {frac}")
    return int(math.floor(frac * n + 1e-9))


def make_edge_splits(
    num_nodes: int,
    closure: np.ndarray,
    *,
    non_basic_fraction: float,
    basic: np.ndarray | None = None,
    node_level: np.ndarray | None = None,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    negatives_per_side: int = 5,
    negative_strategy: Strategy = "uniform",
    seed: int = 0,
) -> EdgeSplits:
    """Split the closure of a label DAG as thesis §5.5 (see the module docstring).

    Args:
        num_nodes: number of labels N; edges index ``[0, N)``.
        closure: ``[E, 2]`` (ancestor, descendant) pairs of the transitive closure.
        non_basic_fraction: p, the fraction of *all* non-basic edges added to train (0.5 = the
            thesis' "50%"); at most ``1 - val_fraction - test_fraction``.
        basic: the transitive reduction (computed from ``closure`` when omitted).
        node_level: per-node depth for ``per_level`` (computed when omitted).
        val_fraction, test_fraction: of the non-basic edges (5% each).
        negatives_per_side: k corrupted children and k corrupted parents per positive.
        negative_strategy: ``uniform`` or ``per_level``.
        seed: seeds every draw.

    Raises:
        ConfigError: fractions out of range or asking for more edges than exist.
    """
    closure = _sorted_pairs(closure)
    basic = transitive_reduction(closure, num_nodes) if basic is None else _sorted_pairs(basic)
    level = node_levels(closure, num_nodes) if node_level is None else np.asarray(node_level)
    non_basic = _set_difference(closure, basic, num_nodes)
    nb = len(non_basic)
    n_val = _count(val_fraction, nb, "val_fraction")
    n_test = _count(test_fraction, nb, "test_fraction")
    n_train = _count(non_basic_fraction, nb, "non_basic_fraction")
    rest = nb - n_val - n_test
    if n_train > rest:
        raise ConfigError(
            f"non_basic_fraction={non_basic_fraction} asks for {n_train} of the {nb} non-basic "
            f"edges but only {rest} remain after val/test; use at most "
            f"{math.floor(rest / max(nb, 1) * 1000) / 1000}"
        )
    rng_split = np.random.default_rng([seed, 0])
    perm = rng_split.permutation(nb)
    val = _sorted_pairs(non_basic[perm[:n_val]])
    test = _sorted_pairs(non_basic[perm[n_val:n_val + n_test]])
    remaining = perm[n_val + n_test:]
    rng_train = np.random.default_rng([seed, 1])
    extra = non_basic[rng_train.choice(remaining, size=n_train, replace=False)] if n_train else \
        np.zeros((0, 2), dtype=np.int64)
    train = _sorted_pairs(np.concatenate([basic, extra]))
    val_neg, test_neg = _fixed_negatives(
        num_nodes, closure, level, val, test, negatives_per_side, negative_strategy, seed)
    meta = {"kind": "generated", "non_basic_fraction": non_basic_fraction,
            "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
            "negatives_per_side": negatives_per_side, "negative_strategy": negative_strategy,
            "non_basic": nb}
    return EdgeSplits(num_nodes, closure, basic, train, val, val_neg, test, test_neg, level,
                      meta)


def _fixed_negatives(n, closure, level, val, test, k, strategy, seed):
    sampler = NegativeSampler(n, closure, node_level=level, strategy=strategy,
                              negatives_per_side=k, max_rounds=200)
    out = []
    for i, pos in enumerate((val, test)):
        g = torch.Generator().manual_seed(int(np.random.default_rng([seed, 2, i]).integers(2**62)))
        neg, ok = sampler.sample(torch.as_tensor(pos), generator=g)
        out.append(neg[ok].numpy().astype(np.int64).reshape(-1, 2))
    return out


def predefined_edge_splits(
    num_nodes: int,
    closure: np.ndarray,
    *,
    train: np.ndarray,
    valid: np.ndarray,
    valid_neg: np.ndarray,
    test: np.ndarray,
    test_neg: np.ndarray,
    basic: np.ndarray | None = None,
    node_level: np.ndarray | None = None,
) -> EdgeSplits:
    """Wrap split arrays shipped with a dataset (e.g. the hyperbolic-cones WordNet files).

    Raises:
        DataError: a positive is not a closure edge, or a negative is one.
    """
    closure = _sorted_pairs(closure)
    codes = np.unique(closure[:, 0] * num_nodes + closure[:, 1])

    def check(e: np.ndarray, name: str, positive: bool) -> np.ndarray:
        e = np.asarray(e, dtype=np.int64).reshape(-1, 2)
        inside = np.isin(e[:, 0] * num_nodes + e[:, 1], codes)
        bad = ~inside if positive else inside
        if bad.any():
            a, b = e[np.flatnonzero(bad)[0]].tolist()
            what = "is not an edge of the closure" if positive else "is a true closure edge"
            raise DataError(f"predefined split {name!r}: pair ({a}, {b}) {what}")
        return e

    basic = transitive_reduction(closure, num_nodes) if basic is None else _sorted_pairs(basic)
    level = node_levels(closure, num_nodes) if node_level is None else np.asarray(node_level)
    return EdgeSplits(
        num_nodes, closure, basic, check(train, "train", True), check(valid, "valid", True),
        check(valid_neg, "valid_neg", False), check(test, "test", True),
        check(test_neg, "test_neg", False), level, {"kind": "predefined"})
