"""Backbones: image ``[B, C, H, W]`` -> features ``[B, F]`` via ``forward_features``.

torchvision builds the ImageNet architectures; ImageNet weights are loaded only from a local
file the user names (``model.pretrained_weights``), never downloaded at run time.
``model.train_layers`` chooses which of the backbone's parameters train
(:func:`apply_train_layers`). The CIFAR networks of Barz & Denzler (WACV 2019, their
``models/plainnet.py``, ``models/cifar_resnet.py`` and ``models/cifar_pyramidnet.py``),
``plain11``, ``resnet110_wfc`` and ``pyramidnet272_200``, are built here; each ends where their
network's final Dense layer starts, so the head's first Linear (the semantic family's
``embed``) is that layer.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hpsearch.config import ModelConfig
from hpsearch.errors import ConfigError, DataError
from hpsearch.registry import Registry


class Backbone(nn.Module):
    """Wraps a feature extractor; ``out_dim`` is the feature size.

    ``frozen_bn`` (set by :func:`apply_train_layers`): BatchNorm layers whose parameters are
    all frozen stay in eval mode under ``train()``, so the running statistics of the weights
    file are used and kept, not re-estimated from the new data's batches.
    """

    def __init__(self, body: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.body = body
        self.out_dim = out_dim
        self.frozen_bn = False

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode and self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) \
                        and not any(p.requires_grad for p in m.parameters()):
                    m.eval()
        return self

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
    if cfg.pretrained_weights:  # the body's own state dict (torch.save(bb.body.state_dict()))
        body.load_state_dict(_read_weights(cfg.pretrained_weights, "the small CNN's body"))
    return Backbone(body, 4 * w)


def _read_weights(file: str, what: str) -> dict[str, torch.Tensor]:
    """The state dict in ``file``, loaded tensors-only (a planted pickle is refused, never
    run); ``what`` names the module whose ``state_dict()`` belongs there."""
    path = Path(file)
    if not path.is_file():
        raise DataError(f"model.pretrained_weights: {path} does not exist (weights are "
                        f"never downloaded; save {what}'s state_dict there)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        why = "it holds more than tensors" if isinstance(e, pickle.UnpicklingError) \
            else "it is not a torch.save file"
        raise DataError(f"model.pretrained_weights: {path} refused ({why}; nothing "
                        f"in it was run); save {what}'s state_dict there "
                        "(torch.save(model.state_dict(), path))") from None


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
            net.load_state_dict(_read_weights(cfg.pretrained_weights, "torchvision"))
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


def _glorot(module: nn.Module) -> nn.Module:
    """Keras' default initialisation, which Barz & Denzler's CIFAR networks use: Glorot-uniform
    conv / linear kernels, zero biases (BatchNorm keeps γ = 1, β = 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


#: Plain-11 (Barz & Denzler's ``simple``): conv widths, ``"ap"`` = 2×2 average pooling.
PLAIN11_LAYERS: tuple[int | str, ...] = (64, 64, "ap", 128, 128, 128, "ap", 256, 256, 256, "ap",
                                         512)
PLAIN11_FC = 512  # the fully connected layer after global average pooling


@BACKBONES.register("plain11")
def plain11(cfg: ModelConfig, in_ch: int) -> Backbone:
    """Plain-11: nine 3×3 convs, global average pooling and FC-512 (with the head's Linear,
    11 trained layers). Every conv and the FC are layer -> ReLU -> BatchNorm, in that order as
    in their ``plainnet.py`` (the conv biases are kept: they act before the ReLU). Needs inputs
    of at least 8 px (three 2×2 poolings). ``model.width`` is not used."""
    layers: list[nn.Module] = []
    c = in_ch
    for spec in PLAIN11_LAYERS:
        if spec == "ap":
            layers.append(nn.AvgPool2d(2))
            continue
        c_out = int(spec)
        layers += [nn.Conv2d(c, c_out, 3, padding=1), nn.ReLU(inplace=True),
                   nn.BatchNorm2d(c_out)]
        c = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, PLAIN11_FC),
               nn.ReLU(inplace=True), nn.BatchNorm1d(PLAIN11_FC)]
    body = _glorot(nn.Sequential(*layers))
    if cfg.pretrained_weights:  # the body's own state dict, as for the small CNN
        body.load_state_dict(_read_weights(cfg.pretrained_weights, "the Plain-11 body"))
    return Backbone(body, PLAIN11_FC)


