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
