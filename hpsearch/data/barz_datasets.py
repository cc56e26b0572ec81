"""CUB-200-2011, NABirds and ILSVRC 2012 in their published layouts, labelled with Barz &
Denzler's hierarchies ("Hierarchy-based Image Embeddings for Semantic Image Retrieval", WACV
2019; files in ``../shared/data/hierarchies/``, MIT licence).

Layouts (``data.root`` = R; R may also be the folder *holding* ``CUB_200_2011/`` or
``nabirds/``)::

    cub      R/images.txt            "<image id> <class dir>/<file>.jpg"
             R/image_class_labels.txt "<image id> <class id>"     (ids 1..200)
             R/train_test_split.txt   "<image id> <1 train | 0 test>"
             R/classes.txt            "<class id> <name>"  e.g. "1 001.Black_footed_Albatross"
             R/images/<class dir>/<file>.jpg
    nabirds  the same five files (image ids are UUIDs, images/<4-digit class>/<hex>.jpg) plus
             R/hierarchy.txt "<child id> <parent id>"; classes.txt names every node (1,011)
    ilsvrc   R/train/<wnid>/*.JPEG; R/val/<wnid>/*.JPEG, or R/val/*.JPEG flat with labels in
             data.params.val_labels (default R/LOC_val_solution.csv when present): Kaggle's
             "ImageId,PredictionString" CSV, or "<file> <wnid>" / "<file> <class index>" lines
             (Caffe's val.txt; the index is the order of the class-index JSON = sorted wnids)

Hierarchy: ``data.params.hierarchy_file`` (default Barz's file for the dataset, read through
:func:`~hpsearch.data._io.shared_path`; a missing file is a one-line :class:`DataError`). A
class maps to the leaf named by its id (CUB/NABirds class id, ILSVRC wnid), else by its name
(CUB also without the ``NNN.`` prefix). None of Barz's three trees is leveled (leaf depths
CUB 3-6, NABirds 3-4, ILSVRC 4-18), so ``leveling`` defaults to ``pad``
(:func:`~hpsearch.data._io.pad_to_leveled`); the semantic embeddings and retrieval metrics
read the original tree behind it (:func:`~hpsearch.hierarchy.unpadded`).

Splits: the official test set (ILSVRC: the official val set) is the test split. Neither has a
validation set, so val is carved from the official training images: per class, a seeded
shuffle (``split_seed``) moves ``round(data.val_fraction * n)`` of its ``n`` training images
to val, never all of them (stratified; as ``image_folder`` and CIFAR ``splits=standard``).
``limit_per_class`` caps each class's official train and test images first (seeded);
``train_per_class`` then caps the train split only (:func:`hpsearch.data.cifar.train_subset`).

Normalisation ``dataset`` uses the per-dataset means/stds of Barz's README §4.2 (0-255 values
divided by 255; ILSVRC's is also the one of their fine-tuned models), ``imagenet`` the usual.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.config import DataConfig
from hpsearch.data._io import (
    check_params,
    contiguous_splits,
    files_stamp,
    leaf_level_labels,
    require_dir,
    require_file,
    shared_path,
)
from hpsearch.data.base import DATASETS, IMAGENET_MEAN, IMAGENET_STD, HierDataset, ImageSplit
from hpsearch.data.cache import cache_key, cache_root, cached_image_array
from hpsearch.data.cifar import check_train_per_class, is_hidden, is_image_name, train_subset
from hpsearch.data.folder import list_class_folder
from hpsearch.data.labels import register_dataset_hierarchy
from hpsearch.errors import ConfigError, DataError
from hpsearch.hierarchy import Hierarchy

HIER = "../shared/data/hierarchies/"
CUB_HIERARCHY = HIER + "barz_CUB-Hierarchy_cub_wikispecies.parent-child.txt"
NAB_HIERARCHY = HIER + "barz_NAB-Hierarchy_hierarchy.txt"
ILSVRC_HIERARCHY = HIER + "barz_ILSVRC_wordnet.parent-child.mintree.txt"
ILSVRC_CLASS_INDEX = HIER + "barz_ILSVRC_imagenet_class_index.json"

#: Barz & Denzler README §4.2 (RGB, 0-255): mean, std.
BARZ_STATS = {
    "cub": ((123.82988033, 127.35116805, 110.25606303), (59.2230949, 58.0736071, 67.80251684)),
    "nabirds": ((125.30513277, 129.66606421, 118.45121113),
                (57.0045467, 56.70059436, 68.44430446)),
    "ilsvrc": ((122.65435242, 116.6545058, 103.99789959),
               (71.40583196, 69.56888997, 73.0440314)),
}

COMMON: dict[str, Any] = {
    "hierarchy_file": None,  # default: Barz's file for the dataset (../shared/...)
    "child_parent": None,  # default: the orientation of Barz's file (NABirds: child parent)
    "leveling": "pad",  # pad | strict (see _io.leaf_level_labels)
    "split_seed": 0,  # the val carve-out and limit_per_class (not the training seed)
    "limit_per_class": None,  # at most this many official train and test images per class
    "train_per_class": None,  # after the split: at most this many TRAIN images per class
    "normalization": "dataset",  # dataset (Barz README §4.2) | imagenet
    "cache_dir": None,
    "workers": None,
}
META_EXTRA: dict[str, Any] = {"image_dir": "images"}
ILSVRC_EXTRA: dict[str, Any] = {
    "train_dir": "train",
    "val_dir": "val",  # the official val set: our test split
    "val_labels": None,  # flat val/: label file (default R/LOC_val_solution.csv)
    "class_index_file": None,  # index -> [wnid, name] JSON (integer labels only)
}
_WNID = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class _Spec:
    name: str
    hierarchy: str
    child_parent: bool
    subdir: str  # the folder name of the published archive (CUB_200_2011, nabirds)


SPECS = {"cub": _Spec("cub", CUB_HIERARCHY, False, "CUB_200_2011"),
         "nabirds": _Spec("nabirds", NAB_HIERARCHY, True, "nabirds"),
         "ilsvrc": _Spec("ilsvrc", ILSVRC_HIERARCHY, False, "")}


@dataclass(frozen=True)
class _Plan:
    """Images per official split as (leaf node, file) and the hierarchy, no pixels read."""

    root: Path
    hierarchy: Hierarchy
    train: list[tuple[str, Path]]
    test: list[tuple[str, Path]]


# ---------------------------------------------------------------------------- parameters
def _params(cfg: DataConfig, spec: _Spec) -> dict[str, Any]:
    extra = ILSVRC_EXTRA if spec.name == "ilsvrc" else META_EXTRA
    p = check_params(f"data.params ({spec.name})", cfg.params, {**COMMON, **extra})
    check_train_per_class(p["train_per_class"])
    lim = p["limit_per_class"]
    if lim is not None and (isinstance(lim, bool) or not isinstance(lim, int) or lim < 1):
        raise ConfigError(f"data.params.limit_per_class must be a positive int or null, got "
                          f"{lim!r}")
    if p["normalization"] not in ("dataset", "imagenet"):
        raise ConfigError(f"data.params.normalization must be dataset or imagenet, got "
                          f"{p['normalization']!r}")
    return p


def read_hierarchy(spec_name: str, hierarchy_file: str | Path | None = None,
                   child_parent: bool | None = None) -> tuple[Hierarchy, Path]:
    """Barz's hierarchy of ``spec_name`` (or ``hierarchy_file``) and the path it came from."""
    spec = SPECS[spec_name]
    path = shared_path(hierarchy_file or spec.hierarchy)
    if not path.is_file():
        raise DataError(f"{path}: hierarchy file not found; expected "
                        f"{'Barz & Denzler' if hierarchy_file is None else 'the'} {spec_name} "
                        "hierarchy ('parent child' ids per line): put it there (../shared is "
                        "the folder beside the repo, or $HPSEARCH_SHARED) or set "
                        "data.params.hierarchy_file")
    cp = spec.child_parent if child_parent is None else bool(child_parent)
    return Hierarchy.from_parent_child_file(path, child_parent=cp), path


