"""Tiny CUB-200-2011, NABirds and ILSVRC 2012 stand-ins in their published layouts, with
hierarchy files in Barz & Denzler's formats (used by test_barz_datasets and the dataset
contract). Every image is a flat colour of its class (:data:`COLOURS`), so a test can check
that an image carries its own class's labels."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from hpsearch.config import DataConfig

COLOURS = [(220, 20, 20), (20, 220, 20), (20, 20, 220), (220, 220, 20)]


def jpeg(path: Path, rgb: tuple[int, int, int], size: int = 16, ext: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), rgb, np.uint8)).save(path, format=ext, quality=95)


# ---------------------------------------------------------------------------- CUB
CUB_CLASSES = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross")
# Barz's format: "parent child" ids; leaves 1..3 are the CUB class ids, at depths 2, 2, 3
CUB_TREE = "10 11\n10 12\n11 1\n11 2\n12 13\n13 3\n"


def write_cub(tmp: Path, n_train: int = 3, n_test: int = 2) -> tuple[Path, Path]:
    """``tmp/CUB_200_2011/...`` and a hierarchy file; returns (dataset folder, hierarchy)."""
    root = tmp / "CUB_200_2011"
    root.mkdir(parents=True)
    images, labels, split = [], [], []
    iid = 0
    for c, cls in enumerate(CUB_CLASSES, 1):
        for k in range(n_train + n_test):
            iid += 1
            rel = f"{cls}/{cls.split('.', 1)[1]}_{iid:04d}_{k}.jpg"
            jpeg(root / "images" / rel, COLOURS[c - 1], ext="JPEG")
            images.append(f"{iid} {rel}")
            labels.append(f"{iid} {c}")
            split.append(f"{iid} {1 if k < n_train else 0}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "classes.txt").write_text(
        "".join(f"{i} {c}\n" for i, c in enumerate(CUB_CLASSES, 1)))
    hf = tmp / "cub.parent-child.txt"
    hf.write_text(CUB_TREE)
    return root, hf


def cub_config(tmp: Path) -> DataConfig:
    _, hf = write_cub(tmp)
    return DataConfig(name="cub", root=str(tmp), image_size=8, val_fraction=0.34,
                      params={"hierarchy_file": str(hf), "cache_dir": str(tmp / "cache")})


# ---------------------------------------------------------------------------- NABirds
# classes.txt names every node; hierarchy.txt is "child parent"; leaves 295, 296 at depth 2,
# 300 at depth 3 (as NABirds' own files and Barz's copy of them)
NAB_NODES = {"0": "Birds", "1": "Ducks, Geese, and Swans", "2": "Hawks", "7": "Buteos",
             "295": "Common Eider (Adult male)", "296": "Long-tailed Duck (Winter male)",
             "300": "Red-tailed Hawk (Light morph adult)"}
NAB_TREE = "1 0\n2 0\n295 1\n296 1\n7 2\n300 7\n"
NAB_LEAVES = ("295", "296", "300")


def write_nabirds(tmp: Path, n_train: int = 3, n_test: int = 2) -> tuple[Path, Path]:
    root = tmp / "nabirds"
    root.mkdir(parents=True)
    images, labels, split = [], [], []
    for c, cid in enumerate(NAB_LEAVES):
        for k in range(n_train + n_test):
            u = uuid.UUID(int=1000 * c + k + 1)
            rel = f"{int(cid):04d}/{u.hex}.jpg"
            jpeg(root / "images" / rel, COLOURS[c])
            images.append(f"{u} {rel}")
            labels.append(f"{u} {cid}")
            split.append(f"{u} {1 if k < n_train else 0}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "classes.txt").write_text("".join(f"{k} {v}\n" for k, v in NAB_NODES.items()))
    (root / "hierarchy.txt").write_text(NAB_TREE)
    return root, root / "hierarchy.txt"


def nabirds_config(tmp: Path) -> DataConfig:
    root, hf = write_nabirds(tmp)
    return DataConfig(name="nabirds", root=str(root), image_size=8, val_fraction=0.34,
                      params={"hierarchy_file": str(hf), "cache_dir": str(tmp / "cache")})


# ---------------------------------------------------------------------------- ILSVRC
WNIDS = ("n01440764", "n01443537", "n01530575")  # tench, goldfish, brambling
ILSVRC_TREE = ("n00001740 n00015388\nn00015388 n02512053\nn02512053 n01440764\n"
               "n02512053 n01443537\nn00015388 n01503061\nn01503061 n01525720\n"
               "n01525720 n01530575\n")  # parent child; leaves at depths 3, 3, 4


def write_ilsvrc(tmp: Path, *, val: str = "flat_csv", n_train: int = 3,
                 n_val: int = 2) -> tuple[Path, Path, Path]:
    """``tmp/imagenet/{train,val}`` with val ``folders``, ``flat_csv`` (LOC_val_solution.csv)
    or ``flat_index`` (Caffe's ``val.txt``, class indices); returns (root, hierarchy, index)."""
    root = tmp / "imagenet"
    k = 0
    csv, caffe = ["ImageId,PredictionString"], []
    for c, w in enumerate(WNIDS):
        for i in range(n_train):
            jpeg(root / "train" / w / f"{w}_{i}.JPEG", COLOURS[c])
        for _ in range(n_val):
            k += 1
            name = f"ILSVRC2012_val_{k:08d}.JPEG"
            if val == "folders":
                jpeg(root / "val" / w / name, COLOURS[c])
            else:
                jpeg(root / "val" / name, COLOURS[c])
            csv.append(f"{Path(name).stem},{w} 1 2 10 12 {w} 0 0 5 5")
            caffe.append(f"{name} {c}")
    if val == "flat_csv":
        (root / "LOC_val_solution.csv").write_text("\n".join(csv) + "\n")
    elif val == "flat_index":
        (root / "val.txt").write_text("\n".join(caffe) + "\n")
    hf = tmp / "wordnet.parent-child.mintree.txt"
    hf.write_text(ILSVRC_TREE)
    index = tmp / "imagenet_class_index.json"
    index.write_text(json.dumps({str(i): [w, f"class{i}"] for i, w in enumerate(WNIDS)}))
    return root, hf, index


def ilsvrc_config(tmp: Path) -> DataConfig:
    root, hf, _ = write_ilsvrc(tmp)
    return DataConfig(name="ilsvrc", root=str(root), image_size=8, val_fraction=0.34,
                      params={"hierarchy_file": str(hf), "cache_dir": str(tmp / "cache")})
