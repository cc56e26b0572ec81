"""Dataset containers shared by every image dataset.

Every image dataset is materialised once as a decoded, resized ``uint8`` array ``[N, H, W, C]``
(a memory-mapped ``.npy`` cache on disk for the real datasets), so trials never decode JPEGs
and all trials on a node share the page cache. Labels are per-level *local* indices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hpsearch.config import DataConfig
from hpsearch.errors import DataError
from hpsearch.hierarchy import Hierarchy
from hpsearch.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, eq=False)
class ImageSplit:
    """One split: ``images`` uint8 ``[N, H, W, C]`` and ``level_labels`` int64 ``[N, L]``."""

    images: np.ndarray
    level_labels: np.ndarray
    ids: tuple[str, ...] = ()  # optional per-sample ids (file names)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be uint8 [N,H,W,C], got {self.images.dtype} "
                            f"{self.images.shape}")
        if len(self.images) != len(self.level_labels):
            raise DataError(f"{len(self.images)} images but {len(self.level_labels)} labels")

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True, eq=False)
class HierDataset:
    """Train/val/test splits plus the label hierarchy and normalisation constants."""

    name: str
    hierarchy: Hierarchy
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    meta: dict = field(default_factory=dict)

    def split(self, name: str) -> ImageSplit:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; allowed: train, val, test")
        return getattr(self, name)

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[-1])


DatasetBuilder = Callable[[DataConfig], HierDataset]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")


def load_dataset(cfg: DataConfig) -> HierDataset:
    """Build the dataset named by ``cfg.name`` (the built-in loaders register themselves when
    :mod:`hpsearch.data`, the package of this module, is imported)."""
    ds = DATASETS.get(cfg.name)(cfg)
    sizes = {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)}
    empty = [k for k, n in sizes.items() if n == 0]
    if empty:
        raise DataError(f"dataset {cfg.name!r}: the {' and '.join(empty)} split is empty "
                        f"(sizes {sizes}); every split needs images: use more images per "
                        "class (e.g. a larger data.params.limit_per_class) or a larger "
                        "data.val_fraction")
    return ds


def dataset_profile(ds: HierDataset, cfg: DataConfig) -> dict:
    """What identifies the data a search trained on, for MLflow's dataset inputs: a digest of
    the data config, the split sizes, the hierarchy's labels and every split's labels and ids
    (not the pixels: hashing a 50k-image array at every search start costs seconds; a change
    of the images on disk changes the loaders' cache keys, and the split ids), the split
    sizes and the labels per level."""
    h = hashlib.sha256()
    h.update(cfg.model_dump_json().encode())
    h.update("\n".join(ds.hierarchy.names).encode())
    sizes = {}
    for name in ("train", "val", "test"):
        s = ds.split(name)
        sizes[name] = len(s)
        h.update(name.encode())
        h.update(np.ascontiguousarray(s.level_labels).tobytes())
        h.update(str(s.images.shape).encode())
        h.update("\n".join(s.ids).encode())
    return {"name": ds.name, "digest": h.hexdigest()[:16],
            "profile": {"num_train": sizes["train"], "num_val": sizes["val"],
                        "num_test": sizes["test"],
                        "labels_per_level": [int(n) for n in ds.hierarchy.level_sizes],
                        "image_shape": list(ds.train.images.shape[1:])}}
