"""DARTS-family cell operations and the DARTS-style cell, shared by the cell-based spaces.

The operations are those of DARTS (Liu, Simonyan and Yang, ICLR 2019; reference
implementation quark0/darts `cnn/operations.py`, `cnn/model.py`) plus the two that
EEEA-Net adds (Termritthikun et al., Eng. Appl. AI 2021; chakkritte/EEEA-Net
`EEEA/cifar/eeea/network/operations.py`): the pre-activation inverted residual with
expansion 1 and `conv_7x1_1x7`. Every conv is bias-free and followed by batch norm,
activation first (ReLU -> conv -> BN). `make_op` builds an operation from its DARTS
token (`sep_conv_3x3`, `skip_connect`, ...) for `C` channels and a stride, and
`DartsCell` wires a genotype's (op, input index) pairs into a cell: two preprocessed
inputs, blocks that sum two operation outputs, and a channel concat of chosen states.

Deviations from the references: operations are `nn.Sequential`s with named children
(`relu`, `conv`, `bn`, ...) instead of a wrapped `self.op`, so state dicts use other
keys; `InvertedResidual` takes any `expand_ratio` but EEEA-Net only uses 1; the
cell has no drop path, SE or Nonlocal module (training-only, or built but never run
by the reference).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

# Every token `make_op` knows, by family: pools, identity, separable, dilated,
# spatially separable, inverted residual.
OP_NAMES = (
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "sep_conv_7x7",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "conv_3x1_1x3",
    "conv_7x1_1x7",
    "inv_res_3x3",
    "inv_res_5x5",
)


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv (bias-free) -> BN: the DARTS preprocessing and plain-conv op.

    Args:
        C_in: input channels.
        C_out: output channels.
        kernel_size: square kernel size.
        stride: conv stride.
        padding: conv padding; `kernel_size // 2` (same size at stride 1) when None.
        affine: learn BN scale and shift.
    """

    def __init__(
        self, C_in: int, C_out: int, kernel_size: int = 1, stride: int = 1,
        padding: int | None = None, affine: bool = True,
    ) -> None:
        pad = kernel_size // 2 if padding is None else padding
        super().__init__(OrderedDict(
            relu=nn.ReLU(),
            conv=nn.Conv2d(C_in, C_out, kernel_size, stride, pad, bias=False),
            bn=nn.BatchNorm2d(C_out, affine=affine),
        ))


class SepConv(nn.Sequential):
    """Depthwise-separable conv applied twice, stride in the first half only (DARTS `sep_conv_kxk`).

    [ReLU, dw kxk stride s, pw 1x1 C_in -> C_in, BN] then [ReLU, dw kxk, pw 1x1 C_in -> C_out, BN].

    Args:
        C_in: input channels.
        C_out: output channels.
        kernel_size: depthwise kernel size, odd.
        stride: stride of the first depthwise conv.
        padding: depthwise padding; `kernel_size // 2` when None.
        affine: learn BN scale and shift.
    """

    def __init__(
        self, C_in: int, C_out: int, kernel_size: int, stride: int = 1,
        padding: int | None = None, affine: bool = True,
    ) -> None:
        pad = kernel_size // 2 if padding is None else padding
        super().__init__(OrderedDict(
            relu1=nn.ReLU(),
            dw1=nn.Conv2d(C_in, C_in, kernel_size, stride, pad, groups=C_in, bias=False),
            pw1=nn.Conv2d(C_in, C_in, 1, bias=False),
            bn1=nn.BatchNorm2d(C_in, affine=affine),
            relu2=nn.ReLU(),
            dw2=nn.Conv2d(C_in, C_in, kernel_size, 1, pad, groups=C_in, bias=False),
            pw2=nn.Conv2d(C_in, C_out, 1, bias=False),
            bn2=nn.BatchNorm2d(C_out, affine=affine),
        ))


class DilConv(nn.Sequential):
    """ReLU -> dilated depthwise kxk -> pointwise 1x1 -> BN (DARTS `dil_conv_kxk`, dilation 2).

    Args:
        C_in: input channels.
        C_out: output channels.
        kernel_size: depthwise kernel size, odd.
        stride: depthwise stride.
        padding: depthwise padding; `dilation * (kernel_size - 1) // 2` (same size) when None.
        dilation: depthwise dilation.
        affine: learn BN scale and shift.
    """

    def __init__(
        self, C_in: int, C_out: int, kernel_size: int, stride: int = 1,
        padding: int | None = None, dilation: int = 2, affine: bool = True,
    ) -> None:
        pad = dilation * (kernel_size - 1) // 2 if padding is None else padding
        super().__init__(OrderedDict(
            relu=nn.ReLU(),
            dw=nn.Conv2d(C_in, C_in, kernel_size, stride, pad, dilation=dilation, groups=C_in, bias=False),
            pw=nn.Conv2d(C_in, C_out, 1, bias=False),
            bn=nn.BatchNorm2d(C_out, affine=affine),
        ))


