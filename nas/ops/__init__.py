"""Shared building blocks of the search spaces."""

from nas.ops import darts, elastic, elastic_mbconv, mbconv, mixed, nasnet, nb201
from nas.ops.mbconv import ConvBNAct, MBConv, make_divisible

__all__ = ["ConvBNAct", "MBConv", "darts", "elastic", "elastic_mbconv", "make_divisible", "mbconv", "mixed", "nasnet",
           "nb201"]
