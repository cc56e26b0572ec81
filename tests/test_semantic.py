"""The ``semantic_embedding`` family: build, forward/backward, exact-alignment loss, level
marginals, class weights, metrics and a few training steps on separable toy data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpsearch.config import ModelConfig
from hpsearch.errors import ConfigError, HierarchyError
from hpsearch.hierarchy import Hierarchy
from hpsearch.models import FAMILIES, build_model
from hpsearch.models.semantic import SemanticEmbeddingHead, SemanticParams
from hpsearch.tasks import TrialConfig

# fam0 -> {sp0, sp1};  fam1 -> {sp2, sp3, sp4}
ROWS = [("f0", "s0"), ("f0", "s1"), ("f1", "s2"), ("f1", "s3"), ("f1", "s4")]


@pytest.fixture
def h() -> Hierarchy:
    return Hierarchy.from_level_labels(ROWS)


def labels(h: Hierarchy, leaves: list[int]) -> torch.Tensor:
    return torch.tensor(h.leaf_paths[leaves])  # [B, 2] local indices per level


def head(h: Hierarchy, in_dim: int = 8, **params) -> SemanticEmbeddingHead:
    return SemanticEmbeddingHead(in_dim, h, SemanticParams(**params))


def test_registered_as_classifier_task():
    spec = FAMILIES.get("semantic_embedding")
    assert spec.task == "classifier" and spec.params is SemanticParams


@pytest.mark.parametrize("params", [{}, {"cls_weight": 0.0}, {"predict": "nearest"},
                                    {"embedding_method": "approx", "embedding_dim": 3}])
def test_forward_backward_every_param_gets_grad(h, params):
    torch.manual_seed(0)
    typed = FAMILIES.get("semantic_embedding").parse_params(params)
    model = build_model(ModelConfig(family="semantic_embedding", width=8, params=typed), h)
    y = labels(h, [0, 1, 2, 3, 4, 0])
    out = model(torch.randn(6, 3, 16, 16))
    d = params.get("embedding_dim", 5)
    assert out.shape == (6, d + (5 if params.get("cls_weight", 0.1) > 0 else 0))
    np.testing.assert_allclose(out[:, :d].norm(dim=-1).detach().numpy(), 1.0, atol=1e-5)
    loss = model.head.loss(out, y)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_class_embeddings_reproduce_similarity(h):
    hd = head(h)
    E = hd.class_embeddings.double()
    # s(sibling) = 1 - 1/2, s(cousins) = 0
    np.testing.assert_allclose((E @ E.T).numpy(), hd.sim_lcs.numpy(), atol=1e-6)
    assert hd.sim_lcs[0, 1] == pytest.approx(0.5) and hd.sim_lcs[0, 2] == 0


def test_loss_zero_when_aligned_and_one_when_orthogonal(h):
    hd = head(h, cls_weight=0.0, predict="nearest")
    leaves = [0, 1, 2, 3, 4, 2]
    y = labels(h, leaves)
    aligned = hd.class_embeddings[leaves]
    assert hd.loss(aligned, y).item() == pytest.approx(0.0, abs=1e-6)
    # sibling's embedding: 1 - s(sibling) = 0.5; cousin's: 1 - 0 = 1
    assert hd.loss(hd.class_embeddings[[1]], labels(h, [0])).item() == pytest.approx(0.5)
    assert hd.loss(hd.class_embeddings[[2]], labels(h, [0])).item() == pytest.approx(1.0)


def test_class_weights_weight_the_samples(h):
    hd = head(h, cls_weight=0.0, predict="nearest")
    out = hd.class_embeddings[[2, 2]]  # right for leaf 2, cousin (loss 1) for leaf 0
    y = labels(h, [2, 0])
    cw = [torch.ones(2), torch.tensor([3.0, 1, 1, 1, 1])]
    # (1 * 0 + 3 * 1) / (1 + 3)
    assert hd.loss(out, y, class_weights=cw).item() == pytest.approx(0.75)
    assert hd.loss(out, y).item() == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="level_weights"):
        hd.loss(out, y, level_weights=[1.0])


def test_level_probs_parent_is_sum_of_children(h):
    for predict, cw in (("nearest", 0.0), ("classifier", 0.1)):
        hd = head(h, cls_weight=cw, predict=predict).eval()
        out = hd(torch.randn(7, 8))
        fam, sp = hd.level_probs(out)
        assert sp.shape == (7, 5) and fam.shape == (7, 2)
        np.testing.assert_allclose(sp.sum(-1).detach().numpy(), 1.0, atol=1e-6)
        np.testing.assert_allclose(fam[:, 0].detach().numpy(),
                                   sp[:, :2].sum(-1).detach().numpy(), atol=1e-6)
        np.testing.assert_allclose(fam[:, 1].detach().numpy(),
                                   sp[:, 2:].sum(-1).detach().numpy(), atol=1e-6)


def test_nearest_prediction_and_metrics_on_perfect_outputs(h):
    hd = head(h, cls_weight=0.0, predict="nearest", mahp_k=250)
    leaves = [0, 0, 1, 2, 3, 4, 4, 1]
    out = hd.class_embeddings[leaves]
    y = labels(h, leaves)
    assert hd.predict_levels(out).tolist() == y.tolist()
    m = hd.eval_metrics(out, y)
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0
    # k = min(250, N - 1) = 7: a perfect ranking gives (k - 1)/k, the name keeps 250
    assert m["mahp_250"] == pytest.approx(6 / 7) and m["mahp_250_wup"] == pytest.approx(6 / 7)
    assert m["hp_at_1"] == pytest.approx(1.0) and "hp_at_10" not in m


def test_params_validation(h):
    # model.params are typed once, by the trial config (the boundary a search goes through)
    with pytest.raises(ConfigError, match="cls_weight"):
        TrialConfig.from_flat({"model.family": "semantic_embedding",
                               "model.params": {"predict": "classifier", "cls_weight": 0}})
    with pytest.raises(ConfigError, match="model.params.foo: unknown key"):
        TrialConfig.from_flat({"model.family": "semantic_embedding", "model.params.foo": 1})
    with pytest.raises(ConfigError, match="exactly 5 dimensions"):
        head(h, embedding_dim=3)
    assert SemanticParams(cls_weight=0).predictor == "nearest"
    assert SemanticParams().predictor == "classifier"
    ragged = Hierarchy.from_edges([("r", "a"), ("r", "b"), ("b", "c")])
    with pytest.raises(HierarchyError, match="leaves"):
        head(ragged)


def test_training_lowers_loss_on_separable_data(h):
    torch.manual_seed(0)
    leaves = torch.arange(5).repeat(8)  # 40 samples
    centers = torch.randn(5, 8) * 3
    x = centers[leaves] + 0.3 * torch.randn(40, 8)
    y = labels(h, leaves.tolist())
    hd = head(h, cls_weight=0.1, predict="classifier")
    opt = torch.optim.SGD(hd.parameters(), lr=0.1, momentum=0.9)
    first = None
    for _ in range(40):
        opt.zero_grad()
        loss = hd.loss(hd(x), y)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    hd.eval()
    with torch.no_grad():
        final = hd.loss(hd(x), y).item()
        acc = hd.eval_metrics(hd(x), y)["accuracy"]
    assert final < 0.5 * first
    assert acc == 1.0
