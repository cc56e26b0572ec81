"""The arithmetic of results/search_efficiency.py (issue 15 item 1): trial-epoch accounting,
best-so-far curves, compute-to-target, and the arms' spaces validating like a user's."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import yaml

from hpsearch.search.space import validate_space

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def se():
    spec = importlib.util.spec_from_file_location("search_efficiency",
                                                  ROOT / "results" / "search_efficiency.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["search_efficiency"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_curve_counts_epochs_between_evaluations_in_timestamp_order(se):
    # trial a evaluates every 2 epochs, b every epoch; timestamps interleave them; a's epoch 2
    # is logged twice (a resumed trial): no new compute for the repeat
    events = [
        (10.0, "a", 2, 0.5),
        (11.0, "b", 1, 0.2),
        (12.0, "b", 2, 0.7),
        (13.0, "a", 2, 0.5),
        (14.0, "a", 4, 0.6),
        (15.0, "b", 3, float("nan")),
    ]
    pts = se.curve(reversed(events))  # input order must not matter
    assert pts == [(2, 0.5), (3, 0.5), (4, 0.7), (6, 0.7), (7, 0.7)]
    assert se.compute_to_reach(pts, 0.7) == 4.0
    assert se.compute_to_reach(pts, 0.6) == 4.0  # first point whose best reaches it
    assert se.compute_to_reach(pts, 0.71) == math.inf


def test_curve_min_mode_keeps_the_lowest(se):
    pts = se.curve([(1.0, "a", 1, 3.0), (2.0, "b", 1, 1.0), (3.0, "a", 2, 2.0)], mode="min")
    assert pts == [(1, 3.0), (2, 1.0), (3, 1.0)]
    assert se.compute_to_reach(pts, 2.0, mode="min") == 2.0
    assert se.compute_to_reach(pts, 0.5, mode="min") == math.inf


def test_first_nan_keeps_best_undefined(se):
    pts = se.curve([(1.0, "a", 1, float("nan")), (2.0, "a", 2, 0.4)])
    assert math.isnan(pts[0][1]) and pts[1] == (2, 0.4)
    assert se.compute_to_reach(pts, 0.4) == 2.0


@pytest.mark.parametrize("arm", ["tpe_asha", "random_asha", "tpe_fifo", "random_fifo"])
def test_arm_spaces_validate_and_differ_only_in_sampler_and_scheduler(se, arm):
    base = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())
    sp = se.arm_space(base, arm, seed=3)
    space = validate_space(sp)
    sampler, scheduler = se.ARMS[arm]
    assert space.sampler.type == sampler and space.sampler.seed == 3
    assert space.scheduler == scheduler
    assert space.name == f"demo_se_{arm}_s3"
    same = {k: v for k, v in sp.items() if k not in ("sampler", "scheduler", "name")}
    assert same == {k: v for k, v in base.items() if k not in ("sampler", "scheduler", "name")}
    with pytest.raises(ValueError, match="unknown arm"):
        se.arm_space(base, "bohb", 0)
