"""Barz & Denzler's CIFAR training recipe (issue 14): the ``plain11`` and ``resnet110_wfc``
backbones (shapes, hand-derived parameter counts, layer counts), ``optim.weight_decay_scope``
(which tensors the optimizer decays), the SGDR learning-rate sequence against the closed form,
their validation, and one tiny epoch of the semantic family on each backbone."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hpsearch.config import ModelConfig, OptimConfig
from hpsearch.errors import ConfigError
from hpsearch.hierarchy import Hierarchy
from hpsearch.models import FAMILIES, build_model
from hpsearch.models.backbones import build_backbone
from hpsearch.tasks.base import RunContext
from hpsearch.tasks.classifier.experiment import ClassifierExperiment
from hpsearch.tasks.config import TrialConfig
from hpsearch.tasks.optim import build_optimizer, build_scheduler, param_groups

from .conftest import TINY_DATA

BARZ = ("plain11", "resnet110_wfc")


def conv(c_in: int, c_out: int, bias: bool) -> int:
    """Parameters of a 3×3 conv."""
    return 9 * c_in * c_out + (c_out if bias else 0)


def bn(c: int) -> int:
    """Trained parameters of a BatchNorm (γ, β)."""
    return 2 * c


# Plain-11: convs 3-64-64 | 128×3 | 256×3 | 512, each with bias and BN, FC 512-512 + BN
PLAIN11_PARAMS = (
    conv(3, 64, True) + conv(64, 64, True) + 2 * bn(64)
    + conv(64, 128, True) + 2 * conv(128, 128, True) + 3 * bn(128)
    + conv(128, 256, True) + 2 * conv(256, 256, True) + 3 * bn(256)
    + conv(256, 512, True) + bn(512)
    + (512 * 512 + 512) + bn(512))


def stage(c_in: int, c: int, blocks: int = 18) -> int:
    """A ResNet stage of basic blocks: two bias-free 3×3 convs + two BN each; the shortcut
    (pool + zero padding) has no parameters."""
    first = conv(c_in, c, False) + conv(c, c, False) + 2 * bn(c)
    return first + (blocks - 1) * (2 * conv(c, c, False) + 2 * bn(c))


# ResNet-110-wfc: stem 3->32 + BN, stages of widths 32, 64, 128 (18 blocks each)
RESNET110_WFC_PARAMS = conv(3, 32, False) + bn(32) + stage(32, 32) + stage(32, 64) \
    + stage(64, 128)
# (their Keras convs also carry biases: 1 + 3·36 convs of 32/64/128 channels = 8,096 more)
EXPECTED = {
    "plain11": dict(params=PLAIN11_PARAMS, out_dim=512, convs=9, linears=1),
    # 1 stem conv + 3 stages × 18 blocks × 2 convs = 109 (+ the head's Linear = 110 layers)
    "resnet110_wfc": dict(params=RESNET110_WFC_PARAMS, out_dim=128, convs=109, linears=0),
}


@pytest.mark.parametrize("name", BARZ)
def test_shapes_parameter_and_layer_counts(name):
    want = EXPECTED[name]
    assert want["params"] == {"plain11": 3_330_496, "resnet110_wfc": 6_892_192}[name]
    torch.manual_seed(0)
    bb = build_backbone(ModelConfig(backbone=name))
    assert sum(p.numel() for p in bb.parameters()) == want["params"]
    assert bb.out_dim == want["out_dim"]
    assert sum(isinstance(m, nn.Conv2d) for m in bb.modules()) == want["convs"]
    assert sum(isinstance(m, nn.Linear) for m in bb.modules()) == want["linears"]
    bb.eval()
    for side in (8, 32):  # Plain-11 needs >= 8 px (three 2×2 poolings)
        f = bb(torch.randn(2, 3, side, side))
        assert f.shape == (2, want["out_dim"]) and torch.isfinite(f).all()
    gray = build_backbone(ModelConfig(backbone=name), in_ch=1)
    assert gray(torch.randn(2, 1, 8, 8)).shape == (2, want["out_dim"])


def test_resnet_stages_halve_the_map_and_pad_channels():
    bb = build_backbone(ModelConfig(backbone="resnet110_wfc")).eval()
    maps = []
    for i in (21, 39):  # the first block of stages 2 and 3 (after stem conv, BN, ReLU + 18)
        bb.body[i].register_forward_hook(lambda m, a, o: maps.append(tuple(o.shape[1:])))
    bb(torch.randn(1, 3, 32, 32))
    assert maps == [(64, 16, 16), (128, 8, 8)]
    blk = bb.body[21]
    assert blk.pad == (16, 16) and blk.conv1.stride == (2, 2)
    odd = bb(torch.randn(1, 3, 9, 9))  # ceil-mode pooling keeps the shortcut's size on odd maps
    assert odd.shape == (1, 128)


def _semantic_model(backbone: str) -> nn.Module:
    h = Hierarchy.from_level_labels([("f0", "s0"), ("f0", "s1"), ("f1", "s2"), ("f1", "s3")])
    typed = FAMILIES.get("semantic_embedding").parse_params({"cls_weight": 0.1})
    return build_model(ModelConfig(family="semantic_embedding", backbone=backbone,
                                   params=typed), h)


@pytest.mark.parametrize("scope", ["all", "kernels", "head"])
def test_weight_decay_reaches_only_the_scoped_parameters(scope):
    torch.manual_seed(0)
    model = _semantic_model("plain11")
    head = model.head
    if scope == "all":
        want = {n for n, _ in model.named_parameters()}
    elif scope == "kernels":
        want = {f"{n}.weight" for n, m in model.named_modules()
                if isinstance(m, (nn.Conv2d, nn.Linear))}
    else:  # the embedding Linear and the classifier's Linear, not its BatchNorm, no bias
        want = {"head.embed.weight", "head.classifier.2.weight"}
        assert isinstance(head.classifier[2], nn.Linear)
    names = {id(p): n for n, p in model.named_parameters()}
    opt = build_optimizer(param_groups(model, 1e-2, scope), "sgd", lr=0.1, momentum=0.9,
                          weight_decay=123.0)  # the groups' own weight_decay wins
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0
               for p in g["params"]}
    assert decayed == want
    assert {g["weight_decay"] for g in opt.param_groups} <= {1e-2, 0.0}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)  # each once
    if scope != "all":
        assert not any("bn" in n or n.endswith(".bias") for n in decayed)
        assert "head.classifier.1.weight" not in decayed  # the head's BatchNorm γ
    # one step on zero gradients: only the decayed tensors move, by lr·wd·p
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        shrink = 0.1 * 1e-2 if n in want else 0.0
        torch.testing.assert_close(p.detach(), before[n] * (1 - shrink), msg=n)


def test_frozen_parameters_stay_out_and_errors_name_the_fix():
    model = _semantic_model("plain11")
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    groups = param_groups(model, 1e-3, "kernels")
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.head.parameters()}
    with pytest.raises(ConfigError, match="allowed: all, kernels, head"):
        param_groups(model, 1e-3, "bogus")
    with pytest.raises(ConfigError, match="no head module"):
        param_groups(nn.Linear(2, 2), 1e-3, "head")
    with pytest.raises(ConfigError, match="no trained conv / linear weight"):
        param_groups(nn.BatchNorm1d(3), 1e-3, "kernels")


def sgdr_formula(epoch: int, eta_max: float, eta_min: float, t0: int, mult: int) -> float:
    """η_t = η_min + (η_max − η_min)(1 + cos(π T_cur / T_i))/2, T_i = t0·mult^i, restarting
    T_cur at 0 when it reaches T_i (Loshchilov & Hutter 2017, eq. 5)."""
    t_i, t_cur = t0, epoch
    while t_cur >= t_i:
        t_cur -= t_i
        t_i *= mult
    return eta_min + (eta_max - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


@pytest.mark.parametrize("t0,mult", [(3, 2), (2, 1), (12, 2)])
def test_sgdr_sequence_is_the_closed_form_with_restarts(t0, mult):
    cfg = OptimConfig(lr=0.1, schedule="sgdr", sgdr_period=t0, sgdr_mult=mult,
                      sgdr_eta_min=1e-3)
    # both groups of a scoped optimizer follow the schedule
    opt = build_optimizer(param_groups(nn.Linear(2, 2), 1e-4, "kernels"), "sgd", lr=cfg.lr,
                          momentum=0.9)
    sched = build_scheduler(opt, cfg)
    epochs = sum(t0 * mult ** i for i in range(5))  # 5 cycles, as their recipe runs
    seq = []
    for _ in range(epochs):
        seq.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for e, lrs in enumerate(seq):
        want = sgdr_formula(e, 0.1, 1e-3, t0, mult)
        assert lrs == pytest.approx([want, want], rel=1e-9, abs=1e-12), e
    restarts = [e for e, lrs in enumerate(seq) if lrs[0] == pytest.approx(0.1, abs=1e-12)]
    starts = [sum(t0 * mult ** i for i in range(k)) for k in range(5)]
    assert restarts == starts
    if (t0, mult) == (12, 2):  # the README: restarts after epochs 12, 36, 84 and 180 of 372
        assert epochs == 372 and starts[1:] == [12, 36, 84, 180]
    assert min(lrs[0] for lrs in seq) > 1e-3  # torch stops one step above η_min


def test_config_validation_is_one_line():
    with pytest.raises(ConfigError) as e:
        TrialConfig.from_flat({"optim.schedule": "sgdr", "optim.lr": 0.01,
                               "optim.sgdr_eta_min": 0.01})
    assert "optim.sgdr_eta_min=0.01 must be below optim.lr=0.01" in str(e.value)
    assert "\n" not in str(e.value)
    # the floor only matters under sgdr
    TrialConfig.from_flat({"optim.schedule": "cosine", "optim.lr": 0.01,
                           "optim.sgdr_eta_min": 0.01})
    with pytest.raises(ConfigError, match="optim.weight_decay_scope") as e:
        TrialConfig.from_flat({"optim.weight_decay_scope": "classifier"})
    assert "\n" not in str(e.value) and "'all', 'kernels' or 'head'" in str(e.value)
    with pytest.raises(ConfigError, match="unknown backbone 'plain12'.*plain11"):
        build_backbone(ModelConfig(backbone="plain12"))


def _barz_cfg(backbone: str, **over) -> TrialConfig:
    return TrialConfig.from_flat({
        "data.params": TINY_DATA, "data.image_size": 8, "model.family": "semantic_embedding",
        "model.backbone": backbone, "optim.epochs": 1, "optim.batch_size": 32,
        "optim.lr": 0.1, "optim.schedule": "sgdr", "optim.sgdr_period": 2,
        "optim.grad_clip": 10.0, "optim.weight_decay": 1e-3,
        "optim.weight_decay_scope": "kernels", **over})


@pytest.mark.parametrize("backbone", BARZ)
def test_one_epoch_of_the_semantic_family(backbone):
    torch.manual_seed(0)
    exp = ClassifierExperiment(_barz_cfg(backbone), RunContext())
    before = {n: p.detach().clone() for n, p in exp.model.named_parameters()}
    stats = exp.train_one_epoch(0)
    assert math.isfinite(stats["loss"]) and stats["lr"] == pytest.approx(0.1)
    assert exp.optimizer.param_groups[0]["lr"] == pytest.approx(sgdr_formula(1, 0.1, 1e-6, 2, 2))
    moved = [n for n, p in exp.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)  # every parameter trained
    metrics = exp.evaluate("val")
    assert 0.0 <= metrics["mahp_250"] <= 1.0 and 0.0 <= metrics["accuracy"] <= 1.0


def test_the_experiment_optimizer_follows_the_scope():
    exp = ClassifierExperiment(_barz_cfg("plain11", **{"optim.weight_decay_scope": "head"}),
                               RunContext())
    names = {id(p): n for n, p in exp.model.named_parameters()}
    decayed = {names[id(p)] for g in exp.optimizer.param_groups if g["weight_decay"] > 0
               for p in g["params"]}
    assert decayed == {"head.embed.weight", "head.classifier.2.weight"}
