"""PyramidNet (Han, Kim & Kim, CVPR 2017), Barz & Denzler's third CIFAR network: the additive
width rule, hand-derived parameter counts (PyramidNet-272-200 against the paper's 26.0M), the
zero-padded shortcut, stage strides, initialisation, errors, and forward/backward on small
variants. The 272-layer net is only built here, never run (its CPU forward takes seconds)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hpsearch.config import ModelConfig
from hpsearch.errors import ConfigError, DataError
from hpsearch.models.backbones import (
    PyramidBlock,
    build_backbone,
    first_conv,
    pyramid_widths,
    pyramidnet,
)


def widths_by_hand(depth: int, alpha: float, per_stage: int = 9) -> list[int]:
    """D_k = ⌊16 + k·α/(3N) + ½⌋, k = 1 … 3N (closed form, not the model's running sum)."""
    n = (depth - 2) // per_stage
    return [math.floor(16 + k * alpha / (3 * n) + 0.5) for k in range(1, 3 * n + 1)]


def bn(c: int) -> int:
    return 2 * c  # γ, β


def bottleneck_net_params(widths: list[int], in_ch: int = 3) -> tuple[int, int]:
    """(all parameters, conv weights only) of a bottleneck PyramidNet body: stem conv3×3(16) +
    BN; per block BN(c_in), 1×1 c_in→D, BN(D), 3×3 D→D, BN(D), 1×1 D→4D, BN(4D); final BN."""
    convs = 9 * in_ch * 16
    bns = bn(16)
    c = 16
    for d in widths:
        convs += c * d + 9 * d * d + d * 4 * d
        bns += bn(c) + bn(d) + bn(d) + bn(4 * d)
        c = 4 * d
    bns += bn(c)
    return convs + bns, convs


def basic_net_params(widths: list[int], in_ch: int = 3) -> int:
    """Basic blocks: BN(c_in), 3×3 c_in→D, BN(D), 3×3 D→D, BN(D)."""
    total, c = 9 * in_ch * 16 + bn(16), 16
    for d in widths:
        total += 9 * c * d + 9 * d * d + bn(c) + 2 * bn(d)
        c = d
    return total + bn(c)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_widths_grow_additively_and_round_half_up():
    w = pyramid_widths(272, 200)
    assert w == widths_by_hand(272, 200)
    # 16 + k·20/9: 18.2, 20.4, 22.7, 24.9, 27.1 … 216 (N = 30 per stage, 90 blocks)
    assert len(w) == 90 and w[:5] == [18, 20, 23, 25, 27] and w[-1] == 216
    assert pyramid_widths(20, 12) == [18, 20, 22, 24, 26, 28]  # N = 2, step 2
    assert pyramid_widths(20, 12, bottleneck=False) == widths_by_hand(20, 12, per_stage=6)
    assert pyramid_widths(20, 3, bottleneck=False) == [16, 17, 17, 17, 18, 18, 18, 19, 19]
    # ties (step 0.5, exact in binary): half up as Lua's floor(x + 0.5); Python's round-half-even
    # (their PyTorch / Keras ports) would give [16, 17, 18, 18, 18, 19]
    assert pyramid_widths(20, 3) == [17, 17, 18, 18, 19, 19]


def test_pyramidnet272_200_parameters_by_hand_and_against_the_paper():
    bb = build_backbone(ModelConfig(backbone="pyramidnet272_200"))
    total, conv_weights = bottleneck_net_params(widths_by_hand(272, 200))
    assert n_params(bb) == total == 26_202_192
    assert bb.out_dim == 4 * (16 + 200) == 864
    assert sum(isinstance(m, nn.Conv2d) for m in bb.modules()) == 1 + 3 * 90  # + fc = 272
    assert not any(isinstance(m, nn.Linear) for m in bb.modules())
    assert all(m.bias is None for m in bb.modules() if isinstance(m, nn.Conv2d))
    fc = 864 * 100 + 100  # the CIFAR-100 classifier, not part of the backbone
    # Han et al. report 26.0M (paper; github.com/jhkim89/PyramidNet README). With every
    # trained tensor the network of their code has 26,288,692 (1.1% more); their figure matches
    # the conv + fc weights without BatchNorm's γ, β (26,077,828, 0.3% more), checked here to 1%.
    assert abs((conv_weights + fc) / 26.0e6 - 1) < 0.01
    assert abs((total + fc) / 26.0e6 - 1) < 0.012  # all parameters: 1.11% over
    assert isinstance(first_conv(bb), nn.Conv2d) and first_conv(bb) is bb.body[0]


@pytest.mark.parametrize("bottleneck", [True, False])
def test_small_variant_forward_backward_and_stage_maps(bottleneck):
    torch.manual_seed(0)
    body = pyramidnet(20, 12, bottleneck=bottleneck)
    widths = pyramid_widths(20, 12, bottleneck)
    c_out = (4 if bottleneck else 1) * widths[-1]
    want = bottleneck_net_params(widths)[0] if bottleneck else basic_net_params(widths)
    assert n_params(body) == want
    blocks = [m for m in body if isinstance(m, PyramidBlock)]
    n = len(blocks) // 3
    maps = []
    for i in (n - 1, 2 * n - 1, 3 * n - 1):  # the last block of each stage
        blocks[i].register_forward_hook(lambda m, a, o: maps.append(tuple(o.shape[1:])))
    x = torch.randn(2, 3, 32, 32)
    f = torch.flatten(body(x), 1)
    k = 4 if bottleneck else 1
    assert maps == [(k * widths[n - 1], 32, 32), (k * widths[2 * n - 1], 16, 16),
                    (c_out, 8, 8)]
    assert f.shape == (2, c_out) and torch.isfinite(f).all()
    (f * torch.randn_like(f)).sum().backward()
    stem = body[0]
    assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0
    assert [b.pool.__class__.__name__ for b in blocks].count("AvgPool2d") == 2
    assert blocks[n].residual[4 if bottleneck else 1].stride == (2, 2)
    # odd sides: the ceil-mode pooling keeps the shortcut's size equal to the stride-2 conv's
    assert body(torch.randn(1, 3, 9, 9)).shape == (1, c_out, 1, 1)
    gray = pyramidnet(20, 12, bottleneck, in_ch=1)
    assert gray(torch.randn(2, 1, 32, 32)).shape == (2, c_out, 1, 1)


def test_shortcut_is_pooled_input_then_zero_channels():
    torch.manual_seed(0)
    blk = PyramidBlock(8, 5, stride=2)  # 8 -> 20 channels
    nn.init.zeros_(blk.residual[-1].weight)  # last BN γ = β = 0: the residual branch is 0
    nn.init.zeros_(blk.residual[-1].bias)
    x = torch.randn(2, 8, 6, 6)
    y = blk(x)
    assert y.shape == (2, 20, 3, 3)
    pooled = x.reshape(2, 8, 3, 2, 3, 2).mean((3, 5))  # 2×2 average pooling by hand
    torch.testing.assert_close(y[:, :8], pooled)
    assert torch.equal(y[:, 8:], torch.zeros(2, 12, 3, 3))
    # no ReLU after the addition: negative outputs survive
    assert (y < 0).any()
    with pytest.raises(ConfigError, match="must not shrink"):
        PyramidBlock(64, 8, stride=1)  # 8·4 = 32 < 64


def test_initialisation_variances():
    torch.manual_seed(0)
    glorot = pyramidnet(20, 12)
    kaiming = pyramidnet(20, 12, init="kaiming")
    d = pyramid_widths(20, 12)[-1]  # the last block's 3×3 conv: D -> D, D = 28
    for body, std in ((glorot, math.sqrt(2 / (9 * d + 9 * d))), (kaiming, math.sqrt(2 / (9 * d)))):
        w = [m for m in body if isinstance(m, PyramidBlock)][-1].residual[4].weight
        assert w.shape == (d, d, 3, 3)
        assert abs(w.std().item() / std - 1) < 0.05  # 7,056 draws: sampling error ~1%
    # the two stds differ by √2: the test tells them apart
    bn_ = glorot[1]
    assert torch.equal(bn_.weight, torch.ones(16)) and torch.equal(bn_.bias, torch.zeros(16))


def test_errors_name_the_bad_value_and_weights_are_never_downloaded(tmp_path):
    with pytest.raises(ConfigError, match="depth=21"):
        pyramid_widths(21, 12)
    with pytest.raises(ConfigError, match="depth=2:"):
        pyramid_widths(2, 12)
    with pytest.raises(ConfigError, match="depth=21: a basic PyramidNet needs depth = 6·N"):
        pyramid_widths(21, 12, bottleneck=False)
    with pytest.raises(ConfigError, match="alpha=-1"):
        pyramid_widths(20, -1)
    with pytest.raises(ConfigError, match="init='he'"):
        pyramidnet(20, 12, init="he")
    with pytest.raises(DataError, match="never downloaded"):
        build_backbone(ModelConfig(backbone="pyramidnet272_200",
                                   pretrained_weights=str(tmp_path / "none.pt")))


def test_pretrained_weights_load_into_the_registered_body(tmp_path):
    torch.manual_seed(0)
    ref = build_backbone(ModelConfig(backbone="pyramidnet272_200"))
    path = tmp_path / "pyr.pt"
    torch.save(ref.body.state_dict(), path)
    torch.manual_seed(1)
    bb = build_backbone(ModelConfig(backbone="pyramidnet272_200", pretrained_weights=str(path)))
    assert torch.equal(bb.body[0].weight, ref.body[0].weight)
    mid = bb.body[50].residual[4].weight  # a 3×3 conv of stage 2
    assert torch.equal(mid, ref.body[50].residual[4].weight)
    assert not torch.equal(mid, build_backbone(ModelConfig(backbone="pyramidnet272_200"))
                           .body[50].residual[4].weight)  # not equal by chance of the seed
