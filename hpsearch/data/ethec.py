"""ETHEC Merged: butterflies of the ETH Entomological Collection with a 4-level label tree.

Dhall, "Learning Representations for Images with Hierarchical Labels", §1.2.1 and §2.3.3:
47,978 specimens, levels family (6), subfamily (21), genus (135) and genus + specific epithet
(561); 723 labels. "ETHEC Small" (Table 2.1) keeps 12 leaves (5 families, 6 subfamilies,
9 genera).

"Merged" names the leaf level: genus and specific epithet are merged into one label
(``Colias_staudingeri``) because an epithet alone is not unique: ``staudingeri`` occurs under
*Colias* (Pieridae) and *Cupido* (Lycaenidae). The thesis' full collection without that merge
(§2.3.3: 25 families, 91 subfamilies, 842 genera, 2,429 specific epithets; 3,387 nodes, 3,537
edges) keeps the raw names, one node per distinct name per level, so such an epithet is *one*
node with several parent genera: a DAG (3,537 edges > the 3,362 of a 3,387-node forest with 25
roots). ``hierarchy="unmerged"`` builds that graph (levels family / subfamily / genus /
specific_epithet); the label-embedding families read it, the per-level image classifiers
need the tree.

On disk (the v0.1 archive)::

    <root>/train.json, val.json, test.json           metadata (dict keyed by token)
    <root>/IMAGO_build_test_resized/<folder>/<file>  images (448 px squares), or <root>/images/

Image path of a record: ``file`` = ``image_name``, or ``image_path`` when that holds the file name
(``*.JPG``; 6 val and 2 test records do); ``folder`` = ``file[11:21] + "R"``, e.g.
``2017_02_26R/ETHZ_ENT01_2017_02_26_000182.JPG``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.config import DataConfig
from hpsearch.data._io import (
    as_path_list,
    check_params,
    contiguous_splits,
    files_stamp,
    fingerprint,
    require_dir,
    require_file,
    shared_dir,
    stratified_split,
)
from hpsearch.data.base import DATASETS, IMAGENET_MEAN, IMAGENET_STD, HierDataset
from hpsearch.data.cache import cache_root, cached_image_array
from hpsearch.data.labels import (
    LabelGraph,
    graph_from_hierarchy,
    register_dataset_hierarchy,
    register_label_source,
)
from hpsearch.errors import ConfigError, DataError
from hpsearch.hierarchy import Hierarchy, encode_level_labels

LEVEL_NAMES = ("family", "subfamily", "genus", "genus_specific_epithet")
UNMERGED_LEVEL_NAMES = ("family", "subfamily", "genus", "specific_epithet")
HIERARCHIES = ("merged", "unmerged")
REQUIRED = ("family", "subfamily", "genus", "specific_epithet")
SPLIT_FILES = ("train.json", "val.json", "test.json")
IMAGE_DIRS = ("IMAGO_build_test_resized", "ETHEC_dataset/IMAGO_build_test_resized", "images")

#: ETHEC Small, thesis Table 2.1: the 12 genus_specific_epithet leaves.
ETHEC_SMALL_LEAVES = (
    "Ochlodes_venata", "Hesperia_comma", "Pyrgus_alveus", "Spialia_sertorius",
    "Hamearis_lucina", "Polycaena_tamerlana", "Agriades_lehanus", "Parnassius_jacquemonti",
    "Aporia_crataegi", "Aporia_procris", "Aporia_potanini", "Aporia_nabellica",
)

DEFAULTS: dict[str, Any] = {
    "metadata_dir": None,  # folder of train/val/test.json (default: data.root)
    "metadata_files": None,  # explicit JSON file(s) to merge and re-split 80/10/10
    "image_dir": None,  # default: <root>/IMAGO_build_test_resized or <root>/images
    "splits": "auto",  # auto | published | resplit
    "split_seed": 0,  # shuffling of the re-split (not the training seed)
    "small": False,  # ETHEC Small (Table 2.1)
    "hierarchy": "merged",  # merged (tree, genus_specific_epithet leaves) | unmerged (DAG)
    "resize": None,  # side of the cached images (default: data.image_size)
    "cache_dir": None,
    "workers": None,  # decoding threads (default: all CPUs, at most 16)
}


def load_ethec_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of one ETHEC metadata JSON (a dict keyed by token, or a list), in file order.

    Raises:
        DataError: unreadable JSON or a record without the label fields / an image name.
    """
    path = require_file(path, "ETHEC metadata JSON (dict keyed by token)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err}); expected ETHEC metadata") from None
    items = list(data.items()) if isinstance(data, dict) else list(enumerate(data)) \
        if isinstance(data, list) else None
    if items is None:
        raise DataError(f"{path}: top level is {type(data).__name__}; expected a dict of records")
    out = []
    for key, rec in items:
        if not isinstance(rec, dict):
            raise DataError(f"{path}: entry {key!r} is {type(rec).__name__}; expected a record")
        for f in REQUIRED:
            if not isinstance(rec.get(f), str) or not rec[f]:
                raise DataError(f"{path}: record {key!r} has no {f!r}; expected fields "
                                f"{', '.join(REQUIRED)}, image_name/image_path")
        rec = dict(rec)
        rec.setdefault("token", str(key))
        ethec_image_relpath(rec, where=f"{path}: record {key!r}")
        out.append(rec)
    return out


