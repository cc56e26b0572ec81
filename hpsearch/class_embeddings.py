"""Hierarchy-based class embeddings (Barz & Denzler, WACV 2019), pure numpy.

A class taxonomy defines a semantic similarity between classes; the classes are then placed
on the unit sphere so that dot products reproduce those similarities exactly (``unitsphere``)
or as well as possible in fewer dimensions (``approx``). Images are later trained to land on
the embedding of their class (:mod:`hpsearch.models.semantic`).

Conventions (see also :mod:`hpsearch.hierarchy`):

* ``height``: leaves 0, otherwise 1 + max child height; ``max_height`` is the root's.
* LCS (lowest common subsumer) = :meth:`Hierarchy.lca`, the common ancestor (self included)
  of greatest longest-path depth, which is Barz & Denzler's choice.
* A forest hangs below a *virtual root* of height ``max_height + 1`` (Barz's files are all
  single-rooted; their code fails on a forest). We normalise by the height of the root of this
  augmented tree, i.e. by ``max_height + 1`` for a forest, so ``s`` stays in ``[0, 1]`` and two
  classes under different real roots get ``s = 0``. For a single-rooted hierarchy this is
  exactly their formula.

Source: Barz & Denzler, "Hierarchy-based Image Embeddings for Semantic Image Retrieval",
WACV 2019, §3; their ``class_hierarchy.py`` and ``compute_class_embedding.py``
(see /work/shared/reference/implementations.md §5).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.linalg

from hpsearch.errors import ConfigError, DataError
from hpsearch.hierarchy import Hierarchy

Method = Literal["unitsphere", "approx"]
METHODS: tuple[str, ...] = ("unitsphere", "approx")

#: Tolerance on 1 - ||phi_c[:c]||^2 (unitsphere) and on negative eigenvalues (approx): float64
#: rounding of a PSD similarity matrix produces values of order n * 1e-16 below zero.
PSD_TOL = 1e-8

_ROW_BLOCK = 256  # rows of the [rows, n, depth] path comparison kept in memory at once


# ---------------------------------------------------------------------------- target classes
def default_classes(h: Hierarchy) -> list[int]:
    """Global indices of the leaves, Barz & Denzler's default target classes.

    Sorted numerically when every leaf name is an integer (as their code does for int ids),
    otherwise sorted by name (their code keeps set order for string ids, which is arbitrary).
    """
    leaves = list(h.leaves)
    names = [h.names[i] for i in leaves]
    if all(_is_int(n) for n in names):
        return [g for _, g in sorted(zip((int(n) for n in names), leaves, strict=True))]
    return [g for _, g in sorted(zip(names, leaves, strict=True))]


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def _nodes(h: Hierarchy, nodes: Sequence[int] | None) -> np.ndarray:
    arr = np.asarray(default_classes(h) if nodes is None else list(nodes), dtype=np.int64)
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigError(f"need a non-empty list of node indices, got shape {arr.shape}")
    bad = arr[(arr < 0) | (arr >= h.num_nodes)]
    if bad.size:
        raise ConfigError(f"node index {int(bad[0])} is outside the hierarchy's "
                          f"0..{h.num_nodes - 1}")
    return arr


def _normaliser(h: Hierarchy) -> int:
    """Height of the (possibly virtual) root; 1 for a single-node hierarchy (avoids 0/0)."""
    top = h.max_height + (1 if len(h.roots) > 1 else 0)
    return max(top, 1)


# ---------------------------------------------------------------------------- LCS geometry
def _tree_lcs(h: Hierarchy, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a tree (or forest): ``(lcs, common)`` ``[n, n]``; ``common`` = number of shared
    root-path nodes = depth(LCS) + 1 (0 under the virtual root, where ``lcs == -1``)."""
    n = len(nodes)
    width = int(h.depth.max()) + 1
    paths = np.full((n, width), -1, dtype=np.int64)
    for i, g in enumerate(nodes):
        p = h.root_path(int(g))
        paths[i, : len(p)] = p
    common = np.zeros((n, n), dtype=np.int64)
    for s in range(0, n, _ROW_BLOCK):
        blk = paths[s:s + _ROW_BLOCK, None, :]  # [b, 1, W]
        # in a tree two root paths agree exactly on a prefix: its length is depth(LCS) + 1
        common[s:s + _ROW_BLOCK] = ((blk == paths[None]) & (blk >= 0)).sum(-1)
    rows = np.arange(n)[:, None].repeat(n, 1)
    lcs = np.where(common > 0, paths[rows, np.maximum(common - 1, 0)], -1)
    return lcs, common


