"""The label hierarchy as an immutable value object.

Nodes are strings. Every node has a *global index* (position in :attr:`Hierarchy.names`); nodes
are ordered level by level, so the labels of level ``l`` occupy the contiguous global range
``offsets[l] : offsets[l] + level_sizes[l]`` and a node's *local* index is its position inside
its level. This is the layout the thesis' per-level heads use (ETHEC: offsets 0, 6, 27, 162).

Level of a node = its depth, the length of the *longest* path from a root (depth of a root = 0),
which is Barz & Denzler's convention and coincides with the unique depth in a tree.

Edges are ``(parent, child)`` pairs ("child is-a parent"). A forest with several roots (ETHEC has
6 families) is treated as hanging below one *virtual root* for LCA purposes: two nodes with no
common ancestor have ``lca == -1`` and an LCA height of ``max_height + 1``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from hpsearch.errors import DataError, HierarchyError


@dataclass(frozen=True, eq=False)
class Hierarchy:
    """A directed acyclic label graph, usually a tree.

    Build it with :meth:`from_level_labels`, :meth:`from_parent_child_file` or
    :meth:`from_edges`; do not call the constructor directly.
    """

    names: tuple[str, ...]
    parents: tuple[tuple[int, ...], ...]
    level_names: tuple[str, ...] = field(default=())

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_edges(
        cls,
        edges: Iterable[tuple[object, object]],
        *,
        nodes: Iterable[object] = (),
        require_tree: bool = True,
        level_names: Sequence[str] = (),
    ) -> Hierarchy:
        """Build from ``(parent, child)`` pairs; ids may be ints or strings (kept as strings).

        Args:
            edges: parent-child pairs.
            nodes: extra isolated nodes (a single-node hierarchy has no edges).
            require_tree: refuse a node with two parents.
            level_names: optional names of the levels ("family", "genus", ...).
        """
        parents_of: dict[str, list[str]] = {}
        order: list[str] = []

        def see(n: str) -> None:
            if n not in parents_of:
                parents_of[n] = []
                order.append(n)

        for n in nodes:
            see(str(n))
        for p, c in edges:
            p, c = str(p), str(c)
            if p == c:
                raise HierarchyError(f"self-loop on node {p!r}")
            see(p)
            see(c)
            if p in parents_of[c]:
                continue
            parents_of[c].append(p)
            if require_tree and len(parents_of[c]) > 1:
                raise HierarchyError(
                    f"node {c!r} has two parents ({parents_of[c][0]!r}, {p!r}) but a tree is "
                    "required; pass require_tree=False for a DAG"
                )
        if not order:
            raise HierarchyError("empty hierarchy: no nodes and no edges")
        depth = _longest_depths(order, parents_of)
        # level-major order, first appearance inside a level
        ranked = sorted(range(len(order)), key=lambda i: (depth[order[i]], i))
        names = tuple(order[i] for i in ranked)
        index = {n: i for i, n in enumerate(names)}
        parents = tuple(tuple(index[p] for p in parents_of[n]) for n in names)
        h = cls(names=names, parents=parents, level_names=tuple(level_names))
        if level_names and len(level_names) != h.num_levels:
            raise HierarchyError(
                f"{len(level_names)} level names given for {h.num_levels} levels: "
                f"{list(level_names)}"
            )
        return h

    @classmethod
    def from_level_labels(
        cls, rows: Iterable[Sequence[object]], *, level_names: Sequence[str] = ()
    ) -> Hierarchy:
        """Build a tree from per-sample label tuples ``(family, subfamily, genus, species)``.

        Each tuple is a root-to-leaf path; a label that appears under two different parents is
        an error naming both parents (labels must be unique across the whole tree).
        """
        edges: list[tuple[str, str]] = []
        roots: list[str] = []
        seen: set[tuple[str, str]] = set()
        width = None
        for row in rows:
            row = [str(x) for x in row]
            if width is None:
                width = len(row)
            elif len(row) != width:
                raise HierarchyError(f"label tuple {row} has {len(row)} levels, expected {width}")
            roots.append(row[0])
            for p, c in zip(row, row[1:], strict=False):
                if (p, c) not in seen:
                    seen.add((p, c))
                    edges.append((p, c))
        if width is None:
            raise HierarchyError("no label tuples given")
        h = cls.from_edges(edges, nodes=dict.fromkeys(roots), level_names=level_names)
        if h.num_levels != width:
            raise HierarchyError(
                f"label tuples have {width} levels but the hierarchy has {h.num_levels}: "
                "a label name is reused on two levels; make names unique per level"
            )
        return h

    @classmethod
    def from_parent_child_file(
        cls, path: str | Path, *, child_parent: bool = False, require_tree: bool = True
    ) -> Hierarchy:
        """Read one ``parent child`` pair per line (``child parent`` with ``child_parent=True``).

        Blank lines and lines starting with ``#`` are skipped. This is the format of Barz &
        Denzler's hierarchy files (their ``--is_a`` flag is our ``child_parent``).
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"hierarchy file {path} does not exist")
        edges = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DataError(
                    f"{path}:{lineno}: expected two ids 'parent child', got {line[:80]!r}"
                )
            a, b = parts
            edges.append((b, a) if child_parent else (a, b))
        return cls.from_edges(edges, require_tree=require_tree)

    # ------------------------------------------------------------------ basic structure
    @cached_property
    def index(self) -> dict[str, int]:
        """Node name -> global index."""
        return {n: i for i, n in enumerate(self.names)}

    @property
    def num_nodes(self) -> int:
        return len(self.names)

    @cached_property
    def children(self) -> tuple[tuple[int, ...], ...]:
        ch: list[list[int]] = [[] for _ in self.names]
        for c, ps in enumerate(self.parents):
            for p in ps:
                ch[p].append(c)
        return tuple(tuple(c) for c in ch)

    @cached_property
    def depth(self) -> np.ndarray:
        """Longest-path depth of every node (roots: 0), shape [num_nodes]."""
        d = np.zeros(self.num_nodes, dtype=np.int64)
        for i in range(self.num_nodes):  # nodes are level-major, parents come first
            if self.parents[i]:
                d[i] = 1 + max(d[p] for p in self.parents[i])
        return d

    @cached_property
    def height(self) -> np.ndarray:
        """Height of every node: leaves 0, otherwise 1 + max child height (Barz & Denzler)."""
        h = np.zeros(self.num_nodes, dtype=np.int64)
        for i in reversed(range(self.num_nodes)):
            if self.children[i]:
                h[i] = 1 + max(h[c] for c in self.children[i])
        return h

    @property
    def max_height(self) -> int:
        return int(self.height.max())

    @cached_property
    def roots(self) -> tuple[int, ...]:
        return tuple(i for i, p in enumerate(self.parents) if not p)

    @cached_property
    def leaves(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.children) if not c)

    @property
    def is_tree(self) -> bool:
        return all(len(p) <= 1 for p in self.parents)

    @cached_property
    def num_levels(self) -> int:
        return int(self.depth.max()) + 1

    @cached_property
    def level_sizes(self) -> tuple[int, ...]:
        return tuple(int(x) for x in np.bincount(self.depth, minlength=self.num_levels))

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Global index of the first node of every level."""
        return tuple(int(x) for x in np.concatenate([[0], np.cumsum(self.level_sizes)[:-1]]))

    @cached_property
    def levels(self) -> tuple[tuple[int, ...], ...]:
        """Global indices of the nodes of every level."""
        return tuple(
            tuple(range(o, o + s)) for o, s in zip(self.offsets, self.level_sizes, strict=True)
        )

    def level_of(self, node: int) -> int:
        return int(self.depth[node])

    def local_index(self, node: int) -> int:
        """Position of a node inside its level."""
        return node - self.offsets[self.level_of(node)]

    def global_index(self, level: int, local: int) -> int:
        return self.offsets[level] + local

    @property
    def is_leveled(self) -> bool:
        """True for a tree whose leaves all sit on the last level (what per-level heads need)."""
        last = self.num_levels - 1
        return self.is_tree and all(int(self.depth[i]) == last for i in self.leaves)

    def require_leveled(self, what: str) -> None:
        if not self.is_leveled:
            raise HierarchyError(
                f"{what} needs a tree whose leaves all lie on the deepest level; this hierarchy "
                f"has leaves at depths {sorted(set(int(self.depth[i]) for i in self.leaves))}"
            )

    def name_to_index(self, name: object) -> int:
        try:
            return self.index[str(name)]
        except KeyError:
            raise HierarchyError(f"label {name!r} is not in the hierarchy") from None

    # ------------------------------------------------------------------ paths and closure
    def root_path(self, node: int) -> tuple[int, ...]:
        """Nodes from a root down to ``node`` (inclusive). In a DAG, follows first parents."""
        path = [node]
        while self.parents[path[-1]]:
            path.append(self.parents[path[-1]][0])
        return tuple(reversed(path))

    @cached_property
    def ancestors(self) -> tuple[frozenset[int], ...]:
        """Strict ancestors of every node."""
        anc: list[frozenset[int]] = []
        for i in range(self.num_nodes):
            s: set[int] = set()
            for p in self.parents[i]:
                s.add(p)
                s |= anc[p]
            anc.append(frozenset(s))
        return tuple(anc)

    @cached_property
    def leaf_paths(self) -> np.ndarray:
        """For a leveled tree, ``[num_leaves_last_level, num_levels]`` of local indices:
        row ``j`` is the root path of the ``j``-th node of the last level."""
        self.require_leveled("leaf_paths")
        last = self.levels[-1]
        out = np.zeros((len(last), self.num_levels), dtype=np.int64)
        for j, g in enumerate(last):
            out[j] = [self.local_index(n) for n in self.root_path(g)]
        return out

    def parent_local(self, level: int) -> np.ndarray:
        """For level ``level >= 1`` of a tree: local index of every node's parent."""
        return np.array(
            [self.local_index(self.parents[g][0]) for g in self.levels[level]], dtype=np.int64
        )

    @cached_property
    def closure_edges(self) -> np.ndarray:
        """Transitive closure as ``[E, 2]`` (ancestor, descendant) global indices, sorted."""
        return transitive_closure(self.parent_edges, self.num_nodes)

    @cached_property
    def basic_edges(self) -> np.ndarray:
        """Transitive reduction ``[E, 2]`` (parent, child): the edges no other path implies."""
        return transitive_reduction(self.closure_edges, self.num_nodes)

    @cached_property
    def parent_edges(self) -> np.ndarray:
        """Every (parent, child) edge as given ``[E, 2]``, sorted (implied ones included)."""
        pairs = [(p, c) for c, ps in enumerate(self.parents) for p in ps]
        return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)

    @cached_property
    def non_basic_edges(self) -> np.ndarray:
        """Closure edges that are not basic (implied by transitivity)."""
        basic = {tuple(e) for e in self.basic_edges.tolist()}
        rows = [e for e in self.closure_edges.tolist() if tuple(e) not in basic]
        return np.array(rows, dtype=np.int64).reshape(-1, 2)

    def is_ancestor(self, a: int, b: int) -> bool:
        """True iff ``a`` is a strict ancestor of ``b``."""
        return a in self.ancestors[b]

    # ------------------------------------------------------------------ LCA
    def lca(self, a: int, b: int) -> int:
        """Deepest common ancestor (self included) of ``a`` and ``b``; ``-1`` if none exists
        (different roots of a forest: the virtual root)."""
        common = (self.ancestors[a] | {a}) & (self.ancestors[b] | {b})
        if not common:
            return -1
        return max(common, key=lambda n: (int(self.depth[n]), -n))

    def lca_height(self, a: int, b: int) -> int:
        """Height of the LCA; ``max_height + 1`` (the virtual root) when there is none."""
        n = self.lca(a, b)
        return self.max_height + 1 if n < 0 else int(self.height[n])

    def lca_height_matrix(self, nodes: Sequence[int] | None = None) -> np.ndarray:
        """Pairwise LCA heights among ``nodes`` (default: the last level), ``[n, n]`` int64."""
        nodes = list(self.levels[-1] if nodes is None else nodes)
        n = len(nodes)
        out = np.zeros((n, n), dtype=np.int64)
        for i in range(n):
            for j in range(i, n):
                out[i, j] = out[j, i] = self.lca_height(nodes[i], nodes[j])
        return out

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, object]:
        return {
            "names": list(self.names),
            "parents": [list(p) for p in self.parents],
            "level_names": list(self.level_names),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Hierarchy:
        return cls(
            names=tuple(d["names"]),
            parents=tuple(tuple(p) for p in d["parents"]),
            level_names=tuple(d.get("level_names", ())),
        )

    def __repr__(self) -> str:
        return (
            f"Hierarchy(nodes={self.num_nodes}, levels={list(self.level_sizes)}, "
            f"tree={self.is_tree})"
        )


def _longest_depths(order: list[str], parents_of: dict[str, list[str]]) -> dict[str, int]:
    """Kahn topological order; raises on a cycle, naming a node on it."""
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


def encode_level_labels(h: Hierarchy, rows: Iterable[Sequence[object]]) -> np.ndarray:
    """Per-sample label tuples -> ``[N, num_levels]`` local indices; checks each path.

    Raises:
        HierarchyError: a label is missing from ``h`` or a tuple is not a root-to-leaf path.
    """
    out = []
    for row in rows:
        g = [h.name_to_index(x) for x in row]
        if len(g) != h.num_levels:
            raise HierarchyError(f"label tuple {list(row)} has {len(g)} levels, "
                                 f"expected {h.num_levels}")
        for p, c in zip(g, g[1:], strict=False):
            if p not in h.parents[c]:
                raise HierarchyError(
                    f"label {h.names[c]!r} is not a child of {h.names[p]!r} in the hierarchy"
                )
        out.append([h.local_index(x) for x in g])
    return np.asarray(out, dtype=np.int64).reshape(-1, h.num_levels)


# ---------------------------------------------------------------------- graph algorithms
def _to_csr(edges: np.ndarray, n: int) -> sp.csr_matrix:
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    m = sp.csr_matrix((np.ones(len(e), dtype=np.int8), (e[:, 0], e[:, 1])), shape=(n, n))
    m.sum_duplicates()
    m.data[:] = 1
    return m


def _pairs(m: sp.spmatrix) -> np.ndarray:
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