def ethec_label_path(
    rec: dict[str, Any], hierarchy: str = "merged"
) -> tuple[str, str, str, str]:
    """``(family, subfamily, genus, genus_specific_epithet)`` of a record; with
    ``hierarchy="unmerged"`` the last entry is the bare ``specific_epithet``."""
    leaf = rec["specific_epithet"] if hierarchy == "unmerged" else \
        f"{rec['genus']}_{rec['specific_epithet']}"
    return (rec["family"], rec["subfamily"], rec["genus"], leaf)


def check_hierarchy_option(value: Any, where: str = "data.params.hierarchy") -> str:
    """``value`` if it is ``merged`` or ``unmerged``, else a one-line :class:`ConfigError`."""
    if value not in HIERARCHIES:
        raise ConfigError(f"{where} must be merged or unmerged, got {value!r}")
    return str(value)


def _records_hierarchy(recs: list[dict[str, Any]], hierarchy: str) -> Hierarchy:
    """The merged tree, or the unmerged graph: one node per distinct name per level, an edge
    per (parent level name, child level name) seen in a record, several parents allowed."""
    if hierarchy == "merged":
        return Hierarchy.from_level_labels((ethec_label_path(r) for r in recs),
                                           level_names=LEVEL_NAMES)
    rows = [ethec_label_path(r, "unmerged") for r in recs]
    level_of: dict[str, int] = {}
    for row in rows:
        for k, name in enumerate(row):
            if level_of.setdefault(name, k) != k:
                raise DataError(
                    f"ETHEC name {name!r} is both a {UNMERGED_LEVEL_NAMES[level_of[name]]} and "
                    f"a {UNMERGED_LEVEL_NAMES[k]}; the unmerged graph needs names unique "
                    "across levels: use data.params.hierarchy=merged")
    edges = dict.fromkeys((p, c) for row in rows for p, c in zip(row, row[1:], strict=False))
    roots = list(dict.fromkeys(row[0] for row in rows))
    return Hierarchy.from_edges(edges, nodes=roots, require_tree=False,
                                level_names=UNMERGED_LEVEL_NAMES)


def _require_tree(h: Hierarchy, hierarchy: str) -> None:
    """Refuse an unmerged DAG where per-level image classifiers need a tree."""
    if h.is_tree:
        return
    multi = [i for i, ps in enumerate(h.parents) if len(ps) > 1]
    i = multi[0]
    raise ConfigError(
        f"data.params.hierarchy={hierarchy} gives a DAG ({len(multi)} labels with several "
        f"parents, e.g. {h.names[i]!r} under {', '.join(repr(h.names[p]) for p in h.parents[i])})"
        ", but the ethec image dataset's per-level classifiers need a tree: use "
        "data.params.hierarchy=merged. Only the label-embedding families read a DAG: "
        "data.params: {label_source: ethec, hierarchy: unmerged}")


def ethec_image_relpath(rec: dict[str, Any], *, where: str = "record") -> str:
    """``<folder>/<file>`` of a record (see the module docstring)."""
    name = rec.get("image_name") or ""
    ipath = rec.get("image_path") or ""
    file = ipath if ".jpg" in ipath.lower() else name
    file = Path(file).name
    if len(file) < 21:
        raise DataError(f"{where}: image file name {file!r} is not like "
                        "'ETHZ_ENT01_2017_02_26_000182.JPG'; expected image_name (or image_path) "
                        "to hold it")
    return f"{file[11:21]}R/{file}"


