"""The Once-for-All MobileNetV3 supernet: elastic kernel, expansion and depth by weight slicing.

Cai, Gan, Wang, Zhang and Han, "Once-for-All" (ICLR 2020), reference mit-han-lab/once-for-all
`ofa/imagenet_classification/elastic_nn/networks/ofa_mbv3.py` (`OFAMobileNetV3`) and
`.../modules/dynamic_layers.py` (`DynamicMBConvLayer`). Each of a stage's four slots holds one
MBConv at kernel 7 and expansion 6; kernel 5 and 3 are centre crops of it, expansion e is the leading
make_divisible(round(in * e), 8) hidden channels (expansion conv outputs, depthwise kernel, batch
norms, squeeze-excite and projection inputs), and depth d runs the stage's first d slots; the
others are not run. The stem, the first block, the final expand conv and the head are the
modules `build` uses. Module names mirror `build(arch)`'s: stage `s{i}` holds slots `s{i}_b{j}`,
so `arch_state_dict` is the walk of the active modules with the stage level dropped.

Deviations: OFA's progressive shrinking (the order in which kernel, depth and expansion become
elastic, the distillation, and the re-ordering of hidden channels by importance before the
expansion is made elastic) is training, not the supernet, and is left to a method; the elastic
width multiplier and input resolution of OFA's other supernets are not part of this space. By
default a smaller kernel is the plain centre crop (Single-Path NAS' superkernel rule), without
OFA's learned kernel transform matrices (7to5, 5to3: a smaller kernel = the crop of the next
larger one times a (k*k, k*k) matrix, initialised to the identity); `kernel_transform=True`
adds them. Then an arch's kernels are functions of the 7x7 kernel and the matrices, no longer
slices (views) of the supernet's tensors, which the supernet contract's gradient check reads.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from nas.arch import Arch
from nas.ops.elastic import ElasticDepth, collect_active_state
from nas.ops.elastic_mbconv import ElasticMBConv
from nas.ops.mbconv import make_divisible
from nas.spaces.ofa_mbv3 import _ACTS, _BN_EPS, EXPANDS, KERNELS, OFAMobileNetV3Space
from nas.supernet import Supernet


def hidden_width(in_channels: int, expand: int) -> int:
    """OFA's hidden width make_divisible(round(in * e), 8) [dynamic_layers.py], as the space builds it."""
    return make_divisible(round(in_channels * expand))


class OFAMobileNetV3Supernet(Supernet):
    """Stem, first block, five elastic stages of four elastic MBConv slots, final expand conv and head.

    Args:
        space: the OFA MobileNetV3 space (at its config).
        kernel_transform: add OFA's learned kernel transform matrices (default: plain centre crops).
    """

    space: OFAMobileNetV3Space

    def __init__(self, space: OFAMobileNetV3Space, kernel_transform: bool = False) -> None:
        super().__init__(space)
        layout = space._layout
        head, tail = space._fixed_keys
        self._front = [name for name, _ in head]
        self._back = [name for name, _ in tail]
        for name, key in head:
            self.add_module(name, space.unit(key).module)
        self._stages: list[str] = []
        for s, slots in enumerate(layout.stages, 1):
            blocks = {
                block.name.replace(".", "_"): ElasticMBConv(
                    block.in_channels, block.out_channels, KERNELS, hidden_width(block.in_channels, max(EXPANDS)),
                    block.stride, block.residual, _ACTS[block.act], has_se=block.has_se, bn_eps=_BN_EPS,
                    kernel_transform=kernel_transform,
                )
                for block in slots
            }
            self.add_module(f"s{s}", ElasticDepth(blocks))
            self._stages.append(f"s{s}")
        for name, key in tail:
            self.add_module(name, space.unit(key).module)

    def _stage(self, s: int) -> ElasticDepth:
        return self.get_submodule(f"s{s}")

    def _activate(self, arch: Arch) -> None:
        for s, stage_name in enumerate(self._stages, 1):
            stage = self.get_submodule(stage_name)
            stage.set_active(arch.choices[f"s{s}.depth"])
            for b, (_, block) in enumerate(stage.active_blocks(), 1):
                block.set_active(arch.choices[f"s{s}.b{b}.kernel"],
                                 hidden_width(block.in_channels, arch.choices[f"s{s}.b{b}.expand"]))

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, first block, each stage's active slots (inactive ones do not run), final expand, head."""
        for name in (*self._front, *self._stages, *self._back):
            x = self.get_submodule(name)(x)
        return x

    def arch_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """The active slots' sliced tensors and the fixed parts, named as in `build(arch)`."""
        with self.activated(arch):
            state: dict[str, torch.Tensor] = {}
            for name in self._front + self._back:
                state.update(collect_active_state(self.get_submodule(name), f"{name}."))
            for name in self._stages:  # slots are children of `build`'s Sequential itself
                state.update(collect_active_state(self.get_submodule(name)))
            return state

    def choice_points(self) -> Mapping[str, nn.Module]:
        """`s{i}.depth` -> the stage; `s{i}.b{j}.kernel` and `.expand` -> the slot's elastic MBConv."""
        points: dict[str, nn.Module] = {}
        for s, stage_name in enumerate(self._stages, 1):
            stage = self.get_submodule(stage_name)
            points[f"s{s}.depth"] = stage
            for b, block in enumerate(stage.values(), 1):
                points[f"s{s}.b{b}.kernel"] = block
                points[f"s{s}.b{b}.expand"] = block
        return points


__all__ = ["OFAMobileNetV3Supernet", "hidden_width"]
