"""The Once-for-All MobileNetV3 space: five stages of 2-4 MBConv blocks, each block picking kernel and expansion.

Follows Cai, Gan, Wang, Zhang and Han, "Once-for-All: Train One Network and Specialize it
for Efficient Deployment" (ICLR 2020), as implemented in mit-han-lab/once-for-all
(`ofa/imagenet_classification/elastic_nn/networks/ofa_mbv3.py`, `.../modules/dynamic_layers.py`,
`ofa/utils/layers.py`, `ofa/utils/pytorch_modules.py`). Network: 3x3 s2 stem (h-swish), a
fixed MBConv k3 e1 block with identity shortcut, five stages of widths 24, 40, 80, 112, 160
(strides 2, 2, 2, 1, 2; ReLU in stages 1-2, h-swish in 3-5; squeeze-excite in stages 2, 4,
5), a 1x1 final expand conv to 960 (h-swish), global pooling, a 1x1 feature-mix conv to
1280 without BN or bias (h-swish) and a dropout-linear classifier. Widths are
make_divisible(base * width_mult, 8). Each stage uses the first `s{i}.depth` in {2, 3, 4}
of its four block slots; every slot chooses `kernel` in {3, 5, 7} and `expand` in {3, 4, 6},
its hidden width being make_divisible(round(in * expand), 8). Stride sits on a stage's first
block; the others carry an identity shortcut. The ImageNet models EEEA-Net-C1 / C2
(Termritthikun et al., Eng. Appl. AI 2021; jitdee-ai/darmo `darmo/config/eeea_c{1,2}.*`) are
presets in `search_spaces/ofa_mbv3.yaml`, their compact per-active-block lists padded to
four slots per stage as OFA's `set_active_subnet` expects.

Inactive slots (beyond a stage's depth) keep their choices, as in OFA's 20-slot encoding:
they do not change the network, sampling them matches OFA's `sample_active_subnet`, and a
depth mutation re-activates them. `mutate` only changes decisions that matter (see
`active_choices`), so every mutation changes the network; two archs that differ only in
inactive slots build the same network but hash differently.

Deviations: the width multiplier is any positive number (OFA releases 1.0 and 1.2); the
classifier dropout is part of the config (OFA sets 0.1 for training); the identity shortcut
lives inside `MBConv` instead of a `ResidualBlock` wrapper; latency keys use this package's
self-describing format; feature maps follow ceil(H / stride) at any resolution >= 32.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property, partial

from pydantic import Field
from torch import nn

from nas.arch import Arch, Choice
from nas.chain_space import NamedUnitsSpace
from nas.ops.mbconv import ConvBNAct, MBConv, conv_out_size, make_divisible
from nas.registry import SPACES
from nas.space import MAX_RESOLUTION, Decision, LatencyTerm, NumClasses, SpaceConfig, WidthMult, hwc

# OFA `base_stage_width`: stem, first block, five stages, final expand, feature mix.
_STEM, _FIRST, _FINAL_EXPAND, _FEATURE_MIX = 16, 16, 960, 1280
# Per stage [ofa_mbv3.py]: (base width, stride, activation, squeeze-excite).
_STAGES = ((24, 2, "relu", False), (40, 2, "relu", True), (80, 2, "hswish", False),
           (112, 1, "hswish", True), (160, 2, "hswish", True))
DEPTHS = (2, 3, 4)
KERNELS = (3, 5, 7)
EXPANDS = (3, 4, 6)
_SLOTS = max(DEPTHS)
_ACTS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "hswish": nn.Hardswish}
_BN_EPS = 1e-5  # OFA `bn_param` (0.1, 1e-5)


class OFAMobileNetV3Config(SpaceConfig):
    """Input size, classes, width multiplier (OFA's supernets: 1.0, 1.2) and classifier dropout."""

    resolution: int = Field(ge=32, le=MAX_RESOLUTION)
    num_classes: NumClasses
    width_mult: WidthMult = 1.0
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)


@dataclass(frozen=True)
class _Block:
    """One MBConv position: the fixed first block or slot `s{stage}.b{slot}`."""

    name: str
    in_channels: int
    out_channels: int
    stride: int
    in_size: int
    act: str
    has_se: bool

    @property
    def out_size(self) -> int:
        return conv_out_size(self.in_size, self.stride)

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels

    def key(self, kernel: int, expand: int) -> str:
        se, res = "-se" if self.has_se else "", "-res" if self.residual else ""
        return (
            f"mbconv-in{hwc(self.in_size, self.in_channels)}-out{hwc(self.out_size, self.out_channels)}"
            f"-k{kernel}-e{expand}-s{self.stride}-{self.act}{se}{res}"
        )

    def factory(self, kernel: int, expand: int) -> Callable[[], nn.Module]:
        # OFA rounds searchable blocks' hidden width to 8 [dynamic_layers.py]; the e1 first block has none.
        mid = self.in_channels if expand == 1 else make_divisible(round(self.in_channels * expand))
        return partial(
            MBConv, self.in_channels, self.out_channels, kernel, expand, self.stride, self.residual,
            _ACTS[self.act], mid_channels=mid, has_se=self.has_se, bn_eps=_BN_EPS,
        )