def lcs_height_matrix(h: Hierarchy, nodes: Sequence[int] | None = None) -> np.ndarray:
    """``[n, n]`` int64 height of LCS(a, b); ``max_height + 1`` under the virtual root.

    Equals :meth:`Hierarchy.lca_height_matrix`, vectorised for trees (ILSVRC's 1000 leaves in
    milliseconds instead of seconds); DAGs use the hierarchy's own LCA.
    """
    arr = _nodes(h, nodes)
    if not h.is_tree:
        return h.lca_height_matrix(arr.tolist())
    lcs, _ = _tree_lcs(h, arr)
    height = h.height
    return np.where(lcs >= 0, height[np.maximum(lcs, 0)], h.max_height + 1).astype(np.int64)


def lcs_height_similarity(h: Hierarchy, nodes: Sequence[int] | None = None) -> np.ndarray:
    """Barz & Denzler's class similarity, ``[n, n]`` float64 in ``[0, 1]``.

    s(a, b) = 1 - height(LCS(a, b)) / H, with H = max_height for a single root and
    H = max_height + 1 (the virtual root) for a forest. s(a, a) = 1 for every class, inner
    nodes included (their code only fills the off-diagonal entries, leaving d(a, a) = 0).

    Source: Barz & Denzler 2019, eq. 1 (d_G = height(lcs) / max height, s = 1 - d_G);
    ``class_hierarchy.py`` ``lcs_height``.

    Args:
        h: the hierarchy.
        nodes: global node indices of the target classes (default :func:`default_classes`).
    """
    S = 1.0 - lcs_height_matrix(h, nodes).astype(np.float64) / _normaliser(h)
    np.fill_diagonal(S, 1.0)
    return S


def _upward_distances(h: Hierarchy, node: int) -> dict[int, int]:
    """Shortest edge count from ``node`` up to each of its ancestors (self: 0)."""
    dist = {node: 0}
    frontier = [node]
    while frontier:
        nxt = []
        for c in frontier:
            for p in h.parents[c]:
                if p not in dist:
                    dist[p] = dist[c] + 1
                    nxt.append(p)
        frontier = nxt
    return dist


def wup_similarity(h: Hierarchy, nodes: Sequence[int] | None = None) -> np.ndarray:
    """Wu-Palmer similarity ``[n, n]`` float64 in ``[0, 1]``, as Barz & Denzler compute it.

    WUP(a, b) = 2 D / ((D + spl(a, l)) + (D + spl(b, l))),  l = LCS(a, b),

    where D = depth(l) counted with roots at depth 1 (longest path) and spl = the shortest edge
    count between a node and its ancestor. In a tree this is 2 D / (D_a + D_b). Under a forest's
    virtual root (depth 0) WUP = 0.

    Source: Wu & Palmer, ACL 1994; Barz & Denzler ``class_hierarchy.py`` ``wup_similarity``.
    """
    arr = _nodes(h, nodes)
    depth1 = h.depth.astype(np.float64) + 1.0  # Barz: roots have depth 1
    if h.is_tree:
        _, common = _tree_lcs(h, arr)  # depth1(LCS) == common
        d = depth1[arr]
        return 2.0 * common / (d[:, None] + d[None, :])
    n = len(arr)
    up = [_upward_distances(h, int(g)) for g in arr]
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            lcs = h.lca(int(arr[i]), int(arr[j]))
            if lcs >= 0:
                dl = depth1[lcs]
                out[i, j] = out[j, i] = 2 * dl / (2 * dl + up[i][lcs] + up[j][lcs])
    return out


