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

Modules: :mod:`~hpsearch.hierarchy.value` (the :class:`Hierarchy` class and
:func:`encode_level_labels`), :mod:`~hpsearch.hierarchy.build` (parsing and validation behind
its constructors), :mod:`~hpsearch.hierarchy.graph` (pure graph algorithms: depths, heights,
ancestors, LCA, transitive closure and reduction), :mod:`~hpsearch.hierarchy.padding` (the
dummy nodes of ``leveling: pad`` and the original tree behind them). Import from here.
"""

from __future__ import annotations

from hpsearch.hierarchy.graph import _longest_depths as _longest_depths  # private, kept importable
from hpsearch.hierarchy.graph import _pairs as _pairs
from hpsearch.hierarchy.graph import _to_csr as _to_csr
from hpsearch.hierarchy.graph import (
    edge_difference,
    transitive_closure,
    transitive_reduction,
)
from hpsearch.hierarchy.padding import PAD_SEP, pad_nodes, unpadded
from hpsearch.hierarchy.value import Hierarchy, encode_level_labels

__all__ = [
    "PAD_SEP", "Hierarchy", "edge_difference", "encode_level_labels", "pad_nodes",
    "transitive_closure", "transitive_reduction", "unpadded",
]
