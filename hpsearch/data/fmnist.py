"""Hierarchical Fashion-MNIST (thesis §2.3.2): 3 garment groups -> 10 classes.

Reads the four standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``) from
``data.root``, ``data.root/FashionMNIST/raw`` (torchvision) or ``data.root/raw``. The thesis
keeps the official 10,000 test images and splits the 60,000 training images 50,000 / 10,000
into train / val (here stratified: 1,000 val images per class).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.config import DataConfig
from hpsearch.data._io import check_params, fingerprint, leaf_level_labels
from hpsearch.data.base import DATASETS, HierDataset
from hpsearch.data.cifar import _Raw, build_from_raw
from hpsearch.data.labels import register_dataset_hierarchy
from hpsearch.errors import ConfigError, DataError
from hpsearch.hierarchy import Hierarchy

FMNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat",
                  "sandal", "shirt", "sneaker", "bag", "ankle-boot")
#: Thesis §2.3.2; the root "fashion-wear" is not a level.
FMNIST_PATHS = (
    ("top-wear", "t-shirt"), ("top-wear", "pullover"), ("top-wear", "dress"),
    ("top-wear", "coat"), ("top-wear", "shirt"),
    ("bottom-wear-and-accessories", "trouser"), ("bottom-wear-and-accessories", "bag"),
    ("footwear", "sandal"), ("footwear", "sneaker"), ("footwear", "ankle-boot"),
)
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
DEFAULTS: dict[str, Any] = {
    "channels": 3,  # 3: replicate grey to RGB (ImageNet backbones); 1: keep one channel
    "val_size": 10000,  # images carved from train for val (stratified); None: data.val_fraction
    "split_seed": 0,
    "limit_per_class": None,  # cap per class, applied to train and test separately
    "train_per_class": None,  # after the split: at most this many TRAIN images per class
    "normalization": "dataset",  # dataset | imagenet
    "cache_dir": None,
    "workers": None,
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (``magic = 0x0000 08 <ndim>``, big-endian int32 dims, uint8 data)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            buf = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({err}); expected an IDX file") from None
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] != 0x08:
        raise DataError(f"{path}: bad magic {buf[:4].hex()}; expected an unsigned-byte IDX file "
                        "(00 00 08 0N)")
    ndim = buf[3]
    dims = np.frombuffer(buf, dtype=">i4", count=ndim, offset=4).astype(np.int64)
    n = int(np.prod(dims))
    if len(buf) != 4 + 4 * ndim + n:
        raise DataError(f"{path}: {len(buf)} bytes for dims {dims.tolist()}; the file is "
                        "truncated or not IDX")
    return np.frombuffer(buf, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(root: Path, base: str) -> Path:
    for d in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for name in (base, base + ".gz"):
            if (d / name).is_file():
                return d / name
    raise DataError(f"{root / base}: not found (also tried .gz, FashionMNIST/raw/, raw/); "
                    "expected the Fashion-MNIST IDX files")


def fmnist_hierarchy() -> Hierarchy:
    """top-wear / bottom-wear-and-accessories / footwear -> 10 classes."""
    return Hierarchy.from_level_labels(FMNIST_PATHS, level_names=("group", "class"))


def _params(cfg: DataConfig) -> dict:
    p = check_params("data.params (fashion_mnist)", cfg.params, DEFAULTS)
    if p["channels"] not in (1, 3):
        raise ConfigError(f"data.params.channels must be 1 or 3, got {p['channels']!r}")
    return p


@register_dataset_hierarchy("fashion_mnist")
def _fmnist_h(cfg: DataConfig) -> Hierarchy:
    _params(cfg)
    return fmnist_hierarchy()


@DATASETS.register("fashion_mnist")
def build_fashion_mnist(cfg: DataConfig) -> HierDataset:
    """Hierarchical Fashion-MNIST: 2 levels (3/10); 50k/10k/10k as in the thesis."""
    p = _params(cfg)
    if not cfg.root:
        raise ConfigError("fashion_mnist needs data.root (folder with the IDX files)")
    root = Path(cfg.root)
    paths = {k: _find(root, v) for k, v in FILES.items()}
    arrays = {k: read_idx(v) for k, v in paths.items()}
    for s in ("train", "test"):
        x, y = arrays[f"{s}_x"], arrays[f"{s}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{paths[s + '_x']}: images {x.shape} vs labels {y.shape}; expected "
                            "[N, H, W] images and [N] labels")
        if y.size and y.max() >= len(FMNIST_CLASSES):
            raise DataError(f"{paths[s + '_y']}: label {int(y.max())} out of range 0..9")
    x = np.concatenate([arrays["train_x"], arrays["test_x"]])[..., None]
    y = np.concatenate([arrays["train_y"], arrays["test_y"]]).astype(np.int64)
    origin = np.repeat([0, 1], [len(arrays["train_y"]), len(arrays["test_y"])])
    ch = int(p["channels"])

    def load(idx: np.ndarray) -> np.ndarray:
        sel = x[idx]
        return np.repeat(sel, 3, axis=-1) if ch == 3 else sel

    raw = _Raw(y, origin, [str(i) for i in range(len(y))],
               [fingerprint(v) for v in paths.values()] + [ch], load, {})
    n_train = len(arrays["train_y"])
    if p["val_size"] is None:
        val_fraction = cfg.val_fraction
    elif not 0 <= int(p["val_size"]) < n_train:
        raise ConfigError(f"data.params.val_size must be in [0, {n_train}), got {p['val_size']}")
    else:
        val_fraction = int(p["val_size"]) / n_train
    h = fmnist_hierarchy()
    _, labels = leaf_level_labels(h, [FMNIST_CLASSES[c] for c in y], where="fashion_mnist")
    q = {**p, "splits": "standard", "normalization": "dataset"}
    if p["normalization"] == "dataset":
        mean, std = (FMNIST_MEAN,) * ch, (FMNIST_STD,) * ch
    elif p["normalization"] == "imagenet":  # grey = mean of the ImageNet channels
        mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if ch == 3 else \
            ((0.449,), (0.226,))
    else:
        raise ConfigError(f"data.params.normalization must be dataset or imagenet, got "
                          f"{p['normalization']!r}")
    cfg2 = cfg.model_copy(update={"val_fraction": val_fraction})
    return build_from_raw("fashion_mnist", cfg2, q, raw, h, labels, mean, std)
