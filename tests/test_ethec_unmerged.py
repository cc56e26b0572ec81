"""ETHEC unmerged hierarchy (thesis §2.3.3) beside the merged tree.

Merged: leaves are genus + specific epithet, a tree. Unmerged: the bare names, one node per
distinct name per level, so an epithet seen under two genera (or a genus under two subfamilies)
is ONE node with several parents (the thesis' full collection: 3,387 nodes, 3,537 edges, more
than a forest has). Generated metadata copies the record layout of the shared val.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpsearch.config import DataConfig
from hpsearch.data import DATASETS
from hpsearch.data.ethec import build_ethec, ethec_dataset_hierarchy, ethec_hierarchy
from hpsearch.data.labels import load_label_hierarchy
from hpsearch.errors import ConfigError, DataError, HierarchyError
from hpsearch.hierarchy import Hierarchy

SHARED = Path(os.environ.get("HPSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
ETHEC_META = [SHARED / "data" / "ethec" / f for f in ("val.json", "test.json")]


def record(i: int, family: str, subfamily: str, genus: str, epithet: str) -> dict:
    """One record laid out like the first one of ../shared/data/ethec/val.json."""
    return {
        "token": f"tok-{i:04d}",
        "image_path": "2017_02_26R",
        "image_name": f"ETHZ_ENT01_2017_02_26_{i:06d}.JPG",
        "family": family,
        "subfamily": subfamily,
        "genus": genus,
        "specific_epithet": epithet,
        "subspecific_epithet": "",
        "infraspecific_epithet": "",
        "author": "(Pallas, 1771)",
        "country": "Switzerland",
        "primary_division": "Glarus",
        "dec_lat": 46.91992,
        "dec_long": 8.9683,
        "barcode": f"ETHZ-ENT{i:07d}",
    }


#: staudingeri under Colias (Pieridae) and Cupido (Lycaenidae), the thesis' own example.
EPITHET_DUP = [
    ("Pieridae", "Coliadinae", "Colias", "staudingeri"),
    ("Lycaenidae", "Polyommatinae", "Cupido", "staudingeri"),
    ("Pieridae", "Coliadinae", "Colias", "crocea"),
    ("Lycaenidae", "Polyommatinae", "Cupido", "minimus"),
    ("Pieridae", "Pierinae", "Aporia", "crataegi"),
    ("Pieridae", "Coliadinae", "Colias", "crocea"),  # a repeated path adds nothing
]
#: made up: genus Erebia under two subfamilies (plus the epithet duplicate above).
GENUS_DUP = EPITHET_DUP + [
    ("Nymphalidae", "Satyrinae", "Erebia", "aethiops"),
    ("Nymphalidae", "Heliconiinae", "Erebia", "ligea"),
]


def write_json(path: Path, rows, start: int = 0) -> Path:
    recs = [record(start + i, *r) for i, r in enumerate(rows)]
    path.write_text(json.dumps({r["token"]: r for r in recs}))
    return path


def parents(h: Hierarchy, name: str) -> set[str]:
    return {h.names[p] for p in h.parents[h.index[name]]}


def test_merged_vs_unmerged_counts_by_hand(tmp_path):
    f = write_json(tmp_path / "m.json", EPITHET_DUP)
    merged = ethec_hierarchy(f)
    unmerged = ethec_hierarchy(f, hierarchy="unmerged")
    assert merged.level_sizes == (2, 3, 3, 5)  # Colias_/Cupido_staudingeri are two leaves
    assert unmerged.level_sizes == (2, 3, 3, 4)  # staudingeri is one
    assert merged.is_tree and not unmerged.is_tree
    assert merged.level_names[-1] == "genus_specific_epithet"
    assert unmerged.level_names == ("family", "subfamily", "genus", "specific_epithet")
    assert {"Colias_staudingeri", "Cupido_staudingeri"} <= set(merged.names)
    assert "staudingeri" not in merged.names
    assert parents(unmerged, "staudingeri") == {"Colias", "Cupido"}
    assert parents(unmerged, "crocea") == {"Colias"}
    # edges: 3 + 3 + 5 (the merged tree's 5 leaf edges are the unmerged 4 epithets' 5 parents)
    assert len(unmerged.parent_edges) == len(merged.parent_edges) == 11
    g = load_label_hierarchy("ethec", paths=[str(f)], hierarchy="unmerged")
    pairs = set(g.names_of(g.closure))
    assert {("Pieridae", "staudingeri"), ("Lycaenidae", "staudingeri"),
            ("Coliadinae", "staudingeri"), ("Polyommatinae", "staudingeri")} <= pairs
    assert ("Pierinae", "staudingeri") not in pairs
    assert g.meta["hierarchy"] == "unmerged"


def test_genus_under_two_subfamilies(tmp_path):
    f = write_json(tmp_path / "g.json", GENUS_DUP)
    with pytest.raises(HierarchyError, match="two parents"):  # merged only merges the leaf
        ethec_hierarchy(f)
    h = ethec_hierarchy(f, hierarchy="unmerged")
    assert h.level_sizes == (3, 5, 4, 6)
    assert parents(h, "Erebia") == {"Satyrinae", "Heliconiinae"}
    assert parents(h, "Satyrinae") == {"Nymphalidae"}
    assert sorted(h.names[i] for i, ps in enumerate(h.parents) if len(ps) > 1) == \
        ["Erebia", "staudingeri"]


def test_default_is_the_merged_tree_unchanged(tmp_path):
    f = write_json(tmp_path / "m.json", EPITHET_DUP)
    rows = [(a, b, c, f"{c}_{d}") for a, b, c, d in EPITHET_DUP]
    ref = Hierarchy.from_level_labels(
        rows, level_names=("family", "subfamily", "genus", "genus_specific_epithet"))
    for h in (ethec_hierarchy(f), ethec_hierarchy(f, hierarchy="merged")):
        assert h.names == ref.names and h.parents == ref.parents
    g0 = load_label_hierarchy("ethec", paths=[str(f)])
    g1 = load_label_hierarchy("ethec", paths=[str(f)], hierarchy="merged")
    assert g0.nodes == g1.nodes == ref.names and np.array_equal(g0.closure, g1.closure)
    assert "hierarchy" not in g0.meta


def test_bad_option_and_name_on_two_levels(tmp_path):
    f = write_json(tmp_path / "m.json", EPITHET_DUP)
    with pytest.raises(ConfigError, match="merged or unmerged.*'flat'"):
        load_label_hierarchy("ethec", paths=[str(f)], hierarchy="flat")
    cfg = DataConfig(name="ethec", params={"metadata_files": [str(f)], "hierarchy": "flat"})
    with pytest.raises(ConfigError, match="data.params.hierarchy must be merged or unmerged"):
        ethec_dataset_hierarchy(cfg)
    g = write_json(tmp_path / "x.json", [("Pieridae", "Coliadinae", "Colias", "Colias")])
    with pytest.raises(DataError, match="'Colias' is both a genus and a specific_epithet"):
        ethec_hierarchy(g, hierarchy="unmerged")


def published(tmp_path: Path, rows) -> Path:
    for k, name in enumerate(("train.json", "val.json", "test.json")):
        write_json(tmp_path / name, rows, start=100 * k)
    return tmp_path


def test_image_dataset_refuses_the_dag(tmp_path):
    root = published(tmp_path, EPITHET_DUP)
    cfg = DataConfig(name="ethec", root=str(root), params={"hierarchy": "unmerged"})
    h = ethec_dataset_hierarchy(cfg)  # label-only readers get the DAG
    assert h.level_sizes == (2, 3, 3, 4) and not h.is_tree
    g = load_label_hierarchy("dataset", name="ethec", root=str(root),
                             params={"hierarchy": "unmerged"})
    assert g.hierarchy.level_sizes == (2, 3, 3, 4)
    with pytest.raises(ConfigError) as err:  # before any image is looked for
        DATASETS.get("ethec")(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert "data.params.hierarchy=unmerged gives a DAG (1 labels" in msg
    assert "'staudingeri' under 'Colias', 'Cupido'" in msg
    assert "hierarchy=merged" in msg and "label_source: ethec, hierarchy: unmerged" in msg


def test_image_dataset_unmerged_tree_builds(tmp_path):
    rows = [r for r in EPITHET_DUP if r[2] != "Cupido"]  # no duplicate name: still a tree
    root = published(tmp_path, rows)
    for rel in {f"2017_02_26R/ETHZ_ENT01_2017_02_26_{i:06d}.JPG"
                for k in range(3) for i in range(100 * k, 100 * k + len(rows))}:
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "images" / rel, "JPEG")
    params = {"hierarchy": "unmerged", "cache_dir": str(tmp_path / "cache"), "workers": 1}
    ds = build_ethec(DataConfig(name="ethec", root=str(root), image_size=8, params=params))
    h = ds.hierarchy
    assert h.is_tree and h.level_sizes == (1, 2, 2, 3)
    assert h.level_names[-1] == "specific_epithet" and ds.meta["hierarchy"] == "unmerged"
    leaf = [h.names[h.global_index(3, int(i))] for i in ds.train.level_labels[:, 3]]
    assert leaf == [r[3] for r in rows]
    merged = build_ethec(DataConfig(name="ethec", root=str(root), image_size=8,
                                    params={**params, "hierarchy": "merged"}))
    assert "hierarchy" not in merged.meta
    assert np.array_equal(merged.train.level_labels, ds.train.level_labels)  # same indices


@pytest.mark.skipif(not all(p.is_file() for p in ETHEC_META),
                    reason="../shared/data/ethec/{val,test}.json absent")
def test_unmerged_on_shared_val_test():
    """val+test: the merged 6/21/135/561 tree; unmerged 6/21/135/551, 10 epithets under two
    genera. Consistent with the thesis' whole-collection 25/91/842/2,429 (a superset)."""
    paths = [str(p) for p in ETHEC_META]
    m = load_label_hierarchy("ethec", paths=paths).hierarchy
    g = load_label_hierarchy("ethec", paths=paths, hierarchy="unmerged")
    u = g.hierarchy
    assert m.level_sizes == (6, 21, 135, 561)
    assert u.level_sizes == (6, 21, 135, 551) and u.num_nodes == 713
    multi = {u.names[i]: parents(u, u.names[i]) for i, ps in enumerate(u.parents) if len(ps) > 1}
    assert len(multi) == 10 and all(len(v) == 2 for v in multi.values())
    assert multi["staudingeri"] == {"Colias", "Parnassius"}
    assert all(u.level_of(u.index[n]) == 3 for n in multi)  # no genus has two subfamilies
    assert len(u.parent_edges) == len(m.parent_edges) == 717  # 551 + 10 = 561 leaf edges
    assert len(g.closure) == 1973
