"""NAS-Bench-201 building blocks: the five cell operations, the cell, the residual reduction block, stem and head.

Follows Dong and Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural
Architecture Search" (ICLR 2020), as implemented in D-X-Y/AutoDL-Projects
(`xautodl/models/cell_operations.py`, `cell_infers/cells.py` `InferCell`,
`cell_infers/tiny_network.py` `TinyNetwork`). The cell is a DAG of 4 nodes; node i
sums one operation applied to every earlier node j, on edge `i<-j`, and node 3 is the
cell output. Operations keep C channels and stride 1 (`nor_conv_kxk` is ReLU -> conv
(bias-free, as the reference with affine BN) -> affine BN, `avg_pool_3x3` excludes the
padding); between stages a `ResNetBasicBlock` halves the size and doubles the width.

Deviations from the reference: a `none` edge is not built and adds nothing (the reference
computes `x * 0`, the same values), and a node whose every input edge is `none` is a
zero tensor, as the reference's sum of zeros; modules are `nn.Sequential`s with named
children, so state-dict keys differ; `track_running_stats` is always on (the reference's
default for the benchmark's networks).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from nas.ops.darts import ReLUConvBN

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
"""The NAS-Bench-201 operations, in the reference's order (`cell_operations.py` NAS_BENCH_201)."""

NODES = 4
EDGES = tuple((i, j) for i in range(1, NODES) for j in range(i))
"""(to, from) node pairs in the reference's arch-string order: 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2."""


def edge_name(edge: tuple[int, int]) -> str:
    """The reference's name of an edge, `i<-j` (`NASNetInferCell`, the search cells' `edge2index`)."""
    return f"{edge[0]}<-{edge[1]}"


def make_op(name: str, C: int) -> nn.Module | None:
    """Operation `name` from C to C channels at stride 1; None for `none`, which is not built."""
    if name == "none":
        return None
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(C, C, 1)
    if name == "nor_conv_3x3":
        return ReLUConvBN(C, C, 3)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"nb201 make_op: unknown operation {name!r}; known: {', '.join(OPS)}")


def has_unit(name: str) -> bool:
    """Whether operation `name` computes anything (a timed unit): not `none`, not the identity."""
    return name not in ("none", "skip_connect")


class NB201Cell(nn.Module):
    """The NAS-Bench-201 cell: node i = sum over j < i of op[i<-j](node j); the output is node 3.

    Args:
        C: channels of every node.
        ops: edge name (`1<-0`, ...) -> module; a missing edge is `none`.
    """

    def __init__(self, C: int, ops: Mapping[str, nn.Module]) -> None:
        super().__init__()
        unknown = sorted(set(ops) - {edge_name(e) for e in EDGES})
        if unknown:
            raise ValueError(f"NB201Cell: unknown edge {unknown[0]!r}")
        self.channels = C
        self.edges = nn.ModuleDict((edge_name(e), ops[edge_name(e)]) for e in EDGES if edge_name(e) in ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        nodes = [x]
        for i in range(1, NODES):
            terms = [self.edges[f"{i}<-{j}"](nodes[j]) for j in range(i) if f"{i}<-{j}" in self.edges]
            node = terms[0] if terms else torch.zeros_like(x)  # all inputs `none`: the reference's sum of zeros
            for term in terms[1:]:
                node = node + term
            nodes.append(node)
        return nodes[-1]


class ResNetBasicBlock(nn.Module):
    """The reduction block between stages: ReLUConvBN 3x3 stride 2, ReLUConvBN 3x3, plus a shortcut.

    The shortcut is a 2x2 average pool and a bias-free 1x1 conv without BN [cell_operations.py
    ResNetBasicblock, stride 2]. Needs an even input size (the pool floors, the conv rounds up).

    Args:
        C_in: input channels.
        C_out: output channels.
    """

    def __init__(self, C_in: int, C_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, stride=2)
        self.conv_b = ReLUConvBN(C_out, C_out, 3)
        self.downsample = nn.Sequential(OrderedDict(
            pool=nn.AvgPool2d(2, stride=2), conv=nn.Conv2d(C_in, C_out, 1, bias=False),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / 2, W / 2)."""
        return self.downsample(x) + self.conv_b(self.conv_a(x))


def stem(C: int) -> nn.Module:
    """3x3 conv (bias-free) from RGB to C channels and BN, no activation [tiny_network.py]."""
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(3, C, 3, padding=1, bias=False), bn=nn.BatchNorm2d(C)))


def head(C: int, num_classes: int) -> nn.Module:
    """BN -> ReLU -> global average pool -> linear classifier with bias [tiny_network.py `lastact`]."""
    return nn.Sequential(OrderedDict(
        bn=nn.BatchNorm2d(C), relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1),
        linear=nn.Linear(C, num_classes),
    ))


__all__ = ["EDGES", "NODES", "OPS", "NB201Cell", "ResNetBasicBlock", "edge_name", "has_unit", "head", "make_op", "stem"]
