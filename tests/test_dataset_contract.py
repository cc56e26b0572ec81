"""The dataset contract: every registered dataset, built from tiny generated files, gives
what the tasks rely on (parametrized over ``DATASETS.names()``).

A new dataset is tested by adding to :data:`CONTRACT` a function that writes a tiny stand-in of
its files under a temporary directory and returns its :class:`DataConfig`;
:func:`test_every_registered_dataset_has_a_contract_entry` fails until it has one. The file
generators are those of ``tests/test_data_real.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpsearch.config import DataConfig
from hpsearch.data import DATASETS, load_dataset
from hpsearch.data.labels import dataset_hierarchy

from .barz_layouts import cub_config, ilsvrc_config, nabirds_config
from .conftest import TINY_DATA
from .test_data_real import (
    ethec_records,
    idx_bytes,
    write_cifar10_pickles,
    write_cifar100,
    write_ethec_images,
)


def synthetic(tmp: Path) -> DataConfig:
    return DataConfig(name="synthetic", root=str(tmp), image_size=12, params=TINY_DATA)


def ethec(tmp: Path) -> DataConfig:
    recs = ethec_records()
    (tmp / "ethec_all.json").write_text(json.dumps(recs))  # one file: re-split by leaf
    write_ethec_images(tmp, recs)
    return DataConfig(name="ethec", root=str(tmp), image_size=8,
                      params={"cache_dir": str(tmp / "cache")})


def cifar10(tmp: Path) -> DataConfig:
    write_cifar10_pickles(tmp / "cifar-10-batches-py", per_class=2)
    return DataConfig(name="cifar10", root=str(tmp), image_size=8,
                      params={"cache_dir": str(tmp / "cache")})


def cifar100(tmp: Path) -> DataConfig:
    write_cifar100(tmp / "cifar-100-python")
    return DataConfig(name="cifar100", root=str(tmp), image_size=8, val_fraction=0.2,
                      params={"cache_dir": str(tmp / "cache")})


def fashion_mnist(tmp: Path) -> DataConfig:
    """Raw IDX files, 5 train and 2 test images per class; kept grey (one channel)."""
    for prefix, per_class in (("train", 5), ("t10k", 2)):
        y = np.repeat(np.arange(10), per_class)
        x = np.repeat((y * 25 + 3).astype(np.uint8)[:, None, None], 28, 1).repeat(28, 2)
        (tmp / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(x))
        (tmp / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(y))
    return DataConfig(name="fashion_mnist", root=str(tmp), image_size=14,
                      params={"val_size": 10, "channels": 1, "cache_dir": str(tmp / "cache")})


def image_folder(tmp: Path) -> DataConfig:
    """``train/`` and ``test/`` class folders (PNG and JPEG) under a two-level hierarchy."""
    root = tmp / "data"
    colours = {"oak": (200, 30, 30), "pine": (30, 200, 30), "rose": (30, 30, 200)}
    for split, n in (("train", 5), ("test", 2)):
        for cls, rgb in colours.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                img = Image.fromarray(np.full((10, 10, 3), rgb, np.uint8))
                img.save(root / split / cls / f"{i}.{'png' if i % 2 else 'jpg'}")
    hf = tmp / "hierarchy.txt"
    hf.write_text("oak tree\npine tree\nrose flower\n")  # child parent
    return DataConfig(name="image_folder", root=str(root), image_size=6, val_fraction=0.2,
                      params={"hierarchy_file": str(hf), "child_parent": True,
                              "cache_dir": str(tmp / "cache")})


# dataset name -> writes its tiny files under the given directory, returns its config
CONTRACT: dict[str, Callable[[Path], DataConfig]] = {
    "synthetic": synthetic,
    "ethec": ethec,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "fashion_mnist": fashion_mnist,
    "image_folder": image_folder,
    "cub": cub_config,
    "nabirds": nabirds_config,
    "ilsvrc": ilsvrc_config,
}
DATASET_NAMES = DATASETS.names()


def test_every_registered_dataset_has_a_contract_entry():
    assert DATASET_NAMES, "no dataset registered"
    missing = sorted(set(DATASET_NAMES) - set(CONTRACT))
    assert not missing, f"datasets without a CONTRACT entry in {__name__}: {missing}"
    assert not set(CONTRACT) - set(DATASET_NAMES), "CONTRACT names an unregistered dataset"


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_dataset_gives_what_the_tasks_rely_on(name, tmp_path):
    cfg = CONTRACT[name](tmp_path)
    assert cfg.name == name
    ds = load_dataset(cfg)
    h = ds.hierarchy
    sizes = np.asarray(h.level_sizes)
    assert h.num_levels >= 1 and (sizes > 0).all()
    channels = ds.channels
    assert channels in (1, 3)
    assert len(ds.mean) == len(ds.std) == channels
    assert all(s > 0 for s in ds.std)
    for split_name in ("train", "val", "test"):
        split = ds.split(split_name)
        images = np.asarray(split.images)
        labels = np.asarray(split.level_labels)
        assert len(split) > 0, f"{split_name} is empty"
        assert images.dtype == np.uint8 and images.ndim == 4, (images.dtype, images.shape)
        n, height, width, c = images.shape
        assert (height, width) == (cfg.image_size, cfg.image_size)
        assert c == channels, f"{split_name} has {c} channels, ds.channels is {channels}"
        assert np.issubdtype(labels.dtype, np.integer), labels.dtype
        assert labels.shape == (n, h.num_levels)
        assert (labels >= 0).all() and (labels < sizes).all(), f"{split_name} labels"
        if split.ids:
            assert len(split.ids) == n
    # what ``hpsearch report`` and the ``dataset`` label source read without the images
    hh = dataset_hierarchy(cfg)
    assert tuple(hh.names) == tuple(h.names)
    assert tuple(hh.level_sizes) == tuple(h.level_sizes)
    assert [sorted(p) for p in hh.parents] == [sorted(p) for p in h.parents]
