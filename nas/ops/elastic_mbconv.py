"""Elastic mobile blocks: `ElasticSqueezeExcite` and `ElasticMBConv`, built from `nas.ops.elastic`.

`ElasticMBConv` holds an MBConv at its largest depthwise kernel and widths and runs a smaller
kernel as the centre crop and a smaller hidden width as the leading channels of the expansion,
depthwise and projection convs and their batch norms, as Once-for-All's `DynamicMBConvLayer`
(mit-han-lab/once-for-all `ofa/imagenet_classification/elastic_nn/modules/dynamic_layers.py`) and
Single-Path NAS' superkernel (dstamoulis/single-path-nas `nas-search/superkernel.py`). Spaces that
search a width per stage (BigNAS, AttentiveNAS) also slice its input and output channels, as OFA's
layer does with its `active_out_channel` and the input width it reads off the input (AttentiveNAS
`models/modules/dynamic_layers.py`): the leading channels of the expansion conv's input, the
projection conv's output and its batch norm; the other spaces leave them at their largest. A
block without expansion (`expand=False`) has no expansion conv and its hidden width is its input
width, as OFA's layer with `expand_ratio` 1. `ElasticSqueezeExcite` slices its reduce and expand
convs as OFA's `DynamicSE`: the bottleneck of C active channels is make_divisible(C // 4, 8).
Submodules are named as `nas.ops.mbconv.MBConv` names them, so `collect_active_state(block)`
loads into the standalone `MBConv` of the active setting.

Deviations from OFA: the active input width is set explicitly (`set_active`), and an input of
another width is an error where OFA adapts to it; the expansion ratio is given as the hidden
width itself (the owner applies its rounding rule); OFA's channel re-ordering by importance
(`re_organize_middle_weights`) is a step of progressive shrinking, not of the block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from nas.ops.elastic import ElasticBatchNorm2d, ElasticConv2d
from nas.ops.mbconv import BN_EPS, BN_MOMENTUM, Activation, make_divisible


class ElasticSqueezeExcite(nn.Module):
    """`nas.ops.mbconv.SqueezeExcite` over the leading `channels` of its largest width.

    Args:
        channels: largest width.
        reduction: bottleneck reduction (MobileNetV3 and OFA: 4).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.channels, self.reduction = channels, reduction
        mid = make_divisible(channels // reduction)
        self.fc = nn.Sequential(
            OrderedDict(
                reduce=ElasticConv2d(channels, mid, 1, bias=True),
                relu=nn.ReLU(),
                expand=ElasticConv2d(mid, channels, 1, bias=True),
                h_sigmoid=nn.Hardsigmoid(),
            )
        )

    def set_active(self, channels: int) -> None:
        """Run `channels` channels through a bottleneck of make_divisible(channels // reduction) [DynamicSE]."""
        mid = make_divisible(channels // self.reduction)
        self.fc.reduce.set_active(in_channels=channels, out_channels=mid)
        self.fc.expand.set_active(in_channels=mid, out_channels=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W), each channel scaled by a gate in [0, 1]."""
        return x * self.fc(x.mean((2, 3), keepdim=True))  # gate: (B, C, 1, 1)


def _conv_bn(conv: ElasticConv2d, width: int, act: Activation | None, eps: float) -> nn.Sequential:
    """conv -> bn [-> act], named as `ConvBNAct`."""
    parts: OrderedDict[str, nn.Module] = OrderedDict(conv=conv, bn=ElasticBatchNorm2d(width, eps, BN_MOMENTUM))
    if act is not None:
        parts["act"] = act()
    return nn.Sequential(parts)


class ElasticMBConv(nn.Module):
    """[1x1 expand ->] depthwise kxk [-> SE] -> linear 1x1 project (+ x), with elastic k, hidden width and,
    optionally, input and output widths.

    Args:
        in_channels: largest input width.
        out_channels: largest output width.
        kernel_sizes: depthwise kernel sizes it can run; it holds the largest.
        mid_channels: the largest hidden width; a smaller one is its leading slice. Equal to `in_channels`
            when `expand` is False.
        stride: depthwise stride.
        residual: add the input to the output (stride 1; the active input and output widths must agree).
        act: activation factory of the expansion and depthwise convs.
        expand: hold a 1x1 expansion conv (False: MobileNetV2's expansion-1 block, hidden width = input width).
        has_se: squeeze-excite after the depthwise activation (sliced with the hidden width).
        bn_eps: batch-norm epsilon.
        kernel_transform: Once-for-All's learned kernel transform matrices (see `ElasticConv2d`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_sizes: Sequence[int],
        mid_channels: int,
        stride: int = 1,
        residual: bool = False,
        act: Activation = nn.ReLU6,
        *,
        expand: bool = True,
        has_se: bool = False,
        bn_eps: float = BN_EPS,
        kernel_transform: bool = False,
    ) -> None:
        super().__init__()
        if residual and (stride != 1 or in_channels != out_channels):
            raise ValueError(f"ElasticMBConv: a residual needs stride 1 and equal widths, got stride {stride}, "
                             f"{in_channels} -> {out_channels} channels")
        if not expand and mid_channels != in_channels:
            raise ValueError(f"ElasticMBConv: without expansion the hidden width is the input width "
                             f"{in_channels}, got {mid_channels}")
        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid_channels
        self.residual = residual
        self.inverted_bottleneck = (
            _conv_bn(ElasticConv2d(in_channels, mid_channels, 1), mid_channels, act, bn_eps) if expand else None)
        depthwise = ElasticConv2d(mid_channels, mid_channels, kernel_sizes, stride, depthwise=True,
                                  kernel_transform=kernel_transform)
        self.depth_conv = _conv_bn(depthwise, mid_channels, act, bn_eps)
        if has_se:
            self.depth_conv.add_module("se", ElasticSqueezeExcite(mid_channels))
        self.point_linear = _conv_bn(ElasticConv2d(mid_channels, out_channels, 1), out_channels, None, bn_eps)
        self.kernel_sizes = depthwise.kernel_sizes
        self.set_active(max(self.kernel_sizes), mid_channels)

    @property
    def active_kernel(self) -> int:
        return self.depth_conv.conv.active_kernel

    @property
    def active_in(self) -> int:
        return self.active_mid if self.inverted_bottleneck is None else self.inverted_bottleneck.conv.active_in

    @property
    def active_mid(self) -> int:
        return self.depth_conv.conv.active_out

    @property
    def active_out(self) -> int:
        return self.point_linear.conv.active_out

    def set_active(self, kernel_size: int, mid_channels: int, *, in_channels: int | None = None,
                   out_channels: int | None = None) -> None:
        """Run `in_channels` -> `mid_channels` (hidden) -> `out_channels` with the centre `kernel_size` crop.

        An input or output width not given stays as it is (the largest, unless set before); without
        expansion the input width is the hidden one.
        """
        if self.inverted_bottleneck is None:
            if in_channels is not None and in_channels != mid_channels:
                raise ValueError(f"ElasticMBConv: without expansion the hidden width is the input width "
                                 f"{in_channels}, got {mid_channels}")
            in_channels = mid_channels
        in_channels = self.active_in if in_channels is None else in_channels
        out_channels = self.active_out if out_channels is None else out_channels
        if self.residual and in_channels != out_channels:
            raise ValueError(f"ElasticMBConv: a residual block keeps its width, got {in_channels} -> {out_channels}")
        if self.inverted_bottleneck is not None:
            self.inverted_bottleneck.conv.set_active(in_channels=in_channels, out_channels=mid_channels)
            self.inverted_bottleneck.bn.set_active(mid_channels)
        self.depth_conv.conv.set_active(in_channels=mid_channels, kernel_size=kernel_size)
        self.depth_conv.bn.set_active(mid_channels)
        if hasattr(self.depth_conv, "se"):
            self.depth_conv.se.set_active(mid_channels)
        self.point_linear.conv.set_active(in_channels=mid_channels, out_channels=out_channels)
        self.point_linear.bn.set_active(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / s), ceil(W / s)), the active widths."""
        out = x if self.inverted_bottleneck is None else self.inverted_bottleneck(x)
        out = self.point_linear(self.depth_conv(out))
        return out + x if self.residual else out

    def extra_repr(self) -> str:
        return f"active=({self.active_in} -> {self.active_mid} -> {self.active_out}, k{self.active_kernel})"


__all__ = ["ElasticMBConv", "ElasticSqueezeExcite"]
