"""Real-dataset loaders on tiny generated stand-ins (plus the shared files when present)."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpsearch.config import DataConfig
from hpsearch.data import DATASETS, load_dataset
from hpsearch.data._io import split_counts, stratified_split
from hpsearch.data.cache import cached_image_array
from hpsearch.data.cifar import CIFAR10_CLASSES
from hpsearch.data.ethec import ethec_hierarchy, ethec_image_relpath, load_ethec_records
from hpsearch.data.fmnist import FMNIST_CLASSES
from hpsearch.errors import ConfigError, DataError

SHARED = Path(os.environ.get("HPSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
ETHEC_META = [SHARED / "data" / "ethec" / f for f in ("val.json", "test.json")]
CIFAR_TAR = SHARED / "data" / "cifar10" / "cifar10-jpg.tar.gz"


def jpeg(path: Path, rgb: tuple[int, int, int], size: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), rgb, dtype=np.uint8)).save(path, quality=95)


def mean_rgb(img: np.ndarray) -> np.ndarray:
    return img.reshape(-1, img.shape[-1]).mean(0)


def test_registered_names():
    assert {"ethec", "cifar10", "cifar100", "fashion_mnist", "image_folder"} <= set(DATASETS)


def test_split_counts_follow_the_thesis():
    assert split_counts(1) == (1, 0, 0)  # train only
    assert split_counts(2) == (1, 0, 1)  # train + test
    assert split_counts(3) == (1, 1, 1)
    assert split_counts(5) == (2, 1, 2)
    assert split_counts(9) == (3, 3, 3)
    assert split_counts(10) == (8, 1, 1)
    assert split_counts(6000) == (4800, 600, 600)
    s = stratified_split(np.repeat([0, 1], [12, 2]), seed=3)
    assert np.bincount(s[:12], minlength=3).tolist() == [10, 1, 1]
    assert np.bincount(s[12:], minlength=3).tolist() == [1, 0, 1]
    assert (s == stratified_split(np.repeat([0, 1], [12, 2]), seed=3)).all()


def test_cache_builds_once_under_concurrency(tmp_path):
    calls = []

    def loader():
        calls.append(1)
        return np.full((3, 4, 4, 1), 7, dtype=np.uint8)

    out = []
    threads = [threading.Thread(target=lambda: out.append(
        cached_image_array(["k"], loader, 2, cache=tmp_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(out) == 3
    assert all(isinstance(a, np.memmap) and a.shape == (3, 2, 2, 1) for a in out)
    assert (out[0] == 7).all()
    assert not list(tmp_path.rglob("*.tmp-*"))


# ---------------------------------------------------------------------------- ETHEC
LEAVES = [  # (family, subfamily, genus, epithet, n_images)
    ("Hesperiidae", "Pyrginae", "Pyrgus", "alveus", 12),
    ("Hesperiidae", "Pyrginae", "Pyrgus", "armoricanus", 5),
    ("Hesperiidae", "Hesperiinae", "Ochlodes", "venata", 2),
    ("Pieridae", "Pierinae", "Aporia", "crataegi", 1),
]


def ethec_records(n_offset: int = 0) -> dict[str, dict]:
    recs, k = {}, n_offset
    for fam, sub, gen, ep, n in LEAVES:
        for _ in range(n):
            file = f"ETHZ_ENT01_2017_02_{k % 28 + 1:02d}_{k:06d}.JPG"
            tok = f"tok-{k}"
            rec = {"token": tok, "image_path": file[11:21] + "R", "image_name": file,
                   "family": fam, "subfamily": sub, "genus": gen, "specific_epithet": ep,
                   "subspecific_epithet": "", "barcode": f"B{k}"}
            if k == n_offset + 3:  # the real metadata has a few like this
                rec["image_path"], rec["image_name"] = file, ""
            recs[tok] = rec
            k += 1
    return recs


def write_ethec_images(root: Path, recs: dict[str, dict]) -> dict[str, tuple]:
    colour = {}
    for i, rec in enumerate(recs.values()):
        rgb = ((i * 37) % 256, (i * 91) % 256, (255 - i * 13) % 256)
        jpeg(root / "IMAGO_build_test_resized" / ethec_image_relpath(rec), rgb)
        colour[rec["token"]] = rgb
    return colour


def test_ethec_record_paths():
    a = {"image_path": "2017_02_26R", "image_name": "ETHZ_ENT01_2017_02_26_000182.JPG"}
    b = {"image_path": "ETHZ_ENT01_2017_03_13_001805.JPG", "image_name": ""}
    assert ethec_image_relpath(a) == "2017_02_26R/ETHZ_ENT01_2017_02_26_000182.JPG"
    assert ethec_image_relpath(b) == "2017_03_13R/ETHZ_ENT01_2017_03_13_001805.JPG"
    with pytest.raises(DataError, match="not like"):
        ethec_image_relpath({"image_path": "x", "image_name": ""})


@pytest.mark.skipif(not all(p.is_file() for p in ETHEC_META), reason="shared ETHEC absent")
def test_ethec_shared_metadata_has_the_full_tree():
    h = ethec_hierarchy(ETHEC_META)
    assert h.level_sizes == (6, 21, 135, 561) and h.offsets == (0, 6, 27, 162)
    recs = load_ethec_records(ETHEC_META[0])
    assert len(recs) == 5286
    assert sum(".JPG" in r["image_path"] for r in recs) == 6


def test_ethec_published_splits_end_to_end(tmp_path):
    recs = ethec_records()
    toks = list(recs)
    # a leaf that appears only in test must still be in the hierarchy
    split_of = {t: ("test" if recs[t]["genus"] == "Aporia" else
                    "val" if i % 4 == 1 else "test" if i % 4 == 2 else "train")
                for i, t in enumerate(toks)}
    for s in ("train", "val", "test"):
        (tmp_path / f"{s}.json").write_text(json.dumps(
            {t: recs[t] for t in toks if split_of[t] == s}))
    colour = write_ethec_images(tmp_path, recs)
    cfg = DataConfig(name="ethec", root=str(tmp_path), image_size=8,
                     params={"cache_dir": str(tmp_path / "cache"), "workers": 2})
    ds = load_dataset(cfg)
    h = ds.hierarchy
    assert h.level_sizes == (2, 3, 3, 4) and ds.meta["splits"] == "published"
    assert "Aporia_crataegi" in h.index
    assert [len(ds.train), len(ds.val), len(ds.test)] == [
        sum(v == s for v in split_of.values()) for s in ("train", "val", "test")]
    assert ds.train.images.dtype == np.uint8 and ds.train.images.shape[1:] == (8, 8, 3)
    assert isinstance(ds.test.images, np.memmap) and ds.channels == 3
    assert ds.mean == (0.485, 0.456, 0.406)
    by_file = {ethec_image_relpath(r): r for r in recs.values()}
    for split in (ds.train, ds.val, ds.test):
        for img, lab, rel in zip(split.images, split.level_labels, split.ids, strict=True):
            rec = by_file[rel]
            assert np.abs(mean_rgb(img) - colour[rec["token"]]).max() < 6  # JPEG + resize
            names = [h.names[h.global_index(lvl, int(j))] for lvl, j in enumerate(lab)]
            assert names == [rec["family"], rec["subfamily"], rec["genus"],
                             f"{rec['genus']}_{rec['specific_epithet']}"]
    # second load comes from the cache: the images are no longer needed
    for f in (tmp_path / "IMAGO_build_test_resized").rglob("*.JPG"):
        f.unlink()
    again = load_dataset(cfg)
    assert np.array_equal(np.asarray(again.train.images), np.asarray(ds.train.images))


def test_ethec_resplit_small_and_errors(tmp_path):
    recs = ethec_records()
    (tmp_path / "ethec_all.json").write_text(json.dumps(recs))
    write_ethec_images(tmp_path, recs)
    cfg = DataConfig(name="ethec", root=str(tmp_path), image_size=4,
                     params={"cache_dir": str(tmp_path / "c"), "split_seed": 1})
    ds = load_dataset(cfg)
    assert ds.meta["splits"] == "resplit"
    leaf = {s: [ds.hierarchy.names[ds.hierarchy.offsets[-1] + int(j)]
                for j in getattr(ds, s).level_labels[:, -1]] for s in ("train", "val", "test")}
    count = {s: {x: leaf[s].count(x) for x in set(sum(leaf.values(), []))} for s in leaf}
    assert [count[s]["Pyrgus_alveus"] for s in leaf] == [10, 1, 1]
    assert [count[s]["Pyrgus_armoricanus"] for s in leaf] == [2, 1, 2]
    assert [count[s]["Ochlodes_venata"] for s in leaf] == [1, 0, 1]
    assert [count[s]["Aporia_crataegi"] for s in leaf] == [1, 0, 0]
    same = load_dataset(cfg)
    assert same.val.ids == ds.val.ids
    other = load_dataset(cfg.model_copy(update={"params": {**cfg.params, "split_seed": 2}}))
    assert other.test.ids != ds.test.ids or other.val.ids != ds.val.ids
    # ETHEC Small keeps only Table 2.1 leaves (here Pyrgus alveus, Ochlodes venata, Aporia
    # crataegi)
    small = load_dataset(cfg.model_copy(update={"params": {**cfg.params, "small": True}}))
    assert small.hierarchy.level_sizes == (2, 3, 3, 3)
    with pytest.raises(ConfigError, match="colour"):
        load_dataset(cfg.model_copy(update={"params": {"colour": 1}}))
    with pytest.raises(DataError, match="train.json"):
        load_dataset(cfg.model_copy(update={"params": {**cfg.params, "splits": "published"}}))
    # a missing image names the file
    missing = next(iter((tmp_path / "IMAGO_build_test_resized").rglob("*.JPG")))
    missing.unlink()
    with pytest.raises(DataError, match=missing.name):
        load_dataset(cfg.model_copy(update={"image_size": 5}))


def test_ethec_malformed_metadata(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"t": {"family": "F", "image_name": "x"}}))
    with pytest.raises(DataError, match=r"bad.json: record 't' has no 'subfamily'"):
        load_ethec_records(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_ethec_records(tmp_path / "broken.json")


# ---------------------------------------------------------------------------- CIFAR-10
def write_cifar10_pickles(d: Path, per_class: int) -> None:
    d.mkdir(parents=True)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        y = np.repeat(np.arange(10), per_class)
        x = np.repeat((y * 20 + 5).astype(np.uint8)[:, None], 3072, axis=1)
        with open(d / f, "wb") as fh:
            pickle.dump({b"data": x, b"labels": y.tolist()}, fh)


def test_cifar10_pickles_pooled_split(tmp_path):
    write_cifar10_pickles(tmp_path / "cifar-10-batches-py", per_class=2)  # 12 per class
    cfg = DataConfig(name="cifar10", root=str(tmp_path), image_size=8,
                     params={"cache_dir": str(tmp_path / "c")})
    ds = load_dataset(cfg)
    assert ds.hierarchy.level_sizes == (2, 4, 10)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [100, 10, 10]  # 10/1/1 per class
    h = ds.hierarchy
    for split in (ds.train, ds.val, ds.test):
        for img, lab in zip(split.images, split.level_labels, strict=True):
            cls = h.names[h.offsets[2] + int(lab[2])]
            assert img[0, 0, 0] == CIFAR10_CLASSES.index(cls) * 20 + 5
            assert h.names[int(lab[0])] == ("living" if cls in {
                "cat", "deer", "dog", "horse", "bird", "frog"} else "non-living")
    cat = h.index["cat"]
    assert h.names[h.parents[cat][0]] == "mammal"
    assert {h.names[c] for c in h.children[h.index["craft"]]} == {"airplane", "ship"}
    lim = load_dataset(cfg.model_copy(update={"params": {**cfg.params, "limit_per_class": 3}}))
    assert [len(lim.train), len(lim.val), len(lim.test)] == [10, 10, 10]
    std = load_dataset(cfg.model_copy(update={"val_fraction": 0.2, "params": {
        **cfg.params, "splits": "standard"}}))
    assert [len(std.train), len(std.val), len(std.test)] == [80, 20, 20]


def _replace_image(path: Path, rgb: tuple[int, int, int], size: int = 20) -> None:
    """New pixels under the same file name, with an mtime that surely differs."""
    st = path.stat()
    jpeg(path, rgb, size=size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_cifar10_jpeg_folder_and_archive(tmp_path):
    colours = {"cat": (250, 10, 10), "ship": (10, 10, 250), "frog": (10, 250, 10)}
    for split, n in (("train", 4), ("test", 1)):
        for cls, rgb in colours.items():
            for i in range(n):
                jpeg(tmp_path / "jpg" / split / cls / f"{i:04d}.jpg", rgb, size=32)
    cfg = DataConfig(name="cifar10", root=str(tmp_path / "jpg"), image_size=16,
                     params={"cache_dir": str(tmp_path / "c")})
    ds = load_dataset(cfg)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [6, 3, 6]  # 5 per class: 2/1/2
    h = ds.hierarchy
    for img, lab in zip(ds.train.images, ds.train.level_labels, strict=True):
        cls = h.names[h.offsets[2] + int(lab[2])]
        assert np.abs(mean_rgb(img) - colours[cls]).max() < 6
    # the same tree inside a .tar.gz (with a top folder), read without extracting
    tar = tmp_path / "cifar.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(tmp_path / "jpg", arcname="cifar10")
    ar = load_dataset(DataConfig(name="cifar10", image_size=16, params={
        "archive": str(tar), "cache_dir": str(tmp_path / "c2")}))
    assert [len(ar.train), len(ar.val), len(ar.test)] == [6, 3, 6]
    assert np.array_equal(np.asarray(ar.train.level_labels), np.asarray(ds.train.level_labels))
    assert np.abs(np.asarray(ar.train.images, float) - np.asarray(ds.train.images)).max() < 1
    # an image replaced under the same name: the cache rebuilds, no stale pixels
    _replace_image(tmp_path / "jpg" / "test" / "cat" / "0000.jpg", colours["ship"], size=32)
    again = load_dataset(cfg)
    split = next(x for x in (again.train, again.val, again.test) if "test/cat/0000.jpg" in x.ids)
    row = split.ids.index("test/cat/0000.jpg")
    assert np.abs(mean_rgb(split.images[row]) - colours["ship"]).max() < 6
    (tmp_path / "jpg" / "train" / "unicorn").mkdir()
    with pytest.raises(DataError, match="unicorn"):
        load_dataset(cfg.model_copy(update={"image_size": 8}))


@pytest.mark.skipif(not CIFAR_TAR.is_file(), reason="shared CIFAR-10 tarball absent")
def test_cifar10_real_tarball(tmp_path):
    ds = load_dataset(DataConfig(name="cifar10", image_size=32, params={
        "archive": str(CIFAR_TAR), "limit_per_class": 3, "cache_dir": str(tmp_path)}))
    assert [len(ds.train), len(ds.val), len(ds.test)] == [10, 10, 10]
    assert ds.train.images.shape == (10, 32, 32, 3)
    assert float(np.asarray(ds.train.images).std()) > 10  # real pictures, not blank
    assert all(i.startswith(("train/", "test/")) for i in ds.train.ids)


# ---------------------------------------------------------------------------- Fashion-MNIST
def idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">i", d) for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def test_fashion_mnist_idx(tmp_path):
    for prefix, per_class in (("train", 6), ("t10k", 2)):
        y = np.repeat(np.arange(10), per_class)
        x = np.repeat((y * 25 + 3).astype(np.uint8)[:, None, None], 28, 1).repeat(28, 2)
        imgs, labs = idx_bytes(x), idx_bytes(y)
        if prefix == "train":  # gzip for train, raw for test
            (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(imgs))
            (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labs))
        else:
            (tmp_path / "t10k-images-idx3-ubyte").write_bytes(imgs)
            (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(labs)
    cfg = DataConfig(name="fashion_mnist", root=str(tmp_path), image_size=28,
                     params={"val_size": 10, "cache_dir": str(tmp_path / "c")})
    ds = load_dataset(cfg)
    h = ds.hierarchy
    assert h.level_sizes == (3, 10)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [50, 10, 20]
    assert ds.channels == 3 and ds.train.images.shape[1:] == (28, 28, 3)
    for img, lab in zip(ds.val.images, ds.val.level_labels, strict=True):
        cls = h.names[h.offsets[1] + int(lab[1])]
        assert (img == FMNIST_CLASSES.index(cls) * 25 + 3).all()
        group = h.names[int(lab[0])]
        assert group == {"trouser": "bottom-wear-and-accessories", "bag":
                         "bottom-wear-and-accessories", "sandal": "footwear", "sneaker":
                         "footwear", "ankle-boot": "footwear"}.get(cls, "top-wear")
    grey = load_dataset(cfg.model_copy(update={"image_size": 14, "params": {
        **cfg.params, "channels": 1}}))
    assert grey.channels == 1 and grey.train.images.shape[1:] == (14, 14, 1)
    assert len(grey.mean) == 1
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x09\x01")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: bad magic"):
        load_dataset(cfg)


# ---------------------------------------------------------------------------- CIFAR-100
def write_cifar100(d: Path) -> None:
    d.mkdir(parents=True)
    fine = ["apple", "bus", "maple_tree", "pear"]
    coarse_of = [0, 1, 2, 0]  # fruit, vehicles, trees
    for f, n in (("train", 5), ("test", 1)):
        y = np.repeat(np.arange(4), n)
        x = np.repeat((y * 60).astype(np.uint8)[:, None], 3072, axis=1)
        with open(d / f, "wb") as fh:
            pickle.dump({b"data": x, b"fine_labels": y.tolist(),
                         b"coarse_labels": [coarse_of[i] for i in y]}, fh)
    with open(d / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [s.encode() for s in fine],
                     b"coarse_label_names": [b"fruit", b"vehicles", b"trees"]}, fh)


def test_cifar100_superclasses_and_hierarchy_files(tmp_path):
    write_cifar100(tmp_path / "cifar-100-python")
    cfg = DataConfig(name="cifar100", root=str(tmp_path), image_size=8, val_fraction=0.2,
                     params={"cache_dir": str(tmp_path / "c")})
    ds = load_dataset(cfg)
    h = ds.hierarchy
    assert h.level_sizes == (3, 4)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [16, 4, 4]
    for img, lab in zip(ds.test.images, ds.test.level_labels, strict=True):
        fine = h.names[h.offsets[1] + int(lab[1])]
        assert img[0, 0, 0] == ["apple", "bus", "maple_tree", "pear"].index(fine) * 60
        assert h.names[int(lab[0])] == {"apple": "fruit", "pear": "fruit", "bus": "vehicles",
                                        "maple_tree": "trees"}[fine]
    # Barz-style ids: 0..3 are the classes; 2 (maple_tree) sits one level higher
    hf = tmp_path / "h.parent-child.txt"
    hf.write_text("10 11\n10 12\n11 0\n11 3\n12 13\n13 1\n10 2\n")
    names = tmp_path / "names.txt"
    names.write_text("0 apple\n1 bus\n2 maple_tree\n3 pear\n10 entity\n11 fruit\n12 thing\n"
                     "13 vehicle\n")
    p = {**cfg.params, "hierarchy_file": str(hf)}
    with pytest.raises(ConfigError, match="leveling='pad'"):
        load_dataset(cfg.model_copy(update={"params": p}))
    padded = load_dataset(cfg.model_copy(update={"params": {**p, "leveling": "pad"}}))
    ph = padded.hierarchy
    # depths: 10:0; 11, 12, 2:1; 0, 3, 13:2; 1:3 -> 0, 3 get one chain node, 2 gets two
    assert ph.is_leveled and ph.level_sizes == (1, 3, 4, 4)
    assert ph.names[ph.parents[ph.index["2"]][0]] == "2~2"
    assert ph.names[ph.parents[ph.index["2~2"]][0]] == "2~1"
    named = load_dataset(cfg.model_copy(update={"params": {
        **p, "leveling": "pad", "class_names_file": str(names)}}))
    nh = named.hierarchy
    lab = named.test.level_labels[0]
    assert [nh.names[nh.global_index(i, int(j))] for i, j in enumerate(lab)] == [
        "entity", "fruit", "apple~2", "apple"]


# ---------------------------------------------------------------------------- image folder
def test_image_folder_with_hierarchy(tmp_path):
    root = tmp_path / "data"
    colours = {"oak": (200, 30, 30), "pine": (30, 200, 30), "rose": (30, 30, 200)}
    for split, n in (("train", 10), ("test", 2)):
        for cls, rgb in colours.items():
            for i in range(n):
                ext = "png" if i % 2 else "jpg"
                p = root / split / cls / f"{i}.{ext}"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((12, 12, 3), rgb, np.uint8)).save(p)
    hf = tmp_path / "h.txt"
    hf.write_text("oak tree\npine tree\nrose flower\n")  # child parent
    cfg = DataConfig(name="image_folder", root=str(root), image_size=6, val_fraction=0.2,
                     params={"hierarchy_file": str(hf), "child_parent": True,
                             "cache_dir": str(tmp_path / "c")})
    ds = load_dataset(cfg)
    h = ds.hierarchy
    assert h.level_sizes == (2, 3)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [24, 6, 6]
    for img, lab in zip(ds.val.images, ds.val.level_labels, strict=True):
        cls = h.names[h.offsets[1] + int(lab[1])]
        assert np.abs(mean_rgb(img) - colours[cls]).max() < 6
        assert h.names[int(lab[0])] == ("flower" if cls == "rose" else "tree")
    # the cache follows the files: an image replaced under the same name, and an image
    # moved to another class folder (same row count, same names elsewhere)
    _replace_image(root / "test" / "oak" / "1.png", colours["pine"])
    (root / "test" / "oak" / "0.jpg").rename(root / "test" / "rose" / "x.jpg")
    again = load_dataset(cfg)
    ids = list(again.test.ids)
    for rel, cls, rgb in (("test/oak/1.png", "oak", "pine"), ("test/rose/x.jpg", "rose", "oak")):
        i = ids.index(rel)
        assert h.names[h.offsets[1] + int(again.test.level_labels[i][1])] == cls
        assert np.abs(mean_rgb(again.test.images[i]) - colours[rgb]).max() < 6, rel
    flat = load_dataset(cfg.model_copy(update={"params": {"cache_dir": str(tmp_path / "c")}}))
    assert flat.hierarchy.level_sizes == (3,)
    hf.write_text("oak tree\npine tree\n")
    with pytest.raises(DataError, match="'rose' is not a leaf"):
        load_dataset(cfg)



def test_batched_decode_matches_the_per_image_decoder(tmp_path, monkeypatch):
    """The nvJPEG path's code (batched decode_jpeg + resize), run on the CPU here: same pixels
    as the per-image decoder, a PNG in the batch falls back, and the env switch is checked."""
    import torch
    from torchvision.io import encode_jpeg, encode_png

    from hpsearch.data.cache import Encoded, decode_batch, decode_device, decode_image

    g = torch.Generator().manual_seed(0)
    imgs = [torch.randint(0, 256, (3, 40 + 8 * i, 48, ), dtype=torch.uint8, generator=g)
            for i in range(3)]
    jpgs = [Encoded(f"{i}.jpg", encode_jpeg(im, quality=90).numpy().tobytes())
            for i, im in enumerate(imgs)]
    got = decode_batch(jpgs, 32, "cpu")
    want = np.stack([decode_image(j, 32) for j in jpgs])
    assert got.shape == (3, 32, 32, 3) and np.array_equal(got, want)
    png = Encoded("x.png", encode_png(imgs[0]).numpy().tobytes())
    mixed = decode_batch([jpgs[1], png], 32, "cpu")
    assert np.array_equal(mixed[0], want[1]) and np.array_equal(mixed[1], decode_image(png, 32))
    monkeypatch.setenv("HPSEARCH_DECODE_DEVICE", "auto")
    assert decode_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("HPSEARCH_DECODE_DEVICE", "gpu0")
    with pytest.raises(DataError, match="expected cpu, cuda or auto"):
        decode_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("HPSEARCH_DECODE_DEVICE", "cuda")
        with pytest.raises(DataError, match="no CUDA device"):
            decode_device()


def test_a_full_disk_is_a_data_error_not_a_sigbus(tmp_path, monkeypatch):
    """The cache reserves its bytes before writing through the memmap (a sparse file would
    die with SIGBUS on a full disk): ENOSPC becomes a DataError naming the cache dir."""
    import errno

    from hpsearch.data.cache import cached_image_array

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    arr = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(DataError, match=r"cannot reserve .* MiB for the image cache in .*"
                                        r"No space left on device.*cache_dir"):
        cached_image_array(["full"], arr, None, cache=tmp_path / "c", name="t")
    assert not list((tmp_path / "c").rglob("images*.npy"))  # nothing half-written left
    monkeypatch.undo()
    got = cached_image_array(["full"], arr, None, cache=tmp_path / "c", name="t")
    assert got.shape == (4, 8, 8, 3)


def test_training_and_predict_decode_images_the_same_way(tmp_path):
    """16-bit PNGs are rescaled (not wrapped modulo 256), BMP goes through PIL, and the
    bundle's reader gives the very pixels the training cache stores."""
    import torch

    from hpsearch.bundle import read_images
    from hpsearch.data.cache import decode_image

    p16 = tmp_path / "deep.png"
    Image.fromarray(np.full((10, 10), 107 * 257, np.uint16)).save(p16)
    assert Image.open(p16).mode.startswith("I;16")
    got = decode_image(p16, 6)
    assert got.shape == (6, 6, 3) and np.abs(got.astype(int) - 107).max() <= 1
    bmp = tmp_path / "x.bmp"
    Image.fromarray(np.full((9, 7, 3), (20, 140, 230), np.uint8)).save(bmp)
    rgb = tmp_path / "x.jpg"
    jpeg(rgb, (200, 60, 10), size=13)
    for f in (p16, bmp, rgb):
        train = decode_image(f, 6)
        pred = read_images([f], 6, 3)[0]
        assert torch.equal(pred, torch.from_numpy(train)), f
        gray = read_images([f], 6, 1)[0]
        assert gray.shape == (6, 6, 1)


