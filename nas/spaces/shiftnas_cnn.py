"""ShiftNAS' CNN space (ShiftCNN), which is BigNAS' MobileNetV2-based space: widths, depths, kernels and resolution.

Zhang, Yu, Zhao and Ou, "ShiftNAS: Improving One-shot NAS via Probability Shift" (ICCV 2023),
searches the space of Yu et al., "BigNAS: Scaling Up Neural Architecture Search with Big
Single-Stage Models" (ECCV 2020). Neither released code; the table follows the two agreeing
third-party encodings, open-mmlab/mmrazor `mmrazor/models/architectures/backbones/bignas_mobilenet.py`
(`mutable_settings`) and xfey/pytorch-BigNAS `configs/train.yaml` (`SUPERNET_CFG`), whose
network is AttentiveNAS' (`bignas/cnn.py`, `bignas/dynamic_layers.py`, `bignas/ops.py`).
Network: 3x3 s2 stem conv of `stem.width` in {32, 40}; seven MBConv stages of widths
{16, 24}, {24, 32}, {40, 48}, {80, 88}, {112..128}, {192..216}, {320..352} (steps of 8),
depths 1-2, 2-3, 2-3, 2-4, 2-6, 2-6, 1-2, strides 1, 2, 2, 2, 1, 2, 1, expansion 1 in stage 1
and 6 elsewhere (hidden width make_divisible(round(in * e), 8)), kernel 3 in stages 1-2 and
`s{i}.b{j}.kernel` in {3, 5} per block in stages 3-7; swish everywhere; squeeze-excite
(bottleneck make_divisible(hidden // 4, 8), ReLU, h-sigmoid) in every block; then a 1x1 conv of
`head.width` in {1280..1408} (steps of 8) with BN and swish, global pooling, dropout and a linear
classifier. A stage's width is shared by its blocks; its first block has the stride and no
shortcut, the others an identity shortcut. A stage runs its first `s{i}.depth` block slots.

The input resolution is a decision, `resolution`: BigNAS' 192-320 in steps of 32 are the config's
`resolution` (the largest, where data are loaded) times 0.6, 0.7, 0.8, 0.9 and 1.0, so a demo
config at 40 px searches 24-40 px. Consumers read an arch's own input size from
`input_resolution(arch)`; latency keys carry the feature-map sizes, so the unit table holds the
units of every resolution, and a latency table is named by the config's (largest) resolution
(`shiftnas_cnn-r40.yaml` holds the units of 24-40 px).

Inactive slots (beyond a stage's depth) keep their kernel, as in Once-for-All's encoding; `mutate`
changes only decisions that shape the network (`active_choices`).

Deviations: ShiftNAS and BigNAS choose kernels per block here and in [paper]; xfey and mmrazor
per stage. The resolution set {192, 224, 256, 288, 320} is the reference's likely one (xfey lists
192, 224, 288, 320). xfey's widths of stage 7 and the head are the two ends only ({320, 352},
{1280, 1408}); mmrazor's steps of 8 are used. xfey (after AttentiveNAS) adds an avg-pool / 1x1
shortcut to every first block; BigNAS has none [ShiftNAS paper], nor does this space. Swish and
squeeze-excite in every block come from xfey only (mmrazor defaults to ReLU6 without SE); its
bottleneck of hidden / 4 (AttentiveNAS', the reference's MAC counts assume it) gives every child at
least 5.50M parameters, above BigNAS-S' published 4.5M (EfficientNet's input / 4 would give 3.75M).
Batch-norm epsilon 1e-5 as xfey, momentum 0.1. Latency keys use this package's format.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from itertools import product

from pydantic import Field
from torch import nn

from nas.arch import Arch, Choice
from nas.chain_space import NamedUnitsSpace
from nas.ops.mbconv import ConvBNAct, MBConv, conv_out_size, make_divisible
from nas.registry import SPACES
from nas.space import MAX_RESOLUTION, Decision, LatencyTerm, NumClasses, SpaceConfig, hwc

STEM_WIDTHS = (32, 40)
HEAD_WIDTHS = tuple(range(1280, 1408 + 1, 8))


@dataclass(frozen=True)
class Stage:
    """One MBConv stage of the BigNAS table: width, depth and kernel choices, expansion and stride."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expand: int
    stride: int


STAGES = (
    Stage((16, 24), (1, 2), (3,), 1, 1),
    Stage((24, 32), (2, 3), (3,), 6, 2),
    Stage((40, 48), (2, 3), (3, 5), 6, 2),
    Stage((80, 88), (2, 3, 4), (3, 5), 6, 2),
    Stage((112, 120, 128), (2, 3, 4, 5, 6), (3, 5), 6, 1),
    Stage((192, 200, 208, 216), (2, 3, 4, 5, 6), (3, 5), 6, 2),
    Stage((320, 328, 336, 344, 352), (1, 2), (3, 5), 6, 1),
)
RESOLUTION_TENTHS = (6, 7, 8, 9, 10)
"""Input resolutions in tenths of the config's `resolution`: 320 px gives BigNAS' 192, 224, 256, 288, 320."""
_BN_EPS = 1e-5  # xfey BIGNAS.BN_EPS


