"""Pure graph algorithms on label graphs: depths, heights, ancestors, LCA, closure, reduction.

No state and no :class:`~hpsearch.hierarchy.Hierarchy`: every function takes plain parent/child
lists (global node indices) or ``[E, 2]`` edge arrays and returns a fresh value.

Conventions: an edge is ``(parent, child)`` ("child is-a parent"); ``parents[i]`` lists the
parents of node ``i``. Functions marked *topological* need every parent indexed before its
children, as in the level-major order of :attr:`Hierarchy.names`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from hpsearch.errors import HierarchyError

Adjacency = Sequence[Sequence[int]]


# ---------------------------------------------------------------------- on node names
def _longest_depths(order: list[str], parents_of: dict[str, list[str]]) -> dict[str, int]:
    """Longest-path depth of every named node (roots: 0), by Kahn's topological order.

    Args:
        order: every node name once.
        parents_of: node name -> its parents' names (every name in ``order`` is a key).

    Returns:
        Node name -> length of the longest path from a root to it.

    Raises:
        HierarchyError: the graph has a cycle, naming a node on it (or below it).
    """
    children: dict[str, list[str]] = {n: [] for n in order}
    indeg = {n: len(parents_of[n]) for n in order}
    for c in order:
        for p in parents_of[c]:
            children[p].append(c)
    depth = {n: 0 for n in order}
    queue = deque(n for n in order if indeg[n] == 0)
    done = 0
    while queue:
        n = queue.popleft()
        done += 1
        for c in children[n]:
            depth[c] = max(depth[c], depth[n] + 1)
            indeg[c] -= 1
            if indeg[c] == 0:
                queue.append(c)
    if done != len(order):
        stuck = next(n for n in order if indeg[n] > 0)
        raise HierarchyError(f"the hierarchy has a cycle through node {stuck!r}")
    return depth


# ---------------------------------------------------------------------- on node indices
def children_lists(parents: Adjacency) -> tuple[tuple[int, ...], ...]:
    """The children of every node (the inverse of ``parents``), each in increasing index order.
    """
    ch: list[list[int]] = [[] for _ in parents]
    for c, ps in enumerate(parents):
        for p in ps:
            ch[p].append(c)
    return tuple(tuple(c) for c in ch)


def node_depths(parents: Adjacency) -> np.ndarray:
    """Longest-path depth of every node (roots: 0), int64 ``[num_nodes]``; *topological*."""
    d = np.zeros(len(parents), dtype=np.int64)
    for i in range(len(parents)):  # parents come first
        if parents[i]:
            d[i] = 1 + max(d[p] for p in parents[i])
    return d


def node_heights(children: Adjacency) -> np.ndarray:
    """Height of every node, int64 ``[num_nodes]``: leaves 0, otherwise 1 + the largest height
    of a child (Barz & Denzler); *topological* (children come after their parents)."""
    h = np.zeros(len(children), dtype=np.int64)
    for i in reversed(range(len(children))):
        if children[i]:
            h[i] = 1 + max(h[c] for c in children[i])
    return h


def strict_ancestors(parents: Adjacency) -> tuple[frozenset[int], ...]:
    """The strict ancestors (every node above, itself excluded) of every node; *topological*."""
    anc: list[frozenset[int]] = []
    for i in range(len(parents)):
        s: set[int] = set()
        for p in parents[i]:
            s.add(p)
            s |= anc[p]
        anc.append(frozenset(s))
    return tuple(anc)


def first_parent_path(parents: Adjacency, node: int) -> tuple[int, ...]:
    """Nodes from a root down to ``node`` (inclusive), always following a node's first parent."""
    path = [node]
    while parents[path[-1]]:
        path.append(parents[path[-1]][0])
    return tuple(reversed(path))


def parent_child_pairs(parents: Adjacency) -> np.ndarray:
    """Every ``(parent, child)`` edge of ``parents`` as int64 ``[E, 2]``, sorted."""
    pairs = [(p, c) for c, ps in enumerate(parents) for p in ps]
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def lowest_common_ancestor(
    ancestors: Sequence[frozenset[int]], depth: np.ndarray, a: int, b: int
) -> int:
    """The deepest node that is ``a`` or above it and ``b`` or above it; ``-1`` if none exists.

    Ties between equally deep common ancestors (possible in a DAG) go to the lowest index.

    Args:
        ancestors: strict ancestors of every node (:func:`strict_ancestors`).
        depth: depth of every node (:func:`node_depths`).
        a: a node.
        b: another node (or ``a`` itself: its LCA is ``a``).
    """
    common = (ancestors[a] | {a}) & (ancestors[b] | {b})
    if not common:
        return -1
    return max(common, key=lambda n: (int(depth[n]), -n))


