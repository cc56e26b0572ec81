"""Backbones: image ``[B, C, H, W]`` -> features ``[B, F]`` via ``forward_features``.

torchvision builds the architectures; ImageNet weights are loaded only from a local file the
user names (``model.pretrained_weights``), never downloaded at run time.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from hpsearch.config import ModelConfig
from hpsearch.errors import ConfigError, DataError
from hpsearch.registry import Registry


class Backbone(nn.Module):
    """Wraps a feature extractor; ``out_dim`` is the feature size."""

    def __init__(self, body: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.body = body
        self.out_dim = out_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.body(x), 1)  # [B, F]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


BackboneBuilder = Callable[[ModelConfig, int], Backbone]
BACKBONES: Registry[BackboneBuilder] = Registry("backbone")


@BACKBONES.register("small_cnn")
def small_cnn(cfg: ModelConfig, in_ch: int) -> Backbone:
    """Three conv-BN-ReLU stages (w, 2w, 4w channels) and global average pooling; fast on CPU."""
    w = cfg.width

    def stage(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o),
                nn.ReLU(inplace=True), nn.Conv2d(o, o, 3, padding=1, bias=False),
                nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    body = nn.Sequential(*stage(in_ch, w), nn.MaxPool2d(2), *stage(w, 2 * w), nn.MaxPool2d(2),
                         *stage(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1))
    return Backbone(body, 4 * w)


def _torchvision(name: str, small_input_stem: bool = False) -> BackboneBuilder:
    """A torchvision classifier as a backbone. ``small_input_stem`` (the ``*_cifar`` names):
    the ResNet stem of He et al. 2016 §4.2 for 32 px inputs, a 3×3 stride-1 ``conv1`` and no
    max-pool, instead of ImageNet's 7×7 stride-2 conv + pool that leaves a 1×1 map at the last
    stage; the rest of torchvision's architecture is unchanged (pretrained weights load into it,
    the new ``conv1`` is freshly initialised)."""

    def build(cfg: ModelConfig, in_ch: int) -> Backbone:
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        if cfg.pretrained_weights:
            path = Path(cfg.pretrained_weights)
            if not path.is_file():
                raise DataError(f"model.pretrained_weights: {path} does not exist (weights are "
                                "never downloaded; save torchvision's state_dict there)")
            try:  # tensors and plain data only: a planted pickle is refused, never run
                weights = torch.load(path, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
                why = "it holds more than tensors" if isinstance(e, pickle.UnpicklingError) \
                    else "it is not a torch.save file"
                raise DataError(f"model.pretrained_weights: {path} refused ({why}; nothing "
                                "in it was run); save torchvision's state_dict there "
                                "(torch.save(model.state_dict(), path))") from None
            net.load_state_dict(weights)
        if small_input_stem:
            net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, 1, 1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.maxpool = nn.Identity()
        if name.startswith("resnet"):
            out_dim = net.fc.in_features
            net.fc = nn.Identity()
            first = ("conv1",)
        else:  # alexnet / vgg: drop the last classifier layer, keep the 4096-d penultimate
            out_dim = net.classifier[-1].in_features
            net.classifier[-1] = nn.Identity()
            first = ("features", "0")
        if in_ch != 3:
            _adapt_first_conv(net, first, in_ch)
        return Backbone(net, out_dim)

    return build


def _adapt_first_conv(net: nn.Module, path: tuple[str, ...], in_ch: int) -> None:
    """Replace the first conv for ``in_ch`` input channels. For grayscale the RGB filters are
    summed, so pretrained filters respond to luminance as before (the thesis re-initialised)."""
    parent = net
    for p in path[:-1]:
        parent = getattr(parent, p)
    old: nn.Conv2d = parent[int(path[-1])] if path[-1].isdigit() else getattr(parent, path[-1])
    new = nn.Conv2d(in_ch, old.out_channels, old.kernel_size, old.stride, old.padding,
                    bias=old.bias is not None)
    with torch.no_grad():
        if in_ch == 1:
            new.weight.copy_(old.weight.sum(1, keepdim=True))
            if old.bias is not None:
                new.bias.copy_(old.bias)
    if path[-1].isdigit():
        parent[int(path[-1])] = new
    else:
        setattr(parent, path[-1], new)


for _name in ("alexnet", "vgg11_bn", "vgg16", "vgg16_bn", "resnet18", "resnet34", "resnet50",
              "resnet101", "resnet152"):
    BACKBONES.add(_name, _torchvision(_name))
for _name in ("resnet18", "resnet34", "resnet50"):
    BACKBONES.add(f"{_name}_cifar", _torchvision(_name, small_input_stem=True))


def build_backbone(cfg: ModelConfig, in_ch: int = 3) -> Backbone:
    bb = BACKBONES.get(cfg.backbone)(cfg, in_ch)
    if cfg.freeze_backbone:
        if not cfg.pretrained_weights:
            raise ConfigError("model.freeze_backbone=true needs model.pretrained_weights: a "
                              "frozen random backbone learns nothing")
        for p in bb.parameters():
            p.requires_grad_(False)
    return bb
