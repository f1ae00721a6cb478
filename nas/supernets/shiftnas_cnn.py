"""The ShiftNAS CNN (BigNAS) supernet: elastic widths, depths and kernels by weight slicing, any input resolution.

BigNAS' single-stage model (Yu et al., ECCV 2020), as ShiftNAS trains it (Zhang et al., ICCV
2023); reference implementations xfey/pytorch-BigNAS `bignas/cnn.py` (`BigNASDynamicModel`) and
open-mmlab/mmrazor `bignas_mobilenet.py`. The stem conv holds 40 output channels, each stage's
block slots hold the stage's largest width (the first slot also the previous stage's largest
input) at kernel 5 and expansion 6, the head conv 1408 channels and the classifier 1408 inputs;
a smaller width is the leading channels, a smaller kernel the centre crop, depth d the stage's
first d slots. The supernet holds no weight that depends on the input resolution: it runs the
active arch on its input as it comes, which must be (B, 3, R, R) at R = the arch's
`resolution` choice (the trainer resizes each batch to it; xfey resizes inside the model).
Module names mirror `build(arch)`'s: stage `s{i}` holds slots `s{i}_b{j}`.

Deviations: BigNAS' training (sandwich rule, in-place distillation, zero-initialised last BN
of residual blocks, BN calibration) is a method's, not the supernet's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from nas.arch import Arch
from nas.ops.elastic import ElasticDepth, ElasticLinear, collect_active_state
from nas.ops.elastic_mbconv import ElasticMBConv
from nas.ops.elastic_width import ElasticConvBNAct
from nas.spaces.shiftnas_cnn import _BN_EPS, HEAD_WIDTHS, STAGES, STEM_WIDTHS, ShiftNASCNNSpace, hidden_width
from nas.supernet import Supernet

_PARTS = ("stem", *(f"s{s}" for s in range(1, len(STAGES) + 1)), "head")


class ShiftNASCNNSupernet(Supernet):
    """Stem, seven elastic stages of elastic-width MBConv slots, head (1x1 conv, pool, dropout, classifier)."""

    space: ShiftNASCNNSpace

    def __init__(self, space: ShiftNASCNNSpace) -> None:
        super().__init__(space)
        self.stem = ElasticConvBNAct(3, max(STEM_WIDTHS), 3, 2, act=nn.SiLU, bn_eps=_BN_EPS)
        cin = max(STEM_WIDTHS)
        for s, stage in enumerate(STAGES, 1):
            cout = max(stage.widths)
            blocks = {}
            for b in range(1, max(stage.depths) + 1):
                first = b == 1
                width_in = cin if first else cout
                blocks[f"s{s}_b{b}"] = ElasticMBConv(
                    width_in, cout, stage.kernels, hidden_width(width_in, stage.expand),
                    stage.stride if first else 1, not first, nn.SiLU, expand=stage.expand != 1, has_se=True,
                    bn_eps=_BN_EPS)
            self.add_module(f"s{s}", ElasticDepth(blocks))
            cin = cout
        self.head = nn.Sequential(OrderedDict(
            conv=ElasticConvBNAct(cin, max(HEAD_WIDTHS), 1, act=nn.SiLU, bn_eps=_BN_EPS),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
            dropout=nn.Dropout(space.config.dropout),
            linear=ElasticLinear(max(HEAD_WIDTHS), space.config.num_classes),
        ))

    def _activate(self, arch: Arch) -> None:
        c = arch.choices
        cin = c["stem.width"]
        self.stem.set_active(out_channels=cin)
        for s, stage in enumerate(STAGES, 1):
            cout = c[f"s{s}.width"]
            depth = self.get_submodule(f"s{s}")
            depth.set_active(c[f"s{s}.depth"])
            for b, (_, block) in enumerate(depth.active_blocks(), 1):
                width_in = cin if b == 1 else cout
                kernel = c[f"s{s}.b{b}.kernel"] if len(stage.kernels) > 1 else stage.kernels[0]
                block.set_active(kernel, hidden_width(width_in, stage.expand), in_channels=width_in,
                                 out_channels=cout)
            cin = cout
        self.head.conv.set_active(in_channels=cin, out_channels=c["head.width"])
        self.head.linear.set_active(in_features=c["head.width"])

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) at the active arch's resolution -> (B, num_classes)."""
        r = self.space.input_resolution(self.active)
        if x.dim() != 4 or x.shape[-2:] != (r, r):
            raise ValueError(f"{self.space.name} supernet: arch {self.active.short_hash} takes (B, 3, {r}, {r}), got "
                             f"{tuple(x.shape)}; resize the batch to space.input_resolution(arch)")
        for name in _PARTS:
            x = self.get_submodule(name)(x)
        return x

    def arch_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """The active slices, named as in `build(arch)` (slots are children of its Sequential itself)."""
        with self.activated(arch):
            state = collect_active_state(self.stem, "stem.")
            for name in _PARTS[1:-1]:
                state.update(collect_active_state(self.get_submodule(name)))
            state.update(collect_active_state(self.head, "head."))
            return state

    def choice_points(self) -> Mapping[str, nn.Module]:
        """`resolution` and `stem.width` -> the stem; a stage's width and depth -> the stage; a kernel -> its slot;
        `head.width` -> the head."""
        points: dict[str, nn.Module] = {"resolution": self.stem, "stem.width": self.stem, "head.width": self.head}
        for s, stage in enumerate(STAGES, 1):
            depth = self.get_submodule(f"s{s}")
            points[f"s{s}.width"] = points[f"s{s}.depth"] = depth
            if len(stage.kernels) > 1:
                for b, block in enumerate(depth.values(), 1):
                    points[f"s{s}.b{b}.kernel"] = block
        return points


__all__ = ["ShiftNASCNNSupernet"]
