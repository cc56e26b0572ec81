"""Recognise the dummy nodes of a padded tree and recover the original, unpadded tree.

``leveling: pad`` (:func:`hpsearch.data._io.pad_to_leveled`) makes a tree *leveled* by inserting
a single-child chain above every shallow leaf: a leaf ``x`` at depth ``d`` below ``p`` becomes
``p -> x~d -> x~(d+1) -> ... -> x~(D-1) -> x`` (``D`` the deepest leaf depth). The per-level
heads need that, but the chain raises the height of every ancestor of ``x`` whose deepest leaf
was shallow, so height-based similarities (Barz & Denzler's ``1 - height(lcs) / max height``)
measured on the padded tree are not the paper's. The metrics use :func:`unpadded` instead.

The padding leaves no record in the :class:`Hierarchy` value (it must survive ``to_dict``), so
dummies are recognised structurally: node ``v`` is a dummy iff its name is ``f"{x}~{depth(v)}"``,
it has exactly one child, and that child is either the leaf ``x`` itself or the dummy
``f"{x}~{depth(v) + 1}"``. A real node can only be mistaken for one if it is named like that
*and* sits alone on a chain ending at leaf ``x``, exactly at that depth.
"""

from __future__ import annotations

from hpsearch.hierarchy.value import Hierarchy

#: Separator of a padding node's name: ``f"{leaf}{PAD_SEP}{depth}"`` (as ``pad_to_leveled``).
PAD_SEP = "~"


def _pad_base(name: str, depth: int) -> str | None:
    """``x`` if ``name == f"{x}~{depth}"``, else ``None``."""
    base, sep, k = name.rpartition(PAD_SEP)
    return base if sep and base and k == str(depth) else None


def pad_nodes(h: Hierarchy) -> frozenset[int]:
    """Global indices of the padding (dummy) nodes of ``h``; empty for an unpadded tree."""
    if not h.is_tree:
        return frozenset()
    children, depth, leaves = h.children, h.depth, set(h.leaves)
    dummy: set[int] = set()
    for v in reversed(range(h.num_nodes)):  # level-major order: children are decided first
        base = _pad_base(h.names[v], int(depth[v]))
        if base is None or len(children[v]) != 1:
            continue
        (w,) = children[v]
        if (w in leaves and h.names[w] == base) or (
                w in dummy and _pad_base(h.names[w], int(depth[w])) == base):
            dummy.add(v)
    return frozenset(dummy)


def unpadded(h: Hierarchy) -> Hierarchy:
    """The tree before ``leveling: pad``: every dummy removed, its leaf re-attached to the first
    non-dummy ancestor. ``h`` itself when it has no dummies (a leveled or a DAG hierarchy).

    Node names are kept, node *indices* are not (the level layout changes): map classes by name.
    LCAs of two real nodes are the same in both trees (a dummy has one child, so it is never the
    LCA of two distinct leaves); depths and heights are the original's.
    """
    dummy = pad_nodes(h)
    if not dummy:
        return h
    edges: list[tuple[str, str]] = []
    roots: list[str] = []
    for c, ps in enumerate(h.parents):
        if c in dummy:
            continue
        p = ps[0] if ps else -1
        while p in dummy:
            p = h.parents[p][0]
        if p < 0:
            roots.append(h.names[c])
        else:
            edges.append((h.names[p], h.names[c]))
    return Hierarchy.from_edges(edges, nodes=roots)