def lca_height_of(
    ancestors: Sequence[frozenset[int]], depth: np.ndarray, height: np.ndarray, a: int, b: int
) -> int:
    """Height of the LCA of ``a`` and ``b``; ``max(height) + 1`` (a virtual root above all the
    roots of a forest) when they have no common ancestor."""
    n = lowest_common_ancestor(ancestors, depth, a, b)
    return int(height.max()) + 1 if n < 0 else int(height[n])


def lca_heights(
    ancestors: Sequence[frozenset[int]], depth: np.ndarray, height: np.ndarray,
    nodes: Sequence[int],
) -> np.ndarray:
    """Symmetric int64 ``[n, n]`` matrix of :func:`lca_height_of` between every two ``nodes``;
    the diagonal holds each node's own height (0 for leaves)."""
    n = len(nodes)
    out = np.zeros((n, n), dtype=np.int64)
    for i in range(n):
        for j in range(i, n):
            out[i, j] = out[j, i] = lca_height_of(ancestors, depth, height, nodes[i], nodes[j])
    return out


# ---------------------------------------------------------------------- sparse edge sets
def _to_csr(edges: np.ndarray, n: int) -> sp.csr_matrix:
    """The 0/1 adjacency matrix ``[n, n]`` (int8) of ``[E, 2]`` edges; duplicates count once."""
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    m = sp.csr_matrix((np.ones(len(e), dtype=np.int8), (e[:, 0], e[:, 1])), shape=(n, n))
    m.sum_duplicates()
    m.data[:] = 1
    return m


def _pairs(m: sp.spmatrix) -> np.ndarray:
    """The nonzero ``(row, col)`` entries of ``m`` as int64 ``[E, 2]``, sorted by row then col."""
    m = sp.coo_matrix(m)
    keep = m.data != 0
    out = np.stack([m.row[keep], m.col[keep]], axis=1).astype(np.int64)
    order = np.lexsort((out[:, 1], out[:, 0]))
    return out[order].reshape(-1, 2)


def transitive_closure(edges: np.ndarray, n: int) -> np.ndarray:
    """All ``(ancestor, descendant)`` pairs reachable through ``(parent, child)`` edges.

    R = A + A^2 + ... computed by frontier expansion: ``F <- (F A) \\ R``, ``R <- R + F``
    until ``F`` is empty, i.e. one sparse product per path length (WordNet nouns: 19).

    Raises:
        HierarchyError: the graph has a cycle (a node reaches itself), naming one such node.
    """
    a = _to_csr(edges, n)
    reach = a.copy()
    frontier = a.copy()
    while frontier.nnz:
        step = frontier @ a
        step.data[:] = 1
        step = step - step.multiply(reach)
        step.eliminate_zeros()
        if step.nnz and (step.diagonal() != 0).any():
            bad = int(np.flatnonzero(step.diagonal())[0])
            raise HierarchyError(f"the label graph has a cycle through node index {bad}")
        reach = reach + step
        reach.data[:] = 1
        frontier = step
    if (reach.diagonal() != 0).any():
        bad = int(np.flatnonzero(reach.diagonal())[0])
        raise HierarchyError(f"the label graph has a cycle through node index {bad}")
    return _pairs(reach)


def transitive_reduction(closure: np.ndarray, n: int) -> np.ndarray:
    """Basic edges of a DAG from its closure: ``(a, d)`` with no ``c`` such that a->c->d."""
    r = _to_csr(closure, n)
    implied = r @ r
    implied.data[:] = 1
    return _pairs(r - r.multiply(implied))


def edge_difference(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """The pairs of ``a`` that are not in ``b`` (both ``[E, 2]`` over ``n`` nodes), sorted."""
    ma, mb = _to_csr(a, n), _to_csr(b, n)
    return _pairs(ma - ma.multiply(mb))
