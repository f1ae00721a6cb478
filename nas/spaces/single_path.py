"""The Single-Path NAS search space: 20 MnasNet-style MBConv layers, each picking kernel, expansion or skip.

Follows Stamoulis et al., "Single-Path NAS: Designing Hardware-Efficient ConvNets in less
than 4 Hours" (ECML-PKDD 2019, arXiv:1904.02877), as implemented in dstamoulis/single-path-nas
(`nas-search/supernet_macro.py`, `nas-search/singlepath_supernet.py`,
`nas-search/superkernel.py`); the published Pixel 1 model is timm's `spnasnet_100`
(`timm/models/efficientnet.py`, `_gen_spnasnet`). Network: 3x3 s2 stem (32), a fixed
MBConv k3 e1 layer (16, no shortcut), five stages of 4 searchable layers (widths 24, 40,
80, 96, 192; first-layer strides 2, 2, 2, 1, 2), a fixed MBConv k3 e6 layer (320, no
shortcut), a 1x1 head conv (1280) and a pool-dropout-linear classifier, all ReLU, no
squeeze-excite. Each searchable layer is one of the superkernel's four sub-kernels
k3e3, k3e6, k5e3, k5e6; a stage's repeated layers (b2-b4) may also be `skip`, the first
layer never can (it changes stride or width) [superkernel.py]. Layers with stride 1 and
equal widths carry an identity shortcut.

Deviations: this module is the space of stand-alone networks the search chooses between;
the search method itself (one 5x5 x 6-expansion superkernel per layer, trainable norm
thresholds) belongs to the one-shot methods, not here. BN keeps `nas.ops.mbconv`'s momentum 0.1 (PyTorch convention; the
reference's TF 0.99 is 0.01 here) and PyTorch's default init; the head width is a config
key (the reference fixes 1280 whatever the depth multiplier); widths scale with
`make_divisible(w * width_mult)` as the reference's `round_filters`; latency keys use
this package's self-describing format instead of the reference's per-block Pixel 1 table
rows, and feature maps follow the real conv output size ceil(H / stride) at any
resolution >= 32.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial

from pydantic import Field
from torch import nn

from nas.chain_space import ChainSpace
from nas.ops.mbconv import ConvBNAct, MBConv, conv_out_size, make_divisible
from nas.registry import SPACES
from nas.space import MAX_RESOLUTION, Decision, NumClasses, SpaceConfig, WidthMult, hwc

# [supernet_macro.py single_path_search]: (width, layers, first-layer stride) per searchable stage.
_STAGES = ((24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2))
_STEM, _FIRST, _LAST = 32, 16, 320  # stem conv, fixed block 0 (k3 e1), fixed block 21 (k3 e6)
# Choice token -> (kernel, expansion), in the runtime table's column order [superkernel.py].
_OPS = {"k3e3": (3, 3), "k3e6": (3, 6), "k5e3": (5, 3), "k5e6": (5, 6)}
SKIP = "skip"


class SinglePathConfig(SpaceConfig):
    """Input size, classes, width multiplier, head width and classifier dropout."""

    resolution: int = Field(ge=32, le=MAX_RESOLUTION)
    num_classes: NumClasses
    width_mult: WidthMult = 1.0
    head_width: int = Field(default=1280, gt=0, le=16384)  # ten times the published 1280, with room
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)


@dataclass(frozen=True)
class _Layer:
    """One MBConv position: a fixed layer (`first`, `last`) or a searchable layer `s{stage}.b{block}`."""

    name: str
    in_channels: int
    out_channels: int
    stride: int
    in_size: int
    residual: bool
    skippable: bool

    @property
    def out_size(self) -> int:
        return conv_out_size(self.in_size, self.stride)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.in_size, self.in_size)

    def key(self, kernel: int, expand: int) -> str:
        res = "-res" if self.residual else ""
        return (
            f"mbconv-in{hwc(self.in_size, self.in_channels)}-out{hwc(self.out_size, self.out_channels)}"
            f"-k{kernel}-e{expand}-s{self.stride}{res}"
        )

    def factory(self, kernel: int, expand: int) -> Callable[[], nn.Module]:
        return partial(
            MBConv, self.in_channels, self.out_channels, kernel, expand, self.stride, self.residual, act=nn.ReLU
        )


@dataclass(frozen=True)
class _Layout:
    """Widths and feature-map sizes of every part of the network at one config."""

    stem_width: int
    first: _Layer
    layers: tuple[_Layer, ...]
    last: _Layer


def _layout(config: SinglePathConfig) -> _Layout:
    """Scale widths as `round_filters` does [singlepath_supernet.py] and track sizes layer by layer."""

    def width(base: int) -> int:
        return make_divisible(base * config.width_mult)

    size = conv_out_size(config.resolution, 2)
    # Blocks 0 and 21 are "noskip" in the reference: no shortcut even where widths would allow one.
    first = _Layer("first", width(_STEM), width(_FIRST), 1, size, residual=False, skippable=False)
    layers, channels = [], first.out_channels
    for s, (base, depth, stage_stride) in enumerate(_STAGES, 1):
        out = width(base)
        for b in range(1, depth + 1):
            stride = stage_stride if b == 1 else 1
            residual = stride == 1 and channels == out
            layers.append(_Layer(f"s{s}.b{b}", channels, out, stride, size, residual, skippable=b > 1))
            size, channels = conv_out_size(size, stride), out
    last = _Layer("last", channels, width(_LAST), 1, size, residual=False, skippable=False)
    return _Layout(first.in_channels, first, tuple(layers), last)


@SPACES.register("single_path")
class SinglePathSpace(ChainSpace):
    """Single-Path NAS: 20 searchable MBConv layers (15 skippable), 5^15 * 4^5 archs."""

    name = "single_path"
    config_model = SinglePathConfig
    config: SinglePathConfig

    @cached_property
    def _layout(self) -> _Layout:
        return _layout(self.config)

    def decisions(self) -> list[Decision]:
        """`s{stage}.b{block}.op` in network order; `skip` only for a stage's repeated layers."""
        ops = tuple(_OPS)
        return [Decision(f"{x.name}.op", (*ops, SKIP) if x.skippable else ops) for x in self._layout.layers]

    @cached_property
    def chain(self) -> tuple[list, list[tuple[str, dict]], list]:
        """Keys precomputed per layer and choice, so pricing an arch is a few dict lookups."""
        layout = self._layout
        front = [("stem", self._stem_key), ("first", layout.first.key(3, 1))]
        by_choice = []
        for layer in layout.layers:
            child = layer.name.replace(".", "_")
            table: dict[str, tuple[str, str] | None] = {op: (child, layer.key(*ke)) for op, ke in _OPS.items()}
            if layer.skippable:
                table[SKIP] = None
            by_choice.append((f"{layer.name}.op", table))
        back = [("last", layout.last.key(3, 6)), ("head_conv", self._head_conv_key), ("classifier", self._fc_key)]
        return front, by_choice, back

    @property
    def _stem_key(self) -> str:
        first = self._layout.first
        return f"stem-in{hwc(self.config.resolution, 3)}-out{hwc(first.in_size, first.in_channels)}"

    @property
    def _head_conv_key(self) -> str:
        last, head = self._layout.last, self.config.head_width
        return f"conv1x1-in{hwc(last.out_size, last.out_channels)}-out{hwc(last.out_size, head)}"

    @property
    def _fc_key(self) -> str:
        size = self._layout.last.out_size
        return f"head-in{hwc(size, self.config.head_width)}-out{self.config.num_classes}"

    @cached_property
    def unit_table(self) -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]]:
        """Latency key -> (module factory, input shape (C, H, W)) for every unit of the space."""
        cfg, layout = self.config, self._layout
        r, last, head = cfg.resolution, layout.last, cfg.head_width
        final = (last.out_channels, last.out_size, last.out_size)
        units: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
            self._stem_key: (partial(ConvBNAct, 3, layout.stem_width, 3, 2, act=nn.ReLU), (3, r, r)),
            self._head_conv_key: (partial(ConvBNAct, last.out_channels, head, 1, act=nn.ReLU), final),
            self._fc_key: (partial(_classifier, head, cfg.num_classes, cfg.dropout), (head, *final[1:])),
        }
        positions = [(layout.first, [(3, 1)]), *((x, list(_OPS.values())) for x in layout.layers), (last, [(3, 6)])]
        for layer, ops in positions:
            units.update({layer.key(k, e): (layer.factory(k, e), layer.input_shape) for k, e in ops})
        return units

    def supernet(self):
        """Single-Path NAS' superkernel supernet: one k5e6 MBConv per searchable layer (`SinglePathSupernet`)."""
        from nas.supernets.single_path import SinglePathSupernet

        return SinglePathSupernet(self)


def _classifier(in_channels: int, num_classes: int, dropout: float) -> nn.Module:
    """Global average pool -> dropout -> linear with bias [singlepath_supernet.py head]."""
    return nn.Sequential(
        OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
            dropout=nn.Dropout(dropout),
            linear=nn.Linear(in_channels, num_classes),
        )
    )


__all__ = ["SKIP", "SinglePathConfig", "SinglePathSpace"]
