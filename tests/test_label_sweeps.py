"""Poincaré pre-training and RSGD for hyperbolic cones on small generated trees (issue 14),
and the helpers of results/label_sweeps.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hpsearch.data.edge_splits import make_edge_splits
from hpsearch.data.labels import load_label_hierarchy
from hpsearch.errors import ConfigError
from hpsearch.models import FAMILIES
from hpsearch.tasks.config import TrialConfig
from hpsearch.tasks.label_embedding.experiment import LabelEmbeddingExperiment
from hpsearch.tasks.label_embedding.pretrain import poincare_pretrain

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tree39():
    g = load_label_hierarchy("tree", levels=3, branching=3)  # 3 + 9 + 27 labels
    level = np.asarray(g.hierarchy.depth)
    s = make_edge_splits(len(g.nodes), np.asarray(g.closure), non_basic_fraction=0.5,
                         basic=g.basic_edges, node_level=level, seed=0)
    return g, s


@pytest.fixture(scope="module")
def tree120():
    return load_label_hierarchy("tree", levels=4, branching=3)


def parent_nearer_origin(x: torch.Tensor, closure: np.ndarray) -> float:
    r = x.norm(dim=-1)
    c = torch.as_tensor(closure)
    return float((r[c[:, 0]] < r[c[:, 1]]).float().mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_poincare_pretrain_puts_hypernyms_nearer_the_origin(tree39, seed):
    """Corrupting the parent (Nickel & Kiela's code) orders norms by depth; corrupting the
    child (what pre-training did before) inverts the order: cones then start from points whose
    parents lie outside their children."""
    g, s = tree39
    kw = dict(closure=s.closure, epochs=30, burn_in=5)
    x = poincare_pretrain(s.train, len(g.nodes), 5, corrupt="parent",
                          generator=torch.Generator().manual_seed(seed), **kw)
    y = poincare_pretrain(s.train, len(g.nodes), 5, corrupt="child",
                          generator=torch.Generator().manual_seed(seed), **kw)
    assert (x.norm(dim=-1) < 1).all() and torch.isfinite(x).all()
    assert parent_nearer_origin(x, g.closure) > 0.7
    assert parent_nearer_origin(y, g.closure) < 0.3


def test_pretrain_rejects_an_unknown_side(tree39):
    g, s = tree39
    with pytest.raises(ConfigError, match="corrupt"):
        poincare_pretrain(s.train, len(g.nodes), 5, closure=s.closure, epochs=1,
                          corrupt="both")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="init_corrupt"):
        FAMILIES.get("hyperbolic_cone").parse_params({"init_corrupt": "both"})


def cone_run(graph, *, init, lr, seed, epochs=5):
    cfg = TrialConfig.from_flat({
        "model.family": "hyperbolic_cone", "optim.epochs": epochs, "optim.batch_size": 10,
        "optim.schedule": "none", "optim.lr": lr, "metric": "val_edge_f1", "seed": seed,
        "model.params": {"dim": 5, "non_basic_fraction": 0.5, "optimizer": "rsgd",
                         "init": init, "init_epochs": 20, "init_burn_in": 5, "margin": 0.01,
                         "split_seed": seed, "negative_strategy": "uniform"}})
    ex = LabelEmbeddingExperiment(cfg, graph=graph)
    for ep in range(1, epochs + 1):
        ex.train_one_epoch(ep)
    n_pos, n_neg = len(ex.splits.val), len(ex.splits.val_neg)
    return ex, ex.evaluate("val")["edge_f1"], 2 * n_pos / (2 * n_pos + n_neg)


@pytest.mark.parametrize("seed", [0, 1])
def test_rsgd_from_poincare_init_leaves_the_all_positive_f1(tree120, seed):
    """RSGD at lr 1e-3 (the range the shipped rsgd spaces search) trains from the Poincaré
    init within 5 epochs; from the random init it stays at predicting every pair positive."""
    _, f1, all_pos = cone_run(tree120, init="poincare_init", lr=1e-3, seed=seed)
    _, f1_random, _ = cone_run(tree120, init="random", lr=1e-3, seed=seed)
    assert all_pos == pytest.approx(1 / 6)  # 5 + 5 negatives per positive
    assert f1 > all_pos + 0.3
    assert f1_random < all_pos + 0.1


def test_rsgd_too_large_a_step_throws_top_labels_to_the_boundary(tree120):
    """Why the rsgd range stops at 1e-2: near the inner radius dψ/d||x|| is ~10³, so one
    step at lr 3e-2 sends a top-level label to the ball boundary, where (1 − ||x||²)² freezes
    it; its cone is empty, every pair scores alike and F1 falls to the all-positive value."""
    ex, f1, all_pos = cone_run(tree120, init="poincare_init", lr=3e-2, seed=0, epochs=2)
    top = torch.as_tensor(np.asarray(tree120.hierarchy.depth)) == 0
    assert ex.model().detach().norm(dim=-1)[top].max() > 0.99
    assert f1 < all_pos + 0.05


def _sweeps():
    spec = importlib.util.spec_from_file_location("label_sweeps",
                                                  ROOT / "results" / "label_sweeps.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("label_sweeps", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_sweep_selection_rule_and_summary():
    m = _sweeps()
    assert m.better(0.9, 0.1, None)
    assert m.better(0.9, 0.2, (0.9, 0.1)) and not m.better(0.9, 0.1, (0.9, 0.1))
    assert not m.better(0.8, 5.0, (0.9, 0.1))
    rows = [{"source": "s", "method": "M", "fraction": "0.1", "test_f1": str(v),
             "test_f1_midpoint": str(v), "val_f1": "1.0", "best_epoch": "10", "epochs": "20",
             "all_positive_f1": "0.1667", "n_test": "9"} for v in (0.5, 0.7, 0.9)]
    c = m.summarize(rows)[("s", "M", 0.1)]
    assert c["n"] == 3 and c["mean"] == pytest.approx(0.7) and c["sd"] == pytest.approx(0.2)
    assert (c["min"], c["max"]) == (0.5, 0.9)


def test_sweep_runs_one_cell_on_a_tree(tree120):
    m = _sweeps()
    meth = m.Method("OE", "order_embedding", 0.05, {"margin": 1.0})
    r = m.run_one(tree120, meth, {"dim": 5}, 0.25, 0, epochs=2, eval_every=1)
    assert 0 <= r["test_f1"] <= 1 and r["best_epoch"] in (1, 2)
    assert r["all_positive_f1"] == pytest.approx(1 / 6)
