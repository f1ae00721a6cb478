"""`ElasticConvBNAct`: `nas.ops.mbconv.ConvBNAct` whose input and output widths are choices.

The stem and head convs of spaces that search widths (BigNAS, AttentiveNAS), sliced as Once-for-All's
`DynamicConvLayer` (mit-han-lab/once-for-all `ofa/imagenet_classification/elastic_nn/modules/dynamic_layers.py`):
the leading channels of the conv's input and output and of its batch norm. Submodules are named as
`ConvBNAct` names them, so `collect_active_state` loads into the standalone module of the active setting;
the elastic-width MBConv block is `nas.ops.elastic_mbconv.ElasticMBConv`.
"""

from __future__ import annotations

from torch import nn

from nas.ops.elastic import ElasticBatchNorm2d, ElasticConv2d
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


__all__ = ["ElasticConvBNAct"]
