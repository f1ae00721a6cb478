"""Shared building blocks of the search spaces."""

from nas.ops import darts, mbconv
from nas.ops.mbconv import ConvBNAct, MBConv, make_divisible

__all__ = ["ConvBNAct", "MBConv", "darts", "make_divisible", "mbconv"]
