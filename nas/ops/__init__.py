"""Shared building blocks of the search spaces."""

from nas.ops import darts, mbconv, nasnet
from nas.ops.mbconv import ConvBNAct, MBConv, make_divisible

__all__ = ["ConvBNAct", "MBConv", "darts", "make_divisible", "mbconv", "nasnet"]