class SpatialSepConv(nn.Sequential):
    """ReLU -> conv 1xk (stride (1, s)) -> conv kx1 (stride (s, 1)) -> BN (DARTS `conv_7x1_1x7`).

    Args:
        C_in: input channels.
        C_out: output channels (of both convs).
        kernel_size: the long side k, odd.
        stride: total stride, split between the two convs.
        affine: learn BN scale and shift.
    """

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int = 1, affine: bool = True) -> None:
        pad = kernel_size // 2
        super().__init__(OrderedDict(
            relu=nn.ReLU(),
            conv_1xk=nn.Conv2d(C_in, C_out, (1, kernel_size), (1, stride), (0, pad), bias=False),
            conv_kx1=nn.Conv2d(C_out, C_out, (kernel_size, 1), (stride, 1), (pad, 0), bias=False),
            bn=nn.BatchNorm2d(C_out, affine=affine),
        ))


class FactorizedReduce(nn.Module):
    """Halve H and W with two offset 1x1 stride-2 convs, each giving half the output channels.

    ReLU, then conv_1 on x and conv_2 on x shifted by one pixel (x[:, :, 1:, 1:]), concat, BN.
    Needs an even `C_out` and even input H and W (else the two halves differ in size).

    Args:
        C_in: input channels.
        C_out: output channels, even.
        affine: learn BN scale and shift.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True) -> None:
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce: C_out must be even, got {C_out}")
        self.relu = nn.ReLU()
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, 2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / 2, W / 2)."""
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class InvertedResidual(nn.Module):
    """Pre-activation inverted residual (EEEA-Net `inv_res_kxk`): 1x1 expand, depthwise kxk, 1x1 project.

    [ReLU, 1x1 C_in -> hidden, BN], [ReLU, dw kxk stride s, BN], [1x1 hidden -> C_out, BN],
    plus the input when the stride is 1 and widths are equal. hidden = C_in * expand_ratio;
    EEEA-Net uses expand_ratio 1 (its paper draws a wider block; the code, which reproduces
    the published sizes, does not).

    Args:
        C_in: input channels.
        C_out: output channels.
        kernel_size: depthwise kernel size, odd.
        stride: depthwise stride.
        expand_ratio: hidden width over input width.
        affine: learn BN scale and shift (the projection's BN always learns them, as in the reference).
    """

    def __init__(
        self, C_in: int, C_out: int, kernel_size: int, stride: int = 1,
        expand_ratio: int = 1, affine: bool = True,
    ) -> None:
        super().__init__()
        hidden = C_in * expand_ratio
        # Padding ((s - 1) + (k - 1)) // 2 of the reference equals k // 2 for odd k and s in {1, 2}.
        pad = ((stride - 1) + (kernel_size - 1)) // 2
        self.residual = stride == 1 and C_in == C_out
        self.pw = ReLUConvBN(C_in, hidden, 1, affine=affine)
        self.dw = nn.Sequential(OrderedDict(
            relu=nn.ReLU(),
            conv=nn.Conv2d(hidden, hidden, kernel_size, stride, pad, groups=hidden, bias=False),
            bn=nn.BatchNorm2d(hidden, affine=affine),
        ))
        self.pw_linear = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(hidden, C_out, 1, bias=False),
            bn=nn.BatchNorm2d(C_out),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / s), ceil(W / s))."""
        out = self.pw_linear(self.dw(self.pw(x)))
        return x + out if self.residual else out


def _pool(kind: type[nn.Module], **kwargs: object) -> Callable[[int, int, bool], nn.Module]:
    return lambda C, stride, affine: kind(3, stride, 1, **kwargs)


_FACTORIES: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "max_pool_3x3": _pool(nn.MaxPool2d),
    "avg_pool_3x3": _pool(nn.AvgPool2d, count_include_pad=False),
    "skip_connect": lambda C, s, a: nn.Identity() if s == 1 else FactorizedReduce(C, C, affine=a),
    "sep_conv_3x3": lambda C, s, a: SepConv(C, C, 3, s, affine=a),
    "sep_conv_5x5": lambda C, s, a: SepConv(C, C, 5, s, affine=a),
    "sep_conv_7x7": lambda C, s, a: SepConv(C, C, 7, s, affine=a),
    "dil_conv_3x3": lambda C, s, a: DilConv(C, C, 3, s, affine=a),
    "dil_conv_5x5": lambda C, s, a: DilConv(C, C, 5, s, affine=a),
    "conv_3x1_1x3": lambda C, s, a: SpatialSepConv(C, C, 3, s, affine=a),
    "conv_7x1_1x7": lambda C, s, a: SpatialSepConv(C, C, 7, s, affine=a),
    "inv_res_3x3": lambda C, s, a: InvertedResidual(C, C, 3, s, affine=a),
    "inv_res_5x5": lambda C, s, a: InvertedResidual(C, C, 5, s, affine=a),
}
assert tuple(_FACTORIES) == OP_NAMES


def make_op(name: str, C: int, stride: int = 1, affine: bool = True) -> nn.Module:
    """The operation `name` (a token of `OP_NAMES`) from C to C channels at `stride` (1 or 2).

    `skip_connect` is an `nn.Identity` at stride 1 and a `FactorizedReduce` at stride 2.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"make_op: unknown operation {name!r}; known: {', '.join(OP_NAMES)}")
    return factory(C, stride, affine)


