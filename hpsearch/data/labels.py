"""Label hierarchies without images, for the label(-only) embedding models.

A *label source* turns a few parameters into a :class:`LabelGraph`: the nodes, the transitive
closure of the is-a relation as ``(ancestor, descendant)`` index pairs and, for sources that ship
them (the hyperbolic-cones WordNet files), predefined train/valid/test edge splits.

Sources (``LABEL_SOURCES``; add one with :func:`register_label_source`):

- ``dataset``: the labels of any registered image dataset (``name`` + its data options).
- ``ethec``: the ETHEC Merged tree (6/21/135/561) from metadata JSON files, or
  ``hierarchy="unmerged"``: the DAG of bare names (thesis §2.3.3).
- ``parent_child``: a ``parent child`` file per line (Barz & Denzler's format).
- ``closure_tsv``: the Poincaré / hyperbolic-cones WordNet closure file plus optional splits.
- ``wordnet``: a WordNet 3.0 database folder (``data.noun`` + ``index.noun``), one root synset.
- ``tree``: a generated full ``branching``-ary tree with ``levels`` label levels (thesis
  Fig. 6.3's toy graphs: L = 4, b = 3 and L = 3, b = 7).

The closure is computed with sparse boolean matrix products (frontier expansion, one product per
path length), so WordNet's 82,115 noun synsets and ~743k closure pairs take about a second.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.config import DataConfig
from hpsearch.data.base import DATASETS
from hpsearch.errors import ConfigError, DataError, HierarchyError
from hpsearch.hierarchy import (
    Hierarchy,
    edge_difference,
    transitive_closure,
    transitive_reduction,
)
from hpsearch.registry import Registry

from ._io import check_params, require_dir, require_file

SPLIT_NAMES = ("train", "valid", "valid_neg", "test", "test_neg")


@dataclass(frozen=True, eq=False)
class LabelGraph:
    """Nodes, transitive closure and optional predefined edge splits of a label hierarchy.

    When ``hierarchy`` is set, ``nodes == hierarchy.names``, so every index below is also a
    global :class:`Hierarchy` index (level-major order).

    Attributes:
        hierarchy: the label tree/DAG (transitive reduction of the closure); ``None`` only if a
            source was asked not to build it.
        nodes: node names; index ``i`` in every edge array means ``nodes[i]``.
        closure: int64 ``[E, 2]`` ``(ancestor, descendant)`` pairs of the transitive closure,
            sorted lexicographically, no self pairs.
        train, valid, valid_neg, test, test_neg: optional int64 ``[E, 2]``
            ``(ancestor, descendant)`` pairs of a predefined split (positives, or corrupted
            negatives for ``*_neg``); ``None`` when the source defines no split.
        meta: free-form provenance (source name, files, root, ...).
    """

    hierarchy: Hierarchy | None
    nodes: tuple[str, ...]
    closure: np.ndarray
    train: np.ndarray | None = None
    valid: np.ndarray | None = None
    valid_neg: np.ndarray | None = None
    test: np.ndarray | None = None
    test_neg: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.nodes)
        if self.hierarchy is not None and tuple(self.hierarchy.names) != tuple(self.nodes):
            raise HierarchyError("LabelGraph.nodes must equal hierarchy.names")
        for name in ("closure", *SPLIT_NAMES):
            e = getattr(self, name)
            if e is None:
                continue
            if not isinstance(e, np.ndarray) or e.ndim != 2 or e.shape[1] != 2:
                raise HierarchyError(f"LabelGraph.{name} must be an [E, 2] array, got "
                                     f"{getattr(e, 'shape', type(e))}")
            if len(e) and (e.min() < 0 or e.max() >= n):
                raise HierarchyError(f"LabelGraph.{name} holds indices outside [0, {n})")

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @cached_property
    def index(self) -> dict[str, int]:
        """Node name -> index."""
        return {n: i for i, n in enumerate(self.nodes)}

    @property
    def has_splits(self) -> bool:
        return self.train is not None

    @cached_property
    def basic_edges(self) -> np.ndarray:
        """Transitive reduction ``[E, 2]`` (parent, child): closure pairs no other path implies."""
        return transitive_reduction(self.closure, self.num_nodes)

    @cached_property
    def non_basic_edges(self) -> np.ndarray:
        """Closure pairs implied by transitivity (the ones label-only splits sample from)."""
        return edge_difference(self.closure, self.basic_edges, self.num_nodes)

    def split(self, name: str) -> np.ndarray:
        """One predefined split by name; :class:`DataError` if the source has none."""
        if name not in SPLIT_NAMES:
            raise ConfigError(f"unknown edge split {name!r}; allowed: {', '.join(SPLIT_NAMES)}")
        e = getattr(self, name)
        if e is None:
            raise DataError(f"label source {self.meta.get('source', '?')!r} defines no "
                            f"{name!r} edges; use the closure and split it yourself")
        return e

    def names_of(self, edges: np.ndarray) -> list[tuple[str, str]]:
        """Index pairs -> name pairs (for printing and tests)."""
        return [(self.nodes[a], self.nodes[b]) for a, b in np.asarray(edges).tolist()]


LabelSource = Callable[..., LabelGraph]
LABEL_SOURCES: Registry[LabelSource] = Registry("label source")


def register_label_source(name: str) -> Callable[[LabelSource], LabelSource]:
    """Decorator: ``@register_label_source("mine") def load(**params) -> LabelGraph``."""
    return LABEL_SOURCES.register(name)


def load_label_hierarchy(source: str, **params: Any) -> LabelGraph:
    """Build the :class:`LabelGraph` of a registered source; unknown params raise ConfigError.

    Example:
        >>> g = load_label_hierarchy("parent_child", path="cifar.parent-child.txt")
    """
    graph = LABEL_SOURCES.get(source)(**params)
    graph.meta.setdefault("source", source)
    return graph


def graph_from_hierarchy(h: Hierarchy, *, meta: dict | None = None) -> LabelGraph:
    """The :class:`LabelGraph` of a :class:`Hierarchy` (no predefined splits)."""
    edges = [(p, c) for c, ps in enumerate(h.parents) for p in ps]
    closure = transitive_closure(np.asarray(edges, dtype=np.int64).reshape(-1, 2), h.num_nodes)
    return LabelGraph(hierarchy=h, nodes=tuple(h.names), closure=closure, meta=dict(meta or {}))


def graph_from_edges(
    names: Sequence[str],
    edges: np.ndarray,
    *,
    build_hierarchy: bool = True,
    splits: dict[str, np.ndarray] | None = None,
    meta: dict | None = None,
) -> LabelGraph:
    """Closure (+ reduction and :class:`Hierarchy`) of ``(parent, child)`` index edges.

    With ``build_hierarchy`` the nodes are re-ordered level-major (the hierarchy's order) and
    ``edges`` / ``splits`` indices (into ``names``) are remapped accordingly.
    """
    n = len(names)
    closure = transitive_closure(edges, n)
    splits = dict(splits or {})
    h = None
    if build_hierarchy:
        basic = transitive_reduction(closure, n)
        h = Hierarchy.from_edges(
            ((names[p], names[c]) for p, c in basic.tolist()), nodes=names, require_tree=False
        )
        new = np.array([h.index[x] for x in names], dtype=np.int64)  # old index -> new
        closure = _sort_pairs(new[closure])
        splits = {k: (None if v is None else new[v]) for k, v in splits.items()}
        names = h.names
    return LabelGraph(hierarchy=h, nodes=tuple(names), closure=closure,
                      meta=dict(meta or {}), **splits)


def _sort_pairs(e: np.ndarray) -> np.ndarray:
    e = e.reshape(-1, 2)
    return e[np.lexsort((e[:, 1], e[:, 0]))]


# ---------------------------------------------------------------------------- sources
_DATASET_HIERARCHY: dict[str, Callable[[Any], Hierarchy]] = {}


def register_dataset_hierarchy(name: str) -> Callable:
    """Let an image dataset give its hierarchy without decoding images (used by ``dataset``)."""

    def deco(fn: Callable[[Any], Hierarchy]) -> Callable[[Any], Hierarchy]:
        _DATASET_HIERARCHY[name] = fn
        return fn

    return deco


def dataset_hierarchy(cfg: Any) -> Hierarchy:
    """The label hierarchy of image dataset ``cfg`` (a DataConfig), without decoding images
    where the dataset registered a hierarchy-only function (all built-in real datasets)."""

    fn = _DATASET_HIERARCHY.get(cfg.name)
    return fn(cfg) if fn is not None else DATASETS.get(cfg.name)(cfg).hierarchy


@register_label_source("dataset")
def _source_dataset(**params: Any) -> LabelGraph:
    """Labels of a registered image dataset.

    Params: ``name`` (required) plus any :class:`~hpsearch.config.DataConfig` field
    (``root``, ``image_size``, ``val_fraction``, ``params``). Datasets that register a
    hierarchy-only function (all built-in real datasets) are not decoded.
    """

    if "name" not in params:
        raise ConfigError("label source 'dataset' needs name=<registered dataset>; allowed: "
                          + ", ".join(DATASETS.names()))
    try:
        cfg = DataConfig(**params)
    except Exception as err:  # pydantic ValidationError -> one line
        msg = "; ".join(str(err).splitlines())
        raise ConfigError(f"label source 'dataset': invalid data options {params}: "
                          f"{msg}") from None
    DATASETS.get(cfg.name)  # unknown name -> ConfigError listing the allowed ones
    h = dataset_hierarchy(cfg)
    return graph_from_hierarchy(h, meta={"source": "dataset", "dataset": cfg.name})


@register_label_source("parent_child")
def _source_parent_child(**params: Any) -> LabelGraph:
    """``parent child`` per line (``child parent`` with ``child_parent=True``).

    Params: ``path`` (required), ``child_parent`` (False), ``require_tree`` (False: DAGs ok).
    """
    p = check_params("label source 'parent_child'", params,
                     {"path": None, "child_parent": False, "require_tree": False})
    if p["path"] is None:
        raise ConfigError("label source 'parent_child' needs path=<hierarchy file>")
    h = Hierarchy.from_parent_child_file(p["path"], child_parent=bool(p["child_parent"]),
                                         require_tree=bool(p["require_tree"]))
    return graph_from_hierarchy(h, meta={"source": "parent_child", "path": str(p["path"])})


def _read_pairs(path: Path, what: str) -> list[tuple[str, str]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) < 2:
                raise DataError(f"{path}:{lineno}: expected {what}, got {line[:80]!r}")
            out.append((parts[0].strip(), parts[1].strip()))
    return out


@register_label_source("closure_tsv")
def _source_closure_tsv(**params: Any) -> LabelGraph:
    """The Poincaré / hyperbolic-cones closure format.

    Params:
        path: the full closure, one ``child<TAB>parent`` pair of names per line (Nickel & Kiela's
            ``noun_closure.tsv`` / ``mammal_closure.tsv``; a plain edge list works too, the
            closure is recomputed). Optional when ``split_prefix`` has ``.full_transitive``.
        child_parent: column order of ``path`` (default True: hyponym first).
        split_prefix: read ``<prefix>.train_<P>percent``, ``.valid``, ``.valid_neg``,
            ``.test``, ``.test_neg``: ``ancestor<TAB>descendant`` per line, as integer ids
            resolved through ``<prefix>.vocab`` (``id<TAB>name``) when that file exists, else
            names. Hyperbolic cones drop the root from these files; the root stays a node here.
        train_percent: P above; default: the only ``train_*percent`` file there is.
        build_hierarchy: also build the :class:`Hierarchy` (default True).
    """
    p = check_params("label source 'closure_tsv'", params, {
        "path": None, "child_parent": True, "split_prefix": None, "train_percent": None,
        "build_hierarchy": True})
    prefix = None if p["split_prefix"] is None else Path(p["split_prefix"])
    vocab: dict[str, str] | None = None
    if prefix is not None:
        vf = Path(f"{prefix}.vocab")
        if vf.is_file():
            vocab = dict(_read_pairs(vf, "'id<TAB>name'"))

    names: list[str] = []
    index: dict[str, int] = {}

    def idx(x: str) -> int:
        if x not in index:
            index[x] = len(names)
            names.append(x)
        return index[x]

    edges: list[tuple[int, int]] = []
    if p["path"] is not None:
        path = require_file(p["path"], "a closure TSV, one 'child<TAB>parent' pair per line")
        for a, b in _read_pairs(path, "two tab-separated node names"):
            c, par = (a, b) if p["child_parent"] else (b, a)
            if c != par:
                edges.append((idx(par), idx(c)))
    elif prefix is not None and Path(f"{prefix}.full_transitive").is_file():
        path = Path(f"{prefix}.full_transitive")
        for a, b in _read_pairs(path, "'ancestor<TAB>descendant'"):
            edges.append((idx(_resolve(a, vocab, path)), idx(_resolve(b, vocab, path))))
    else:
        raise ConfigError("label source 'closure_tsv' needs path=<closure tsv> (or a "
                          "split_prefix with a .full_transitive file)")
    if vocab is not None:  # nodes named only in the vocab (e.g. isolated ones) still count
        for v in vocab.values():
            idx(v)

    splits: dict[str, np.ndarray | None] = {}
    if prefix is not None:
        files = {s: Path(f"{prefix}.{s}") for s in SPLIT_NAMES[1:]}
        files["train"] = _train_file(prefix, p["train_percent"])
        for s, f in files.items():
            require_file(f, f"the {s!r} edge split of {prefix} ('ancestor<TAB>descendant')")
            rows = []
            for a, b in _read_pairs(f, "'ancestor<TAB>descendant'"):
                ra, rb = _resolve(a, vocab, f), _resolve(b, vocab, f)
                for r in (ra, rb):
                    if r not in index:
                        raise DataError(f"{f}: node {r!r} is not in the closure {p['path']}")
                rows.append((index[ra], index[rb]))
            splits[s] = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    return graph_from_edges(
        names, np.asarray(edges, dtype=np.int64).reshape(-1, 2),
        build_hierarchy=bool(p["build_hierarchy"]), splits=splits,
        meta={"source": "closure_tsv", "path": str(p["path"]),
              "split_prefix": None if prefix is None else str(prefix)},
    )


def _resolve(token: str, vocab: dict[str, str] | None, where: Path) -> str:
    if vocab is None:
        return token
    try:
        return vocab[token]
    except KeyError:
        raise DataError(f"{where}: id {token!r} is not in the vocabulary file") from None


def _train_file(prefix: Path, percent: int | None) -> Path:
    if percent is not None:
        return Path(f"{prefix}.train_{int(percent)}percent")
    pat = re.compile(re.escape(prefix.name) + r"\.train_(\d+)percent$")
    found = sorted(int(m.group(1)) for f in prefix.parent.glob(prefix.name + ".train_*percent")
                   if (m := pat.match(f.name)))
    if len(found) != 1:
        raise ConfigError(f"label source 'closure_tsv': found train splits {found} for "
                          f"{prefix}; pass train_percent=<one of them>")
    return Path(f"{prefix}.train_{found[0]}percent")


# ---------------------------------------------------------------------------- WordNet
WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/WordNet-3.0/dict", "/usr/share/wordnet/dict")


def _wordnet_dir(d: str | None) -> Path:
    if d is not None:
        return require_dir(d, "a WordNet 3.0 database folder holding data.noun and index.noun")
    for c in WORDNET_DIRS:
        if (Path(c) / "data.noun").is_file():
            return Path(c)
    raise DataError(f"no WordNet database found in {', '.join(WORDNET_DIRS)}; install Debian's "
                    "wordnet-base or pass dir=<folder with data.noun and index.noun>")


def read_wordnet_nouns(
    directory: str | Path, *, instances: bool = True
) -> tuple[list[str], np.ndarray]:
    """Synset names and hypernym edges of WordNet's noun database.

    Parses ``data.noun`` lines ``offset lex_filenum n w_cnt(hex) word lex_id ... p_cnt(3
    digits) [ptr_symbol offset pos source/target]... | gloss`` (wndb(5WN)); header lines start
    with two spaces. Pointers ``@`` (hypernym) and, with ``instances``, ``@i`` (instance
    hypernym) to other nouns become ``(hypernym, synset)`` edges. Names follow NLTK:
    ``<first word, lower case>.n.<sense number>``, the sense number being the 1-based position
    of the synset's offset in that word's line of ``index.noun`` (``lemma n synset_cnt p_cnt
    [ptr]... sense_cnt tagsense_cnt offset...``).

    Returns:
        ``(names, edges)``: names in ``data.noun`` order, int64 ``[E, 2]`` (parent, child).
    """
    d = Path(directory)
    data = require_file(d / "data.noun", "WordNet's noun data file (wndb format)")
    index = require_file(d / "index.noun", "WordNet's noun index file (wndb format)")
    offsets: list[str] = []
    first_word: list[str] = []
    ptrs: list[list[str]] = []
    with open(data, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("  "):
                continue
            t = line.split(" | ", 1)[0].split()
            try:
                w_cnt = int(t[3], 16)
                p_at = 4 + 2 * w_cnt
                p_cnt = int(t[p_at])
                fields = t[p_at + 1:p_at + 1 + 4 * p_cnt]
            except (IndexError, ValueError):
                raise DataError(f"{data}:{lineno}: expected 'offset lex_filenum n w_cnt word "
                                f"lex_id ... p_cnt pointers | gloss', got {line[:80]!r}") from None
            if len(fields) != 4 * p_cnt:
                raise DataError(f"{data}:{lineno}: {p_cnt} pointers announced, fewer given")
            offsets.append(t[0])
            first_word.append(t[4].lower())
            hyper = [fields[k + 1] for k in range(0, len(fields), 4)
                     if (fields[k] == "@" or (instances and fields[k] == "@i"))
                     and fields[k + 2] == "n"]
            ptrs.append(hyper)
    sense: dict[tuple[str, str], int] = {}
    with open(index, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("  "):
                continue
            t = line.split()
            try:
                p_cnt = int(t[3])
                syn = t[4 + p_cnt + 2:]
            except (IndexError, ValueError):
                raise DataError(f"{index}:{lineno}: expected 'lemma n synset_cnt p_cnt ptr... "
                                f"sense_cnt tagsense_cnt offsets...', got {line[:80]!r}") from None
            for k, off in enumerate(syn, 1):
                sense[(t[0], off)] = k
    pos_of = {off: i for i, off in enumerate(offsets)}
    names = []
    for off, w in zip(offsets, first_word, strict=True):
        k = sense.get((w, off))
        if k is None:
            raise DataError(f"{index}: word {w!r} has no entry for synset {off}; the index does "
                            "not match data.noun")
        names.append(f"{w}.n.{k:02d}")
    edges = []
    for i, hs in enumerate(ptrs):
        for h in hs:
            if h not in pos_of:
                raise DataError(f"{data}: synset {offsets[i]} points to unknown noun {h}")
            edges.append((pos_of[h], i))
    return names, np.asarray(edges, dtype=np.int64).reshape(-1, 2)


@register_label_source("wordnet")
def _source_wordnet(**params: Any) -> LabelGraph:
    """The hypernym closure below one WordNet noun synset.

    Params: ``dir`` (default ``/usr/share/wordnet``, Debian's wordnet-base), ``root``
    (``"mammal.n.01"`` default; ``"entity.n.01"`` for all 82,115 nouns), ``instances``
    (follow ``@i`` instance hypernyms too, True as in Nickel & Kiela's closure),
    ``include_root`` (True), ``build_hierarchy`` (True).
    """
    p = check_params("label source 'wordnet'", params, {
        "dir": None, "root": "mammal.n.01", "instances": True, "include_root": True,
        "build_hierarchy": True})
    d = _wordnet_dir(p["dir"])
    names, edges = read_wordnet_nouns(d, instances=bool(p["instances"]))
    closure = transitive_closure(edges, len(names))
    try:
        r = names.index(p["root"])
    except ValueError:
        raise ConfigError(f"label source 'wordnet': root synset {p['root']!r} not found in "
                          f"{d}; use a name like 'mammal.n.01' or 'entity.n.01'") from None
    keep = np.zeros(len(names), dtype=bool)
    keep[closure[closure[:, 0] == r, 1]] = True
    keep[r] = bool(p["include_root"])
    new = np.cumsum(keep) - 1
    sub = closure[keep[closure[:, 0]] & keep[closure[:, 1]]]
    sub_names = [n for n, k in zip(names, keep, strict=True) if k]
    return graph_from_edges(
        sub_names, new[sub], build_hierarchy=bool(p["build_hierarchy"]),
        meta={"source": "wordnet", "dir": str(d), "root": p["root"]},
    )




# ---------------------------------------------------------------------------- toy trees
# a typo (levels=30) must not allocate 10^14 nodes; WordNet has 82,115 nouns, ~743k pairs
MAX_TREE_LABELS = 100_000
MAX_TREE_PAIRS = 2_000_000


def _tree_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"label source 'tree': {name} must be a positive int, got {value!r}")
    return value


@register_label_source("tree")
def _source_tree(**params: Any) -> LabelGraph:
    """The full ``b``-ary tree of depth ``L``: thesis Fig. 6.3's toy graphs, generated.

    Params: ``levels`` (L, default 3), ``branching`` (b, default 3), ``include_root`` (False).

    ``levels`` counts label levels *below* the root, as the thesis counts ETHEC's 4 levels
    (family ... species, no root label) and Fig. 6.3's "L = 3, b = 7": level ``d`` (1-based)
    holds ``b**d`` labels, so L = 3, b = 7 gives 7 + 49 + 343 = 399 labels and L = 4, b = 3
    gives 3 + 9 + 27 + 81 = 120 (a forest of ``b`` trees, like ``ethec``). ``include_root``
    adds the root ``"n"`` as one more node on top (as ``wordnet`` keeps its root synset), so
    the graph is one tree with ``levels + 1`` levels. Names are the root-to-node paths of child
    positions: ``"n.0"`` ... ``"n.<b-1>"`` on level 1, ``"n.0.2.1"`` on level 3; nodes are in
    level-major, breadth-first order, so the graph (and every seeded split of it) is the same
    on every machine. (The caption's text says "branching factor of 4" for the first graph;
    its panels, followed here, say b = 3.) More than ``MAX_TREE_LABELS`` labels or
    ``MAX_TREE_PAIRS`` closure pairs (a deep ``branching=1`` chain) is a ConfigError, not an
    out-of-memory.
    """
    p = check_params("label source 'tree'", params,
                     {"levels": 3, "branching": 3, "include_root": False})
    levels = _tree_int("levels", p["levels"])
    b = _tree_int("branching", p["branching"])
    root = p["include_root"]
    if not isinstance(root, bool):
        raise ConfigError(f"label source 'tree': include_root must be true or false, got "
                          f"{root!r}")
    total, pairs, width = 0, 0, 1
    for d in range(1, levels + 1):  # labels and closure pairs, stopping once past a cap
        width *= b
        total += width
        pairs += width * (d if root else d - 1)  # a level-d node has d - 1 label ancestors
        if total > MAX_TREE_LABELS or pairs > MAX_TREE_PAIRS:
            raise ConfigError(f"label source 'tree': levels={levels}, branching={b} gives more "
                              f"than {MAX_TREE_LABELS} labels or {MAX_TREE_PAIRS} closure "
                              "pairs; use fewer levels or a smaller branching")
    names, edges, frontier = (["n"] if root else []), [], ["n"]
    for depth in range(levels):
        children = [f"{a}.{j}" for a in frontier for j in range(b)]
        if depth or root:
            edges += [(c.rsplit(".", 1)[0], c) for c in children]
        names += children
        frontier = children
    h = Hierarchy.from_edges(edges, nodes=names)
    return graph_from_hierarchy(h, meta={"source": "tree", "levels": levels, "branching": b,
                                         "include_root": root})