class ShiftNASCNNConfig(SpaceConfig):
    """The largest input resolution (data are loaded there), classes and classifier dropout (BigNAS: 0.2)."""

    resolution: int = Field(ge=32, le=MAX_RESOLUTION)
    num_classes: NumClasses
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)


def hidden_width(in_channels: int, expand: int) -> int:
    """make_divisible(round(in * e), 8) [dynamic_layers.py]; the input width itself for expansion 1."""
    return in_channels if expand == 1 else make_divisible(round(in_channels * expand))


def _block_key(size: int, cin: int, cout: int, kernel: int, stage: Stage, first: bool) -> str:
    """`mbconv-in{H}x{W}x{C}-out...-k{k}-e{e}-s{s}-swish-se[-res]` of a block whose input is size x size."""
    stride = stage.stride if first else 1
    res = "" if first else "-res"
    return (f"mbconv-in{hwc(size, cin)}-out{hwc(conv_out_size(size, stride), cout)}"
            f"-k{kernel}-e{stage.expand}-s{stride}-swish-se{res}")


def block_factory(cin: int, cout: int, kernel: int, stage: Stage, first: bool) -> Callable[[], nn.Module]:
    """The standalone block `build` uses: MBConv with swish, SE and BN epsilon 1e-5."""
    return partial(MBConv, cin, cout, kernel, stage.expand, stage.stride if first else 1, not first, nn.SiLU,
                   mid_channels=hidden_width(cin, stage.expand), has_se=True, bn_eps=_BN_EPS)


def head_module(in_channels: int, width: int, num_classes: int, dropout: float) -> nn.Module:
    """1x1 conv + BN + swish -> global average pool -> dropout -> linear [bignas/cnn.py, `last_conv`, classifier]."""
    return nn.Sequential(OrderedDict(
        conv=ConvBNAct(in_channels, width, 1, act=nn.SiLU, bn_eps=_BN_EPS),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(1),
        dropout=nn.Dropout(dropout),
        linear=nn.Linear(width, num_classes),
    ))