@dataclass(frozen=True)
class _Layout:
    """Widths and feature-map sizes of every part of the network at one config."""

    stem_width: int
    first: _Block
    stages: tuple[tuple[_Block, ...], ...]  # four slots per stage
    final_expand_width: int
    feature_mix_width: int

    @property
    def last(self) -> _Block:
        return self.stages[-1][-1]


def _layout(config: OFAMobileNetV3Config) -> _Layout:
    """Widths make_divisible(base * width_mult, 8) [ofa_mbv3.py]; sizes tracked block by block."""

    def width(base: int) -> int:
        return make_divisible(base * config.width_mult)

    stem = width(_STEM)
    size = conv_out_size(config.resolution, 2)
    first = _Block("first", stem, width(_FIRST), 1, size, "relu", has_se=False)
    channels, stages = first.out_channels, []
    for s, (base, stage_stride, act, has_se) in enumerate(_STAGES, 1):
        slots = []
        for b in range(1, _SLOTS + 1):
            block = _Block(f"s{s}.b{b}", channels, width(base), stage_stride if b == 1 else 1, size, act, has_se)
            slots.append(block)
            channels, size = block.out_channels, block.out_size
        stages.append(tuple(slots))
    return _Layout(stem, first, tuple(stages), width(_FINAL_EXPAND), width(_FEATURE_MIX))