class CifarBasicBlock(nn.Module):
    """He et al. 2016 §4.2 basic block: conv3×3(stride)-BN-ReLU-conv3×3-BN, + shortcut, ReLU.

    The shortcut is parameter-free (option A), as in Barz & Denzler's ``cifar_resnet.py``: a
    stride-s average pooling, then zero channels padded on both sides (⌊Δ/2⌋ before,
    ⌈Δ/2⌉ after, Δ = out − in). Convs have no bias (each is followed by BatchNorm, which
    cancels one; their Keras convs carry one).
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        if c_out < c_in:
            raise ConfigError(f"CIFAR ResNet block: channels must not shrink ({c_in} -> {c_out})")
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        # ceil_mode: same map size as the stride-s conv on odd sides too
        self.pool = nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.pad = ((c_out - c_in) // 2, c_out - c_in - (c_out - c_in) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = self.pool(x)
        if self.pad != (0, 0):
            s = F.pad(s, (0, 0, 0, 0, *self.pad))  # [B, C_in, H, W] -> [B, C_out, H, W]
        return F.relu(y + s)


def cifar_resnet(blocks: int, widths: tuple[int, ...], in_ch: int = 3) -> nn.Sequential:
    """The CIFAR ResNet of He et al. 2016 §4.2 (depth 2·len(widths)·blocks + 2 with the head):
    conv3×3(widths[0])-BN-ReLU, then one stage of ``blocks`` basic blocks per width (stride 2
    from the second stage on), global average pooling. Output ``[B, widths[-1], 1, 1]``."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, widths[0], 3, padding=1, bias=False),
                               nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
    c = widths[0]
    for i, w in enumerate(widths):
        for b in range(blocks):
            layers.append(CifarBasicBlock(c, w, 2 if i > 0 and b == 0 else 1))
            c = w
    layers.append(nn.AdaptiveAvgPool2d(1))
    return _glorot(nn.Sequential(*layers))


#: ResNet-110-wfc (Barz & Denzler): ResNet-110's 18 blocks per stage with twice its widths
#: (16, 32, 64); "fc" = a Dense layer after pooling even for embeddings, here the head's Linear.
RESNET110_WFC = (18, (32, 64, 128))


@BACKBONES.register("resnet110_wfc")
def resnet110_wfc(cfg: ModelConfig, in_ch: int) -> Backbone:
    """ResNet-110-wfc: 3 stages × 18 basic blocks, widths 32/64/128, features ``[B, 128]``.
    ``model.width`` is not used."""
    blocks, widths = RESNET110_WFC
    body = cifar_resnet(blocks, widths, in_ch)
    if cfg.pretrained_weights:
        body.load_state_dict(_read_weights(cfg.pretrained_weights, "the ResNet-110-wfc body"))
    return Backbone(body, widths[-1])


