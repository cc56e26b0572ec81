"""CUB-200-2011, NABirds and ILSVRC 2012 loaders (hpsearch.data.barz_datasets) on tiny
generated files in the published layouts, plus Barz & Denzler's real hierarchy files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from hpsearch.config import DataConfig
from hpsearch.data import load_dataset
from hpsearch.data.barz_datasets import read_hierarchy, split_rows
from hpsearch.data.labels import dataset_hierarchy
from hpsearch.errors import ConfigError, DataError
from hpsearch.hierarchy import unpadded

from .barz_layouts import (
    COLOURS,
    CUB_CLASSES,
    NAB_LEAVES,
    WNIDS,
    cub_config,
    ilsvrc_config,
    nabirds_config,
    write_cub,
    write_ilsvrc,
)

SHARED = Path(os.environ.get("HPSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
HIER = SHARED / "data" / "hierarchies"


def leaf_name(ds, row) -> str:
    h = ds.hierarchy
    return h.names[h.offsets[-1] + int(row[-1])]


def check_pixels_match_labels(ds, colour_of: dict[str, tuple]) -> None:
    for split in (ds.train, ds.val, ds.test):
        for img, lab in zip(split.images, split.level_labels, strict=True):
            rgb = img.reshape(-1, 3).mean(0)
            assert np.abs(rgb - colour_of[leaf_name(ds, lab)]).max() < 8


def test_cub_layout_end_to_end(tmp_path):
    cfg = cub_config(tmp_path)
    ds = load_dataset(cfg)
    h = ds.hierarchy
    # leaves 1, 2 at depth 2 and 3 at depth 3: padded to 4 levels
    assert h.is_leveled and h.num_levels == 4 and h.level_sizes[-1] == 3
    u = unpadded(h)
    assert {u.names[i] for i in u.leaves} == {"1", "2", "3"}
    assert u.num_levels == 4 and not u.is_leveled
    # 3 train / 2 test per class; val 0.34 * 3 -> 1 per class
    assert [len(ds.train), len(ds.val), len(ds.test)] == [6, 3, 6]
    check_pixels_match_labels(ds, {str(i): COLOURS[i - 1] for i in (1, 2, 3)})
    assert all(i.startswith("images/") for i in ds.test.ids)
    assert set(ds.train.ids).isdisjoint(ds.val.ids)
    assert ds.mean == pytest.approx((123.82988033 / 255, 127.35116805 / 255,
                                     110.25606303 / 255))
    # the same split again, another with a different seed; the hierarchy-only path agrees
    assert load_dataset(cfg).val.ids == ds.val.ids
    other = [load_dataset(cfg.model_copy(update={"params": {**cfg.params, "split_seed": s}}))
             .val.ids for s in (1, 2, 3)]
    assert any(o != ds.val.ids for o in other)
    hh = dataset_hierarchy(cfg)
    assert hh.names == h.names and hh.parents == h.parents


def test_cub_leaves_named_by_class_name_and_strict_leveling(tmp_path):
    cfg = cub_config(tmp_path)
    hf = tmp_path / "by_name.txt"
    hf.write_text("birds Black_footed_Albatross\nbirds 002.Laysan_Albatross\n"
                  "birds Sooty_Albatross\n")  # leveled; names with and without NNN.
    ds = load_dataset(cfg.model_copy(update={"params": {**cfg.params, "hierarchy_file": str(hf),
                                                        "leveling": "strict"}}))
    assert ds.hierarchy.level_sizes == (1, 3)
    check_pixels_match_labels(ds, {"Black_footed_Albatross": COLOURS[0],
                                   "002.Laysan_Albatross": COLOURS[1],
                                   "Sooty_Albatross": COLOURS[2]})
    with pytest.raises(ConfigError, match="leveling='pad'"):
        load_dataset(cfg.model_copy(update={"params": {**cfg.params, "leveling": "strict"}}))


def test_cub_errors(tmp_path):
    cfg = cub_config(tmp_path)
    hf = tmp_path / "short.txt"
    hf.write_text("10 1\n10 2\n")  # class 3 missing
    with pytest.raises(DataError) as e:
        load_dataset(cfg.model_copy(update={"params": {**cfg.params,
                                                       "hierarchy_file": str(hf)}}))
    msg = str(e.value)
    assert "\n" not in msg and "class 3 ('003.Sooty_Albatross') is not a leaf" in msg
    assert "data.params.hierarchy_file" in msg and str(hf) in msg
    gone = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=f"{gone}: hierarchy file not found") as e:
        dataset_hierarchy(cfg.model_copy(update={"params": {"hierarchy_file": str(gone)}}))
    assert "\n" not in str(e.value)
    (tmp_path / "CUB_200_2011" / "train_test_split.txt").unlink()
    with pytest.raises(DataError, match="train_test_split.txt: file not found"):
        load_dataset(cfg)
    with pytest.raises(ConfigError, match="bbox"):
        load_dataset(cfg.model_copy(update={"params": {"bbox": True}}))
    with pytest.raises(ConfigError, match="data.root"):
        load_dataset(cfg.model_copy(update={"root": None}))


def test_cub_missing_image_names_the_file(tmp_path):
    cfg = cub_config(tmp_path)
    victim = sorted((tmp_path / "CUB_200_2011" / "images").rglob("*.jpg"))[0]
    victim.unlink()
    with pytest.raises(DataError, match=victim.name):
        load_dataset(cfg)


def test_default_hierarchy_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HPSEARCH_SHARED", str(tmp_path / "no-shared"))
    write_cub(tmp_path)
    cfg = DataConfig(name="cub", root=str(tmp_path), params={"cache_dir": str(tmp_path / "c")})
    with pytest.raises(DataError) as e:
        load_dataset(cfg)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "no-shared") in msg
    assert "barz_CUB-Hierarchy_cub_wikispecies.parent-child.txt" in msg


def test_limit_and_train_per_class(tmp_path):
    _, hf = write_cub(tmp_path, n_train=6, n_test=3)
    base = {"hierarchy_file": str(hf), "cache_dir": str(tmp_path / "c")}
    cfg = DataConfig(name="cub", root=str(tmp_path), image_size=8, val_fraction=0.34,
                     params=base)
    full = load_dataset(cfg)
    assert [len(full.train), len(full.val), len(full.test)] == [12, 6, 9]
    lim = load_dataset(cfg.model_copy(update={"params": {**base, "limit_per_class": 3}}))
    assert [len(lim.train), len(lim.val), len(lim.test)] == [6, 3, 9]
    few = load_dataset(cfg.model_copy(update={"params": {**base, "train_per_class": 1}}))
    assert len(few.train) == 3 and few.val.ids == full.val.ids and few.test.ids == full.test.ids
    assert set(few.train.ids) <= set(full.train.ids)


def test_split_rows_is_stratified_and_keeps_a_train_image():
    tr = ["a"] * 10 + ["b"] * 1 + ["c"] * 2
    t, v, te = split_rows(tr, ["a", "b"], 0.5, seed=0)
    cls = np.asarray(tr)
    assert [int((cls[v] == c).sum()) for c in "abc"] == [5, 0, 1]
    assert [int((cls[t] == c).sum()) for c in "abc"] == [5, 1, 1]
    assert sorted(te.tolist()) == [0, 1]
    assert set(t.tolist()).isdisjoint(v.tolist())


def test_nabirds_layout_end_to_end(tmp_path):
    cfg = nabirds_config(tmp_path)
    ds = load_dataset(cfg)
    h = ds.hierarchy
    assert h.is_leveled and h.num_levels == 4
    u = unpadded(h)
    assert sorted(u.names[i] for i in u.leaves) == sorted(NAB_LEAVES)
    assert h.names[h.parents[h.index["300"]][0]] == "7"  # child parent read the right way
    assert [len(ds.train), len(ds.val), len(ds.test)] == [6, 3, 6]
    check_pixels_match_labels(ds, dict(zip(NAB_LEAVES, COLOURS, strict=False)))
    hh = dataset_hierarchy(cfg)
    assert hh.names == h.names and hh.parents == h.parents
    # an image labelled with an inner node (the NABirds classes.txt lists every node)
    lab = Path(cfg.root) / "image_class_labels.txt"
    first = lab.read_text().splitlines()[0].split()[0]
    lab.write_text(lab.read_text().replace(f"{first} 295", f"{first} 7", 1))
    with pytest.raises(DataError, match=r"nabirds class 7 \('Buteos'\) is not a leaf"):
        load_dataset(cfg)


@pytest.mark.parametrize("val", ["flat_csv", "flat_index", "folders"])
def test_ilsvrc_layouts(tmp_path, val):
    root, hf, index = write_ilsvrc(tmp_path, val=val)
    params = {"hierarchy_file": str(hf), "cache_dir": str(tmp_path / "c"),
              "class_index_file": str(index)}
    if val == "flat_index":
        params["val_labels"] = str(root / "val.txt")
    cfg = DataConfig(name="ilsvrc", root=str(root), image_size=8, val_fraction=0.34,
                     params=params)
    ds = load_dataset(cfg)
    h = ds.hierarchy
    assert h.is_leveled and h.num_levels == 5 and h.level_sizes[-1] == 3
    assert [len(ds.train), len(ds.val), len(ds.test)] == [6, 3, 6]
    check_pixels_match_labels(ds, dict(zip(WNIDS, COLOURS, strict=False)))
    assert all(i.startswith("val/") for i in ds.test.ids)
    assert dataset_hierarchy(cfg).names == h.names


def test_ilsvrc_errors(tmp_path):
    cfg = ilsvrc_config(tmp_path)
    root = Path(cfg.root)
    (root / "LOC_val_solution.csv").rename(root / "elsewhere.csv")
    with pytest.raises(DataError, match="flat val images need labels"):
        load_dataset(cfg)
    (root / "gt.txt").write_text("65\n970\n")
    with pytest.raises(DataError, match="devkit"):
        load_dataset(cfg.model_copy(update={"params": {**cfg.params,
                                                       "val_labels": str(root / "gt.txt")}}))
    (root / "train" / "n09999999").mkdir()
    with pytest.raises(DataError, match="ilsvrc class 'n09999999' is not a leaf"):
        dataset_hierarchy(cfg)
    with pytest.raises(DataError, match="hierarchy file not found"):
        dataset_hierarchy(cfg.model_copy(update={"params": {"hierarchy_file": "/nonexistent"}}))


def test_ilsvrc_contract_config_loads(tmp_path):
    assert len(load_dataset(ilsvrc_config(tmp_path)).test) == 6


@pytest.mark.skipif(not HIER.is_dir(), reason="shared Barz hierarchies absent")
def test_barz_shared_hierarchies_match_the_class_lists():
    cub, _ = read_hierarchy("cub")
    cub_leaves = {cub.names[i] for i in cub.leaves}
    cub_classes = [ln.split()[0] for ln in
                   (HIER / "barz_CUB-Hierarchy_classes_wikispecies.txt").read_text().splitlines()
                   if ln.strip()]
    assert len(cub_classes) == 200 and cub_leaves == set(cub_classes) == {
        str(i) for i in range(1, 201)}
    assert cub.is_tree and not cub.is_leveled
    nab, _ = read_hierarchy("nabirds")
    names = dict(ln.split(" ", 1) for ln in
                 (HIER / "barz_NAB-Hierarchy_classes.txt").read_text().splitlines() if ln)
    assert len(names) == nab.num_nodes == 1011 and set(names) == set(nab.names)
    assert len(nab.leaves) == 555 and nab.names[nab.roots[0]] == "0"
    assert len(nab.roots) == 1 and names["0"] == "Birds"
    inet, _ = read_hierarchy("ilsvrc")
    index = json.loads((HIER / "barz_ILSVRC_imagenet_class_index.json").read_text())
    wnids = [index[str(i)][0] for i in range(len(index))]
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    assert {inet.names[i] for i in inet.leaves} == set(wnids)
    assert inet.is_tree and CUB_CLASSES  # the generator's CUB names are CUB's first three
