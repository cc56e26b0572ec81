"""Contract test of every registered classifier family (timm style): build, forward, backward."""

from __future__ import annotations

import pytest
import torch

from hpsearch.config import ModelConfig
from hpsearch.hierarchy import Hierarchy
from hpsearch.models import FAMILIES, build_model

CLASSIFIERS = [n for n in FAMILIES.names() if FAMILIES.get(n).task == "classifier"]
ROWS = [("a", "a1", "a1x"), ("a", "a1", "a1y"), ("a", "a2", "a2x"),
        ("b", "b1", "b1x"), ("b", "b1", "b1y")]


@pytest.fixture(scope="module")
def h() -> Hierarchy:
    return Hierarchy.from_level_labels(ROWS)  # levels 2 -> 3 -> 5


@pytest.fixture
def batch(h: Hierarchy) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 16, 16, generator=g)
    leaves = torch.tensor([0, 1, 2, 3, 4, 2])
    return x, torch.from_numpy(h.leaf_paths)[leaves]  # [6, 3] valid root paths


def _model(name: str, h: Hierarchy):
    torch.manual_seed(0)
    return build_model(ModelConfig(family=name, width=8), h, 3)


def test_my_families_registered():
    for name in ("multilabel", "masked_per_level", "marginalization", "hsoftmax",
                 "cosine_embedding"):
        assert name in CLASSIFIERS


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_backward(name, h, batch):
    x, y = batch
    model = _model(name, h)
    out = model(x)
    loss = model.head.loss(out, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_level_probs_and_predictions(name, h, batch):
    x, _ = batch
    model = _model(name, h).eval()
    with torch.no_grad():
        out = model(x)
        probs = model.head.level_probs(out)
        pred = model.head.predict_levels(out)
        multihot = model.head.predict_multihot(out)
    assert [p.shape for p in probs] == [(6, n) for n in h.level_sizes]
    for p in probs:
        assert ((p >= 0) & (p <= 1)).all()
    if model.head.decision == "argmax":
        for p in probs:
            torch.testing.assert_close(p.sum(-1), torch.ones(6), atol=1e-5, rtol=0)
        assert multihot.sum(1).eq(h.num_levels).all()
    assert pred.shape == (6, h.num_levels)
    assert multihot.shape == (6, h.num_nodes) and multihot.dtype == torch.bool


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_class_and_level_weights_accepted(name, h, batch):
    x, y = batch
    model = _model(name, h)
    out = model(x)
    g = torch.Generator().manual_seed(1)
    cw = [torch.rand(n, generator=g) + 0.5 for n in h.level_sizes]
    plain = model.head.loss(out, y)
    weighted = model.head.loss(out, y, level_weights=[1.0, 0.5, 2.0], class_weights=cw)
    assert torch.isfinite(weighted)
    weighted.backward()
    if name in ("multilabel", "masked_per_level", "marginalization", "hsoftmax",
                "cosine_embedding", "per_level"):
        assert not torch.isclose(plain, weighted)


def test_masked_paths_consistent(h, batch):
    x, _ = batch
    model = _model("masked_per_level", h).eval()
    with torch.no_grad():
        out = model(x) * 5  # sharpen so that unmasked argmaxes would often disagree
        pred = model.head.predict_levels(out)
        probs = model.head.level_probs(out)
    for lvl in range(1, h.num_levels):
        parent = torch.from_numpy(h.parent_local(lvl))
        assert torch.equal(parent[pred[:, lvl]], pred[:, lvl - 1])
        # probability mass only on the children of the predicted parent
        off = parent[None, :] != pred[:, lvl - 1 : lvl]
        assert probs[lvl][off].abs().max() == 0
    assert torch.equal(torch.stack([p.argmax(-1) for p in probs], 1), pred)


@pytest.mark.parametrize("name", ["marginalization", "hsoftmax"])
def test_parent_is_sum_of_children(name, h, batch):
    x, _ = batch
    model = _model(name, h).eval()
    with torch.no_grad():
        probs = model.head.level_probs(model(x) * 3)
    for lvl in range(1, h.num_levels):
        parent = torch.from_numpy(h.parent_local(lvl))
        summed = torch.zeros_like(probs[lvl - 1]).index_add_(1, parent, probs[lvl])
        torch.testing.assert_close(summed, probs[lvl - 1], atol=1e-5, rtol=0)


def test_hsoftmax_joint_is_product_along_path(h, batch):
    x, _ = batch
    model = _model("hsoftmax", h).eval()
    with torch.no_grad():
        out = model(x)
        cond = model.head.conditional_log_probs(out).exp()  # [B, num_nodes]
        leaf = model.head.level_probs(out)[-1]
    for j, g in enumerate(h.levels[-1]):
        expected = torch.ones(6)
        for node in h.root_path(g):
            expected = expected * cond[:, node]
        torch.testing.assert_close(leaf[:, j], expected, atol=1e-6, rtol=1e-5)


def test_params_validated():
    from hpsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="decision_rule"):
        FAMILIES.get("multilabel").parse_params({"decision_rule": "bogus"})
    with pytest.raises(ConfigError, match="after_wrong_parent"):
        FAMILIES.get("masked_per_level").parse_params({"after_wrong_parent": "x"})
    with pytest.raises(ConfigError, match="dim"):
        FAMILIES.get("cosine_embedding").parse_params({"dim": 0})
