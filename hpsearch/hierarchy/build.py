"""Parsing and validation behind the :class:`~hpsearch.hierarchy.Hierarchy` constructors.

Each function does one step of turning raw input (``(parent, child)`` pairs, per-sample label
tuples, a parent-child file) into the stored fields of a hierarchy, and raises the error that
names the bad input: :class:`~hpsearch.errors.DataError` for an unreadable file,
:class:`~hpsearch.errors.HierarchyError` for a malformed graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from hpsearch.errors import DataError, HierarchyError
from hpsearch.hierarchy.graph import _longest_depths


def collect_parents(
    edges: Iterable[tuple[object, object]], *, nodes: Iterable[object] = (),
    require_tree: bool = True,
) -> tuple[list[str], dict[str, list[str]]]:
    """Gather the parents of every node from ``(parent, child)`` pairs; ids become strings.

    Args:
        edges: parent-child pairs; a repeated pair counts once.
        nodes: extra (possibly isolated) nodes, seen before any edge.
        require_tree: refuse a node with two parents.

    Returns:
        The node names in order of first appearance, and name -> parents in order of
        appearance.

    Raises:
        HierarchyError: a self-loop, a second parent while ``require_tree``, or no node at all.
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
                f"node {c!r} has two parents ({parents_of[c][0]!r}, {p!r}), but this "
                f"hierarchy must be a tree: keep one parent of {c!r} (a hierarchy file: one "
                "'parent child' line per child; per-sample label paths: rename the label "
                "under one parent, label names are unique per level). Only the label-"
                "embedding families read a DAG: data.params: {label_source: parent_child, "
                "path: FILE}"
            )
    if not order:
        raise HierarchyError("empty hierarchy: no nodes and no edges")
    return order, parents_of


def level_major(
    order: list[str], parents_of: dict[str, list[str]]
) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """Index the nodes level by level (by longest-path depth), first appearance inside a level.

    Args:
        order: node names in order of first appearance.
        parents_of: name -> parents' names.

    Returns:
        The ``names`` and ``parents`` (global indices) fields of a hierarchy.

    Raises:
        HierarchyError: the graph has a cycle.
    """
    depth = _longest_depths(order, parents_of)
    ranked = sorted(range(len(order)), key=lambda i: (depth[order[i]], i))
    names = tuple(order[i] for i in ranked)
    index = {n: i for i, n in enumerate(names)}
    parents = tuple(tuple(index[p] for p in parents_of[n]) for n in names)
    return names, parents


def nodes_from_edges(
    edges: Iterable[tuple[object, object]], *, nodes: Iterable[object] = (),
    require_tree: bool = True,
) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """:func:`collect_parents` then :func:`level_major`: ``names`` and ``parents`` of the graph.

    Raises:
        HierarchyError: see :func:`collect_parents` and :func:`level_major`.
    """
    return level_major(*collect_parents(edges, nodes=nodes, require_tree=require_tree))


def check_level_names(level_names: Sequence[str], num_levels: int) -> None:
    """Refuse level names (when any are given) whose number is not ``num_levels``.

    Raises:
        HierarchyError: naming both counts and the names.
    """
    if level_names and len(level_names) != num_levels:
        raise HierarchyError(
            f"{len(level_names)} level names given for {num_levels} levels: "
            f"{list(level_names)}"
        )


def level_label_edges(
    rows: Iterable[Sequence[object]],
) -> tuple[list[tuple[str, str]], list[str], int]:
    """Edges of the tree spanned by per-sample root-to-leaf label tuples.

    Args:
        rows: label tuples such as ``(family, subfamily, genus, species)``, all equally long.

    Returns:
        The distinct ``(parent, child)`` edges in order of appearance, the distinct roots in
        order of appearance, and the tuple length.

    Raises:
        HierarchyError: a tuple of another length than the first, or no tuple at all.
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
    return edges, list(dict.fromkeys(roots)), width


def check_level_count(width: int, num_levels: int) -> None:
    """Refuse a tree from label tuples of length ``width`` that has another number of levels.

    Raises:
        HierarchyError: a label name is reused on two levels.
    """
    if num_levels != width:
        raise HierarchyError(
            f"label tuples have {width} levels but the hierarchy has {num_levels}: "
            "a label name is reused on two levels; make names unique per level"
        )


def read_parent_child_file(
    path: str | Path, *, child_parent: bool = False
) -> list[tuple[str, str]]:
    """Read one ``parent child`` pair per line (``child parent`` with ``child_parent=True``).

    Blank lines and lines starting with ``#`` are skipped.

    Returns:
        The ``(parent, child)`` pairs, in file order.

    Raises:
        DataError: the file does not exist, or a line does not hold exactly two ids (naming
            ``path:line``).
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
    return edges
