"""NASNet cell machinery: the 13 candidate ops, factorized reduction, the cell and the network.

Follows Zoph, Vasudevan, Shlens and Le, "Learning Transferable Architectures for Scalable
Image Recognition" (CVPR 2018) as implemented in TF-slim (tensorflow/models
`research/slim/nets/nasnet/nasnet_utils.py` and `nasnet.py`). Every op maps its input
(any width) to the cell's `filter_size` channels, ReLU first, bias-free convs, BN last:
separable convs are slim's `separable_KxK_2` (two ReLU-separable-BN layers, stride in the
first only, both pointwise convs to `filter_size`); pooling has no ReLU and 'SAME'
padding (average pooling does not count the padding) and is followed by a 1x1 conv and
BN only when the input width differs from `filter_size`; the identity becomes
ReLU-1x1 conv-BN when it must stride or change width. The ops slim does not implement
(1x3-then-3x1 and 1x7-then-7x1 convs, 3x3 dilated conv, 1x1 and 3x3 convs, 5x5 and 7x7
max pooling) follow the NDS / NNI definitions (microsoft/nni
`nni/nas/hub/pytorch/nasnet.py`), widened the slim way to map any input width to
`filter_size`. Factorized reduction is slim's: two 1x1 convs to half the width, one on
the input and one on the input shifted by a pixel, both at stride 2, concatenated, BN.

Deviations: 'SAME' padding is symmetric (k // 2), so stride-2 outputs have slim's size
ceil(H / 2) but sample other pixels; batch norm uses PyTorch's momentum 0.1 and eps 1e-3
(slim: decay 0.9 / 0.9997, eps 1e-5 / 1e-3); weights keep PyTorch's default init (slim:
fan-out variance scaling, which lets an untrained network's eval-mode activations grow
sixfold per cell); there is no drop-path and no auxiliary head (training only, no
effect on inference or counts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

BN_MOMENTUM = 0.1
BN_EPS = 1e-3

# Choice token -> op family and kernel size, in the paper's listing order (Zoph et al. §3).
OPS: dict[str, tuple[str, int]] = {
    "identity": ("identity", 1),
    "conv_1x3_3x1": ("factorized_conv", 3),
    "conv_1x7_7x1": ("factorized_conv", 7),
    "dil_conv_3x3": ("dilated_conv", 3),
    "avg_pool_3x3": ("avg_pool", 3),
    "max_pool_3x3": ("max_pool", 3),
    "max_pool_5x5": ("max_pool", 5),
    "max_pool_7x7": ("max_pool", 7),
    "conv_1x1": ("conv", 1),
    "conv_3x3": ("conv", 3),
    "sep_conv_3x3": ("sep_conv", 3),
    "sep_conv_5x5": ("sep_conv", 5),
    "sep_conv_7x7": ("sep_conv", 7),
}


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)


class ReLUConvBN(nn.Sequential):
    """ReLU -> kxk conv (padding k // 2) -> BN: the `conv_1x1` / `conv_3x3` ops and the 1x1 projections."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = _bn(out_channels)


class FactorizedConv(nn.Sequential):
    """ReLU -> 1xk conv (stride (1, s)) -> kx1 conv (stride (s, 1)) -> BN: `conv_1x3_3x1`, `conv_1x7_7x1`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.relu = nn.ReLU()
        self.conv_1xk = nn.Conv2d(in_channels, out_channels, (1, kernel_size), (1, stride), (0, pad), bias=False)
        self.conv_kx1 = nn.Conv2d(out_channels, out_channels, (kernel_size, 1), (stride, 1), (pad, 0), bias=False)
        self.bn = _bn(out_channels)


class DilatedConv(nn.Sequential):
    """ReLU -> depthwise kxk conv with dilation 2 -> pointwise 1x1 -> BN: `dil_conv_3x3`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride, 2 * (kernel_size // 2),
                                   dilation=2, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = _bn(out_channels)


class StackedSeparableConv(nn.Sequential):
    """slim's `separable_KxK_2`: (ReLU -> depthwise kxk -> pointwise 1x1 -> BN) twice, stride in the first.

    Both pointwise convs output `out_channels` [nasnet_utils._stacked_separable_conv].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        pad = kernel_size // 2
        for i, (c_in, s) in enumerate(((in_channels, stride), (out_channels, 1)), 1):
            self.add_module(f"relu{i}", nn.ReLU())
            self.add_module(f"depthwise{i}", nn.Conv2d(c_in, c_in, kernel_size, s, pad, groups=c_in, bias=False))
            self.add_module(f"pointwise{i}", nn.Conv2d(c_in, out_channels, 1, bias=False))
            self.add_module(f"bn{i}", _bn(out_channels))


class Pooling(nn.Sequential):
    """kxk average or max pooling ('SAME' padding), then 1x1 conv -> BN only if the width changes."""

    def __init__(self, kind: str, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        pad = kernel_size // 2
        if kind == "avg_pool":
            self.pool = nn.AvgPool2d(kernel_size, stride, pad, count_include_pad=False)
        else:
            self.pool = nn.MaxPool2d(kernel_size, stride, pad)
        if in_channels != out_channels:
            self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
            self.bn = _bn(out_channels)


class FactorizedReduction(nn.Module):
    """slim's `factorized_reduction`, optionally after a ReLU.

    Stride 2: two 1x1 convs to `out_channels / 2` at stride 2, the second on the input
    shifted up-left by one pixel (zero row and column added at the bottom and right),
    concatenated, then BN. Stride 1: a 1x1 conv and BN.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2, relu: bool = True) -> None:
        super().__init__()
        if stride == 2 and out_channels % 2:
            raise ValueError(f"FactorizedReduction: stride 2 needs an even width, got {out_channels}")
        self.stride = stride
        self.relu = nn.ReLU() if relu else nn.Identity()
        if stride == 1:
            self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        else:
            self.path1 = nn.Conv2d(in_channels, out_channels // 2, 1, 2, bias=False)
            self.path2 = nn.Conv2d(in_channels, out_channels // 2, 1, 2, bias=False)
        self.bn = _bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / s), ceil(W / s))."""
        x = self.relu(x)
        if self.stride == 1:
            return self.bn(self.conv(x))
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.path1(x), self.path2(shifted)], 1))


def make_op(token: str, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """The module of op `token` (a key of `OPS`), or None for an identity that needs no module."""
    family, k = OPS[token]
    if family == "identity":
        if stride == 1 and in_channels == out_channels:
            return None
        return ReLUConvBN(in_channels, out_channels, 1, stride)
    if family == "conv":
        return ReLUConvBN(in_channels, out_channels, k, stride)
    if family == "factorized_conv":
        return FactorizedConv(in_channels, out_channels, k, stride)
    if family == "dilated_conv":
        return DilatedConv(in_channels, out_channels, k, stride)
    if family == "sep_conv":
        return StackedSeparableConv(in_channels, out_channels, k, stride)
    return Pooling(family, in_channels, out_channels, k, stride)


def _or_identity(module: nn.Module | None) -> nn.Module:
    return nn.Identity() if module is None else module


class NASNetCell(nn.Module):
    """One cell: two preprocessed inputs, B blocks that each add two op outputs, a concat.

    Hidden states follow slim's numbering: 0 is the previous cell's output after `pre0`
    (ReLU-1x1-BN), 1 the one before after `pre1` (factorized reduction, ReLU-1x1-BN or
    nothing), 2 + b the output of block b. Block b computes
    `ops[2b](states[inputs[2b]]) + ops[2b+1](states[inputs[2b+1]])`; the cell returns the
    states `concat` along channels, each after its `project` module.

    Args:
        pre0: module for the previous cell's output.
        pre1: module for the cell before (None: use it unchanged).
        ops: two op modules per block (None: identity).
        inputs: two hidden-state indices per block.
        concat: hidden states concatenated into the output, in order.
        project: one module per entry of `concat` (None: used unchanged).
    """

    def __init__(
        self,
        pre0: nn.Module,
        pre1: nn.Module | None,
        ops: Sequence[nn.Module | None],
        inputs: Sequence[int],
        concat: Sequence[int],
        project: Sequence[nn.Module | None],
    ) -> None:
        super().__init__()
        assert len(ops) == len(inputs) and len(ops) % 2 == 0 and len(concat) == len(project)
        self.pre0 = pre0
        self.pre1 = _or_identity(pre1)
        self.ops = nn.ModuleList(_or_identity(op) for op in ops)
        self.project = nn.ModuleList(_or_identity(p) for p in project)
        self.inputs = tuple(inputs)
        self.concat = tuple(concat)

    def forward(self, prev: torch.Tensor, prev_prev: torch.Tensor) -> torch.Tensor:
        """Previous and before-previous cell outputs -> concat of the output states."""
        states = [self.pre0(prev), self.pre1(prev_prev)]
        for b in range(len(self.inputs) // 2):
            left, right = self.ops[2 * b], self.ops[2 * b + 1]
            states.append(left(states[self.inputs[2 * b]]) + right(states[self.inputs[2 * b + 1]]))
        return torch.cat([p(states[j]) for p, j in zip(self.project, self.concat, strict=True)], 1)


class Stem(nn.Sequential):
    """3x3 conv -> BN, no activation [nasnet.py `_cifar_stem` (stride 1, 'SAME'), `_imagenet_stem` conv0
    (stride 2, 'VALID')]."""

    def __init__(self, out_channels: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out_channels, 3, stride, padding, bias=False)
        self.bn = _bn(out_channels)


class Head(nn.Sequential):
    """ReLU -> global average pool -> dropout -> linear classifier (with bias) [nasnet.py final_layer]."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_channels, num_classes)


class NASNet(nn.Module):
    """Stem, cells wired by output index, head.

    Outputs are numbered 0 (the stem) and 1 + k (cell k); cell k reads outputs
    `sources[k] = (prev, prev_prev)`, where `prev_prev` None means it reads `prev` twice
    (the first cell after the stem, as slim's `prev_layer=None`). In inference an output
    is released after its last reader, so memory holds a few cells' outputs at a time.
    """

    def __init__(self, stem: nn.Module, cells: Sequence[nn.Module], sources: Sequence[tuple[int, int | None]],
                 head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.cells = nn.ModuleList(cells)
        self.head = head
        self.sources = tuple(sources)
        last_read = {}
        for k, pair in enumerate(self.sources):
            last_read.update({i: k for i in pair if i is not None})
        self._release = tuple(tuple(i for i, k_last in last_read.items() if k_last == k) for k in range(len(cells)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> (B, num_classes) logits."""
        outputs: list[torch.Tensor | None] = [self.stem(x)]
        for k, (cell, (a, b)) in enumerate(zip(self.cells, self.sources, strict=True)):
            prev = outputs[a]
            out = cell(prev, prev if b is None else outputs[b])
            if not self.training:
                for i in self._release[k]:
                    outputs[i] = None
            outputs.append(out)
        return self.head(outputs[-1])


__all__ = [
    "BN_EPS", "BN_MOMENTUM", "OPS", "DilatedConv", "FactorizedConv", "FactorizedReduction", "Head", "NASNet",
    "NASNetCell", "Pooling", "ReLUConvBN", "StackedSeparableConv", "Stem", "make_op",
]
