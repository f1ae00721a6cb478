"""Mobile building blocks shared by the MobileNet-family spaces: `ConvBNAct`, `MBConv`, `SqueezeExcite`.

`MBConv` is the inverted-residual block of MobileNetV2 (Sandler et al., CVPR 2018) in the
form ProxylessNAS uses it (`MBInvertedConvLayer`, Cai et al., ICLR 2019; reference
implementation mit-han-lab/proxylessnas `search/modules/layers.py`): optional 1x1
expansion, depthwise kxk, linear 1x1 projection, BN after every conv, bias-free convs.
Submodule names follow the reference (`inverted_bottleneck`, `depth_conv`,
`point_linear`, each with `conv`, `bn`, `act`) so that its state dicts map one to one.
`make_divisible` is the MobileNet channel-rounding rule of the reference
`search/utils/__init__.py`.

MobileNetV3-style blocks (Howard et al., ICCV 2019) follow Once-for-All's `MBConvLayer`
(Cai et al., ICLR 2020; mit-han-lab/once-for-all `ofa/utils/layers.py`,
`ofa/utils/pytorch_modules.py`): keyword arguments add a squeeze-excite module after the
depthwise activation (`depth_conv.se`, as in the reference), an explicit hidden width
(`mid_channels`, OFA's make_divisible(round(in * e), 8)) and the BN epsilon (OFA: 1e-5);
h-swish is `act=nn.Hardswish` (x * ReLU6(x + 3) / 6, the reference's `Hswish`).

Deviations from the references: the activation is a parameter (default ReLU6); the
identity shortcut lives inside the block (`residual=True`) instead of in a separate
`MobileInvertedResidualBlock` / `ResidualBlock` wrapper; h-swish and h-sigmoid are
torch's `nn.Hardswish` / `nn.Hardsigmoid` (the same functions).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

Activation = Callable[[], nn.Module]

BN_MOMENTUM = 0.1
BN_EPS = 1e-3


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round `v` to the nearest multiple of `divisor` without losing more than 10%.

    Args:
        v: the unrounded channel count (e.g. `32 * width_mult`).
        divisor: the multiple to round to.
        min_value: the smallest result; `divisor` when not given.

    Returns:
        The rounded count: round-half-up to a multiple of `divisor`, at least
        `min_value`, plus one more `divisor` if rounding went below 0.9 * v.
    """
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(v + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * v:
        rounded += divisor
    return rounded


def conv_out_size(size: int, stride: int) -> int:
    """Output size of a conv with padding k//2 and odd k: ceil(size / stride)."""
    return -(-size // stride)


class ConvBNAct(nn.Sequential):
    """Bias-free conv (padding k//2) followed by batch norm and an optional activation.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size, odd.
        stride: conv stride; the output size is ceil(input / stride).
        groups: conv groups (`in_channels` for a depthwise conv).
        act: activation factory, or None for a linear layer.
        bn_eps: batch-norm epsilon (ProxylessNAS 1e-3, Once-for-All 1e-5).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: Activation | None = nn.ReLU6,
        *,
        bn_eps: float = BN_EPS,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM, eps=bn_eps)
        if act is not None:
            self.act = act()


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation as Once-for-All's `SEModule`: x * h-sigmoid(W2 ReLU(W1 mean(x))).

    The bottleneck width is make_divisible(channels // reduction, 8); both 1x1 convs have a
    bias. Submodules are named as in the reference (`fc.reduce`, `fc.relu`, `fc.expand`,
    `fc.h_sigmoid`) so its weights load one to one.

    Args:
        channels: input and output channels.
        reduction: channel reduction of the bottleneck (MobileNetV3 and OFA: 4).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        mid = make_divisible(channels // reduction)
        self.fc = nn.Sequential(
            OrderedDict(
                reduce=nn.Conv2d(channels, mid, 1),
                relu=nn.ReLU(),
                expand=nn.Conv2d(mid, channels, 1),
                h_sigmoid=nn.Hardsigmoid(),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W), each channel scaled by a gate in [0, 1]."""
        return x * self.fc(x.mean((2, 3), keepdim=True))  # gate: (B, C, 1, 1)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: [1x1 expand] -> depthwise kxk [-> SE] -> linear 1x1 project (+ x).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel size, odd.
        expand_ratio: hidden width is round(in_channels * expand_ratio) unless `mid_channels`
            is given; 1 omits the expansion.
        stride: depthwise stride.
        residual: add the input to the output (needs stride 1 and equal widths).
        act: activation factory for the expansion and depthwise convs (`nn.Hardswish` for h-swish).
        mid_channels: explicit hidden width (Once-for-All rounds it to a multiple of 8).
        has_se: add `SqueezeExcite` (reduction 4) after the depthwise activation, as MobileNetV3.
        bn_eps: batch-norm epsilon of every BN in the block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        expand_ratio: float,
        stride: int = 1,
        residual: bool = False,
        act: Activation = nn.ReLU6,
        *,
        mid_channels: int | None = None,
        has_se: bool = False,
        bn_eps: float = BN_EPS,
    ) -> None:
        super().__init__()
        if residual and (stride != 1 or in_channels != out_channels):
            raise ValueError(
                f"MBConv: a residual needs stride 1 and equal widths, got stride {stride}, "
                f"{in_channels} -> {out_channels} channels"
            )
        hidden = round(in_channels * expand_ratio) if mid_channels is None else mid_channels
        self.residual = residual
        self.inverted_bottleneck = (
            None if expand_ratio == 1 else ConvBNAct(in_channels, hidden, 1, act=act, bn_eps=bn_eps)
        )
        self.depth_conv = ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden, act=act, bn_eps=bn_eps)
        if has_se:
            self.depth_conv.add_module("se", SqueezeExcite(hidden))
        self.point_linear = ConvBNAct(hidden, out_channels, 1, act=None, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / s), ceil(W / s))."""
        out = x if self.inverted_bottleneck is None else self.inverted_bottleneck(x)
        out = self.point_linear(self.depth_conv(out))
        return out + x if self.residual else out


__all__ = ["BN_EPS", "BN_MOMENTUM", "Activation", "ConvBNAct", "MBConv", "SqueezeExcite", "make_divisible"]
