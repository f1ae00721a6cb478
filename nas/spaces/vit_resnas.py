"""The ViT-ResNAS space: a three-stage ViT with a conv stem and residual spatial reduction, searched per block.

Follows Liao, Karaman and Sze, "Searching for Efficient Multi-Stage Vision Transformers" (arXiv
2109.00642) as implemented in yilunliao/vit-search (`nets/vit_sr_supernet.py`, `supernet_config/
sr_tiny_mh.py`, `supernet_config/sr_small_mh.py`, `scripts/vit-sr-nas/*`). Network: conv stem
(patch size 14), three stages of transformer blocks on 1 + (R/14)^2, 1 + (R/28)^2 and 1 + (R/56)^2
tokens, a residual spatial reduction before stages 2 and 3, a class-token classifier (units in
`nas.ops.vit_resnas`). Decisions, in network order: `s{i}.width` (the stage's embedding width, set by
the stem or the reduction before it), and per block slot `s{i}.b{j}.heads` and `s{i}.b{j}.mlp` (hidden
width, absolute); the 2nd, 4th and 6th slots of a stage are optional (`s{i}.b{j}.exists`, 0 = the
reference's parameter-free identity), so a stage has 3-6 blocks in the Tiny supernet and 4-7 in the
Small one, whose 7th slot is mandatory. `supernet: tiny | small` picks the ranges; head dims 32, 48, 64
per stage are fixed (`head_dims`), and attention width heads x head_dim is independent of the width.
The published ViT-ResNAS-Tiny/Small/Medium and the hand-made ViT-Res-Tiny are presets
(`search_spaces/vit_resnas.yaml`); `from_network_def` and `to_network_def` convert the reference's
`network_def` tuples.

Deviations: `width_mult` scales every embedding, attention and MLP width (the reference has 1.0; the
demo config uses 0.25 so a CI network is small); `patch_head: true` adds the training-only per-patch
classifier of the released models as a parameter (the count the reference's log prints) without
running it in `forward`; removed optional blocks are left out of the built network instead of kept as
identities, and a kept block's drop-path rate is that of its slot in the supernet (the reference's
search children; its retraining spaces the rates over the kept blocks only); the input side is a
multiple of 56 at any size (the reference builds 224, 280, 336, 392).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property, partial
from typing import Literal

from pydantic import Field, PositiveInt, ValidationInfo, field_validator
from torch import nn

from nas.arch import Arch, Choice
from nas.ops.vit_resnas import PATCH, STEM_MID, ConvStem, Head, SpatialReduction, TransformerBlock, ViTResNet
from nas.registry import SPACES
from nas.space import MAX_RESOLUTION, Decision, LatencyTerm, NumClasses, SearchSpace, SpaceConfig, WidthMult, hwc


@dataclass(frozen=True)
class SupernetRanges:
    """Per stage: embedding widths, attention widths (heads x head_dim), MLP widths; block slots per stage."""

    widths: tuple[tuple[int, ...], ...]
    attention: tuple[tuple[int, ...], ...]
    mlp: tuple[tuple[int, ...], ...]
    slots: int

    @property
    def divisor(self) -> int:
        """The gcd of every width: a width multiplier p/q keeps them whole numbers iff q divides it."""
        return math.gcd(*(w for part in (self.widths, self.attention, self.mlp) for stage in part for w in stage))


# [sr_tiny_mh.py], [sr_small_mh.py]: `embed`, `attn`, `mlp` channel lists per stage, here ascending.
SUPERNETS = {
    "tiny": SupernetRanges(
        widths=((160, 176, 192, 224, 256), (320, 352, 384, 448, 512), (640, 704, 768, 896, 1024)),
        attention=((96, 128, 160, 192), (288, 384, 480, 576), (384, 512, 640, 768)),
        mlp=(tuple(range(384, 769, 64)), tuple(range(768, 1537, 128)), tuple(range(1536, 3073, 256))),
        slots=6,
    ),
    "small": SupernetRanges(
        widths=((200, 220, 240, 280, 320), (400, 440, 480, 560, 640), (800, 880, 960, 1120, 1280)),
        attention=((160, 192, 224, 256), (480, 576, 672, 768), (640, 768, 896, 1024)),
        mlp=(tuple(range(480, 961, 80)), tuple(range(960, 1921, 160)), tuple(range(1920, 3841, 320))),
        slots=7,
    ),
}
OPTIONAL_SLOTS = (2, 4, 6)
"""Slots whose block the search may remove (`block_skip` in the reference configs)."""
HEAD_DIMS = (32, 48, 64)
EXISTS = (0, 1)
_STAGES = 3
_REDUCTION = 4  # two 2x spatial reductions: the patch grid must be a multiple of 4


class ViTResNASConfig(SpaceConfig):
    """Input size (a multiple of 56), classes, supernet ranges, width multiplier, head dims, drop path, patch head."""

    resolution: int = Field(ge=PATCH * _REDUCTION, le=MAX_RESOLUTION, multiple_of=PATCH * _REDUCTION)
    num_classes: NumClasses
    supernet: Literal["tiny", "small"] = "tiny"
    width_mult: WidthMult = 1.0
    head_dims: tuple[PositiveInt, PositiveInt, PositiveInt] = HEAD_DIMS
    drop_path: float = Field(default=0.0, ge=0.0, lt=1.0)
    patch_head: bool = False

    @field_validator("width_mult")
    @classmethod
    def _whole_widths(cls, value: float, info: ValidationInfo) -> float:
        ranges = SUPERNETS.get(info.data.get("supernet", ""))
        if ranges is not None and ranges.divisor % Fraction(value).limit_denominator(1000).denominator:
            raise ValueError(f"widths of the {info.data['supernet']} supernet times {value:g} are not all whole "
                             f"numbers; allowed: a multiple of 1/{ranges.divisor}")
        return value

    @field_validator("head_dims")
    @classmethod
    def _heads_fit(cls, value: tuple[int, int, int], info: ValidationInfo) -> tuple[int, int, int]:
        ranges, mult = SUPERNETS.get(info.data.get("supernet", "")), info.data.get("width_mult")
        if ranges is None or mult is None:
            return value
        for i, (d, widths) in enumerate(zip(value, ranges.attention, strict=True)):
            scaled = [_scale(w, mult) for w in widths]
            if not any(w % d == 0 for w in scaled):
                raise ValueError(
                    f"head_dims[{i}] = {d} divides none of the stage-{i + 1} attention widths (heads x head dim) "
                    f"{', '.join(map(str, scaled))}; allowed: a divisor of one of them, e.g. {math.gcd(*scaled)}")
        return value


def _scale(width: int, mult: float) -> int:
    """`width` x `mult`, a whole number for a valid config (0 when it is not)."""
    value = Fraction(mult).limit_denominator(1000) * width
    return int(value) if value.denominator == 1 else 0


@dataclass(frozen=True)
class _Stage:
    """One stage at a config: its choices, head dim, patch grid and the index of its first slot overall."""

    index: int
    widths: tuple[int, ...]
    heads: tuple[int, ...]
    mlps: tuple[int, ...]
    head_dim: int
    grid: int
    slots: int
    first_slot: int

    @property
    def tokens(self) -> int:
        return self.grid * self.grid + 1

    def block_key(self, width: int, heads: int, mlp: int) -> str:
        return f"vitres-block-n{self.tokens}-e{width}-h{heads}-d{self.head_dim}-mlp{mlp}"


def _stages(config: ViTResNASConfig) -> tuple[_Stage, ...]:
    ranges, grid = SUPERNETS[config.supernet], config.resolution // PATCH
    stages = []
    for i in range(_STAGES):
        d = config.head_dims[i]
        attention = [_scale(w, config.width_mult) for w in ranges.attention[i]]
        stages.append(_Stage(
            i + 1, tuple(_scale(w, config.width_mult) for w in ranges.widths[i]),
            tuple(w // d for w in attention if w % d == 0), tuple(_scale(w, config.width_mult) for w in ranges.mlp[i]),
            d, grid >> i, ranges.slots, i * ranges.slots))
    return tuple(stages)


@SPACES.register("vit_resnas")
class ViTResNASSpace(SearchSpace):
    """ViT-ResNAS: 3 stage widths and, per block slot, heads, MLP width and (optional slots) existence."""

    name = "vit_resnas"
    config_model = ViTResNASConfig
    config: ViTResNASConfig

    @cached_property
    def stages(self) -> tuple[_Stage, ...]:
        """The three stages at this config."""
        return _stages(self.config)

    def decisions(self) -> list[Decision]:
        """Per stage: `s{i}.width`, then per slot `[s{i}.b{j}.exists,] s{i}.b{j}.heads, s{i}.b{j}.mlp`."""
        out = []
        for stage in self.stages:
            out.append(Decision(f"s{stage.index}.width", stage.widths))
            for j in range(1, stage.slots + 1):
                prefix = f"s{stage.index}.b{j}"
                if j in OPTIONAL_SLOTS:
                    out.append(Decision(f"{prefix}.exists", EXISTS))
                out += [Decision(f"{prefix}.heads", stage.heads), Decision(f"{prefix}.mlp", stage.mlps)]
        return out

    def depths(self, arch: Arch) -> tuple[int, ...]:
        """Blocks per stage (mandatory slots plus the optional ones that exist)."""
        self.check_own(arch)
        return tuple(sum(_exists(arch.choices, s.index, j) for j in range(1, s.slots + 1)) for s in self.stages)

    def build(self, arch: Arch) -> nn.Module:
        """A `ViTResNet` with one child per latency key of `arch`, in the same order."""
        units, children = self.unit_table, OrderedDict()
        for name, key in self._named_keys(arch):
            module = children[name] = units[key][0]()
            if isinstance(module, TransformerBlock):  # the rate belongs to the slot, not to the key
                module.drop_path.p = self.drop_path_rate(name)
        return ViTResNet(children)

    def drop_path_rate(self, block: str) -> float:
        """Stochastic-depth rate of block `s{i}_b{j}`: linear over all slots of the supernet [vit_sr_supernet.py]."""
        stage, slot = (int(part[1:]) for part in block.split("_"))
        total = _STAGES * self.stages[0].slots
        return self.config.drop_path * (self.stages[stage - 1].first_slot + slot - 1) / (total - 1)

    def latency_keys(self, arch: Arch) -> list[str]:
        """Stem, each existing block, the two reductions and the head, in network order."""
        return [key for _, key in self._named_keys(arch)]

    def latency_terms(self) -> list[LatencyTerm]:
        """Stem on s1.width; each slot on its stage width, heads and MLP (and existence); reductions; head."""
        terms = [LatencyTerm(("s1.width",), lambda c: (self._stem_key(c[0]),))]
        for stage in self.stages:
            s = stage.index
            if s > 1:
                terms.append(LatencyTerm((f"s{s - 1}.width", f"s{s}.width"),
                                         partial(lambda st, c: (self._sr_key(st, *c),), stage)))
            for j in range(1, stage.slots + 1):
                names = (f"s{s}.width", f"s{s}.b{j}.heads", f"s{s}.b{j}.mlp")
                if j in OPTIONAL_SLOTS:
                    terms.append(LatencyTerm((f"s{s}.b{j}.exists", *names), partial(_optional_key, stage)))
                else:
                    terms.append(LatencyTerm(names, partial(lambda st, c: (st.block_key(*c),), stage)))
        return [*terms, LatencyTerm(("s3.width",), lambda c: (self._head_key(c[0]),))]

    @cached_property
    def unit_table(self) -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]]:
        """Latency key -> (module factory, input shape) for every unit of the space at this config."""
        cfg, first, last = self.config, self.stages[0], self.stages[-1]
        r = cfg.resolution
        units = {self._stem_key(e): (partial(ConvStem, e, first.grid), (3, r, r)) for e in first.widths}
        for stage in self.stages:
            for e in stage.widths:
                units.update({stage.block_key(e, h, m): (partial(TransformerBlock, e, h, stage.head_dim, m),
                                                         (stage.tokens, e))
                              for h in stage.heads for m in stage.mlps})
            if stage.index > 1:
                before = self.stages[stage.index - 2]
                units.update({self._sr_key(stage, a, b): (partial(SpatialReduction, a, b, before.grid),
                                                          (before.tokens, a))
                              for a in before.widths for b in stage.widths})
        units.update({self._head_key(e): (partial(Head, e, cfg.num_classes, cfg.patch_head), (last.tokens, e))
                      for e in last.widths})
        return units

    def supernet(self):
        """The weight-sharing supernet: every child a leading slice (`nas.supernets.vit_resnas`)."""
        from nas.supernets.vit_resnas import ViTResNASSupernet

        return ViTResNASSupernet(self)

    # -- the reference's network_def ------------------------------------------------
    def from_network_def(self, network_def: object) -> Arch:
        """The arch of a `network_def` tuple (or its string) of the reference; see `nas.spaces.vit_resnas_def`."""
        from nas.spaces.vit_resnas_def import from_network_def

        return self.make_arch(from_network_def(self, network_def))

    def to_network_def(self, arch: Arch, keep_removed: bool = True) -> tuple:
        """The reference's `network_def` of `arch`; `keep_removed=False` deletes removed blocks (retraining form)."""
        from nas.spaces.vit_resnas_def import to_network_def

        self.check_own(arch)
        return to_network_def(self, arch.choices, keep_removed)

    # -- helpers ------------------------------------------------------------------
    def active_decisions(self, choices: Mapping[str, Choice]) -> list[str]:
        """Widths, which optional blocks exist, and the heads and MLP of the blocks that exist."""
        names = []
        for stage in self.stages:
            names.append(f"s{stage.index}.width")
            for j in range(1, stage.slots + 1):
                prefix = f"s{stage.index}.b{j}"
                if j in OPTIONAL_SLOTS:
                    names.append(f"{prefix}.exists")
                if _exists(choices, stage.index, j):
                    names += [f"{prefix}.heads", f"{prefix}.mlp"]
        return names

    def _named_keys(self, arch: Arch) -> list[tuple[str, str]]:
        """(child name, latency key) of every unit of `arch`, in network order."""
        self.check_own(arch)
        c = arch.choices
        named = [("stem", self._stem_key(c["s1.width"]))]
        for stage in self.stages:
            s, width = stage.index, c[f"s{stage.index}.width"]
            if s > 1:
                named.append((f"sr{s - 1}", self._sr_key(stage, c[f"s{s - 1}.width"], width)))
            named += [(f"s{s}_b{j}", stage.block_key(width, c[f"s{s}.b{j}.heads"], c[f"s{s}.b{j}.mlp"]))
                      for j in range(1, stage.slots + 1) if _exists(c, s, j)]
        return [*named, ("head", self._head_key(c["s3.width"]))]

    def _stem_key(self, width: Choice) -> str:
        r, grid = self.config.resolution, self.stages[0].grid
        return f"vitres-stem-in{hwc(r, 3)}-mid{STEM_MID}-out{hwc(grid, width)}-cls"

    def _sr_key(self, stage: _Stage, in_width: Choice, out_width: Choice) -> str:
        return f"vitres-sr-in{hwc(stage.grid * 2, in_width)}-out{hwc(stage.grid, out_width)}-cls"

    def _head_key(self, width: Choice) -> str:
        last = self.stages[-1]
        patch = f"-patch{last.tokens - 1}" if self.config.patch_head else ""
        return f"vitres-head-n{last.tokens}-e{width}-out{self.config.num_classes}{patch}"


def _exists(choices: Mapping[str, Choice], stage: int, slot: int) -> bool:
    return slot not in OPTIONAL_SLOTS or choices[f"s{stage}.b{slot}.exists"] == 1


def _optional_key(stage: _Stage, choices: tuple[Choice, ...]) -> tuple[str, ...]:
    """The key of an optional slot for choices (exists, width, heads, mlp); none when it is removed."""
    exists, *rest = choices
    return (stage.block_key(*rest),) if exists == 1 else ()


__all__ = ["EXISTS", "HEAD_DIMS", "OPTIONAL_SLOTS", "SUPERNETS", "SupernetRanges", "ViTResNASConfig", "ViTResNASSpace"]