def pyramid_widths(depth: int, alpha: float, bottleneck: bool = True) -> list[int]:
    """Inner widths of the 3·N residual blocks of an additive CIFAR PyramidNet (Han, Kim & Kim,
    CVPR 2017, Eq. 2): ``N = (depth − 2) / 9`` bottleneck blocks per stage (``/ 6`` for basic
    blocks), and block k = 1 … 3N has inner width

        D_k = round(16 + k · α / (3N)),   round(x) = ⌊x + ½⌋,

    the running width a float accumulated by ``+ α / (3N)`` per block and rounded half up,
    as ``round`` in their reference ``addpyramidnet.lua`` (github.com/jhkim89/PyramidNet).
    (Their PyTorch port and Barz & Denzler's Keras port round with Python's ``round``, half to
    even; the two differ only where 16 + k·α/(3N) is an exact tie, never for α = 200, N = 30.)
    A bottleneck block outputs 4·D_k channels, a basic block D_k.
    """
    per_stage = 9 if bottleneck else 6
    if depth < 2 + per_stage or (depth - 2) % per_stage:
        kind = "bottleneck" if bottleneck else "basic"
        raise ConfigError(f"PyramidNet depth={depth}: a {kind} PyramidNet needs depth = "
                          f"{per_stage}·N + 2 with N >= 1 blocks per stage (e.g. "
                          f"{per_stage * 3 + 2}, {'272' if bottleneck else '110'})")
    if not alpha >= 0:
        raise ConfigError(f"PyramidNet alpha={alpha}: the widening step must be >= 0 "
                          "(channels only grow; alpha=0 is a pre-activation ResNet of width 16)")
    blocks = 3 * ((depth - 2) // per_stage)
    step = alpha / blocks
    widths, width = [], 16.0
    for _ in range(blocks):
        width += step
        widths.append(math.floor(width + 0.5))
    return widths


class PyramidBlock(nn.Module):
    """A pyramidal residual unit (Han et al. 2017, Fig. 6(d) and §3.2), width ``D``.

    Bottleneck: BN − conv1×1(D) − BN − ReLU − conv3×3(D, stride) − BN − ReLU − conv1×1(4D) − BN;
    basic: BN − conv3×3(D, stride) − BN − ReLU − conv3×3(D) − BN. No ReLU before the first conv
    and none after the addition. Shortcut: identity, a 2×2 stride-2 average pooling when the
    block downsamples, and the missing ``c_out − c_in`` channels as zeros appended after the
    input's (not split on both sides as in :class:`CifarBasicBlock`). Convs have no bias
    (each is followed by BatchNorm; Barz & Denzler's Keras convs carry one).
    """

    def __init__(self, c_in: int, width: int, stride: int, bottleneck: bool = True) -> None:
        super().__init__()
        c_out = 4 * width if bottleneck else width
        if c_out < c_in:
            raise ConfigError(f"PyramidNet block: channels must not shrink ({c_in} -> {c_out})")
        if bottleneck:
            layers: list[nn.Module] = [
                nn.BatchNorm2d(c_in), nn.Conv2d(c_in, width, 1, bias=False),
                nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, stride, 1, bias=False),
                nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        else:
            layers = [nn.BatchNorm2d(c_in), nn.Conv2d(c_in, width, 3, stride, 1, bias=False),
                      nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                      nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)]
        self.residual = nn.Sequential(*layers)
        # ceil_mode: same map size as the stride-2 conv on odd sides too (equal on even sides)
        self.pool = nn.AvgPool2d(2, ceil_mode=True) if stride > 1 else nn.Identity()
        self.extra = c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.pool(x)
        if self.extra:
            s = F.pad(s, (0, 0, 0, 0, 0, self.extra))  # [B, C_in, H, W] -> [B, C_out, H, W]
        return self.residual(x) + s


def pyramidnet(depth: int, alpha: float, bottleneck: bool = True, in_ch: int = 3,
               init: str = "glorot_normal") -> nn.Sequential:
    """The additive CIFAR PyramidNet of Han et al. 2017 (their ``addpyramidnet.lua``): conv3×3
    (16) − BN (no ReLU), three stages of N :class:`PyramidBlock` s with the widths of
    :func:`pyramid_widths` (stride 2 at the first block of stages 2 and 3), then BN − ReLU −
    global average pooling. Output ``[B, C, 1, 1]``, C = 4·D_3N (bottleneck) or D_3N, i.e.
    4·round(16 + α) for a bottleneck net.

    ``init``: ``"glorot_normal"`` (default) is what Barz & Denzler's Keras port
    (``models/cifar_pyramidnet.py``) sets on every conv, ``kernel_initializer='glorot_normal'``:
    N(0, 2 / (fan_in + fan_out)) with fan = k²·channels (Keras ≥ 2.2.3 draws it from a
    rescaled truncated normal of that variance, ``xavier_normal_`` untruncated); it is their
    network we reproduce, so their choice, not Keras' default Glorot-uniform of
    :func:`_glorot`. ``"kaiming"``: the paper code's N(0, 2 / (k²·c_out)), i.e. He-normal in
    fan-out mode. BatchNorm starts at γ = 1, β = 0 in both. (BatchNorm keeps torch's
    ε = 1e-5 and momentum 0.1, as the other CIFAR nets here; Keras' defaults are 1e-3 and 0.99.)
    """
    widths = pyramid_widths(depth, alpha, bottleneck)
    if init not in ("glorot_normal", "kaiming"):
        raise ConfigError(f"PyramidNet init={init!r}; allowed: glorot_normal (Barz & Denzler's "
                          "Keras port), kaiming (Han et al.'s code)")
    n = len(widths) // 3
    layers: list[nn.Module] = [nn.Conv2d(in_ch, 16, 3, padding=1, bias=False),
                               nn.BatchNorm2d(16)]
    c = 16
    for k, w in enumerate(widths):
        layers.append(PyramidBlock(c, w, 2 if k in (n, 2 * n) else 1, bottleneck))
        c = 4 * w if bottleneck else w
    layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)]
    body = nn.Sequential(*layers)
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            if init == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_normal_(m.weight)
    return body


