"""The :class:`Hierarchy` value object: its fields, cached derived structure, index
conversions and (de)serialisation, plus :func:`encode_level_labels`.

The constructors' parsing and validation live in :mod:`hpsearch.hierarchy.build`, the graph
algorithms behind the cached properties in :mod:`hpsearch.hierarchy.graph`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from hpsearch.errors import HierarchyError
from hpsearch.hierarchy import build, graph


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
    def from_edges(cls, edges: Iterable[tuple[object, object]], *, nodes: Iterable[object] = (),
                   require_tree: bool = True, level_names: Sequence[str] = ()) -> Hierarchy:
        """Build from ``(parent, child)`` pairs; ids may be ints or strings (kept as strings).

        Args:
            edges: parent-child pairs.
            nodes: extra isolated nodes (a single-node hierarchy has no edges).
            require_tree: refuse a node with two parents.
            level_names: optional names of the levels ("family", "genus", ...).

        Raises:
            HierarchyError: a self-loop, a cycle, two parents in a tree, no node at all, or
                level names whose count is not the number of levels.
        """
        names, parents = build.nodes_from_edges(edges, nodes=nodes, require_tree=require_tree)
        h = cls(names=names, parents=parents, level_names=tuple(level_names))
        build.check_level_names(level_names, h.num_levels)
        return h

    @classmethod
    def from_level_labels(
        cls, rows: Iterable[Sequence[object]], *, level_names: Sequence[str] = ()
    ) -> Hierarchy:
        """Build a tree from per-sample label tuples ``(family, subfamily, genus, species)``.

        Each tuple is a root-to-leaf path; a label that appears under two different parents is
        an error naming both parents (labels must be unique across the whole tree).
        """
        edges, roots, width = build.level_label_edges(rows)
        h = cls.from_edges(edges, nodes=roots, level_names=level_names)
        build.check_level_count(width, h.num_levels)
        return h

    @classmethod
    def from_parent_child_file(
        cls, path: str | Path, *, child_parent: bool = False, require_tree: bool = True
    ) -> Hierarchy:
        """Read one ``parent child`` pair per line (``child parent`` with ``child_parent=True``).

        Blank lines and lines starting with ``#`` are skipped. This is the format of Barz &
        Denzler's hierarchy files (their ``--is_a`` flag is our ``child_parent``).
        """
        edges = build.read_parent_child_file(path, child_parent=child_parent)
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
        return graph.children_lists(self.parents)

    @cached_property
    def depth(self) -> np.ndarray:
        """Longest-path depth of every node (roots: 0), shape [num_nodes]."""
        return graph.node_depths(self.parents)  # nodes are level-major: parents come first

    @cached_property
    def height(self) -> np.ndarray:
        """Height of every node: leaves 0, otherwise 1 + max child height (Barz & Denzler)."""
        return graph.node_heights(self.children)

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

    # ------------------------------------------------------------------ levels and indices
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
        sizes = zip(self.offsets, self.level_sizes, strict=True)
        return tuple(tuple(range(o, o + s)) for o, s in sizes)

    def level_of(self, node: int) -> int:
        return int(self.depth[node])

    def local_index(self, node: int) -> int:
        """Position of a node inside its level."""
        return node - self.offsets[self.level_of(node)]

    def global_index(self, level: int, local: int) -> int:
        return self.offsets[level] + local

    def name_to_index(self, name: object) -> int:
        try:
            return self.index[str(name)]
        except KeyError:
            raise HierarchyError(f"label {name!r} is not in the hierarchy") from None

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

    # ------------------------------------------------------------------ paths and closure
    def root_path(self, node: int) -> tuple[int, ...]:
        """Nodes from a root down to ``node`` (inclusive). In a DAG, follows first parents."""
        return graph.first_parent_path(self.parents, node)

    @cached_property
    def ancestors(self) -> tuple[frozenset[int], ...]:
        """Strict ancestors of every node."""
        return graph.strict_ancestors(self.parents)

    def is_ancestor(self, a: int, b: int) -> bool:
        """True iff ``a`` is a strict ancestor of ``b``."""
        return a in self.ancestors[b]

    @cached_property
    def parent_edges(self) -> np.ndarray:
        """Every (parent, child) edge as given ``[E, 2]``, sorted (implied ones included)."""
        return graph.parent_child_pairs(self.parents)

    @cached_property
    def closure_edges(self) -> np.ndarray:
        """Transitive closure as ``[E, 2]`` (ancestor, descendant) global indices, sorted."""
        return graph.transitive_closure(self.parent_edges, self.num_nodes)

    @cached_property
    def basic_edges(self) -> np.ndarray:
        """Transitive reduction ``[E, 2]`` (parent, child): the edges no other path implies."""
        return graph.transitive_reduction(self.closure_edges, self.num_nodes)

    @cached_property
    def non_basic_edges(self) -> np.ndarray:
        """Closure edges that are not basic (implied by transitivity), sorted."""
        return graph.edge_difference(self.closure_edges, self.basic_edges, self.num_nodes)

    # ------------------------------------------------------------------ LCA
    def lca(self, a: int, b: int) -> int:
        """Deepest common ancestor (self included) of ``a`` and ``b``; ``-1`` if none exists
        (different roots of a forest: the virtual root)."""
        return graph.lowest_common_ancestor(self.ancestors, self.depth, a, b)

    def lca_height(self, a: int, b: int) -> int:
        """Height of the LCA; ``max_height + 1`` (the virtual root) when there is none."""
        return graph.lca_height_of(self.ancestors, self.depth, self.height, a, b)

    def lca_height_matrix(self, nodes: Sequence[int] | None = None) -> np.ndarray:
        """Pairwise LCA heights among ``nodes`` (default: the last level), ``[n, n]`` int64."""
        nodes = list(self.levels[-1] if nodes is None else nodes)
        return graph.lca_heights(self.ancestors, self.depth, self.height, nodes)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, object]:
        return {"names": list(self.names), "parents": [list(p) for p in self.parents],
                "level_names": list(self.level_names)}

    @classmethod
    def from_dict(cls, d: dict) -> Hierarchy:
        return cls(names=tuple(d["names"]), parents=tuple(tuple(p) for p in d["parents"]),
                   level_names=tuple(d.get("level_names", ())))

    def __repr__(self) -> str:
        return (f"Hierarchy(nodes={self.num_nodes}, levels={list(self.level_sizes)}, "
                f"tree={self.is_tree})")


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