def _table(path: Path, what: str) -> list[tuple[str, str]]:
    """``(first token, rest of line)`` of every non-blank line."""
    require_file(path, what)
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(None, 1)
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected {what}, got {line[:80]!r}")
        out.append((parts[0], parts[1].strip()))
    return out


def _leaf_matcher(h: Hierarchy, hfile: Path, dataset: str, names_file: str) -> Callable:
    leaves = {h.names[i] for i in h.leaves}
    seen: dict[tuple[str, str], str] = {}

    def leaf(cid: str, name: str = "") -> str:
        got = seen.get((cid, name))
        if got is None:
            bare = re.sub(r"^\d+\.", "", name)
            got = next((c for c in (cid, name, bare) if c and c in leaves), None)
            if got is None:
                shown = f"{cid} ({name!r})" if name else repr(cid)
                raise DataError(f"{hfile}: {dataset} class {shown} is not a leaf of the "
                                "hierarchy; set data.params.hierarchy_file to a hierarchy whose "
                                f"leaves are the class ids or names of {names_file}")
            seen[(cid, name)] = got
        return got

    return leaf


def _dataset_root(cfg: DataConfig, spec: _Spec, first: str) -> Path:
    if not cfg.root:
        raise ConfigError(f"{spec.name} needs data.root (the {spec.subdir or 'ILSVRC 2012'} "
                          "folder); pass --data-root or set data.root")
    root = require_dir(cfg.root, f"the {spec.name} dataset folder")
    if not (root / first).exists() and spec.subdir and (root / spec.subdir / first).exists():
        return root / spec.subdir
    return root


