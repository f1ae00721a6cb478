"""The ProxylessNAS mobile search space: 21 MBConv blocks, each picking kernel, expansion or skip.

Follows Cai, Zhu and Han, "ProxylessNAS: Direct Neural Architecture Search on Target Task
and Hardware" (ICLR 2019), as implemented in mit-han-lab/proxylessnas
(`search/models/super_nets/super_proxyless.py`, `search/modules/layers.py`,
`search/models/normal_nets/proxyless_nets.py`). Network: 3x3 s2 stem, a fixed MBConv
k3 e1 block, six stages of 4, 4, 4, 4, 4, 1 searchable MBConv blocks (strides 2, 2, 2,
1, 2, 1), a 1x1 feature-mix conv and a pool-dropout-linear head, all ReLU6. Each block
chooses kernel {3, 5, 7} x expansion {3, 6}; blocks with stride 1 and equal widths may
also be `zero` (skipped) and carry an identity shortcut otherwise. The published
models' widths and choices (han-cai/files `proxylessnas/proxyless_*.config`) are the
presets in `search_spaces/proxylessnas.yaml`.

Deviations: widths can be set one by one (`stem_width`, `stage_widths`, ...) besides
`width_mult`, since the released models do not use the search-script widths; the
head's dropout is part of the config (the reference sets it at training time); latency
keys use this package's self-describing format instead of the reference's
`expanded_conv-input:...` strings, and feature maps follow the real conv output size
ceil(H / stride) at any resolution >= 32 instead of starting from 112.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Annotated

from pydantic import Field
from torch import nn

from nas.chain_space import ChainSpace
from nas.ops.mbconv import ConvBNAct, MBConv, conv_out_size, make_divisible
from nas.registry import SPACES
from nas.space import MAX_RESOLUTION, Decision, NumClasses, SpaceConfig, WidthMult, hwc

# Search-script defaults [search/imagenet_arch_search.py]: (width, blocks, stride) per stage.
_STAGES = ((24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1))
# Choice token -> (expansion, kernel), in the reference's candidate order.
_OPS = {
    "mb3_k3": (3, 3),
    "mb6_k3": (6, 3),
    "mb3_k5": (3, 5),
    "mb6_k5": (6, 5),
    "mb3_k7": (3, 7),
    "mb6_k7": (6, 7),
}
ZERO = "zero"

# Widths: about ten times the widest released ones (stages up to 448, feature mix up to 1792).
Width = Annotated[int, Field(gt=0, le=4096)]
StageWidths = tuple[Width, Width, Width, Width, Width, Width]


class ProxylessNASConfig(SpaceConfig):
    """Input size, classes and widths; a width left None comes from `width_mult` as in the search code."""

    resolution: int = Field(ge=32, le=MAX_RESOLUTION)
    num_classes: NumClasses
    width_mult: WidthMult = 1.0
    stem_width: Width | None = None
    first_block_width: Width | None = None
    stage_widths: StageWidths | None = None
    feature_mix_width: int | None = Field(default=None, gt=0, le=16384)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


@dataclass(frozen=True)
class _Block:
    """One MBConv position: the fixed first block or a searchable block `s{stage}.b{block}`."""

    name: str
    in_channels: int
    out_channels: int
    stride: int
    in_size: int
    residual: bool

    @property
    def out_size(self) -> int:
        return conv_out_size(self.in_size, self.stride)

    def key(self, expand: int, kernel: int) -> str:
        res = "-res" if self.residual else ""
        return (
            f"mbconv-in{hwc(self.in_size, self.in_channels)}-out{hwc(self.out_size, self.out_channels)}"
            f"-k{kernel}-e{expand}-s{self.stride}{res}"
        )

    def factory(self, expand: int, kernel: int) -> Callable[[], nn.Module]:
        return partial(
            MBConv, self.in_channels, self.out_channels, kernel, expand, self.stride, self.residual
        )


@dataclass(frozen=True)
class _Layout:
    """Widths and feature-map sizes of every part of the network at one config."""

    stem_width: int
    first: _Block
    blocks: tuple[_Block, ...]
    mix_width: int

    @property
    def final_size(self) -> int:
        return self.blocks[-1].out_size


def _layout(config: ProxylessNASConfig) -> _Layout:
    """Derive widths [super_proxyless.py] and track the feature-map size block by block."""
    mult = config.width_mult

    def width(explicit: int | None, base: int) -> int:
        return explicit if explicit is not None else make_divisible(base * mult)

    stage_widths = config.stage_widths or tuple(make_divisible(w * mult) for w, _, _ in _STAGES)
    mix_width = config.feature_mix_width or (make_divisible(1280 * mult) if mult > 1.0 else 1280)
    stem_width = width(config.stem_width, 32)
    size = conv_out_size(config.resolution, 2)
    first = _Block("first", stem_width, width(config.first_block_width, 16), 1, size, residual=False)
    blocks, channels = [], first.out_channels
    for s, (out, (_, depth, stage_stride)) in enumerate(zip(stage_widths, _STAGES, strict=True), 1):
        for b in range(1, depth + 1):
            stride = stage_stride if b == 1 else 1
            # Zero op and identity shortcut exactly when stride 1 and widths equal [super_proxyless.py].
            block = _Block(f"s{s}.b{b}", channels, out, stride, size, stride == 1 and channels == out)
            blocks.append(block)
            size, channels = block.out_size, out
    return _Layout(stem_width, first, tuple(blocks), mix_width)


@SPACES.register("proxylessnas")
class ProxylessNASSpace(ChainSpace):
    """ProxylessNAS: 21 searchable MBConv blocks (15 skippable), 7^15 * 6^6 archs at default widths."""

    name = "proxylessnas"
    config_model = ProxylessNASConfig
    config: ProxylessNASConfig

    @cached_property
    def _layout(self) -> _Layout:
        return _layout(self.config)

    def decisions(self) -> list[Decision]:
        """`s{stage}.b{block}.op` in network order; `zero` only where the block can be skipped."""
        ops = tuple(_OPS)
        return [Decision(f"{b.name}.op", (*ops, ZERO) if b.residual else ops) for b in self._layout.blocks]

    @cached_property
    def chain(self) -> tuple[list, list[tuple[str, dict]], list]:
        """Keys precomputed per block and choice, so pricing an arch is a few dict lookups."""
        layout = self._layout
        head = [("stem", self._stem_key), ("first", layout.first.key(1, 3))]
        by_choice = []
        for block in layout.blocks:
            child = block.name.replace(".", "_")
            keys = {op: (child, block.key(*ek)) for op, ek in _OPS.items()}
            by_choice.append((f"{block.name}.op", {**keys, ZERO: None}))
        return head, by_choice, [("feature_mix", self._mix_key), ("head", self._head_key)]

    @property
    def _stem_key(self) -> str:
        r, first = self.config.resolution, self._layout.first
        return f"stem-in{hwc(r, 3)}-out{hwc(first.in_size, first.in_channels)}"

    @property
    def _mix_key(self) -> str:
        size, last = self._layout.final_size, self._layout.blocks[-1].out_channels
        return f"conv1x1-in{hwc(size, last)}-out{hwc(size, self._layout.mix_width)}"

    @property
    def _head_key(self) -> str:
        return f"head-in{hwc(self._layout.final_size, self._layout.mix_width)}-out{self.config.num_classes}"

    @cached_property
    def unit_table(self) -> dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int]]]:
        """Latency key -> (module factory, input shape (C, H, W)) for every unit of the space."""
        cfg, layout = self.config, self._layout
        last, size, r = layout.blocks[-1].out_channels, layout.final_size, cfg.resolution
        units = {
            self._stem_key: (partial(ConvBNAct, 3, layout.stem_width, 3, 2), (3, r, r)),
            self._mix_key: (partial(ConvBNAct, last, layout.mix_width, 1), (last, size, size)),
            self._head_key: (
                partial(_head, layout.mix_width, cfg.num_classes, cfg.dropout),
                (layout.mix_width, size, size),
            ),
        }
        positions = [(layout.first, [(1, 3)]), *((b, list(_OPS.values())) for b in layout.blocks)]
        for block, ops in positions:
            shape = (block.in_channels, block.in_size, block.in_size)
            units.update({block.key(e, k): (block.factory(e, k), shape) for e, k in ops})
        return units

    def supernet(self):
        """ProxylessNAS' supernet: a mixed op per block over its MBConv candidates and the zero op (`ChainSupernet`)."""
        from nas.supernets.chain import ChainSupernet

        return ChainSupernet(self)


def _head(in_channels: int, num_classes: int, dropout: float) -> nn.Module:
    """Global average pool -> dropout -> linear classifier (with bias) [proxyless_nets.py]."""
    return nn.Sequential(
        OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
            dropout=nn.Dropout(dropout),
            linear=nn.Linear(in_channels, num_classes),
        )
    )


__all__ = ["ZERO", "ProxylessNASConfig", "ProxylessNASSpace"]
