"""The Single-Path NAS supernet: one 5x5, expansion-6 superkernel MBConv per searchable layer.

Stamoulis et al., "Single-Path NAS" (ECML-PKDD 2019, arXiv:1904.02877), reference
dstamoulis/single-path-nas `nas-search/superkernel.py` (`DepthwiseConv2DMasked`) and
`nas-search/singlepath_supernet.py`. Every searchable layer holds the weights of its largest
choice, k5e6; the other choices are slices of them: kernel 3 is the inner 3x3 of the 5x5
depthwise kernel, expansion 3 the first half of the expanded channels (of the expansion conv's
outputs, the depthwise kernel and its batch norms, and the projection conv's inputs), and
`skip` (a stage's repeated layers) runs nothing, as the standalone network drops the layer.
The stem, the fixed first and last layers and the head are the modules `build` uses.

Running an arch runs the sliced standalone network. The paper's search instead runs every
layer at full width with a masked depthwise kernel, w = 1(keep) (w_50c + 1(e6) w_100c) with
w_k = w_3x3 + 1(k5) w_5x5\\3x3, the indicators comparing kernel-part norms with trainable
thresholds; `SuperkernelMBConv` gives the parts (`kernel_parts`, `channel_halves`), the formula
(`threshold_kernel`) and a forward with a given kernel (`forward_with_kernel`), and the method
(`nas.oneshot.single_path`) owns the thresholds and indicators.

Deviations: the sliced forward of an arch differs from the reference's masked one where the
reference lets masked channels through batch norm (they emit ReLU(BN shift), not zeros) and a
skipped layer through its 1x1 convs; here an arch's forward is exactly its standalone network.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from nas.arch import Arch
from nas.ops.elastic import collect_active_state
from nas.ops.elastic_mbconv import ElasticMBConv
from nas.spaces.single_path import _OPS, SKIP, SinglePathSpace
from nas.supernet import Supernet

_KERNELS = tuple(sorted({k for k, _ in _OPS.values()}))  # (3, 5)
_MAX_EXPAND = max(e for _, e in _OPS.values())  # 6


class SuperkernelMBConv(ElasticMBConv):
    """A searchable layer: the k5e6 MBConv whose choices `k3e3` ... `k5e6` are its slices.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: depthwise stride.
        residual: identity shortcut (stride 1, equal widths).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, residual: bool) -> None:
        # The hidden width of kXeY is round(in * Y), as the space's MBConv makes it.
        super().__init__(in_channels, out_channels, _KERNELS, round(in_channels * _MAX_EXPAND), stride, residual,
                         nn.ReLU)

    def set_op(self, op: str) -> None:
        """Run the choice `op` (`k3e3`, `k3e6`, `k5e3`, `k5e6`) as a slice of the superkernel."""
        kernel, expand = _OPS[op]
        self.set_active(kernel, round(self.in_channels * expand))

    # -- the paper's masked superkernel (used by a thresholds method) -----------------------
    def kernel_parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(w_3x3, w_5x5\\3x3): the depthwise kernel inside and outside its centre 3x3, each (C, 1, 5, 5)."""
        conv = self.depth_conv.conv
        inner = conv.centre_mask(min(_KERNELS))
        return conv.weight * inner, conv.weight * (1 - inner)

    def channel_halves(self, kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w_50c, w_100c): `kernel` (C, ...) with its second, resp. first, half of channels zeroed.

        The first half is expansion 3's channels [superkernel.py: mask of round(C / 2) channels].
        """
        half = round(self.in_channels * _MAX_EXPAND / 2)
        first = torch.zeros(kernel.size(0), *([1] * (kernel.dim() - 1)), dtype=kernel.dtype, device=kernel.device)
        first[:half] = 1
        return kernel * first, kernel * (1 - first)

    def threshold_kernel(
        self, use_k5: torch.Tensor | float, use_e6: torch.Tensor | float, keep: torch.Tensor | float = 1.0
    ) -> torch.Tensor:
        """The paper's depthwise kernel keep * (w_50c + use_e6 * w_100c), with w_k = w_3x3 + use_k5 * w_5x5\\3x3.

        The indicators are 0/1 values (tensors with the method's straight-through gradients);
        `keep` is 0 for skip and only a repeated layer may use it.
        """
        inner, ring = self.kernel_parts()
        first, second = self.channel_halves(inner + use_k5 * ring)
        return keep * (first + use_e6 * second)

    def forward_with_kernel(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """The full-width (k5e6) layer with its depthwise kernel replaced by `kernel` (C, 1, 5, 5).

        Sets this layer's active setting to k5e6, the superkernel the reference always runs.
        """
        self.set_active(max(_KERNELS), self.mid_channels)
        depth = self.depth_conv
        out = depth.act(depth.bn(depth.conv(self.inverted_bottleneck(x), weight=kernel)))
        out = self.point_linear(out)
        return out + x if self.residual else out


class SinglePathSupernet(Supernet):
    """Stem, fixed first layer, 20 superkernel layers, fixed last layer and head, named as `build` names them.

    Args:
        space: the Single-Path NAS space (at its config).
    """

    space: SinglePathSpace

    def __init__(self, space: SinglePathSpace) -> None:
        super().__init__(space)
        front, by_choice, back = space.chain
        layers = {f"{layer.name}.op": layer for layer in space._layout.layers}
        self._front = [name for name, _ in front]
        self._back = [name for name, _ in back]
        self._layers: dict[str, str] = {}  # decision -> child name
        for name, key in front:
            self.add_module(name, space.unit(key).module)
        for decision, table in by_choice:
            layer, child = layers[decision], table["k5e6"][0]
            self.add_module(child, SuperkernelMBConv(layer.in_channels, layer.out_channels, layer.stride,
                                                     layer.residual))
            self._layers[decision] = child
        for name, key in back:
            self.add_module(name, space.unit(key).module)
        self._ops: dict[str, str] = {}

    def _activate(self, arch: Arch) -> None:
        self._ops = {decision: arch.choices[decision] for decision in self._layers}
        for decision, op in self._ops.items():
            if op != SKIP:
                self.get_submodule(self._layers[decision]).set_op(op)

    def _active_names(self) -> list[str]:
        """Child names of the active arch's modules, in network order (skipped layers left out)."""
        layers = [child for decision, child in self._layers.items() if self._ops[decision] != SKIP]
        return [*self._front, *layers, *self._back]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, first layer, every layer that is not skipped (as its slice), last layer, head."""
        for name in self._active_names():
            x = self.get_submodule(name)(x)
        return x

    def arch_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """The sliced tensors of `arch`'s layers and the fixed parts, named as in `build(arch)`."""
        with self.activated(arch):
            state: dict[str, torch.Tensor] = {}
            for name in self._active_names():
                state.update(collect_active_state(self.get_submodule(name), f"{name}."))
            return state

    def choice_points(self) -> Mapping[str, SuperkernelMBConv]:
        """`s{stage}.b{block}.op` -> its superkernel layer, in network order."""
        return {decision: self.get_submodule(child) for decision, child in self._layers.items()}


__all__ = ["SinglePathSupernet", "SuperkernelMBConv"]