# ---------------------------------------------------------------------------- CUB / NABirds
def _plan_meta(cfg: DataConfig, spec: _Spec, p: dict[str, Any]) -> _Plan:
    h, hfile = read_hierarchy(spec.name, p["hierarchy_file"], p["child_parent"])
    root = _dataset_root(cfg, spec, "images.txt")
    images = _table(root / "images.txt", "'<image id> <image path>' lines (images.txt)")
    labels = dict(_table(root / "image_class_labels.txt",
                         "'<image id> <class id>' lines (image_class_labels.txt)"))
    split = dict(_table(root / "train_test_split.txt",
                        "'<image id> <1|0>' lines (train_test_split.txt)"))
    names = dict(_table(root / "classes.txt", "'<class id> <name>' lines (classes.txt)"))
    leaf = _leaf_matcher(h, hfile, spec.name, str(root / "classes.txt"))
    img_dir = root / p["image_dir"]
    train, test = [], []
    for iid, rel in images:
        for table, fname in ((labels, "image_class_labels.txt"), (split, "train_test_split.txt")):
            if iid not in table:
                raise DataError(f"{root / fname}: no line for image {iid} of images.txt; "
                                "use the files of one release of the dataset")
        cid, flag = labels[iid], split[iid]
        if cid not in names:
            raise DataError(f"{root / 'classes.txt'}: class {cid} (of image {iid}) not listed")
        if flag not in ("0", "1"):
            raise DataError(f"{root / 'train_test_split.txt'}: image {iid} has {flag!r}; "
                            "expected 1 (train) or 0 (test)")
        (train if flag == "1" else test).append((leaf(cid, names[cid]), img_dir / rel))
    if not images:
        raise DataError(f"{root / 'images.txt'}: no images listed")
    return _Plan(root, h, train, test)


# ---------------------------------------------------------------------------- ILSVRC
def _class_index(p: dict[str, Any]) -> list[str]:
    path = shared_path(p["class_index_file"] or ILSVRC_CLASS_INDEX)
    require_file(path, "the ILSVRC class index JSON {index: [wnid, name]} "
                 "(data.params.class_index_file)")
    try:
        d = json.loads(path.read_text())
        return [str(d[str(i)][0]) for i in range(len(d))]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        raise DataError(f"{path}: expected a JSON object {{\"0\": [wnid, name], ...}} with "
                        "indices 0..N-1 (Barz's imagenet_class_index.json)") from None