def test_empty_splits_and_test_only_classes_are_refused(tmp_path):
    root = tmp_path / "data"
    for split, cls, n in (("train", "cat", 4), ("train", "dog", 4), ("test", "cat", 2),
                          ("test", "Cat", 1)):
        for i in range(n):
            jpeg(root / split / cls / f"{i}.jpg", (100, 100, 100))
    cfg = DataConfig(name="image_folder", root=str(root), image_size=6, val_fraction=0.2,
                     params={"cache_dir": str(tmp_path / "c")})
    with pytest.raises(DataError, match=r"class folder\(s\) \['Cat'\] appear only outside "
                                        r"train/"):
        load_dataset(cfg)
    for f in (root / "test" / "Cat").iterdir():
        f.rename(root / "test" / "cat" / f"moved-{f.name}")
    (root / "test" / "Cat").rmdir()
    assert len(load_dataset(cfg).val) == 2  # 0.2 * 4 rounds to 1 per class
    # 0.1 * 4 rounds to 0: no validation image at all
    with pytest.raises(DataError, match=r"the val split is empty .* larger data.val_fraction"):
        load_dataset(cfg.model_copy(update={"val_fraction": 0.1}))


def test_metadata_files_and_hidden_folders_are_not_images_or_classes(tmp_path):
    root = tmp_path / "data"
    for split, n in (("train", 5), ("test", 2)):
        for cls, rgb in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
            for i in range(n):
                jpeg(root / split / cls / f"{i}.jpg", rgb)
    (root / "train" / "a" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    jpeg(root / "train" / ".ipynb_checkpoints" / "0.jpg", (0, 0, 0))
    jpeg(root / "train" / "b" / ".thumbs" / "0.jpg", (0, 0, 0))
    cfg = DataConfig(name="image_folder", root=str(root), image_size=6, val_fraction=0.2,
                     params={"cache_dir": str(tmp_path / "c")})
    ds = load_dataset(cfg)
    assert ds.hierarchy.level_sizes == (2,)
    assert len(ds.train) + len(ds.val) == 10


def test_dataset_hierarchy_reads_labels_without_decoding(tmp_path):
    """What ``hpsearch report`` uses to count labels: no image is decoded, no cache built."""
    from hpsearch.data.labels import dataset_hierarchy

    root = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("a", "b", "c"):
            for i in range(3):
                jpeg(root / split / cls / f"{i}.jpg", (10, 10, 10))
    cfg = DataConfig(name="image_folder", root=str(root), image_size=6,
                     params={"cache_dir": str(tmp_path / "c")})
    assert dataset_hierarchy(cfg).level_sizes == (3,)
    assert not (tmp_path / "c").exists()


def test_a_process_waiting_for_the_cache_lock_says_so(tmp_path, capfd):
    from hpsearch.data.cache import locked

    got: list[str] = []

    def take() -> None:
        with locked(tmp_path / ".lock"):
            got.append("in")

    with locked(tmp_path / ".lock"):
        t = threading.Thread(target=take)
        t.start()
        t.join(timeout=1.0)
        assert got == []  # blocked behind us
    t.join(timeout=10)
    assert got == ["in"]
    assert "waiting for another process to finish the cache entry" in capfd.readouterr().err
