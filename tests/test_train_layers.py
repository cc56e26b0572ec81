"""``model.train_layers`` (issue 14; thesis Tables 4.3-4.4): ``all`` | ``head`` |
``first_and_head``, on weights from a checkpoint this test writes (nothing is downloaded).

One tiny in-process epoch per setting: frozen parameters and the running statistics of frozen
BatchNorm layers stay bit-identical to the checkpoint, the trained ones change, the optimizer
holds exactly the trainable parameters, and a search space can search the choice.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpsearch.api import train
from hpsearch.config import ModelConfig
from hpsearch.errors import ConfigError
from hpsearch.models.backbones import build_backbone, first_conv
from hpsearch.search.space import validate_space
from hpsearch.tasks.base import RunContext
from hpsearch.tasks.checkpoint import load_checkpoint
from hpsearch.tasks.classifier.experiment import ClassifierExperiment
from hpsearch.tasks.config import TrialConfig

from .conftest import TINY_DATA

CFG = {"data.params": TINY_DATA, "model.width": 8, "optim.epochs": 1, "optim.lr": 0.05,
       "optim.batch_size": 32, "optim.weight_decay": 5e-3}
MODES = ("all", "head", "first_and_head")
# the small CNN body's trained parameters per setting (its first conv has no bias)
TRAINED = {"all": None, "head": set(), "first_and_head": {"0.weight"}}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The small CNN body's state dict, BN running statistics made non-trivial so that any
    update to them shows."""
    torch.manual_seed(123)
    body = build_backbone(ModelConfig(width=8)).body
    for m in body.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("w") / "small_cnn.pth"
    torch.save(body.state_dict(), path)
    return path, {k: v.clone() for k, v in body.state_dict().items()}


def _cfg(path, mode, **over):
    return TrialConfig.from_flat({**CFG, "model.pretrained_weights": str(path),
                                  "model.train_layers": mode, **over})


@pytest.mark.parametrize("mode", MODES)
def test_one_epoch_changes_exactly_the_trained_parameters(mode, weights, tmp_path):
    path, ref = weights
    cfg = _cfg(path, mode)
    exp = ClassifierExperiment(cfg, RunContext())  # the state training starts from
    body = exp.model.backbone.body
    for k, v in body.state_dict().items():
        assert torch.equal(v, ref[k]), f"{k} not loaded from the checkpoint"
    trainable = [p for p in exp.model.parameters() if p.requires_grad]
    in_opt = [p for g in exp.optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in in_opt} == {id(p) for p in trainable} and len(in_opt) == len(trainable)
    head0 = {k: v.clone() for k, v in exp.model.head.state_dict().items()}
    param_names = {n for n, _ in body.named_parameters()}
    want = param_names if TRAINED[mode] is None else TRAINED[mode]
    assert {n for n, p in body.named_parameters() if p.requires_grad} == want

    train(cfg, tmp_path / "ck")
    state = load_checkpoint(tmp_path / "ck")["experiment"]
    model = state["model"]
    after = {k.removeprefix("backbone.body."): v for k, v in model.items()
             if k.startswith("backbone.body.")}
    changed = {k for k in param_names if not torch.equal(after[k], ref[k])}
    assert changed == want, f"{mode}: changed {sorted(changed)}, expected {sorted(want)}"
    buffers = {k for k in ref if k not in param_names}
    moved = {k for k in buffers if not torch.equal(after[k], ref[k])}
    if mode == "all":  # BN in train mode updates its running statistics
        assert moved == buffers
    else:  # every BN of the small CNN is frozen (the first conv has no BN parameters)
        assert moved == set(), f"{mode}: frozen BN statistics moved: {sorted(moved)}"
    assert any(not torch.equal(model[f"head.{k}"], v) for k, v in head0.items()), "head idle"
    # the saved optimizer state covers only the trainable parameters (momentum buffers too)
    opt = state["optimizer"]
    assert sum(len(g["params"]) for g in opt["param_groups"]) == len(trainable)
    assert len(opt["state"]) == len(trainable)


def test_frozen_batchnorm_stays_in_eval_mode_under_train(weights):
    path, _ = weights
    for mode in MODES:
        bb = build_backbone(ModelConfig(width=8, pretrained_weights=str(path),
                                        train_layers=mode)).train()
        bns = [m for m in bb.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(m.training == (mode == "all") for m in bns), mode
        assert bb.training and bb.body[0].training  # everything else follows train()
        bb.eval()
        assert not any(m.training for m in bb.modules())


def test_first_conv_of_torchvision_backbones_from_a_written_checkpoint(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    for name, in_ch in (("resnet18", 3), ("resnet18", 1), ("resnet18_cifar", 3)):
        bb = build_backbone(ModelConfig(backbone=name, pretrained_weights=str(path),
                                        train_layers="first_and_head"), in_ch)
        trained = {n for n, p in bb.named_parameters() if p.requires_grad}
        assert trained == {"body.conv1.weight"}, (name, trained)
        assert first_conv(bb) is bb.body.conv1 and bb.body.conv1.in_channels == in_ch
        assert torch.equal(bb.body.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
        bb.train()
        assert not bb.body.bn1.training and not bb.body.layer1[0].bn1.training
        head = build_backbone(ModelConfig(backbone=name, pretrained_weights=str(path),
                                          train_layers="head"), in_ch)
        assert not any(p.requires_grad for p in head.parameters())


def test_default_and_legacy_freeze_backbone(weights):
    path, _ = weights
    assert ModelConfig().train_layers == "all"
    bb = build_backbone(ModelConfig(width=8))
    assert all(p.requires_grad for p in bb.parameters()) and not bb.frozen_bn
    assert all(m.training for m in bb.train().modules())
    legacy = ModelConfig(width=8, pretrained_weights=str(path), freeze_backbone=True)
    assert legacy.trained_layers == "head"
    assert not any(p.requires_grad for p in build_backbone(legacy).parameters())
    agree = _cfg(path, "head", **{"model.freeze_backbone": True})
    assert agree.model.trained_layers == "head"
    with pytest.raises(ConfigError, match="freeze_backbone=true and model.train_layers=all "
                                          "disagree"):
        _cfg(path, "all", **{"model.freeze_backbone": True})
    with pytest.raises(ConfigError, match="train_layers=first_and_head needs model.pretrained"):
        TrialConfig.from_flat({**CFG, "model.train_layers": "first_and_head"})
    with pytest.raises(ConfigError, match="model.train_layers: got 'last'"):
        TrialConfig.from_flat({**CFG, "model.train_layers": "last"})


def test_a_space_searches_train_layers(weights):
    path, _ = weights
    search = {"model.train_layers": {"type": "categorical", "choices": list(MODES)}}
    raw = {"name": "t", "family": "per_level", "dataset": "synthetic", "search": search,
           "fixed": {"model.pretrained_weights": str(path), "model.width": 8}}
    space = validate_space(raw)
    for mode in MODES:
        assert space.resolve({"model.train_layers": mode}).model.train_layers == mode
    del raw["fixed"]["model.pretrained_weights"]
    with pytest.raises(ConfigError, match=r"choices\[1\]='head' .*needs model.pretrained"):
        validate_space(raw)