def _val_labels(path: Path, p: dict[str, Any]) -> dict[str, str]:
    """Flat val file stem -> wnid (formats: see the module docstring)."""
    require_file(path, "ILSVRC val labels (data.params.val_labels)")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    out: dict[str, str] = {}
    index: list[str] | None = None
    if lines and lines[0].lower().startswith("imageid"):
        for lineno, ln in enumerate(lines[1:], 2):
            key, _, pred = ln.partition(",")
            if not pred.split():
                raise DataError(f"{path}:{lineno}: expected 'ImageId,wnid ...', got {ln[:80]!r}")
            out[Path(key).stem] = pred.split()[0]
        return out
    for lineno, ln in enumerate(lines, 1):
        parts = ln.split()
        if len(parts) == 1:
            raise DataError(f"{path}:{lineno}: one id per line is the devkit's ground truth, "
                            "whose ILSVRC2012_IDs follow meta.mat, not the class index; give "
                            "data.params.val_labels a '<file> <wnid>' file, Caffe's val.txt or "
                            "Kaggle's LOC_val_solution.csv")
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected '<file> <wnid or index>', got "
                            f"{ln[:80]!r}")
        f, lab = parts
        if not _WNID.match(lab):
            if index is None:
                index = _class_index(p)
            if not lab.isdigit() or int(lab) >= len(index):
                raise DataError(f"{path}:{lineno}: label {lab!r} is neither a wnid nor a class "
                                f"index 0..{len(index) - 1}")
            lab = index[int(lab)]
        out[Path(f).stem] = lab
    return out


def _plan_ilsvrc(cfg: DataConfig, spec: _Spec, p: dict[str, Any], *,
                 files: bool = True) -> _Plan:
    h, hfile = read_hierarchy(spec.name, p["hierarchy_file"], p["child_parent"])
    root = _dataset_root(cfg, spec, p["train_dir"])
    leaf = _leaf_matcher(h, hfile, spec.name, "the train/<wnid>/ folders")
    tdir = require_dir(root / p["train_dir"], "ILSVRC train/<wnid>/ folders")
    if not files:  # hierarchy only: check the class folders, list no images
        for d in tdir.iterdir():
            if d.is_dir() and not is_hidden(d):
                leaf(d.name)
        return _Plan(root, h, [], [])
    train = [(leaf(c), f) for c, f in list_class_folder(tdir)]
    vdir = require_dir(root / p["val_dir"], "ILSVRC val/ images (the test split)")
    if any(d.is_dir() and not is_hidden(d) for d in vdir.iterdir()):
        test = [(leaf(c), f) for c, f in list_class_folder(vdir)]
    else:
        lf = p["val_labels"]
        lpath = shared_path(lf) if lf else root / "LOC_val_solution.csv"
        if lf is None and not lpath.is_file():
            raise DataError(f"{vdir}: flat val images need labels; set data.params.val_labels "
                            "('<file> <wnid>' lines, Caffe's val.txt or LOC_val_solution.csv) "
                            "or sort val/ into <wnid>/ folders")
        lab = _val_labels(lpath, p)
        test = []
        for f in sorted(x for x in vdir.iterdir() if x.is_file() and is_image_name(x.name)):
            if f.stem not in lab:
                raise DataError(f"{lpath}: no label for val image {f.name}")
            test.append((leaf(lab[f.stem]), f))
        if not test:
            raise DataError(f"{vdir}: no images")
    return _Plan(root, h, train, test)


# ---------------------------------------------------------------------------- splitting
def _per_class(leaves: list[str], rng: np.random.Generator, cap: int | None) -> list[np.ndarray]:
    arr = np.asarray(leaves, dtype=object)
    return [rng.permutation(np.flatnonzero(arr == c))[:cap] for c in sorted(set(leaves))]


