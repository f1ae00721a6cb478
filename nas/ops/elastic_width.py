"""Elastic-width mobile ops: `ElasticConvBNAct` and `ElasticWidthMBConv`, whose input and output widths are choices.

`nas.ops.elastic_mbconv.ElasticMBConv` slices kernel and hidden width between fixed input and
output widths (Once-for-All's MobileNetV3 supernet has no elastic width). Spaces that search a
width per stage (BigNAS, AttentiveNAS) also slice the block's input and output channels, as
Once-for-All's `DynamicMBConvLayer` does with its `active_out_channel` and the input width it
reads off the input (mit-han-lab/once-for-all
`ofa/imagenet_classification/elastic_nn/modules/dynamic_layers.py`; AttentiveNAS
`models/modules/dynamic_layers.py`): the leading channels of the expansion conv's input, the
projection conv's output and its batch norm. A block of expansion 1 has no expansion conv and
its hidden width is its input width, as OFA's layer with `expand_ratio` 1. Submodules are
named as `nas.ops.mbconv.ConvBNAct` and `MBConv` name them, so `collect_active_state` loads into
the standalone module of the active setting.

Deviation from OFA: the active input width is set explicitly (`set_active`), and an input of
another width is an error where OFA adapts to it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from nas.ops.elastic import ElasticBatchNorm2d, ElasticConv2d
from nas.ops.elastic_mbconv import ElasticSqueezeExcite
from nas.ops.mbconv import BN_EPS, BN_MOMENTUM, Activation


class ElasticConvBNAct(nn.Sequential):
    """`nas.ops.mbconv.ConvBNAct` (bias-free conv, batch norm, optional activation) with elastic widths.

    Args:
        in_channels: largest input width.
        out_channels: largest output width.
        kernel_size: square kernel size, odd.
        stride: conv stride.
        act: activation factory, or None.
        bn_eps: batch-norm epsilon.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 act: Activation | None = nn.ReLU6, *, bn_eps: float = BN_EPS) -> None:
        super().__init__()
        self.conv = ElasticConv2d(in_channels, out_channels, kernel_size, stride)
        self.bn = ElasticBatchNorm2d(out_channels, bn_eps, BN_MOMENTUM)
        if act is not None:
            self.act = act()

    def set_active(self, *, in_channels: int | None = None, out_channels: int | None = None) -> None:
        """Choose the active widths; what is not given stays."""
        self.conv.set_active(in_channels=in_channels, out_channels=out_channels)
        if out_channels is not None:
            self.bn.set_active(out_channels)


def _conv_bn(conv: ElasticConv2d, width: int, act: Activation | None, eps: float) -> nn.Sequential:
    """conv -> bn [-> act], named as `ConvBNAct`."""
    parts: OrderedDict[str, nn.Module] = OrderedDict(conv=conv, bn=ElasticBatchNorm2d(width, eps, BN_MOMENTUM))
    if act is not None:
        parts["act"] = act()
    return nn.Sequential(parts)


class ElasticWidthMBConv(nn.Module):
    """[1x1 expand ->] depthwise kxk [-> SE] -> linear 1x1 project (+ x), with elastic widths and kernel.

    Args:
        in_channels: largest input width.
        out_channels: largest output width.
        kernel_sizes: depthwise kernel sizes it can run; it holds the largest.
        mid_channels: largest hidden width; equal to `in_channels` when `expand` is False.
        stride: depthwise stride.
        residual: add the input to the output (stride 1; the active input and output widths must agree).
        act: activation factory of the expansion and depthwise convs.
        expand: hold a 1x1 expansion conv (False: MobileNetV2's expansion-1 block, hidden width = input width).
        has_se: squeeze-excite after the depthwise activation, sliced with the hidden width.
        bn_eps: batch-norm epsilon.
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
    ) -> None:
        super().__init__()
        if residual and (stride != 1 or in_channels != out_channels):
            raise ValueError(f"ElasticWidthMBConv: a residual needs stride 1 and equal widths, got stride {stride}, "
                             f"{in_channels} -> {out_channels} channels")
        if not expand and mid_channels != in_channels:
            raise ValueError(f"ElasticWidthMBConv: without expansion the hidden width is the input width "
                             f"{in_channels}, got {mid_channels}")
        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid_channels
        self.residual = residual
        self.inverted_bottleneck = (
            _conv_bn(ElasticConv2d(in_channels, mid_channels, 1), mid_channels, act, bn_eps) if expand else None)
        depthwise = ElasticConv2d(mid_channels, mid_channels, kernel_sizes, stride, depthwise=True)
        self.depth_conv = _conv_bn(depthwise, mid_channels, act, bn_eps)
        if has_se:
            self.depth_conv.add_module("se", ElasticSqueezeExcite(mid_channels))
        self.point_linear = _conv_bn(ElasticConv2d(mid_channels, out_channels, 1), out_channels, None, bn_eps)
        self.kernel_sizes = depthwise.kernel_sizes
        self.set_active(in_channels=in_channels, out_channels=out_channels, kernel_size=max(self.kernel_sizes),
                        mid_channels=mid_channels)

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

    def set_active(self, *, in_channels: int, out_channels: int, kernel_size: int, mid_channels: int) -> None:
        """Run `in_channels` -> `mid_channels` (hidden) -> `out_channels` with the centre `kernel_size` crop."""
        if self.inverted_bottleneck is None and mid_channels != in_channels:
            raise ValueError(f"ElasticWidthMBConv: without expansion the hidden width is the input width "
                             f"{in_channels}, got {mid_channels}")
        if self.residual and in_channels != out_channels:
            raise ValueError(f"ElasticWidthMBConv: a residual block keeps its width, got {in_channels} -> "
                             f"{out_channels}")
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


__all__ = ["ElasticConvBNAct", "ElasticWidthMBConv"]