@SPACES.register("shiftnas_cnn")
class ShiftNASCNNSpace(NamedUnitsSpace):
    """BigNAS' space as ShiftNAS searches it: resolution, stem and head widths, per-stage width and depth,
    per-block kernel (stages 3-7)."""

    name = "shiftnas_cnn"
    config_model = ShiftNASCNNConfig
    config: ShiftNASCNNConfig

    @cached_property
    def _resolutions(self) -> tuple[int, ...]:
        return tuple((self.config.resolution * t + 5) // 10 for t in RESOLUTION_TENTHS)

    def input_resolutions(self) -> tuple[int, ...]:
        """The `resolution` choices: the config's resolution times 0.6-1.0, rounded to whole pixels."""
        return self._resolutions

    def input_resolution(self, arch: Arch) -> int:
        """The arch's `resolution` choice."""
        self.check_own(arch)
        return int(arch.choices["resolution"])

    def decisions(self) -> list[Decision]:
        """`resolution`, `stem.width`, per stage `s{i}.width`, `s{i}.depth` (and `s{i}.b{j}.kernel`), `head.width`."""
        out = [Decision("resolution", self._resolutions), Decision("stem.width", STEM_WIDTHS)]
        for s, stage in enumerate(STAGES, 1):
            out += [Decision(f"s{s}.width", stage.widths), Decision(f"s{s}.depth", stage.depths)]
            if len(stage.kernels) > 1:
                out += [Decision(f"s{s}.b{b}.kernel", stage.kernels) for b in range(1, max(stage.depths) + 1)]
        return [*out, Decision("head.width", HEAD_WIDTHS)]

    def latency_terms(self) -> list[LatencyTerm]:
        """Stem on (resolution, stem width); a stage's first block on (resolution, widths in and out, kernel),
        its other blocks on (resolution, width, kernel) plus depth where it may be inactive; head on (resolution,
        stage-7 width, head width)."""
        terms = [LatencyTerm(("resolution", "stem.width"), lambda c: (self._stem_keys[c],))]
        previous = "stem.width"
        for s, stage in enumerate(STAGES, 1):
            for b in range(1, max(stage.depths) + 1):
                widths = (previous, f"s{s}.width") if b == 1 else (f"s{s}.width",)
                kernel = (f"s{s}.b{b}.kernel",) if len(stage.kernels) > 1 else ()
                depth = (f"s{s}.depth",) if b > min(stage.depths) else ()
                terms.append(LatencyTerm(("resolution", *depth, *widths, *kernel),
                                         partial(self._term_block_key, s, b, bool(depth), bool(kernel))))
            previous = f"s{s}.width"
        return [*terms, LatencyTerm(("resolution", previous, "head.width"), lambda c: (self._head_keys[c],))]

    # -- helpers ------------------------------------------------------------------
    def _term_block_key(self, s: int, b: int, has_depth: bool, has_kernel: bool,
                        choices: tuple[Choice, ...]) -> tuple[str, ...]:
        r, *rest = choices
        if has_depth:
            depth, *rest = rest
            if int(depth) < b:
                return ()
        kernel = rest.pop() if has_kernel else STAGES[s - 1].kernels[0]
        cin, cout = (rest[0], rest[1]) if b == 1 else (rest[0], rest[0])
        return (self._block_keys[(r, s, b == 1, cin, cout, kernel)],)

    def active_decisions(self, choices: Mapping[str, Choice]) -> list[str]:
        """Resolution, widths, depths, and the kernel of each block within its stage's depth."""
        names = ["resolution", "stem.width"]
        for s, stage in enumerate(STAGES, 1):
            names += [f"s{s}.width", f"s{s}.depth"]
            if len(stage.kernels) > 1:
                names += [f"s{s}.b{b}.kernel" for b in range(1, int(choices[f"s{s}.depth"]) + 1)]
        return [*names, "head.width"]

    def _named_keys(self, arch: Arch) -> list[tuple[str, str]]:
        """`stem`, every active block `s{i}_b{j}`, `head` (1x1 conv, pool, classifier), at the arch's resolution."""
        self.check_own(arch)
        c = arch.choices
        r, cin = c["resolution"], c["stem.width"]
        named = [("stem", self._stem_keys[(r, cin)])]
        for s, stage in enumerate(STAGES, 1):
            cout = c[f"s{s}.width"]
            for b in range(1, int(c[f"s{s}.depth"]) + 1):
                kernel = c[f"s{s}.b{b}.kernel"] if len(stage.kernels) > 1 else stage.kernels[0]
                named.append((f"s{s}_b{b}", self._block_keys[(r, s, b == 1, cin if b == 1 else cout, cout, kernel)]))
            cin = cout
        return [*named, ("head", self._head_keys[(r, cin, c["head.width"])])]

    def sizes(self, resolution: int) -> list[int]:
        """Input side of the stem and of each stage's first block, then of the head, at `resolution`."""
        size = conv_out_size(resolution, 2)
        out = [resolution]
        for stage in STAGES:
            out.append(size)
            size = conv_out_size(size, stage.stride)
        return [*out, size]

    @cached_property
    def _stem_keys(self) -> dict[tuple[Choice, ...], str]:
        return {(r, w): f"stem-in{hwc(r, 3)}-out{hwc(conv_out_size(r, 2), w)}-swish"
                for r, w in product(self._resolutions, STEM_WIDTHS)}

    @cached_property
    def _head_keys(self) -> dict[tuple[Choice, ...], str]:
        n = self.config.num_classes
        return {(r, c, w): f"head-in{hwc(self.sizes(r)[-1], c)}-conv{w}-out{n}-swish"
                for r, c, w in product(self._resolutions, STAGES[-1].widths, HEAD_WIDTHS)}

    @cached_property
    def _block_keys(self) -> dict[tuple[Choice, ...], str]:
        """(resolution, stage, first, in width, out width, kernel) -> key: pricing an arch is dict lookups."""
        keys = {}
        for r in self._resolutions:
            sizes = self.sizes(r)
            for s, stage in enumerate(STAGES, 1):
                previous = STAGES[s - 2].widths if s > 1 else STEM_WIDTHS
                after_stride = conv_out_size(sizes[s], stage.stride)
                for cin, cout, k in product(previous, stage.widths, stage.kernels):
                    keys[(r, s, True, cin, cout, k)] = _block_key(sizes[s], cin, cout, k, stage, True)
                for c, k in product(stage.widths, stage.kernels):
                    keys[(r, s, False, c, c, k)] = _block_key(after_stride, c, c, k, stage, False)
        return keys

    @cached_property
    def unit_table(self) -> dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int]]]:
        """Latency key -> (module factory, input shape (C, H, W)) for every unit at every resolution."""
        units: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int]]] = {}
        for (r, w), key in self._stem_keys.items():
            units[key] = (partial(ConvBNAct, 3, w, 3, 2, act=nn.SiLU, bn_eps=_BN_EPS), (3, r, r))
        for (r, s, first, cin, cout, k), key in self._block_keys.items():
            stage, size = STAGES[s - 1], self.sizes(r)[s]
            size = size if first else conv_out_size(size, stage.stride)
            units[key] = (block_factory(cin, cout, k, stage, first), (cin, size, size))
        cfg = self.config
        for (r, c, w), key in self._head_keys.items():
            size = self.sizes(r)[-1]
            units[key] = (partial(head_module, c, w, cfg.num_classes, cfg.dropout), (c, size, size))
        return units

    def supernet(self):
        """BigNAS' single-stage supernet: widths, depths, kernels by slicing (`ShiftNASCNNSupernet`)."""
        from nas.supernets.shiftnas_cnn import ShiftNASCNNSupernet

        return ShiftNASCNNSupernet(self)


__all__ = ["HEAD_WIDTHS", "RESOLUTION_TENTHS", "STAGES", "STEM_WIDTHS", "ShiftNASCNNConfig", "ShiftNASCNNSpace",
           "Stage", "block_factory", "head_module", "hidden_width"]