#: PyramidNet-272-200 (Barz & Denzler's third CIFAR net): depth 272, α = 200, bottleneck blocks
#: (30 per stage, widths 18 … 216, features 864).
PYRAMIDNET272_200 = (272, 200)


@BACKBONES.register("pyramidnet272_200")
def pyramidnet272_200(cfg: ModelConfig, in_ch: int) -> Backbone:
    """PyramidNet-272 (α = 200, bottleneck), features ``[B, 864]``; 26,202,192 parameters
    (26,288,692 with a 100-class Linear; Han et al. report 26.0M). ``model.width`` is not
    used. Its CPU cost is large: build it, do not train it, on a laptop."""
    depth, alpha = PYRAMIDNET272_200
    body = pyramidnet(depth, alpha, bottleneck=True, in_ch=in_ch)
    if cfg.pretrained_weights:
        body.load_state_dict(_read_weights(cfg.pretrained_weights, "the PyramidNet-272 body"))
    return Backbone(body, 4 * pyramid_widths(depth, alpha)[-1])


def build_backbone(cfg: ModelConfig, in_ch: int = 3) -> Backbone:
    bb = BACKBONES.get(cfg.backbone)(cfg, in_ch)
    if cfg.freeze_backbone and not cfg.pretrained_weights:
        raise ConfigError("model.freeze_backbone=true needs model.pretrained_weights: a "
                          "frozen random backbone learns nothing")
    apply_train_layers(bb, cfg.trained_layers)
    return bb


def first_conv(module: nn.Module) -> nn.Conv2d:
    """The first ``nn.Conv2d`` in module order: ``conv1`` of the ResNets (the new 3×3 stem of
    the ``*_cifar`` ones), ``features[0]`` of AlexNet / VGG, the first conv of the small CNN,
    Plain-11 and ResNet-110-wfc, each after any grayscale adaptation (it is replaced in
    place)."""
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ConfigError(f"model.train_layers=first_and_head: {type(module).__name__} has no "
                          "nn.Conv2d; use train_layers=head or all")
    return conv


def apply_train_layers(bb: Backbone, mode: str) -> None:
    """Freeze what ``model.train_layers`` does not train (``requires_grad=False``: the
    experiment leaves such parameters out of its optimizer, so neither weight decay nor
    momentum touches them).

    ``all``: every parameter trains. ``head``: none of the backbone's (the hierarchy head on top
    trains; it is what replaces the ImageNet classifier's last layer, which the backbones drop,
    so "last layer only" of thesis Table 4.3 is exactly the head). ``first_and_head``: only the
    first conv (:func:`first_conv`: weight and bias, not its BatchNorm), as in Table 4.4.
    Frozen BatchNorm layers stay in eval mode during training (:class:`Backbone`): the thesis
    keeps "the rest of the weights fixed", and a BN left in train mode would still rewrite its
    running statistics (buffers, not parameters) from the new data and normalise each batch by
    its own statistics. (The published ``--freeze_weights`` is recorded only as clearing
    ``requires_grad``; whether its BN layers ran in train mode is not known.)
    """
    if mode == "all":
        return
    for p in bb.parameters():
        p.requires_grad_(False)
    if mode == "first_and_head":
        for p in first_conv(bb).parameters():
            p.requires_grad_(True)
    elif mode != "head":
        raise ConfigError(f"model.train_layers={mode!r}; allowed: all, head, first_and_head")
    bb.frozen_bn = True
