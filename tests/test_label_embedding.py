"""Label-embedding families and the ``label_embedding`` experiment on small synthetic trees."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from hpsearch.data.ethec import default_ethec_metadata
from hpsearch.data.labels import graph_from_hierarchy
from hpsearch.errors import ConfigError, NonFiniteLossError
from hpsearch.geometry import inner_radius
from hpsearch.hierarchy import Hierarchy
from hpsearch.metrics.edges import f1_at_threshold, f1_optimal_interval
from hpsearch.models import FAMILIES
from hpsearch.models.label_embedding import LabelEmbedding, build_label_embedding
from hpsearch.tasks import TASKS, build_experiment
from hpsearch.tasks.config import TrialConfig
from hpsearch.tasks.label_embedding.experiment import LabelEmbeddingExperiment
from hpsearch.tasks.optim import build_optimizer

EMBEDDING_FAMILIES = [n for n in FAMILIES.names() if FAMILIES.get(n).task == "label_embedding"]
VARIANTS = [
    ("order_embedding", {"energy": "squared"}),
    ("order_embedding", {"energy": "plain", "optimizer": "sgd"}),
    ("euclidean_cone", {"energy": "cosine"}),
    ("euclidean_cone", {"energy": "angle", "norm_offset": False}),
    ("hyperbolic_cone", {"optimizer": "rsgd"}),
    ("hyperbolic_cone", {"optimizer": "riemannian_adam", "energy": "cosine"}),
    ("hyperbolic_cone", {"optimizer": "adam_expmap0", "dtype": "float64"}),
    ("hyperbolic_cone", {"optimizer": "rsgd", "retraction": "first_order"}),
]


def tree(branching=(4, 4, 3), roots=3) -> Hierarchy:
    rows = [[f"r{i}"] for i in range(roots)]
    for lvl, b in enumerate(branching):
        rows = [row + [f"{row[-1]}_{lvl}{j}"] for row in rows for j in range(b)]
    return Hierarchy.from_level_labels(rows)


@pytest.fixture(scope="module")
def graph():
    return graph_from_hierarchy(tree())  # 207 nodes, 540 closure edges


def config(family, params=None, **flat):
    base = {"model.family": family, "optim.epochs": 3, "optim.batch_size": 32,
            "optim.schedule": "none", "optim.lr": 0.05, "metric": "val_edge_f1",
            "model.params": {"dim": 5, **(params or {})}}
    base.update(flat)
    return TrialConfig.from_flat(base)


def params_of(family, **kw):
    return FAMILIES.get(family).parse_params({"dim": 4, **kw})


def test_families_registered_with_task_and_experiment():
    assert set(EMBEDDING_FAMILIES) == {"order_embedding", "euclidean_cone", "hyperbolic_cone"}
    assert TASKS.get("label_embedding").experiment is LabelEmbeddingExperiment


@pytest.mark.parametrize("family,kw", VARIANTS)
def test_family_forward_backward_finite(family, kw):
    m = build_label_embedding(family, params_of(family, **kw), 30)
    pairs = torch.randint(0, 30, (16, 3, 2), generator=torch.Generator().manual_seed(0))
    e = m.pair_energy(pairs)
    assert e.shape == (16, 3) and torch.isfinite(e).all() and (e >= 0).all()
    e.sum().backward()
    assert m.weight.grad is not None and torch.isfinite(m.weight.grad).all()
    assert m.weight.grad.abs().sum() > 0
    x = m()
    if family == "hyperbolic_cone":
        r = x.norm(dim=-1)
        assert (r >= inner_radius(0.1)).all() and (r < 1).all()
    if family == "euclidean_cone" and kw.get("norm_offset", True):
        assert (x.norm(dim=-1) >= 3.0 - 1e-5).all()


def test_params_validation_errors():
    with pytest.raises(ConfigError, match="init_from"):
        FAMILIES.get("euclidean_cone").parse_params({"init": "from_run"})
    with pytest.raises(ConfigError, match="optimizer"):
        FAMILIES.get("order_embedding").parse_params({"optimizer": "rsgd"})
    with pytest.raises(ConfigError, match="init"):
        FAMILIES.get("order_embedding").parse_params({"init": "poincare_init"})
    with pytest.raises(ConfigError, match="ball parameters"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2, 2))], "rsgd", lr=0.1)


@pytest.mark.parametrize("family,kw", [v for v in VARIANTS if v[0] != "order_embedding"] +
                         [("order_embedding", {})])
def test_set_embeddings_round_trip(family, kw):
    m = build_label_embedding(family, params_of(family, **kw), 10)
    x = m().detach() * 1.01  # a valid point: slightly further out
    m.set_embeddings(x)
    tol = 1e-4 if m.weight.dtype == torch.float32 else 1e-8
    assert torch.allclose(m(), x, atol=tol)


def test_rsgd_step_rescales_gradient_by_inverse_metric():
    p = params_of("hyperbolic_cone", optimizer="rsgd", retraction="first_order", dtype="float64")
    m = build_label_embedding("hyperbolic_cone", p, 1)
    x0 = torch.tensor([[0.3, 0.4, 0.0, 0.0]], dtype=torch.float64)
    m.set_embeddings(x0)
    opt = build_optimizer([m.weight], "rsgd", lr=0.1)
    g = torch.tensor([[1.0, -2.0, 0.5, 0.0]], dtype=torch.float64)
    m.weight.grad = g.clone()
    opt.step()
    expected = x0 - 0.1 * ((1 - 0.25) / 2) ** 2 * g  # (1/λ_x)² with λ_x = 2/(1 - |x|²)
    assert torch.allclose(m.weight.detach(), expected)


def test_loss_is_sum_of_positive_energy_and_masked_hinge(graph):
    exp = LabelEmbeddingExperiment(config("order_embedding", {"margin": 1.0}), graph=graph)
    m = exp.model
    x = torch.zeros(graph.num_nodes, 5)
    x[0] = 1.0  # node 0 violates everything below it, 1 and 2 are at 0
    x[2, 0] = -1.0
    m.set_embeddings(x)
    pos = torch.tensor([[0, 1]])  # E = ||max(0, 1 - 0)||² = 5
    neg = torch.tensor([[[1, 2], [2, 1], [1, 3]]])  # E: 1, 0, 0
    ok = torch.tensor([[True, True, False]])
    loss = exp._loss(pos, neg, ok)
    assert loss.item() == pytest.approx(5.0 + max(0, 1 - 1.0) + 1.0 + 0.0)


@pytest.mark.parametrize("family,kw", [v for v in VARIANTS if v[1].get("optimizer") != "sgd"])
def test_experiment_epoch_and_metrics(graph, family, kw):
    exp = LabelEmbeddingExperiment(config(family, kw), graph=graph)
    tr = exp.train_one_epoch(0)
    assert math.isfinite(tr["loss"]) and tr["loss"] > 0
    val = exp.evaluate("val")
    test = exp.evaluate("test")
    for k in ("edge_f1", "edge_precision", "edge_recall", "threshold", "recon_tpr",
              "recon_tnr", "full_f1", "recon_basic_f1"):
        assert k in val and math.isfinite(val[k]) and k in test
    assert test["threshold"] == val["threshold"] == exp.threshold
    pos, neg = exp.eval_pairs["test"]
    f1, _, _ = f1_at_threshold(exp.model.pair_energy(pos).detach(),
                               exp.model.pair_energy(neg).detach(), exp.threshold)
    assert test["edge_f1"] == pytest.approx(f1)
    # the midpoint threshold lies in the same val-optimal interval: same val F1, never lower
    assert val["edge_f1_midpoint"] == val["edge_f1"]
    assert exp.threshold_midpoint >= exp.threshold
    assert test["threshold_midpoint"] == val["threshold_midpoint"] == exp.threshold_midpoint
    f1, _, _ = f1_at_threshold(exp.model.pair_energy(pos).detach(),
                               exp.model.pair_energy(neg).detach(), exp.threshold_midpoint)
    assert test["edge_f1_midpoint"] == pytest.approx(f1)
    # edge_gap: the val-optimal interval's width in units of the margin
    vpos, vneg = exp.eval_pairs["val"]
    lo, hi, *_ = f1_optimal_interval(exp.model.pair_energy(vpos).detach(),
                                     exp.model.pair_energy(vneg).detach())
    want = (hi - lo) / exp.model.margin if math.isfinite(hi) else 0.0
    assert val["edge_gap"] == pytest.approx(want) and val["edge_gap"] >= 0


def test_euclidean_cones_learn_the_tree(graph):
    cfg = config("euclidean_cone", {"label_lr": 0.1, "margin": 0.01, "dim": 10},
                 **{"optim.batch_size": 8})
    exp = LabelEmbeddingExperiment(cfg, graph=graph)
    first = exp.train_one_epoch(0)["loss"]
    for e in range(1, 12):
        last = exp.train_one_epoch(e)["loss"]
    val, test = exp.evaluate("val"), exp.evaluate("test")
    assert last < 0.3 * first
    assert val["edge_f1"] > 0.75 and test["edge_f1"] > 0.75  # untrained: ~0.2
    assert val["recon_tnr"] > 0.95


def test_test_before_val_calibrates_on_val(graph):
    exp = LabelEmbeddingExperiment(config("order_embedding"), graph=graph)
    test = exp.evaluate("test")
    assert exp.threshold is not None and test["threshold"] == exp.threshold
    with pytest.raises(ConfigError, match="'train'"):
        exp.evaluate("train")


def test_resume_reproduces_training(graph):
    cfg = config("hyperbolic_cone", {"optimizer": "riemannian_adam"})
    a = LabelEmbeddingExperiment(cfg, graph=graph)
    a.train_one_epoch(0)
    a.evaluate("val")
    state = copy.deepcopy(a.state_dict())  # as if saved to disk
    a.train_one_epoch(1)
    b = LabelEmbeddingExperiment(cfg, graph=graph)
    b.load_state_dict(state)
    assert b.threshold == state["threshold"]
    b.train_one_epoch(1)
    assert torch.equal(a.model.weight.detach(), b.model.weight.detach())


def test_export_and_init_from_run(graph, tmp_path):
    exp = LabelEmbeddingExperiment(config("euclidean_cone"), graph=graph)
    exp.train_one_epoch(0)
    manifest = exp.export(tmp_path)
    emb = torch.load(tmp_path / "label_embeddings.pt")
    assert emb.shape == (graph.num_nodes, 5)
    assert json.loads((tmp_path / "label_nodes.json").read_text()) == list(graph.nodes)
    meta = json.loads((tmp_path / "label_embedding.json").read_text())
    assert meta["threshold"] == manifest["threshold"] == exp.threshold
    assert meta["energy"] == "cosine" and meta["K"] == 3.0
    warm = LabelEmbeddingExperiment(
        config("euclidean_cone", {"init": "from_run", "init_from": str(tmp_path)}), graph=graph)
    assert torch.allclose(warm.embeddings(), emb, atol=1e-5)
    with pytest.raises(ConfigError, match="no label_embeddings.pt"):
        LabelEmbeddingExperiment(config("euclidean_cone", {
            "init": "from_run", "init_from": str(tmp_path / "nope")}), graph=graph)


def test_poincare_init_gives_points_in_the_cone_domain(graph):
    cfg = config("hyperbolic_cone", {"init": "poincare_init", "init_epochs": 2,
                                     "init_burn_in": 1})
    exp = LabelEmbeddingExperiment(cfg, graph=graph)
    r = exp.embeddings().norm(dim=-1)
    assert (r >= inner_radius(0.1)).all() and (r < 1).all()
    assert torch.isfinite(torch.tensor(exp.train_one_epoch(0)["loss"]))


def test_non_finite_weights_raise_typed_error(graph):
    exp = LabelEmbeddingExperiment(config("order_embedding"), graph=graph)
    with torch.no_grad():
        exp.model.weight[3] = float("nan")
    with pytest.raises(NonFiniteLossError):
        exp.train_one_epoch(0)


def test_reconstruction_skipped_above_node_cap(graph):
    exp = LabelEmbeddingExperiment(config("order_embedding", {"recon_max_nodes": 10}),
                                   graph=graph)
    out = exp.evaluate("val")
    assert out["recon_skipped"] == 1.0 and "full_f1" not in out


def test_build_experiment_through_label_source(tmp_path):
    h = tree(branching=(3, 3, 2), roots=2)
    f = tmp_path / "h.txt"
    f.write_text("\n".join(f"{h.names[p]} {h.names[c]}" for c, ps in enumerate(h.parents)
                           for p in ps))
    cfg = config("order_embedding", **{"data.params": {"label_source": "parent_child",
                                                       "path": str(f)}})
    exp = build_experiment(cfg)
    assert isinstance(exp, LabelEmbeddingExperiment)
    assert exp.splits.num_nodes == h.num_nodes
    assert math.isfinite(exp.train_one_epoch(0)["loss"])


def test_module_is_a_label_embedding_from_the_registry():
    spec = FAMILIES.get("order_embedding")
    cfg = config("order_embedding")
    m = spec.build(cfg.model, spec.parse_params(cfg.model.params), tree((2,), 2))
    assert isinstance(m, LabelEmbedding) and m().shape == (6, 5)


@pytest.mark.skipif(not default_ethec_metadata(), reason="shared ETHEC metadata not present")
def test_ethec_euclidean_cones_short_run():
    cfg = TrialConfig.from_flat({
        "model.family": "euclidean_cone", "data.params": {"label_source": "ethec"},
        "optim.epochs": 4, "optim.batch_size": 10, "optim.schedule": "none",
        "metric": "val_edge_f1",
        "model.params": {"dim": 10, "non_basic_fraction": 0.5, "label_lr": 0.1}})
    exp = build_experiment(cfg)
    for e in range(4):
        exp.train_one_epoch(e)
    exp.evaluate("val")
    assert exp.evaluate("test")["edge_f1"] > 0.5  # untrained: ~0.17


def test_driver_runs_label_embedding_trial(graph, tmp_path):
    from hpsearch.tasks import DirectoryReporter, run_trial

    cfg = config("euclidean_cone", **{"optim.epochs": 2})
    rep = DirectoryReporter(tmp_path / "ckpt")
    best = run_trial(cfg, rep, experiment_factory=lambda c, ctx: LabelEmbeddingExperiment(
        c, ctx, graph=graph))
    last = rep.history[-1]
    assert best.epoch >= 0 and last["best_val_edge_f1"] == best.value
    for k in ("train_loss", "val_edge_f1", "val_full_f1", "test_edge_f1", "test_threshold"):
        assert k in last
    assert (tmp_path / "ckpt" / "checkpoint.pt").exists()