def ethec_hierarchy(
    metadata_paths: str | Path | Iterable[str | Path], *, small: bool = False,
    hierarchy: str = "merged",
) -> Hierarchy:
    """The ETHEC Merged tree from metadata files (give all splits for the full 6/21/135/561),
    or with ``hierarchy="unmerged"`` the DAG of bare names (see the module docstring).

    Nodes are ordered by first appearance, files in the given order. ``small`` keeps the
    ETHEC Small leaves (matched on genus + epithet) in both variants.
    """
    hierarchy = check_hierarchy_option(hierarchy, "ethec_hierarchy(hierarchy=...)")
    recs = [r for p in as_path_list(metadata_paths, "metadata_paths")
            for r in load_ethec_records(p)]
    if small:
        recs = [r for r in recs if ethec_label_path(r)[3] in ETHEC_SMALL_LEAVES]
    if not recs:
        raise DataError(f"no ETHEC records in {metadata_paths}")
    return _records_hierarchy(recs, hierarchy)


@dataclass(frozen=True)
class _Plan:
    """Which records go where, resolved from the data config without touching images."""

    splits: tuple[list[dict], list[dict], list[dict]]
    hierarchy: Hierarchy
    mode: str  # "published" | "resplit"
    files: tuple[Path, ...]


def _params(cfg: DataConfig) -> dict[str, Any]:
    p = check_params("data.params (ethec)", cfg.params, DEFAULTS)
    if p["splits"] not in ("auto", "published", "resplit"):
        raise ConfigError(f"data.params.splits must be auto, published or resplit, got "
                          f"{p['splits']!r}")
    check_hierarchy_option(p["hierarchy"])
    return p


def _plan(cfg: DataConfig, p: dict[str, Any]) -> _Plan:
    root = Path(cfg.root) if cfg.root else None
    meta_dir = Path(p["metadata_dir"]) if p["metadata_dir"] else root
    if p["metadata_files"] is not None:
        if p["splits"] == "published":
            raise ConfigError("data.params: metadata_files are re-split; drop splits=published "
                              "or give metadata_dir with train/val/test.json")
        files = as_path_list(p["metadata_files"], "data.params.metadata_files")
        mode = "resplit"
    else:
        if meta_dir is None:
            raise ConfigError("ethec needs data.root or data.params.metadata_dir (the folder "
                              "with train/val/test.json)")
        require_dir(meta_dir, "the ETHEC metadata folder (train/val/test.json)")
        published = [meta_dir / f for f in SPLIT_FILES]
        have = all(f.is_file() for f in published)
        if p["splits"] == "published" and not have:
            miss = next(f for f in published if not f.is_file())
            raise DataError(f"{miss}: not found; splits=published needs train.json, val.json "
                            "and test.json")
        if have and p["splits"] != "resplit":
            files, mode = published, "published"
        else:
            files = sorted(meta_dir.glob("*.json"))
            if not files:
                raise DataError(f"{meta_dir}: no *.json metadata; expected ETHEC train/val/"
                                "test.json or one merged file")
            mode = "resplit"
    per_file = [load_ethec_records(f) for f in files]
    keep = (lambda r: ethec_label_path(r)[3] in ETHEC_SMALL_LEAVES) if p["small"] else \
        (lambda r: True)
    per_file = [[r for r in recs if keep(r)] for recs in per_file]
    if mode == "published":
        splits = (per_file[0], per_file[1], per_file[2])
    else:
        merged: dict[str, dict] = {}
        for r in (r for recs in per_file for r in recs):  # one record per image file
            merged.setdefault(ethec_image_relpath(r), r)
        recs = list(merged.values())
        leaves = [ethec_label_path(r)[3] for r in recs]
        _, groups = np.unique(np.array(leaves, dtype=object), return_inverse=True)
        sid = stratified_split(groups, int(p["split_seed"]))
        splits = tuple([r for r, s in zip(recs, sid, strict=True) if s == k] for k in range(3))
    all_recs = [r for s in splits for r in s]
    if not all_recs:
        raise DataError(f"no ETHEC records left in {[str(f) for f in files]}"
                        + (" after the ETHEC Small filter" if p["small"] else ""))
    h = _records_hierarchy(all_recs, p["hierarchy"])
    return _Plan(splits=splits, hierarchy=h, mode=mode, files=tuple(files))  # type: ignore


