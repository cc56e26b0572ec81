"""``data.params.train_per_class`` (issue 14; thesis §4.2.1, Table 4.2): only the train split
shrinks to at most k images per leaf class; val and test stay the very same rows, bit for bit,
and every setting shares one image-cache entry."""

from __future__ import annotations

import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_jpeg

from hpsearch.config import DataConfig
from hpsearch.data import load_dataset
from hpsearch.data.labels import dataset_hierarchy
from hpsearch.errors import ConfigError

from .test_data_real import write_cifar10_pickles
from .test_dataset_contract import fashion_mnist

#: uneven pools (train + test images): 35 -> 27/4/4, 18 -> 14/2/2, 8 -> 3/2/3 (split_counts)
COUNTS = {"cat": (30, 5), "ship": (15, 3), "frog": (6, 2)}
K = 5


def write_jpeg_folder(root: Path, seed: int = 0) -> Path:
    """``train|test/<class>/*.jpg`` of random 16x16 images, :data:`COUNTS` per class."""
    g = torch.Generator().manual_seed(seed)
    for cls, (n_train, n_test) in COUNTS.items():
        for split, n in (("train", n_train), ("test", n_test)):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=g)
                write_jpeg(img, str(root / split / cls / f"{i:04d}.jpg"), quality=90)
    return root


def cfg_for(root: Path, cache: Path, **params) -> DataConfig:
    return DataConfig(name="cifar10", root=str(root), image_size=16,
                      params={"cache_dir": str(cache), "split_seed": 3, **params})


def leaf_counts(split) -> Counter:
    return Counter(int(x) for x in np.asarray(split.level_labels)[:, -1])


def same_split(a, b) -> bool:
    return (a.ids == b.ids and np.array_equal(np.asarray(a.images), np.asarray(b.images))
            and np.array_equal(np.asarray(a.level_labels), np.asarray(b.level_labels)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_jpeg_folder(tmp_path_factory.mktemp("cifar") / "jpg")


def test_val_and_test_fixed_train_capped(folder, tmp_path):
    full = load_dataset(cfg_for(folder, tmp_path / "c"))
    sub = load_dataset(cfg_for(folder, tmp_path / "c", train_per_class=K))
    assert same_split(full.val, sub.val) and same_split(full.test, sub.test)
    assert len(full.val) == 8 and len(full.test) == 9
    want = {c: min(n, K) for c, n in leaf_counts(full.train).items()}
    assert sorted(want.values()) == [3, 5, 5]  # frog keeps all 3, the others are capped
    assert leaf_counts(sub.train) == want
    assert set(sub.train.ids) <= set(full.train.ids)
    row = {i: r for r, i in enumerate(full.train.ids)}
    for r, i in enumerate(sub.train.ids):  # the kept rows carry their own pixels and labels
        assert np.array_equal(sub.train.images[r], full.train.images[row[i]])
        assert np.array_equal(sub.train.level_labels[r], full.train.level_labels[row[i]])
    # one cache entry serves both (the subset is taken on the loaded rows)
    assert len([d for d in (tmp_path / "c").iterdir() if d.name.startswith("cifar10-")]) == 1
    # larger than every class: nothing dropped
    big = load_dataset(cfg_for(folder, tmp_path / "c", train_per_class=1000))
    assert same_split(big.train, full.train)


def test_deterministic_nested_and_seeded(folder, tmp_path):
    a = load_dataset(cfg_for(folder, tmp_path / "a", train_per_class=K))
    b = load_dataset(cfg_for(folder, tmp_path / "b", train_per_class=K))  # fresh cache
    assert same_split(a.train, b.train) and same_split(a.test, b.test)
    small = load_dataset(cfg_for(folder, tmp_path / "a", train_per_class=2))
    assert set(small.train.ids) < set(a.train.ids)  # 2 per class within the 5 per class
    other = load_dataset(cfg_for(folder, tmp_path / "a", train_per_class=K, split_seed=4))
    assert other.train.ids != a.train.ids


def test_archive_and_pickles_and_fmnist(folder, tmp_path):
    tar = tmp_path / "cifar.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(folder, arcname="cifar10")
    cfg = DataConfig(name="cifar10", image_size=16,
                     params={"archive": str(tar), "cache_dir": str(tmp_path / "t")})
    full = load_dataset(cfg)
    sub = load_dataset(cfg.model_copy(update={"params": {**cfg.params, "train_per_class": 2}}))
    assert same_split(full.val, sub.val) and same_split(full.test, sub.test)
    assert sorted(leaf_counts(sub.train).values()) == [2, 2, 2]

    write_cifar10_pickles(tmp_path / "pk" / "cifar-10-batches-py", per_class=2)  # 12 a class
    pcfg = DataConfig(name="cifar10", root=str(tmp_path / "pk"), image_size=8,
                      params={"cache_dir": str(tmp_path / "pc")})
    pf = load_dataset(pcfg)
    ps = load_dataset(pcfg.model_copy(update={"params": {**pcfg.params, "train_per_class": 3,
                                                         "limit_per_class": 10}}))
    pl = load_dataset(pcfg.model_copy(update={"params": {**pcfg.params, "limit_per_class": 10}}))
    assert len(pf.train) == 100  # 12 -> 10/1/1 per class
    assert same_split(pl.val, ps.val) and same_split(pl.test, ps.test)
    assert set(leaf_counts(ps.train).values()) == {3}  # cap of the pool, then of train

    (tmp_path / "fm").mkdir()
    fcfg = fashion_mnist(tmp_path / "fm")  # 5 train / 2 test per class, val_size 10
    ff = load_dataset(fcfg)
    fs = load_dataset(fcfg.model_copy(update={"params": {**fcfg.params, "train_per_class": 2}}))
    assert same_split(ff.val, fs.val) and same_split(ff.test, fs.test)
    assert set(leaf_counts(fs.train).values()) == {2} and len(ff.train) == 40


@pytest.mark.parametrize("bad", [0, -3, 2.5, "100", True])
def test_bad_values_are_one_line_config_errors(folder, tmp_path, bad):
    cfg = cfg_for(folder, tmp_path / "c", train_per_class=bad)
    for call in (load_dataset, dataset_hierarchy):
        with pytest.raises(ConfigError, match="train_per_class") as e:
            call(cfg)
        assert "\n" not in str(e.value) and "positive int" in str(e.value)
