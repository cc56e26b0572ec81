"""Joint-embedding variants (issue 14): images as a pick-per-level negative slot, the
image:label negative ratio, an MLP image map, end-to-end CNN training, staged HC* init."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpsearch.data import load_dataset
from hpsearch.data.negatives import JointNegativeSampler
from hpsearch.errors import ConfigError
from hpsearch.models import FAMILIES
from hpsearch.models.joint_embedding import build_joint_embedding
from hpsearch.tasks.checkpoint import BestSoFar, save_checkpoint
from hpsearch.tasks.config import TrialConfig
from hpsearch.tasks.joint_embedding import JointEmbeddingExperiment

DATA = {"level_sizes": [2, 4, 8], "max_per_leaf": 12, "min_per_leaf": 6,
        "amplitudes": [0.6, 0.4, 0.3], "grids": [2, 4, 8]}

# hand-made graph: level 0 = labels 0, 1; level 1 = 2, 3 (under 0) and 4, 5 (under 1);
# six images (ids 6..11), two per leaf except leaves 3 and 5 with one each... root paths:
CLOSURE = np.array([[0, 2], [0, 3], [1, 4], [1, 5]])
LEVEL = np.array([0, 0, 1, 1, 1, 1])
PATHS = np.array([[0, 2], [0, 2], [0, 3], [1, 4], [1, 4], [1, 5]])  # images 6..11
N = 6


def config(family="joint_euclidean_cone", params=None, **flat) -> TrialConfig:
    base = {"model.family": family, "model.backbone": "small_cnn", "model.width": 4,
            "data.params": DATA, "optim.batch_size": 64, "optim.epochs": 1,
            "optim.schedule": "none", "model.params": {"dim": 4, **(params or {})}}
    base.update(flat)
    return TrialConfig.from_flat(base)


@pytest.fixture(scope="module")
def data():
    return load_dataset(config().data)


def positives(reps: int) -> torch.Tensor:
    """The 4 label edges and the 12 label → image edges, ``reps`` times: ``[16·reps, 2]``."""
    img = [[int(u), N + i] for i, path in enumerate(PATHS) for u in path]
    return torch.tensor((CLOSURE.tolist() + img) * reps)


def sampler(**kw) -> JointNegativeSampler:
    return JointNegativeSampler(N, CLOSURE, LEVEL, PATHS, max_rounds=32, **kw)


def test_image_slot_counts_by_hand():
    # L = 2 levels: slots 0, 1 (levels), 2 (any label), 3 (images); k = 4 = L + 2, so each
    # side of each positive visits every slot exactly once
    s = sampler(strategy="per_level", negatives_per_side=4, image_slot=True)
    pos = positives(5)
    neg, ok = s.sample(pos, torch.Generator().manual_seed(0))
    par, chi = neg[..., 0], neg[..., 1]
    lab_edge = pos[:, 1] < N
    # label -> label positive: 1 image child (u, img) and 1 image parent (img, v) out of 4
    assert ((chi[lab_edge, :4] >= N).sum(1) == 1).all()
    assert ((par[lab_edge, 4:] >= N).sum(1) == 1).all()
    # label -> image positive: the 4 children are images (as ever), no parent is an image
    # (the image slot would pair two images: it draws any label instead)
    assert (chi[~lab_edge, :4] >= N).all() and (par[~lab_edge, 4:] < N).all()
    assert not ((par >= N) & (chi >= N)).any()
    assert ok.all()  # every draw here has valid options
    # the three label slots of a label-label child corruption: one from each level, one any
    lvl = torch.as_tensor(LEVEL)
    lab_children = chi[lab_edge, :4]
    assert ((lab_children < N) & (lvl[lab_children.clamp_max(N - 1)] == 0)).sum(1).ge(1).all()
    # the default sampler never puts an image in a label-label negative
    d_neg, _ = sampler(strategy="per_level", negatives_per_side=4).sample(
        pos, torch.Generator().manual_seed(0))
    assert (d_neg[lab_edge] < N).all()


def test_image_fraction_counts():
    pos = positives(400)  # 6,400 positives × 2k = 8 candidates
    lab_edge = pos[:, 1] < N
    k = 4
    # r = 1: every replacement is an image, except a parent of a label -> image positive
    neg, ok = sampler(negatives_per_side=k, image_fraction=1.0).sample(
        pos, torch.Generator().manual_seed(1))
    par, chi = neg[..., 0], neg[..., 1]
    assert (chi[lab_edge, :k] >= N).all() and (par[lab_edge, k:] >= N).all()
    assert (chi[~lab_edge, :k] >= N).all() and (par[~lab_edge, k:] < N).all()
    assert ok.all()
    # r = 0: no image at all, even for an image child ((u, label') negatives)
    neg, ok = sampler(negatives_per_side=k, image_fraction=0.0).sample(
        pos, torch.Generator().manual_seed(1))
    assert (neg[:, :k, 1] < N).all() and (neg[:, k:, 0] < N).all()  # replaced endpoints
    assert (neg[lab_edge] < N).all()
    # r = 0.5: among replacements that may be images (all but the 4 parents of each of the
    # 12 label -> image edges per rep), about half are; 44 of 64 candidates per rep
    neg, _ = sampler(negatives_per_side=k, image_fraction=0.5).sample(
        pos, torch.Generator().manual_seed(2))
    par, chi = neg[..., 0], neg[..., 1]
    replaced = torch.cat([chi[:, :k], par[:, k:]], 1)
    eligible = torch.ones_like(replaced, dtype=torch.bool)
    eligible[~lab_edge, k:] = False
    assert int(eligible.sum()) == 400 * (4 * 8 + 12 * 4)
    frac = float((replaced[eligible] >= N).double().mean())
    assert abs(frac - 0.5) < 0.02  # 32,000 Bernoulli(0.5): sd 0.003
    assert not (replaced[~eligible] >= N).any()
    assert not ((par >= N) & (chi >= N)).any()


def test_variant_params_validate():
    spec = FAMILIES.get("joint_hyperbolic_cone")
    with pytest.raises(ConfigError, match="per_level"):
        spec.parse_params({"negative_image_slot": True, "negative_strategy": "uniform"})
    with pytest.raises(ConfigError, match="set one of them"):
        spec.parse_params({"negative_image_slot": True, "image_negative_fraction": 0.5})
    with pytest.raises(ConfigError, match="image_negative_fraction"):
        spec.parse_params({"image_negative_fraction": 1.5})
    with pytest.raises(ConfigError, match="mlp_layers"):
        spec.parse_params({"image_map": "mlp", "mlp_layers": 1})
    with pytest.raises(ConfigError):
        sampler(strategy="same_level", image_slot=True)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        sampler(image_fraction=-0.1)


def test_mlp_vs_linear_parameter_counts():
    spec = FAMILIES.get("joint_euclidean_cone")
    f, d = 32, 4
    lin = build_joint_embedding("joint_euclidean_cone", spec.parse_params({"dim": d}), 14, f)
    mlp = build_joint_embedding("joint_euclidean_cone", spec.parse_params(
        {"dim": d, "image_map": "mlp", "mlp_layers": 3, "mlp_hidden": 16,
         "mlp_activation": "tanh"}), 14, f)
    count = lambda m: sum(p.numel() for p in m.image_map.parameters())  # noqa: E731
    assert count(lin) == 32 * 4 + 4
    assert count(mlp) == (32 * 16 + 16) + (16 * 16 + 16) + (16 * 4 + 4)
    assert [type(m).__name__ for m in mlp.image_map] == ["Linear", "Tanh", "Linear", "Tanh",
                                                         "Linear"]
    mlp.reset_parameters(torch.Generator().manual_seed(0))
    z = mlp.image_embeddings(torch.randn(5, f))
    assert z.shape == (5, d) and torch.isfinite(z).all()
    z.sum().backward()
    assert all(p.grad is not None for p in mlp.image_map.parameters())


def test_end_to_end_moves_the_backbone_frozen_does_not(data, tmp_path):
    e2e = JointEmbeddingExperiment(config(params={"train_backbone": True, "backbone_lr": 1e-2,
                                                  "image_map": "mlp", "mlp_hidden": 8}),
                                   dataset=data)
    before = {k: v.clone() for k, v in e2e.backbone.state_dict().items()}
    out = e2e.train_one_epoch(0)
    assert np.isfinite(out["loss"]) and out["backbone_lr"] == 1e-2
    after = e2e.backbone.state_dict()
    moved = [k for k in before if before[k].is_floating_point()
             and not torch.equal(before[k], after[k])]
    assert any(k.endswith("weight") for k in moved)
    assert set(e2e.features) == {"train"}  # no cached val/test features used
    m = e2e.evaluate("val")
    assert 0 <= m["micro_f1"] <= 1
    # the trained CNN is checkpointed and restored with the rest
    state = e2e.state_dict()
    twin = JointEmbeddingExperiment(e2e.cfg, dataset=data)
    twin.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(
        twin.backbone.state_dict().values(), after.values(), strict=True))
    assert torch.equal(twin.image_embeddings("val"), e2e.image_embeddings("val"))
    assert "backbone.pt" in e2e.export(tmp_path / "exp")["files"]

    frozen = JointEmbeddingExperiment(config(), dataset=data)
    assert frozen.backbone is None and len(frozen.optimizers) == 2
    feats = {s: f.clone() for s, f in frozen.features.items()}
    frozen.train_one_epoch(0)
    assert all(torch.equal(feats[s], frozen.features[s]) for s in feats)
    # same source, same step-0 network: the frozen features are the e2e CNN before training
    assert torch.allclose(feats["train"], e2e.features["train"])


def test_staged_hc_init_from_a_label_run_checkpoint(data, tmp_path):
    """HC*: a label-only hyperbolic-cone run (``train_edges=labels``, as the shipped
    joint_cifar10_hc_labels.yaml) seeds the joint run's label table from its checkpoint."""
    label_run = JointEmbeddingExperiment(config("joint_hyperbolic_cone", {
        "train_edges": "labels"}), dataset=data)
    w0 = label_run.model.image_map.weight.clone()
    t0 = label_run.embeddings()
    label_run.train_one_epoch(0)
    assert len(label_run.train_pos) == len(data.hierarchy.closure_edges)  # no image edge
    assert torch.equal(label_run.model.image_map.weight, w0)  # W untouched
    table = label_run.embeddings()
    assert not torch.allclose(table, t0)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, label_run, 0, BestSoFar(value=1.0, epoch=0), label_run.state_dict())
    staged = JointEmbeddingExperiment(config("joint_hyperbolic_cone", {
        "init": "from_run", "init_from": str(ckpt)}), dataset=data)
    rand = JointEmbeddingExperiment(config("joint_hyperbolic_cone"), dataset=data)
    assert torch.allclose(staged.embeddings(), table, atol=1e-6)
    assert not torch.allclose(rand.embeddings(), table, atol=1e-3)
    # W is initialised the same way in both arms: only the label table differs
    assert torch.equal(staged.model.image_map.weight, rand.model.image_map.weight)
    with pytest.raises(ConfigError, match="euclidean_cone"):
        JointEmbeddingExperiment(config("joint_euclidean_cone", {
            "init": "from_run", "init_from": str(ckpt)}), dataset=data)
