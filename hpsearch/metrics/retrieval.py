"""Semantic retrieval metrics: hierarchical precision and mAHP@k (Barz & Denzler 2019, §4.1).

Every item of a split queries all *other* items of the split, ranked by embedding similarity.
A retrieved item scores the class similarity s(class(query), class(item)) (LCS height or
Wu-Palmer, from :mod:`hpsearch.class_embeddings`); hierarchical precision compares the
accumulated score with the best achievable one (Deng, Berg & Fei-Fei, CVPR 2011):

    HP@k(q) = Σ_{i<k} s(q, r_i) / Σ_{i<k} s(q, r*_i),

where r* is the ideal ranking (database sorted by s(q, ·), the query itself excluded), and

    AHP@k(q) = trapz(HP@1..k(q), dx = 1/k),   mAHP@k = mean over queries.

The trapezoid over k points with dx = 1/k is Barz & Denzler's exact formula (their
``hierarchical_precision`` with ``compute_ahp=k``); it tops out at (k - 1)/k (0.996 for
k = 250), not 1. We reproduce it so numbers compare with the paper's mAHP@250.

Differences from their code, all documented:

* The ideal ranking is computed *without* the query. They compute it with the query and then
  drop the entry at the query's position in the retrieved list, subtracting 1 from later
  entries; that is identical whenever the query ranks itself within its own class block
  (always, for dot-product or Euclidean ranking without duplicate vectors), and ours is
  correct otherwise too.
* Ties in the ranking are broken by database index (stable sort); theirs use numpy's unstable
  quicksort (arbitrary).
* If the ideal sum is 0 (all other items have similarity 0 to the query) HP is 1: every
  ranking is optimal. Their code divides 0 by 0.

The class similarity is measured on the *original* tree (:func:`leaf_class_similarity`): for a
hierarchy padded by ``leveling: pad`` (dummy chains above shallow leaves, so the per-level heads
have a label on every level) the dummies are dropped first, because they raise the heights of
the shallow leaves' ancestors and with them s = 1 - height(lcs)/max height. Barz & Denzler's
numbers are on their unbalanced trees (e.g. CIFAR-100's), so ours are too.

Everything is vectorised in torch and the N x N similarity is processed in query chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from hpsearch.class_embeddings import lcs_height_similarity, wup_similarity
from hpsearch.errors import ConfigError
from hpsearch.hierarchy import Hierarchy, unpadded

Metric = Literal["dot", "euclidean"]

#: Elements of one [chunk, N] score block (x 12 bytes with the sort indices): ~50 MB.
CHUNK_ELEMENTS = 1 << 22


def leaf_class_similarity(h: Hierarchy, kind: Literal["lcs", "wup"] = "lcs") -> np.ndarray:
    """``[C, C]`` float64 similarity of the last level's classes of ``h`` (local-index order,
    i.e. label order), measured on the original tree behind any ``leveling: pad``.

    ``lcs``: s(a, b) = 1 - height_T(lcs(a, b)) / max_height_T (Barz & Denzler 2019, eq. 1;
    ``class_hierarchy.py`` ``lcs_height``), ``wup``: Wu-Palmer on depths in T, where T =
    :func:`hpsearch.hierarchy.unpadded` (h) — h itself unless h was padded. The LCS is the same
    in both trees (a padding node has one child, so it never is the LCS of two distinct leaves:
    the padded LCS is already its first non-dummy ancestor); only heights and depths differ.

    Example: root -> {A -> {A1 -> {a1, a2}, a3}, B -> {b1, b2}} (b1, b2 at depth 2, a1 at 3).
    Padding adds B -> b1~2 -> b1, so height(B) goes 1 -> 2 and s(b1, b2) = 1 - 2/3 = 1/3 on
    the padded tree, but 1 - 1/3 = 2/3 on the original, which is what this returns.
    """
    if kind not in ("lcs", "wup"):
        raise ConfigError(f"kind {kind!r} is unknown; allowed: lcs, wup")
    t = unpadded(h)
    leaves = [t.index[h.names[g]] for g in h.levels[-1]]
    return (lcs_height_similarity if kind == "lcs" else wup_similarity)(t, leaves)


def _as_tensor(x: Any, dtype: torch.dtype | None = None) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(x)
    t = t.detach()
    return t if dtype is None else t.to(dtype)


def _check_inputs(embeddings: Tensor, labels: Tensor, sim_matrix: Tensor) -> None:
    if embeddings.ndim != 2:
        raise ConfigError(f"embeddings must be [N, D], got shape {tuple(embeddings.shape)}")
    if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ConfigError(f"labels must be [N] with N = {embeddings.shape[0]}, got shape "
                          f"{tuple(labels.shape)}")
    if sim_matrix.ndim != 2 or sim_matrix.shape[0] != sim_matrix.shape[1]:
        raise ConfigError(f"sim_matrix must be [C, C], got shape {tuple(sim_matrix.shape)}")
    c = sim_matrix.shape[0]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= c):
        raise ConfigError(f"labels must lie in 0..{c - 1} (rows of sim_matrix), got "
                          f"{int(labels.min())}..{int(labels.max())}")


def _check_k(k: int, n: int, least: int = 1) -> int:
    if not least <= k <= n - 1:
        raise ConfigError(f"k must be in {least}..{n - 1} (the other items of a split of {n}), "
                          f"got k={k}")
    return int(k)


def rank_database(embeddings: Any, k: int, *, metric: Metric = "dot",
                  chunk_size: int | None = None) -> Tensor:
    """Indices ``[N, k]`` of the k most similar *other* items for every item, best first.

    Score = x_q · x_r (``dot``; the cosine for L2-normalised embeddings) or -||x_q - x_r||^2
    (``euclidean``, Barz's default; the same ranking for unit vectors). The query itself is
    removed from its own ranking; ties go to the lower index.
    """
    x = _as_tensor(embeddings)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # bf16/fp16 outputs of autocast, or integer test data
    if x.ndim != 2:
        raise ConfigError(f"embeddings must be [N, D], got shape {tuple(x.shape)}")
    if metric not in ("dot", "euclidean"):
        raise ConfigError(f"metric {metric!r} is unknown; allowed: dot, euclidean")
    n = x.shape[0]
    k = _check_k(k, n)
    chunk = chunk_size or max(1, CHUNK_ELEMENTS // max(n, 1))
    sq = (x * x).sum(-1)
    out = torch.empty(n, k, dtype=torch.long, device=x.device)
    for s in range(0, n, chunk):
        q = x[s:s + chunk]
        score = q @ x.T  # [b, N]
        if metric == "euclidean":
            score = 2 * score - sq[s:s + chunk, None] - sq[None, :]
        rows = torch.arange(q.shape[0], device=x.device)
        score[rows, rows + s] = -torch.inf  # the query is not part of its own ranking
        order = torch.sort(score, dim=1, descending=True, stable=True).indices
        out[s:s + chunk] = order[:, :k]
    return out


def ideal_cumulative_similarity(labels: Any, sim_matrix: Any, k: int) -> Tensor:
    """``[N, k]``: Σ_{i<=j} of the ideal ranking's similarities, query excluded.

    For a query of class c the ideal ranking lists the database by decreasing s(c, ·); with
    n_c' items of class c' (one fewer for c itself) its j-th entry is the class block that
    contains position j. Computed once per class with a batched ``searchsorted``.
    """
    y = _as_tensor(labels, torch.long)
    sim = _as_tensor(sim_matrix, torch.float64).to(y.device)
    c = sim.shape[0]
    k = _check_k(k, y.shape[0])
    counts = torch.bincount(y, minlength=c)  # [C]
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices  # [C, C]
    sorted_sim = sim.gather(1, order)
    cnt = (counts[order] - (order == torch.arange(c, device=y.device)[:, None]).long())
    cnt = cnt.clamp_min(0)  # rows of absent classes are never read; keep them monotone
    cum_cnt = torch.cumsum(cnt, dim=1)  # [C, C]
    pos = torch.arange(k, device=y.device).expand(c, k).contiguous()
    block = torch.searchsorted(cum_cnt, pos, right=True).clamp_max(c - 1)  # [C, k]
    table = torch.cumsum(sorted_sim.gather(1, block), dim=1)  # [C, k]
    return table[y]


def hierarchical_precision_curve(ranking: Any, labels: Any, sim_matrix: Any) -> Tensor:
    """HP@1..k for every query, ``[N, k]`` float64, from a ranking ``[N, k]`` of indices.

    HP@j(q) = Σ_{i<j} s(y_q, y_{r_i}) / ideal_j(q)  (1 where ideal_j(q) = 0).
    """
    idx = _as_tensor(ranking, torch.long)
    y = _as_tensor(labels, torch.long).to(idx.device)
    sim = _as_tensor(sim_matrix, torch.float64).to(idx.device)
    got = torch.cumsum(sim[y[:, None], y[idx]], dim=1)  # [N, k]
    ideal = ideal_cumulative_similarity(y, sim, idx.shape[1])
    return torch.where(ideal > 0, got / ideal.clamp_min(1e-300), torch.ones_like(got))


def average_hierarchical_precision(hp_curve: Tensor) -> Tensor:
    """AHP@k per query ``[N]``: trapz(HP@1..k, dx=1/k) = (Σ_j HP@j - (HP@1 + HP@k)/2) / k.

    Barz & Denzler ``class_hierarchy.py`` (``compute_ahp=k``); at most (k - 1)/k.
    """
    k = hp_curve.shape[1]
    return (hp_curve.sum(1) - (hp_curve[:, 0] + hp_curve[:, -1]) / 2) / k


def hierarchical_precision_at_k(embeddings: Any, labels: Any, sim_matrix: Any, k: int, *,
                                metric: Metric = "dot") -> float:
    """Mean over queries of HP@k (Deng et al. 2011; Barz & Denzler 2019, eq. 7)."""
    x, y, sim = _as_tensor(embeddings), _as_tensor(labels, torch.long), _as_tensor(sim_matrix)
    _check_inputs(x, y, sim)
    ranking = rank_database(x, k, metric=metric)
    return float(hierarchical_precision_curve(ranking, y, sim)[:, -1].mean())


def mahp_at_k(embeddings: Any, labels: Any, sim_matrix: Any, k: int, *,
              metric: Metric = "dot") -> float:
    """mAHP@k: mean over queries of the area under HP@1..k (paper: k = 250, LCS height).

    Args:
        embeddings: ``[N, D]`` image embeddings of one split.
        labels: ``[N]`` class indices into ``sim_matrix``.
        sim_matrix: ``[C, C]`` class similarities in [0, 1] with unit diagonal.
        k: cut-off, ``2 <= k <= N - 1``.
        metric: ranking score, see :func:`rank_database`.
    """
    x, y, sim = _as_tensor(embeddings), _as_tensor(labels, torch.long), _as_tensor(sim_matrix)
    _check_inputs(x, y, sim)
    _check_k(k, x.shape[0], least=2)
    hp = hierarchical_precision_curve(rank_database(x, k, metric=metric), y, sim)
    return float(average_hierarchical_precision(hp).mean())


def retrieval_metrics(embeddings: Any, labels: Any, sims: Mapping[str, Any], *,
                      ks: Sequence[int] = (1, 10, 50, 100, 250), ahp_k: int = 250,
                      metric: Metric = "dot") -> dict[str, float]:
    """All retrieval metrics from one ranking.

    Keys: ``mahp_{ahp_k}{suffix}`` and ``hp_at_{k}{suffix}`` for every ``(suffix, sim)`` in
    ``sims`` (e.g. ``{"": lcs, "_wup": wup}``). ``ahp_k`` must be in ``2..N-1``; entries of
    ``ks`` beyond ``N - 1`` are skipped, so callers can pass the paper's cut-offs on a small
    split.
    """
    x, y = _as_tensor(embeddings), _as_tensor(labels, torch.long)
    n = x.shape[0]
    _check_k(ahp_k, n, least=2)
    ks = [int(k) for k in ks if 1 <= k <= n - 1]
    kmax = max([ahp_k, *ks])
    ranking = rank_database(x, kmax, metric=metric)
    out: dict[str, float] = {}
    for suffix, sim in sims.items():
        sim_t = _as_tensor(sim)
        _check_inputs(x, y, sim_t)
        hp = hierarchical_precision_curve(ranking, y, sim_t)
        out[f"mahp_{ahp_k}{suffix}"] = float(average_hierarchical_precision(hp[:, :ahp_k]).mean())
        for k in ks:
            out[f"hp_at_{k}{suffix}"] = float(hp[:, k - 1].mean())
    return out


def balanced_accuracy(pred: Any, true: Any) -> float:
    """Mean per-class recall over the classes present in ``true``.

    BA = (1/|C|) Σ_{c ∈ C} |{i: y_i = c, ŷ_i = c}| / |{i: y_i = c}|, C = classes in ``true``.
    Barz & Denzler's "Avg. accuracy" (evaluate_classification_accuracy.py) divides by
    ``len(bincount(true))`` = max label + 1, which is the same when every class occurs.
    """
    p, t = _as_tensor(pred, torch.long).reshape(-1), _as_tensor(true, torch.long).reshape(-1)
    if p.shape != t.shape or t.numel() == 0:
        raise ConfigError(f"pred and true must be non-empty and of equal length, got "
                          f"{tuple(p.shape)} and {tuple(t.shape)}")
    m = int(t.max()) + 1
    freq = torch.bincount(t, minlength=m).double()
    hits = torch.bincount(t[p == t], minlength=m).double()
    present = freq > 0
    return float((hits[present] / freq[present]).mean())
