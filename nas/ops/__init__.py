"""Shared building blocks of the search spaces."""

from nas.ops import (
    darts,
    elastic,
    elastic_attention,
    elastic_mbconv,
    elastic_vit_resnas,
    elastic_width,
    hytra,
    mbconv,
    mixed,
    nasnet,
    nb201,
    vit_resnas,
)
from nas.ops.mbconv import ConvBNAct, MBConv, make_divisible

__all__ = ["ConvBNAct", "MBConv", "darts", "elastic", "elastic_attention", "elastic_mbconv", "elastic_vit_resnas",
           "elastic_width", "hytra", "make_divisible", "mbconv", "mixed", "nasnet", "nb201", "vit_resnas"]
