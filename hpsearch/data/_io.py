"""Small helpers shared by the real-dataset loaders: parameter checking, paths, fingerprints."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.data.base import ImageSplit
from hpsearch.errors import ConfigError, DataError
from hpsearch.hierarchy import Hierarchy


def check_params(
    where: str, params: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """Merge ``params`` over ``defaults``; an unknown key is a :class:`ConfigError`.

    Args:
        where: prefix for the message, e.g. ``"data.params"`` or ``"label source 'wordnet'"``.
        params: user values.
        defaults: every allowed key with its default.
    """
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(
            f"{where}: unknown option(s) {unknown}; allowed: {', '.join(sorted(defaults))}"
        )
    return {**defaults, **params}


def shared_dir() -> Path:
    """The read-only reference data folder: ``$HPSEARCH_SHARED`` or ``shared/`` beside the repo."""
    env = os.environ.get("HPSEARCH_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared"


SHARED_PREFIX = "../shared/"


def shared_path(value: str | Path) -> Path:
    """A path a space gives: ``../shared/REST`` is ``shared_dir() / REST`` (the reference data
    folder beside the repo, or ``$HPSEARCH_SHARED``), whatever the working directory; any
    other value as given (``~`` expanded)."""
    text = str(value)
    if text.startswith(SHARED_PREFIX):
        return shared_dir() / text.removeprefix(SHARED_PREFIX)
    return Path(text).expanduser()


def fingerprint(path: str | Path) -> list[Any]:
    """``[absolute path, size, mtime_ns]`` of a file: enough to invalidate a cache entry."""
    p = Path(path).resolve()
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def files_stamp(paths: Iterable[str | Path]) -> str | None:
    """A digest of every file's size and mtime, or ``None`` if one is missing: a cache keyed
    on file names alone would keep serving the old pixels after an image is replaced or moved
    to another class folder (see ``cached_image_array(stamp=...)``)."""
    h = hashlib.sha1()
    for f in paths:
        try:
            st = os.stat(f)
        except FileNotFoundError:
            return None
        h.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def require_file(path: str | Path, what: str) -> Path:
    """Return ``path`` as a :class:`Path` or raise :class:`DataError` naming what was expected."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: file not found; expected {what}")
    return p


