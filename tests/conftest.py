from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpsearch.hierarchy import Hierarchy

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HPSEARCH_SHARED", ROOT.parent / "shared"))

# small synthetic data for every test: 2 -> 4 -> 8 labels, ~10-30 images per leaf
TINY_DATA = {"level_sizes": [2, 4, 8], "max_per_leaf": 30, "min_per_leaf": 10,
             "amplitudes": [0.6, 0.4, 0.3], "grids": [2, 4, 8]}


def label_tree_file(tmp: Path) -> Path:
    """A 2 -> 6 -> 18 -> 36 tree as a ``parent child`` file (enough non-basic edges for the
    label-only edge splits)."""
    rows = [[f"r{i}"] for i in range(2)]
    for lvl, b in enumerate((3, 3, 2)):
        rows = [row + [f"{row[-1]}_{lvl}{j}"] for row in rows for j in range(b)]
    edges = sorted({(r[i], r[i + 1]) for r in rows for i in range(len(r) - 1)})
    f = tmp / "labels.parent-child.txt"
    f.write_text("\n".join(f"{p} {c}" for p, c in edges) + "\n")
    return f


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["HPSEARCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    yield


@pytest.fixture
def tiny_hierarchy() -> Hierarchy:
    rows = [("a", "a1", "a1x"), ("a", "a1", "a1y"), ("a", "a2", "a2x"),
            ("b", "b1", "b1x"), ("b", "b1", "b1y")]
    return Hierarchy.from_level_labels(rows, level_names=("l0", "l1", "l2"))