# ---------------------------------------------------------------------------- embeddings
def _check_square(S: np.ndarray) -> np.ndarray:
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] == 0:
        raise ConfigError(f"similarity matrix must be square and non-empty, got shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise ConfigError("similarity matrix contains NaN or inf")
    return S


def unitsphere_embedding(S: np.ndarray, *, tol: float = PSD_TOL) -> np.ndarray:
    """Exact embedding of n classes in n dimensions with Phi Phi^T = S, ``[n, n]`` lower-tri.

    phi_0 = e_1;  for c >= 1:
        phi_c[:c] = solve_triangular(Phi[:c, :c], S[c, :c], lower=True)
        phi_c[c]  = sqrt(max(0, 1 - ||phi_c[:c]||^2)),
    so phi_c . phi_j = S_cj for j < c and ||phi_c|| = 1 when S_cc = 1. This is the
    row-by-row Cholesky factorisation of S (which is why a tree's similarity matrix, strictly
    ultrametric hence positive definite, always works). Their code uses a general solver on
    the triangular system; the result is the same.

    Source: Barz & Denzler 2019, §3.2, Algorithm 1; ``compute_class_embedding.py``
    ``unitsphere_embedding``.

    Args:
        S: ``[n, n]`` symmetric similarity matrix with unit diagonal.
        tol: ``1 - ||phi_c[:c]||^2`` down to ``-tol`` is rounding and clipped to 0.

    Raises:
        ConfigError: S is not positive definite (a class cannot be placed; the message names
            it and the residual) or its diagonal is not 1.
    """
    S = _check_square(S)
    n = S.shape[0]
    diag = np.diag(S)
    if not np.allclose(diag, 1.0, atol=tol):
        bad = int(np.argmax(np.abs(diag - 1.0)))
        raise ConfigError(f"unitsphere embedding needs s(c, c) = 1, but class #{bad} has "
                          f"{diag[bad]:.6g}; class embeddings live on the unit sphere")
    phi = np.zeros((n, n))
    phi[0, 0] = 1.0
    for c in range(1, n):
        x = scipy.linalg.solve_triangular(phi[:c, :c], S[c, :c], lower=True,
                                          check_finite=False)
        rest = 1.0 - float(x @ x)
        if rest < -tol or (rest <= tol and c < n - 1):
            raise ConfigError(
                f"unitsphere embedding failed at class #{c}: 1 - ||phi||^2 = {rest:.3g}; the "
                "similarity matrix is not positive definite (a DAG or a duplicated class?). "
                "Use method='approx', which projects onto the PSD cone"
            )
        phi[c, :c] = x
        phi[c, c] = np.sqrt(max(rest, 0.0))
    return phi


def approx_embedding(S: np.ndarray, dim: int | None = None, *, tol: float = PSD_TOL,
                     normalize: bool = False) -> np.ndarray:
    """Best rank-``dim`` embedding E ``[n, dim]`` with E E^T ≈ S (Eckart-Young).

    S = Q diag(λ) Q^T (eigh); E = Q[:, top] sqrt(λ[top]) over the ``dim`` largest eigenvalues,
    columns in descending eigenvalue order (their code keeps ascending order; dot products do
    not depend on the column order). With ``dim = n`` and S PSD, E E^T = S. Negative
    eigenvalues down to ``-tol`` (rounding) are clipped to 0; their code raises on any.

    Source: Barz & Denzler ``compute_class_embedding.py`` ``sim_approx``.

    Args:
        S: ``[n, n]`` symmetric similarity matrix.
        dim: embedding dimension (default n).
        tol: tolerance on negative eigenvalues.
        normalize: L2-normalise the rows (their ``--norm``), so that the cosine loss has its
            optimum at the target; dot products then only approximate S.

    Raises:
        ConfigError: ``dim`` outside ``1..n`` or an eigenvalue below ``-tol``.
    """
    S = _check_square(S)
    n = S.shape[0]
    dim = n if dim is None else int(dim)
    if not 1 <= dim <= n:
        raise ConfigError(f"embedding dim must be in 1..{n} (the number of classes), got {dim}")
    lam, Q = np.linalg.eigh((S + S.T) / 2)
    if lam[0] < -tol:
        raise ConfigError(f"the similarity matrix is not positive semi-definite: most negative "
                          f"eigenvalue {lam[0]:.3g} < -{tol:g}; the embedding cannot reproduce "
                          "it (check the hierarchy, or raise tol to accept the PSD projection)")
    lam = np.clip(lam, 0.0, None)
    top = np.arange(n - 1, n - 1 - dim, -1)
    E = Q[:, top] * np.sqrt(lam[top])[None, :]
    if normalize:
        norms = np.linalg.norm(E, axis=1, keepdims=True)
        if np.any(norms <= 0):
            raise ConfigError(f"class #{int(np.argmin(norms))} has a zero embedding at dim={dim};"
                              " raise the dimension")
        E = E / norms
    return E


def class_embedding(h: Hierarchy, classes: Sequence[object] | None = None,
                    method: Method = "unitsphere", dim: int | None = None, *,
                    normalize: bool = False) -> tuple[list[str], np.ndarray]:
    """Target embeddings of ``classes`` from the LCS-height similarity of ``h``.

    Args:
        h: the hierarchy.
        classes: class *names* (ids as in the hierarchy file; ints are converted to str),
            default the leaves (:func:`default_classes`). Order is kept; duplicates are errors.
        method: ``"unitsphere"`` (exact, n dimensions) or ``"approx"`` (``dim`` dimensions).
        dim: embedding size; must be ``None`` or n for ``unitsphere``.
        normalize: L2-normalise the rows (``approx`` only; unitsphere rows are unit already).

    Returns:
        ``(names, E)``: the class names in row order and E ``[n, d]`` float64.
    """
    if method not in METHODS:
        raise ConfigError(f"embedding method {method!r} is unknown; allowed: "
                          f"{', '.join(METHODS)}")
    if classes is None:
        nodes = default_classes(h)
    else:
        names = [str(c) for c in classes]
        dup = {c for c in names if names.count(c) > 1}
        if dup:
            raise ConfigError(f"class {sorted(dup)[0]!r} is listed twice")
        nodes = [h.name_to_index(c) for c in names]
    S = lcs_height_similarity(h, nodes)
    n = len(nodes)
    if method == "unitsphere":
        if dim is not None and dim != n:
            raise ConfigError(f"the unitsphere embedding has exactly {n} dimensions (one per "
                              f"class), got dim={dim}; use method='approx' for fewer")
        E = unitsphere_embedding(S)
    else:
        E = approx_embedding(S, dim, normalize=normalize)
    return [h.names[g] for g in nodes], E


# ---------------------------------------------------------------------------- files
def save_class_embedding(path: str | Path, classes: Sequence[object], E: np.ndarray,
                         meta: dict | None = None) -> Path:
    """Write ``classes`` (str ``[n]``), ``embedding`` (float64 ``[n, d]``) and a JSON ``meta``
    string into one ``.npz`` at exactly ``path`` (no suffix is appended)."""
    path = Path(path)
    E = np.asarray(E, dtype=np.float64)
    names = np.asarray([str(c) for c in classes])
    if E.ndim != 2 or E.shape[0] != len(names):
        raise ConfigError(f"embedding has shape {E.shape} but {len(names)} classes were given")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(f, classes=names, embedding=E, meta=np.asarray(json.dumps(meta or {})))
    return path


def load_class_embedding(path: str | Path) -> tuple[list[str], np.ndarray, dict]:
    """Read a file written by :func:`save_class_embedding`: ``(classes, E, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class embedding file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            classes = [str(c) for c in z["classes"]]
            E = np.asarray(z["embedding"], dtype=np.float64)
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path} is not a class embedding file (.npz with 'classes' and "
                        f"'embedding'): {e}") from None
    return classes, E, meta


def read_class_list(path: str | Path) -> list[str]:
    """First word of every non-blank line (Barz's ``--class_list``), duplicates dropped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class list {path} does not exist")
    words = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]
    return list(dict.fromkeys(words))


def class_embeddings_command(hierarchy_file: str, out: str, method: str = "unitsphere",
                             dim: int | None = None, is_a: bool = False,
                             class_list: str | None = None) -> str:
    """``hpsearch class-embeddings``: hierarchy file -> ``.npz`` of class embeddings.

    Args:
        hierarchy_file: ``parent child`` lines (``child parent`` with ``is_a``).
        out: output ``.npz`` path.
        method: ``unitsphere`` or ``approx``.
        dim: embedding dimension (``approx``; default the number of classes).
        is_a: the file holds ``child parent`` lines (Barz's ``--is_a``; NABirds needs it).
        class_list: optional file whose first word per line names a target class.

    Returns:
        A one-line summary.
    """
    h = Hierarchy.from_parent_child_file(hierarchy_file, child_parent=is_a, require_tree=False)
    classes = read_class_list(class_list) if class_list else None
    names, E = class_embedding(h, classes, method, dim)  # type: ignore[arg-type]
    S = lcs_height_similarity(h, [h.name_to_index(c) for c in names])
    err = float(np.abs(E @ E.T - S).max())
    meta = {"method": method, "dim": int(E.shape[1]), "hierarchy": str(hierarchy_file),
            "is_a": is_a, "similarity": "lcs_height", "max_abs_error": err}
    path = save_class_embedding(out, names, E, meta)
    return (f"{method}: {len(names)} classes in {E.shape[1]} dimensions from {hierarchy_file} "
            f"({h!r}); max |E E^T - S| = {err:.2e} -> {path}")