def require_dir(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(f"{p}: directory not found; expected {what}")
    return p


def as_path_list(value: str | Path | Iterable[str | Path], where: str) -> list[Path]:
    """One path or a list of paths (a YAML config gives either)."""
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    try:
        out = [Path(v) for v in value]
    except TypeError:
        raise ConfigError(f"{where} must be a path or a list of paths, got {value!r}") from None
    if not out:
        raise ConfigError(f"{where} is an empty list; give at least one path")
    return out


def split_counts(
    n: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[int, int, int]:
    """Images of one label per split: 80/10/10, equal thirds below 10 images (thesis §1.2.1).

    ``n >= 10``: ``n_val = n_test = round(0.1 n)`` and train takes the rest, so nothing is
    dropped. ``3 <= n < 10``: ``n // 3`` each, the remainder going to train first, then test
    (5 -> 2/1/2). A label with 1 image goes to train only and one with 2 images to train +
    test: it must be trainable first, and a test image serves reporting better than a val one.

    Returns:
        ``(n_train, n_val, n_test)`` summing to ``n``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n < 10:
        if n == 1:
            return (1, 0, 0)
        if n == 2:
            return (1, 0, 1)
        base, rem = divmod(n, 3)
        # remainder goes to train first, then test
        return (base + (rem >= 1), base, base + (rem >= 2))
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    return (n - n_val - n_test, n_val, n_test)


def stratified_split(
    groups: np.ndarray, seed: int, *, counts=split_counts
) -> np.ndarray:
    """Split id (0 train, 1 val, 2 test) per item, per group, shuffled deterministically.

    Args:
        groups: int array ``[N]``, the group (leaf label) of every item.
        seed: numpy ``default_rng`` seed; the same seed gives the same split.
        counts: ``n -> (n_train, n_val, n_test)``.
    """
    rng = np.random.default_rng(seed)
    split = np.zeros(len(groups), dtype=np.int64)
    for g in np.unique(groups):
        idx = rng.permutation(np.flatnonzero(groups == g))
        n_tr, n_va, _ = counts(len(idx))
        split[idx[n_tr:n_tr + n_va]] = 1
        split[idx[n_tr + n_va:]] = 2
    return split


def contiguous_splits(
    images: np.ndarray, labels: np.ndarray, sizes: Sequence[int], ids: Sequence[str] = ()
) -> list:
    """Consecutive row ranges of ``sizes`` -> :class:`ImageSplit` s (memory-map views)."""
    out, a = [], 0
    for n in sizes:
        out.append(ImageSplit(images[a:a + n], labels[a:a + n],
                              tuple(ids[a:a + n]) if len(ids) else ()))
        a += n
    return out


LEVELING = ("strict", "pad")


def pad_to_leveled(h: Hierarchy) -> Hierarchy:
    """Insert single-child chains above shallow leaves so every leaf lies on the last level.

    A leaf ``x`` at depth ``d`` below parent ``p`` becomes ``p -> x~d -> ... -> x~(D-1) -> x``
    (``D`` the deepest leaf depth). LCAs of leaf pairs are unchanged, but a node whose deepest
    leaf was shallow gets a larger height, so height-based similarities change.
    """
    if not h.is_tree:
        raise ConfigError("leveling='pad' needs a tree; this hierarchy has a node with two "
                          "parents")
    deepest = h.num_levels - 1
    edges: list[tuple[str, str]] = []
    nodes: list[str] = []
    leaves = set(h.leaves)
    for c, ps in enumerate(h.parents):
        name = h.names[c]
        d = int(h.depth[c])
        chain = [f"{name}~{k}" for k in range(d, deepest)] if c in leaves else []
        up = [h.names[ps[0]]] if ps else []
        path = [*up, *chain, name]
        nodes.append(path[0])
        edges.extend(zip(path, path[1:], strict=False))
    has_parent = {b for _, b in edges}
    roots = [n for n in nodes if n not in has_parent]
    return Hierarchy.from_edges(edges, nodes=roots)


def leaf_level_labels(
    h: Hierarchy, leaf_names: Sequence[str], *, leveling: str = "strict", where: str = "dataset"
) -> tuple[Hierarchy, np.ndarray]:
    """Per-sample leaf names -> ``(hierarchy, level_labels [N, L])`` (root-path local indices).

    Per-level labels exist only for a *leveled* tree (all leaves on the last level). Otherwise
    ``leveling="strict"`` raises a :class:`ConfigError` and ``"pad"`` applies
    :func:`pad_to_leveled` first.
    """
    if leveling not in LEVELING:
        raise ConfigError(f"{where}: leveling must be one of {LEVELING}, got {leveling!r}")
    if not h.is_leveled:
        if leveling == "strict":
            depths = sorted({int(h.depth[i]) for i in h.leaves})
            raise ConfigError(
                f"{where}: the hierarchy is not leveled (leaves at depths {depths}), so "
                "images have no label on every level and no classifier family can use it; "
                "set data.params.leveling='pad' (chains above shallow leaves; changes node "
                "heights) or use a hierarchy whose leaves all lie on the deepest level"
            )
        h = pad_to_leveled(h)
    paths = h.leaf_paths
    last = h.offsets[-1]
    out = np.empty((len(leaf_names), h.num_levels), dtype=np.int64)
    cache: dict[str, int] = {}
    for i, name in enumerate(leaf_names):
        row = cache.get(name)
        if row is None:
            g = h.index.get(str(name))
            if g is None or g < last:
                raise DataError(f"{where}: class {name!r} is not a leaf of the hierarchy")
            row = cache[name] = g - last
        out[i] = paths[row]
    return h, out