def split_rows(plan_train: list[str], plan_test: list[str], val_fraction: float, seed: int,
               limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the official train list kept as train and as val, and rows of the test list.

    Per class: a ``default_rng(seed)`` shuffle, the first ``limit`` kept, then
    ``min(round(val_fraction * n), n - 1)`` of the ``n`` train images go to val.
    """
    rng = np.random.default_rng(int(seed))
    tr, va = [], []
    for idx in _per_class(plan_train, rng, limit):
        n_va = min(int(round(val_fraction * len(idx))), max(len(idx) - 1, 0))
        va.append(np.sort(idx[:n_va]))
        tr.append(np.sort(idx[n_va:]))
    te = _per_class(plan_test, rng, limit)

    def cat(x: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(x)).astype(np.int64) if x else np.zeros(0, np.int64)

    return cat(tr), cat(va), cat(te)


# ---------------------------------------------------------------------------- building
def _plan(cfg: DataConfig, name: str, *, files: bool = True) -> tuple[_Plan, dict[str, Any]]:
    spec = SPECS[name]
    p = _params(cfg, spec)
    if name == "ilsvrc":
        return _plan_ilsvrc(cfg, spec, p, files=files), p
    return _plan_meta(cfg, spec, p), p


def _hierarchy_only(cfg: DataConfig, name: str) -> Hierarchy:
    plan, p = _plan(cfg, name, files=False)
    nodes = [n for n, _ in plan.train + plan.test]
    h, _ = leaf_level_labels(plan.hierarchy, nodes, leveling=p["leveling"], where=name)
    return h


def _build(cfg: DataConfig, name: str) -> HierDataset:
    plan, p = _plan(cfg, name)
    tr_leaf = [n for n, _ in plan.train]
    tr, va, te = split_rows(tr_leaf, [n for n, _ in plan.test], cfg.val_fraction,
                            p["split_seed"], p["limit_per_class"])
    items = [plan.train[i] for i in tr] + [plan.train[i] for i in va] + \
        [plan.test[i] for i in te]
    sizes = [len(tr), len(va), len(te)]
    h, labels = leaf_level_labels(plan.hierarchy, [n for n, _ in items],
                                  leveling=p["leveling"], where=name)
    files = [f for _, f in items]
    rel = [str(f.relative_to(plan.root)) if f.is_relative_to(plan.root) else str(f)
           for f in files]
    size = int(cfg.image_size)
    key = {"dataset": name, "root": str(plan.root.resolve()), "files": cache_key(rel),
           "size": size}
    images = cached_image_array(key, files, size,
                                cache=cache_root(plan.root, p["cache_dir"]), name=name,
                                workers=p["workers"], stamp=lambda: files_stamp(files))
    splits = contiguous_splits(images, labels, sizes, rel)
    keep = train_subset(labels[:sizes[0], -1], p["train_per_class"], int(p["split_seed"]))
    if len(keep) < sizes[0]:
        s = splits[0]
        splits[0] = ImageSplit(np.ascontiguousarray(s.images[keep]), s.level_labels[keep],
                               tuple(s.ids[i] for i in keep))
    if p["normalization"] == "dataset":
        mean, std = (tuple(v / 255.0 for v in x) for x in BARZ_STATS[name])
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return HierDataset(name, h, *splits, mean=mean, std=std,
                       meta={"root": str(plan.root), "size": size,
                             "splits": "official test; val carved from train",
                             "train_per_class": p["train_per_class"]})


def _register(name: str, doc: str) -> None:
    def build(cfg: DataConfig) -> HierDataset:
        return _build(cfg, name)

    def hierarchy(cfg: DataConfig) -> Hierarchy:
        return _hierarchy_only(cfg, name)

    build.__doc__ = doc
    build.__name__ = f"build_{name}"
    DATASETS.register(name)(build)
    register_dataset_hierarchy(name)(hierarchy)


_register("cub", "CUB-200-2011 (200 species) with Barz's wikispecies hierarchy.")
_register("nabirds", "NABirds (555 leaf categories) with its own hierarchy (Barz's copy).")
_register("ilsvrc", "ILSVRC 2012 (1,000 wnids) with Barz's WordNet mintree.")
