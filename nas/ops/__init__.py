"""Shared building blocks of the search spaces."""

from nas.ops import mbconv
from nas.ops.mbconv import ConvBNAct, MBConv, make_divisible

__all__ = ["ConvBNAct", "MBConv", "make_divisible", "mbconv"]
