"""Any image-folder dataset with a label hierarchy file.

Layout (``data.root`` = R)::

    R/<train_dir>/<class>/*.jpg|png|...   (default train_dir "train")
    R/<val_dir>/<class>/*                 (optional; else val_fraction of train, per class)
    R/<test_dir>/<class>/*                (default "test")
    hierarchy file: "parent child" per line ("child parent" with child_parent: true)

Every class folder must be a leaf of the hierarchy. Without a hierarchy file the classes form a
single level (a flat classifier).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.config import DataConfig
from hpsearch.data._io import (
    check_params,
    contiguous_splits,
    files_stamp,
    fingerprint,
    leaf_level_labels,
    require_dir,
)
from hpsearch.data.base import DATASETS, IMAGENET_MEAN, IMAGENET_STD, HierDataset
from hpsearch.data.cache import cache_key, cache_root, cached_image_array
from hpsearch.data.cifar import IMAGE_EXTS, is_hidden, is_image_name
from hpsearch.data.labels import register_dataset_hierarchy
from hpsearch.errors import ConfigError, DataError
from hpsearch.hierarchy import Hierarchy

DEFAULTS: dict[str, Any] = {
    "hierarchy_file": None,
    "child_parent": False,
    "train_dir": "train",
    "val_dir": None,  # default: "val" when it exists, else carved from train
    "test_dir": "test",
    "split_seed": 0,
    "leveling": "strict",  # strict | pad, see _io.leaf_level_labels
    "cache_dir": None,
    "workers": None,
}


def list_class_folder(d: Path) -> list[tuple[str, Path]]:
    """``(class, file)`` for every image under ``d/<class>/`` (sorted)."""
    out = []
    for cdir in sorted(p for p in d.iterdir() if p.is_dir() and not is_hidden(p)):
        files = sorted(p for p in cdir.rglob("*") if is_image_name(p.name) and p.is_file()
                       and not any(is_hidden(q) for q in p.relative_to(cdir).parents
                                   if q != Path(".")))
        out += [(cdir.name, f) for f in files]
    if not out:
        raise DataError(f"{d}: no images in <class>/ sub-folders; expected "
                        f"{d}/<class>/<image>{{{','.join(sorted(IMAGE_EXTS))}}}")
    return out


def _params(cfg: DataConfig) -> tuple[dict, Path]:
    p = check_params("data.params (image_folder)", cfg.params, DEFAULTS)
    if not cfg.root:
        raise ConfigError("image_folder needs data.root (the folder holding train/ and test/)")
    return p, require_dir(cfg.root, "an image-folder dataset root (train/<class>/...)")


def _hierarchy(p: dict, splits: list[list[tuple[str, Path]]]) -> Hierarchy:
    if p["hierarchy_file"] is None:
        trained = {c for c, _ in splits[0]}
        extra = sorted({c for s in splits[1:] for c, _ in s} - trained)
        if extra:  # e.g. test/Cat next to train/cat: a class nothing was trained on
            raise DataError(f"image_folder: class folder(s) {extra} appear only outside "
                            f"train/ ({', '.join(sorted(trained))} have training images); "
                            "rename them to a training class or add training images")
        return Hierarchy.from_edges([], nodes=sorted(trained), level_names=("class",))
    return Hierarchy.from_parent_child_file(p["hierarchy_file"],
                                            child_parent=bool(p["child_parent"]))


def _splits(cfg: DataConfig, p: dict, root: Path) -> list[list[tuple[str, Path]]]:
    train = list_class_folder(require_dir(root / p["train_dir"], "train/<class>/ images"))
    test = list_class_folder(require_dir(root / p["test_dir"], "test/<class>/ images"))
    val_dir = p["val_dir"] or ("val" if (root / "val").is_dir() else None)
    if val_dir is not None:
        val = list_class_folder(require_dir(root / val_dir, "val/<class>/ images"))
        return [train, val, test]
    rng = np.random.default_rng(int(p["split_seed"]))
    cls = np.array([c for c, _ in train], dtype=object)
    is_val = np.zeros(len(train), dtype=bool)
    for c in sorted(set(cls)):
        idx = rng.permutation(np.flatnonzero(cls == c))
        is_val[idx[:int(round(cfg.val_fraction * len(idx)))]] = True
    return [[t for t, v in zip(train, is_val, strict=True) if not v],
            [t for t, v in zip(train, is_val, strict=True) if v], test]


@register_dataset_hierarchy("image_folder")
def _folder_h(cfg: DataConfig) -> Hierarchy:
    p, root = _params(cfg)
    splits = _splits(cfg, p, root)
    names = [c for s in splits for c, _ in s]
    h, _ = leaf_level_labels(_hierarchy(p, splits), names, leveling=p["leveling"],
                             where="image_folder")
    return h


@DATASETS.register("image_folder")
def build_image_folder(cfg: DataConfig) -> HierDataset:
    """``split/<class>/*`` images + a parent-child hierarchy; ImageNet normalisation."""
    p, root = _params(cfg)
    splits = _splits(cfg, p, root)
    items = [x for s in splits for x in s]
    names = [c for c, _ in items]
    h, labels = leaf_level_labels(_hierarchy(p, splits), names, leveling=p["leveling"],
                                  where="image_folder")
    size = int(cfg.image_size)
    rel = [str(f.relative_to(root)) for _, f in items]
    hf = [] if p["hierarchy_file"] is None else fingerprint(p["hierarchy_file"])
    key = {"dataset": "image_folder", "root": str(root.resolve()), "files": cache_key(rel),
           "size": size, "hierarchy": hf}
    images = cached_image_array(key, [f for _, f in items], size,
                                cache=cache_root(cfg.root, p["cache_dir"]), name="folder",
                                workers=p["workers"],
                                stamp=lambda: files_stamp(f for _, f in items))
    out = contiguous_splits(images, labels, [len(s) for s in splits], rel)
    return HierDataset("image_folder", h, *out, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       meta={"root": str(root), "size": size})