def _image_dir(cfg: DataConfig, p: dict[str, Any]) -> Path:
    if p["image_dir"]:
        return require_dir(p["image_dir"], "the ETHEC image folder (<folder>/<file>.JPG)")
    if not cfg.root:
        raise ConfigError("ethec needs data.root or data.params.image_dir")
    for sub in IMAGE_DIRS:
        if (Path(cfg.root) / sub).is_dir():
            return Path(cfg.root) / sub
    raise DataError(f"{cfg.root}: none of {', '.join(IMAGE_DIRS)} exists; expected the ETHEC "
                    "images there or data.params.image_dir")


@register_dataset_hierarchy("ethec")
def ethec_dataset_hierarchy(cfg: DataConfig) -> Hierarchy:
    """The hierarchy :func:`build_ethec` would give, from metadata only; with
    ``hierarchy=unmerged`` the DAG itself (label-only readers take it, the image builder
    refuses it)."""
    return _plan(cfg, _params(cfg)).hierarchy


@DATASETS.register("ethec")
def build_ethec(cfg: DataConfig) -> HierDataset:
    """ETHEC Merged (or Small) as decoded ``uint8 [N, S, S, 3]`` splits, ImageNet-normalised.

    See ``docs/datasets.md`` for the options; the splits are the published train/val/test
    files when present, otherwise an 80/10/10 per-leaf re-split (thesis §1.2.1).
    """
    p = _params(cfg)
    plan = _plan(cfg, p)
    _require_tree(plan.hierarchy, p["hierarchy"])
    img_dir = _image_dir(cfg, p)
    size = int(p["resize"] or cfg.image_size)
    recs = [r for s in plan.splits for r in s]
    rel = [ethec_image_relpath(r) for r in recs]
    key = {"dataset": "ethec", "dir": str(img_dir.resolve()), "files": rel, "size": size,
           "meta": [fingerprint(f) for f in plan.files]}
    images = cached_image_array(key, [img_dir / r for r in rel], size,
                                cache=cache_root(cfg.root, p["cache_dir"]), name="ethec",
                                workers=p["workers"],
                                stamp=lambda: files_stamp(img_dir / r for r in rel))
    labels = encode_level_labels(plan.hierarchy,
                                 (ethec_label_path(r, p["hierarchy"]) for r in recs))
    out = contiguous_splits(images, labels, [len(s) for s in plan.splits], rel)
    meta = {"splits": plan.mode, "small": bool(p["small"]), "image_dir": str(img_dir),
            "metadata": [str(f) for f in plan.files], "size": size}
    if p["hierarchy"] != "merged":  # the default's meta stays as it was
        meta["hierarchy"] = p["hierarchy"]
    return HierDataset("ethec", plan.hierarchy, *out, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       meta=meta)


def default_ethec_metadata() -> list[Path]:
    """The shared ETHEC val+test metadata files, when present (else an empty list)."""
    d = shared_dir() / "data" / "ethec"
    return [p for p in (d / "val.json", d / "test.json") if p.is_file()]


@register_label_source("ethec")
def _source_ethec(**params: Any) -> LabelGraph:
    """ETHEC Merged (6/21/135/561) from metadata JSON files, or the unmerged DAG.

    Params: ``paths`` (one JSON or a list; default the shared val+test files), ``small``
    (ETHEC Small, thesis Table 2.1), ``hierarchy`` (``merged`` | ``unmerged``: bare specific
    epithets, one node per name per level, several parents allowed; thesis §2.3.3).
    """
    p = check_params("label source 'ethec'", params,
                     {"paths": None, "small": False, "hierarchy": "merged"})
    hierarchy = check_hierarchy_option(p["hierarchy"], "label source 'ethec': hierarchy")
    paths = p["paths"]
    if paths is None:
        paths = default_ethec_metadata()
        if not paths:
            raise DataError(f"{shared_dir() / 'data' / 'ethec'}: no val.json/test.json found; "
                            "pass paths=[...ETHEC metadata JSON files...]")
    paths = as_path_list(paths, "label source 'ethec': paths")
    h = ethec_hierarchy(paths, small=bool(p["small"]), hierarchy=hierarchy)
    meta: dict[str, Any] = {"source": "ethec", "paths": [str(x) for x in paths]}
    if hierarchy != "merged":
        meta["hierarchy"] = hierarchy
    return graph_from_hierarchy(h, meta=meta)
