"""Every registered backbone builds from torchvision (no download) and maps images to
``[B, out_dim]`` features; the small-input ResNet stem keeps spatial resolution at 32 px."""

from __future__ import annotations

import pytest
import torch

from hpsearch.config import ModelConfig
from hpsearch.errors import ConfigError, DataError
from hpsearch.models.backbones import BACKBONES, build_backbone

# no backward: same code paths as resnet50 / vgg16_bn, or a small variant in
# tests/test_pyramidnet.py
BIG = {"resnet101", "resnet152", "vgg16", "pyramidnet272_200"}


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_features_shape_and_gradient(name):
    torch.manual_seed(0)
    bb = build_backbone(ModelConfig(backbone=name, width=8))
    side = 64 if name == "alexnet" else 32  # alexnet needs >= 63 px
    with torch.set_grad_enabled(name not in BIG):
        f = bb(torch.randn(3, 3, side, side))
    assert f.shape == (3, bb.out_dim) and torch.isfinite(f).all()
    if name not in BIG:
        # a random projection: the plain sum of a BatchNorm-ended backbone's features (plain11)
        # is constant in train mode, so its gradient would be exactly zero
        (f * torch.randn_like(f)).sum().backward()
        first = next(p for p in bb.parameters() if p.ndim == 4)  # the first conv's weight
        assert first.grad is not None and first.grad.abs().sum() > 0


def test_small_input_stem_keeps_resolution_and_grayscale_works():
    bb = build_backbone(ModelConfig(backbone="resnet18_cifar"))
    net = bb.body
    assert net.conv1.stride == (1, 1) and net.conv1.kernel_size == (3, 3)
    assert isinstance(net.maxpool, torch.nn.Identity)
    seen = {}
    net.layer4.register_forward_hook(lambda m, i, o: seen.update(map=o.shape))
    bb(torch.randn(1, 3, 32, 32))
    assert seen["map"][-2:] == (4, 4)  # ImageNet stem: 1×1 at 32 px
    gray = build_backbone(ModelConfig(backbone="resnet18_cifar", grayscale=True), in_ch=1)
    assert gray(torch.randn(2, 1, 32, 32)).shape == (2, 512)


def test_weights_are_never_downloaded_and_frozen_needs_weights(tmp_path):
    with pytest.raises(DataError, match="never downloaded"):
        build_backbone(ModelConfig(backbone="resnet18",
                                   pretrained_weights=str(tmp_path / "none.pth")))
    with pytest.raises(ConfigError, match="freeze_backbone"):
        build_backbone(ModelConfig(backbone="resnet18", freeze_backbone=True))
    # a saved torchvision state_dict loads into the small-input variant too (conv1 is new)
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    bb = build_backbone(ModelConfig(backbone="resnet18_cifar", pretrained_weights=str(path),
                                    freeze_backbone=True))
    assert torch.equal(bb.body.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    assert not any(p.requires_grad for p in bb.parameters())