@SPACES.register("ofa_mbv3")
class OFAMobileNetV3Space(NamedUnitsSpace):
    """Once-for-All MobileNetV3: 5 depths and 20 (kernel, expansion) slots, 3^45 encodings."""

    name = "ofa_mbv3"
    config_model = OFAMobileNetV3Config
    config: OFAMobileNetV3Config

    @cached_property
    def _layout(self) -> _Layout:
        return _layout(self.config)

    def decisions(self) -> list[Decision]:
        """Per stage: `s{i}.depth`, then `s{i}.b{j}.kernel` and `s{i}.b{j}.expand` for all four slots."""
        out = []
        for s in range(1, len(_STAGES) + 1):
            out.append(Decision(f"s{s}.depth", DEPTHS))
            for b in range(1, _SLOTS + 1):
                out += [Decision(f"s{s}.b{b}.kernel", KERNELS), Decision(f"s{s}.b{b}.expand", EXPANDS)]
        return out

    def latency_terms(self) -> list[LatencyTerm]:
        """Fixed head and tail; slots 1-2 of a stage on (kernel, expand), slots 3-4 also on the stage depth."""
        head, tail = self._fixed_keys
        terms = [_fixed_term(head)]
        for s, slots in enumerate(self._slot_keys, 1):
            for b, table in enumerate(slots, 1):
                pair = (f"s{s}.b{b}.kernel", f"s{s}.b{b}.expand")
                if b <= min(DEPTHS):  # always active
                    terms.append(LatencyTerm(pair, partial(_slot_key, table)))
                else:
                    terms.append(LatencyTerm((f"s{s}.depth", *pair), partial(_optional_slot_key, table, b)))
        return [*terms, _fixed_term(tail)]

    # -- helpers ------------------------------------------------------------------
    def active_decisions(self, choices: Mapping[str, Choice]) -> list[str]:
        """Every depth, and the kernel and expansion of the slots within it."""
        names = []
        for s in range(1, len(_STAGES) + 1):
            names.append(f"s{s}.depth")
            for b in range(1, int(choices[f"s{s}.depth"]) + 1):
                names += [f"s{s}.b{b}.kernel", f"s{s}.b{b}.expand"]
        return names

    def _named_keys(self, arch: Arch) -> list[tuple[str, str]]:
        """Stem, first block, every active slot, final expand conv and head (pool, feature mix, classifier)."""
        self.check_own(arch)
        head, tail = self._fixed_keys
        named = list(head)
        for s, slots in enumerate(self._slot_keys, 1):
            for b, table in enumerate(slots[: arch.choices[f"s{s}.depth"]], 1):
                named.append(table[(arch.choices[f"s{s}.b{b}.kernel"], arch.choices[f"s{s}.b{b}.expand"])])
        return named + tail

    @cached_property
    def _slot_keys(self) -> list[list[dict[tuple[Choice, Choice], tuple[str, str]]]]:
        """Per stage and slot: (kernel, expand) -> (child name, key), so pricing an arch is dict lookups."""
        return [
            [{(k, e): (block.name.replace(".", "_"), block.key(k, e)) for k in KERNELS for e in EXPANDS}
             for block in slots]
            for slots in self._layout.stages
        ]

    @cached_property
    def _fixed_keys(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(child name, key) of the parts before the stages and after them."""
        return ([("stem", self._stem_key), ("first", self._layout.first.key(3, 1))],
                [("final_expand", self._final_expand_key), ("head", self._head_key)])

    @property
    def _stem_key(self) -> str:
        first = self._layout.first
        return f"stem-in{hwc(self.config.resolution, 3)}-out{hwc(first.in_size, first.in_channels)}-hswish"

    @property
    def _final_expand_key(self) -> str:
        last, width = self._layout.last, self._layout.final_expand_width
        return f"conv1x1-in{hwc(last.out_size, last.out_channels)}-out{hwc(last.out_size, width)}-hswish"

    @property
    def _head_key(self) -> str:
        layout = self._layout
        return (f"head-in{hwc(layout.last.out_size, layout.final_expand_width)}"
                f"-mix{layout.feature_mix_width}-out{self.config.num_classes}")

    @cached_property
    def unit_table(self) -> dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int]]]:
        """Latency key -> (module factory, input shape (C, H, W)) for every unit of the space."""
        cfg, layout = self.config, self._layout
        last, r = layout.last, cfg.resolution
        final_shape = (last.out_channels, last.out_size, last.out_size)
        units = {
            self._stem_key: (
                partial(ConvBNAct, 3, layout.stem_width, 3, 2, act=nn.Hardswish, bn_eps=_BN_EPS), (3, r, r)),
            self._final_expand_key: (
                partial(ConvBNAct, last.out_channels, layout.final_expand_width, 1, act=nn.Hardswish,
                        bn_eps=_BN_EPS), final_shape),
            self._head_key: (
                partial(_head, layout.final_expand_width, layout.feature_mix_width, cfg.num_classes, cfg.dropout),
                (layout.final_expand_width, last.out_size, last.out_size)),
        }
        first = layout.first
        units[first.key(3, 1)] = (first.factory(3, 1), (first.in_channels, first.in_size, first.in_size))
        for slots in layout.stages:
            for block in slots[:2]:  # slots 2-4 share shapes, hence keys
                shape = (block.in_channels, block.in_size, block.in_size)
                units.update({block.key(k, e): (block.factory(k, e), shape) for k in KERNELS for e in EXPANDS})
        return units

    def supernet(self):
        """Once-for-All's elastic supernet: kernel, expansion and depth by slicing (`OFAMobileNetV3Supernet`)."""
        from nas.supernets.ofa_mbv3 import OFAMobileNetV3Supernet

        return OFAMobileNetV3Supernet(self)


def _fixed_term(named: list[tuple[str, str]]) -> LatencyTerm:
    keys = tuple(key for _, key in named)
    return LatencyTerm((), lambda _: keys)


def _slot_key(table: dict[tuple[Choice, Choice], tuple[str, str]], choices: tuple[Choice, ...]) -> tuple[str, ...]:
    """The key of an always-active slot for choices (kernel, expand)."""
    return (table[choices][1],)


def _optional_slot_key(
    table: dict[tuple[Choice, Choice], tuple[str, str]], slot: int, choices: tuple[Choice, ...]
) -> tuple[str, ...]:
    """The key of slot `slot` for choices (depth, kernel, expand); none when the depth leaves it inactive."""
    depth, kernel, expand = choices
    return (table[(kernel, expand)][1],) if int(depth) >= slot else ()


def _head(in_channels: int, mix_channels: int, num_classes: int, dropout: float) -> nn.Module:
    """Global average pool -> 1x1 feature mix (no BN, no bias) + h-swish -> dropout -> linear [ofa_mbv3.py]."""
    return nn.Sequential(
        OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1),
            feature_mix=nn.Sequential(
                OrderedDict(conv=nn.Conv2d(in_channels, mix_channels, 1, bias=False), act=nn.Hardswish())
            ),
            flatten=nn.Flatten(1),
            dropout=nn.Dropout(dropout),
            linear=nn.Linear(mix_channels, num_classes),
        )
    )


__all__ = ["DEPTHS", "EXPANDS", "KERNELS", "OFAMobileNetV3Config", "OFAMobileNetV3Space"]