def is_identity(name: str, stride: int) -> bool:
    """Whether `make_op(name, C, stride)` is an identity (no parameters, no compute)."""
    return name == "skip_connect" and stride == 1


class DartsCell(nn.Module):
    """A DARTS-style cell: two preprocessed inputs, blocks summing two ops, a concat of chosen states.

    States are [s0, s1, block 0, block 1, ...] with s0 the output of the cell before the
    previous one and s1 that of the previous one. s0 goes through `FactorizedReduce` when
    the previous cell halved the size (so both inputs have the same size), else through
    ReLU-1x1-BN; s1 through ReLU-1x1-BN. Block i applies `genotype[2i]` and
    `genotype[2i + 1]`, each an (op token, input state index) pair, and sums them. In a
    reduction cell, ops reading s0 or s1 have stride 2. The output concatenates the
    states listed in `concat` (`len(concat) * C` channels).

    Args:
        C_prev_prev: channels of s0.
        C_prev: channels of s1.
        C: channels of every state inside the cell.
        genotype: (op token, input index) pairs, two per block (a DARTS `Genotype.normal`).
        concat: indices of the states concatenated into the output.
        reduction: halve the size (ops on s0 and s1 get stride 2).
        reduction_prev: the previous cell halved the size (s0 is twice s1's size).
        affine: learn BN scale and shift.
    """

    def __init__(
        self, C_prev_prev: int, C_prev: int, C: int, genotype: Sequence[tuple[str, int]],
        concat: Sequence[int], reduction: bool, reduction_prev: bool, affine: bool = True,
    ) -> None:
        super().__init__()
        if len(genotype) % 2:
            raise ValueError(f"DartsCell: genotype needs two (op, index) pairs per block, got {len(genotype)}")
        self.reduction = reduction
        self.preprocess0 = (
            FactorizedReduce(C_prev_prev, C, affine) if reduction_prev else ReLUConvBN(C_prev_prev, C, 1, affine=affine)
        )
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, affine=affine)
        self.indices = tuple(index for _, index in genotype)
        self.concat = tuple(concat)
        self.ops = nn.ModuleList(
            make_op(name, C, 2 if reduction and index < 2 else 1, affine) for name, index in genotype
        )

    @property
    def multiplier(self) -> int:
        """Output channels over C: the number of concatenated states."""
        return len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        """(B, C_prev_prev, 2H or H, .), (B, C_prev, H, W) -> (B, multiplier * C, H or H / 2, .)."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(0, len(self.ops), 2):
            a, b = self.indices[i], self.indices[i + 1]
            states.append(self.ops[i](states[a]) + self.ops[i + 1](states[b]))
        return torch.cat([states[i] for i in self.concat], dim=1)


__all__ = [
    "OP_NAMES",
    "DartsCell",
    "DilConv",
    "FactorizedReduce",
    "InvertedResidual",
    "ReLUConvBN",
    "SepConv",
    "SpatialSepConv",
    "is_identity",
    "make_op",
]
