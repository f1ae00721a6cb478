"""The BossNAS HyTra space: 16 layers on a four-scale fabric, each a ResConv or a ResAtt block.

Follows Li, Tang, Wang, Zhu, Chang, Liang and Wang, "BossNAS: Exploring Hybrid CNN-transformers
with Block-wisely Self-supervised Neural Architecture Search" (ICCV 2021), as implemented in
changlin31/BossNAS at bb8b26a: the search space of `searching/bossnas/models/supernets/
hytra_supernet.py` and `utils/hytra_paths.py` (restricted paths), built as the retrained BossNet
of `retraining_hytra/boss_models.py` (blocks in `nas.ops.hytra`). After a 7x7 stem at 1/4, every
layer keeps its scale or goes down one (1/4, 1/8, 1/16, 1/32: widths 4p for p = 64, 128, 256,
512 times `width_mult`). Decisions: where the fabric goes down, `down.to8`, `down.to16`,
`down.to32` (the layer that enters 1/8, 1/16, 1/32; `down.to32` = 17: no layer does, the net
stays at 1/16), and `l{i}.op` in {resconv, resatt} for layers 2-16. The rule (`check`): the three
positions increase (one step per layer at most, so exactly four scales). ResAtt exists at 1/16
and 1/32 only (heads p / head_dim: 4 and 8 in BossNet): a layer that runs at 1/4 or 1/8 is a
ResConv and its `op` is inactive, as OFA's slots beyond a stage's depth (layer 1 has none). A rule
against `resatt` there would leave 12% of independent per-decision draws valid, too few for
strategies that draw each decision on its own (NNI's TPE gave up); the ordering leaves 60%.
`mutate` changes only decisions that matter (`active_choices`), so every mutation changes the
network. The ranges are those of the supernet's four blocks of four layers (`stage_depths`
[4, 3, 2, 2] scales, and a block's finest scale has no `_d` entry, `up_inc` None): 1/8 is
entered within block 0 (`down.to8` <= 4), 1/16 within blocks 0-1 (`down.to16` <= 8); paths past
them crash the reference. That gives 1,615,872 networks, the reference's count (the step rule
alone gives 1,703,991).

Network (retrained form): layers grouped by scale are BossNet's four stages; the first layer of
a stage has stride 2 (the down-sampling sits on its PEG and avg-pool shortcut), except that
`last_stride` 1 keeps 1/16's map in the last stage (BossNet-T1). A stage without layers is a
conv3x3 + BN + act [P6]: stride 1 for 1/4 (layer 1 goes down at once; BossNAS' MAdds script,
not `make_boss_blocks`' stride 2) and the stage's stride for 1/32. Head: GAP, dropout, linear.

Token counts at small inputs: ResAtt has no position embedding (the PEG conv is its only
position signal), so any map size works and nothing depends on the resolution but the tokens
H*W. Maps follow ceil(H / 2) per step; at resolution 32 the 1/32 map is 1x1 (one token, where
attention is a linear map of v), so the demo config uses 64 (16 tokens at 1/16, 4 at 1/32).
A resolution below 32 is refused, as in the other CNN spaces (from 32 on, every scale has a map
size of its own; at 16, 1/16 and 1/32 would both be 1x1).

Deviations: the search-time supernet ops (ReLU only, no SE, conv3x3 shortcuts with act, stem
adapters, transposed attention [P1, P2]) are not used: the supernet here holds the retrained
blocks, so an extracted child is the network that is trained and exported. Width multiplier,
head width and the demo config are this package's; latency keys are its self-describing strings.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from itertools import product
from typing import Literal

from pydantic import Field
from torch import nn

from nas.arch import Arch, Choice
from nas.errors import UserError
from nas.ops import hytra
from nas.ops.mbconv import conv_out_size, make_divisible
from nas.registry import SPACES
from nas.space import MAX_RESOLUTION, Decision, LatencyTerm, NumClasses, SearchSpace, SpaceConfig, WidthMult, hwc

LAYERS = 16
OPS = ("resconv", "resatt")
TO8, TO16, TO32 = "down.to8", "down.to16", "down.to32"
NEVER = LAYERS + 1
"""`down.to32` = 17: no layer goes down to 1/32 (a conv3x3 stands in for the empty last stage)."""
POSITIONS = {TO8: tuple(range(1, 5)), TO16: tuple(range(2, 9)), TO32: tuple(range(3, NEVER + 1))}
_PLANES = (64, 128, 256, 512)  # bottleneck width per scale; block output 4x [boss_models.py `channels`]
_STEM = 64
_ATT_SCALES = (2, 3)  # 1/16, 1/32 [hytra_supernet.py: ResAtt only at depth 0, 1]


class BossNASHyTraConfig(SpaceConfig):
    """Input size, classes, widths and the BossNet-T variant (act, SE, last stride)."""

    resolution: int = Field(ge=32, le=MAX_RESOLUTION)
    num_classes: NumClasses
    width_mult: WidthMult = 1.0
    head_dim: int = Field(default=64, ge=1, le=4096)
    act: Literal["relu", "silu"] = "relu"
    se: bool = False
    last_stride: Literal[1, 2] = 2
    drop_path: float = Field(default=0.0, ge=0.0, lt=1.0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


@dataclass(frozen=True)
class _Layout:
    """Widths and map sizes per scale (0 = 1/4 ... 3 = 1/32) at one config."""

    stem: int
    planes: tuple[int, ...]
    sizes: tuple[int, ...]

    def out(self, k: int) -> int:
        return 4 * self.planes[k]


@dataclass(frozen=True)
class LayerSpec:
    """Layer `index` at scale `scale`, entered from its own scale (`keep`) or the next finer one (`down`)."""

    index: int
    scale: int
    entry: Literal["keep", "down"]
    op: str
    key: str


def scales(to8: int, to16: int, to32: int) -> list[int]:
    """Scale index of layers 1..16 for the down-sampling positions."""
    return [(i >= to8) + (i >= to16) + (i >= to32) for i in range(1, LAYERS + 1)]


@SPACES.register("bossnas_hytra")
class BossNASHyTraSpace(SearchSpace):
    """BossNAS HyTra: down-sampling positions and per-layer ResConv / ResAtt on a 16-layer fabric."""

    name = "bossnas_hytra"
    config_model = BossNASHyTraConfig
    config: BossNASHyTraConfig

    def __init__(self, config: BossNASHyTraConfig, presets: Mapping | None = None) -> None:
        super().__init__(config, presets)
        self._layout  # noqa: B018 - a head width that does not divide the attention widths fails on load

    @cached_property
    def _layout(self) -> _Layout:
        cfg = self.config
        planes = tuple(make_divisible(p * cfg.width_mult) for p in _PLANES)
        bad = [planes[k] for k in _ATT_SCALES if planes[k] % cfg.head_dim]
        if bad:
            g = math.gcd(planes[2], planes[3])
            raise UserError(f"{self.name} space config: head_dim {cfg.head_dim} does not divide the attention "
                            f"width {bad[0]} (widths {planes[2]}, {planes[3]} at 1/16, 1/32 with width_mult "
                            f"{cfg.width_mult}); allowed: {', '.join(str(d) for d in range(1, g + 1) if g % d == 0)}")
        sizes = [conv_out_size(conv_out_size(cfg.resolution, 2), 2)]
        for k in (1, 2, 3):
            sizes.append(conv_out_size(sizes[-1], cfg.last_stride if k == 3 else 2))
        return _Layout(make_divisible(_STEM * cfg.width_mult), planes, tuple(sizes))

    def decisions(self) -> list[Decision]:
        """`down.to8`, `down.to16`, `down.to32`, then `l2.op` ... `l16.op` (layer 1 is always a ResConv)."""
        return [*(Decision(name, choices) for name, choices in POSITIONS.items()),
                *(Decision(f"l{i}.op", OPS) for i in range(2, LAYERS + 1))]

    def check(self, choices: Mapping[str, Choice]) -> None:
        """The positions increase: one step per layer at most, so four scales."""
        problem = self._problem(choices)
        if problem is not None:
            raise UserError(f"{self.name}: {problem}")

    def _problem(self, choices: Mapping[str, Choice]) -> str | None:
        to8, to16, to32 = (int(choices[n]) for n in (TO8, TO16, TO32))
        for name, value, before, prev in ((TO16, to16, TO8, to8), (TO32, to32, TO16, to16)):
            if value <= prev:
                allowed = [str(v) for v in POSITIONS[name] if v > prev]
                return (f"decision {name!r} = {value} is not after {before} = {prev}: a layer goes down one scale "
                        f"at most, so a scale would be skipped (four scales 1/4..1/32); allowed with {before} = "
                        f"{prev}: {', '.join(allowed)}")
        return None

    def active_decisions(self, choices: Mapping[str, Choice]) -> list[str]:
        """The down-sampling positions and the op of each layer at 1/16 or 1/32 (elsewhere it is a ResConv)."""
        ks = scales(int(choices[TO8]), int(choices[TO16]), int(choices[TO32]))
        return [*POSITIONS, *(f"l{i}.op" for i in range(2, LAYERS + 1) if ks[i - 1] in _ATT_SCALES)]

    # -- networks -----------------------------------------------------------------------
    def build(self, arch: Arch) -> nn.Module:
        """A `Sequential` with one child per latency key: stem, [s1_empty], l1..l16, [s4_empty], head."""
        units, rate = self.unit_table, self.config.drop_path
        children = OrderedDict((name, units[key][0]()) for name, key in self._named_keys(arch))
        for layer in self.layer_specs(arch):  # stochastic depth rate * (layer - 1) / 15 on ResConv [boss_models.py]
            if layer.op == "resconv":
                children[f"l{layer.index}"].body.drop_path.p = rate * (layer.index - 1) / (LAYERS - 1)
        return nn.Sequential(children)

    def latency_keys(self, arch: Arch) -> list[str]:
        """Stem, the empty-stage conv of 1/4 if any, one key per layer, that of 1/32 if any, head."""
        return [key for _, key in self._named_keys(arch)]

    def layer_specs(self, arch: Arch) -> list[LayerSpec]:
        """Scale, entry, op (ResConv where the op is inactive) and key of every layer of `arch`, in order."""
        self.check_own(arch)
        c = arch.choices
        return [self._spec(i, c[TO8], c[TO16], c[TO32], c.get(f"l{i}.op", "resconv")) for i in range(1, LAYERS + 1)]

    def retrained_encoding(self, arch: Arch) -> list[list[int]]:
        """BossNet's four stage lists (`boss_models.py` `encoding`): per scale its layers, 0 = ResAtt, 1 = ResConv."""
        stages: list[list[int]] = [[], [], [], []]
        for layer in self.layer_specs(arch):
            stages[layer.scale].append(0 if layer.op == "resatt" else 1)
        return stages

    def _named_keys(self, arch: Arch) -> list[tuple[str, str]]:
        layers = self.layer_specs(arch)
        named = [("stem", self.stem_key)]
        if layers[0].entry == "down":
            named.append(("s1_empty", self.empty_keys[0]))
        named += [(f"l{layer.index}", layer.key) for layer in layers]
        if layers[-1].scale < 3:
            named.append(("s4_empty", self.empty_keys[3]))
        return [*named, ("head", self.head_key)]

    # -- layers and keys --------------------------------------------------------------------
    def _spec(self, i: int, to8: Choice, to16: Choice, to32: Choice, op: Choice) -> LayerSpec:
        k = scales(int(to8), int(to16), int(to32))[i - 1]
        entry: Literal["keep", "down"] = "down" if i in (to8, to16, to32) else "keep"
        op = str(op) if k in _ATT_SCALES else "resconv"  # the op of a layer at 1/4 or 1/8 is inactive
        return LayerSpec(i, k, entry, op, self.block_key(op, i, k, entry))

    def _block(self, i: int, k: int, entry: str) -> tuple[int, int, int]:
        """(in channels, in size, stride) of layer `i` at scale `k` entered by `entry`."""
        lay = self._layout
        if entry == "down":
            return lay.out(k - 1), lay.sizes[k - 1], self.config.last_stride if k == 3 else 2
        return (lay.stem if i == 1 else lay.out(k)), lay.sizes[k], 1

    def block_key(self, op: str, i: int, k: int, entry: str) -> str:
        """Latency key of op `op` as layer `i` at scale `k` entered by `entry` (`keep` or `down`)."""
        lay, cfg = self._layout, self.config
        c_in, s_in, stride = self._block(i, k, entry)
        shape = f"in{hwc(s_in, c_in)}-out{hwc(lay.sizes[k], lay.out(k))}-s{stride}"
        if op == "resconv":
            return f"resconv-{shape}-p{lay.planes[k]}-{cfg.act}{'-se' if cfg.se else ''}"
        heads = lay.planes[k] // cfg.head_dim
        return (f"resatt-{shape}-t{lay.sizes[k] ** 2}-e{lay.planes[k]}-h{heads}x{cfg.head_dim}-mlp0-{cfg.act}")

    def _block_factory(self, op: str, i: int, k: int, entry: str) -> tuple[Callable[[], nn.Module], tuple[int, ...]]:
        lay, cfg = self._layout, self.config
        c_in, s_in, stride = self._block(i, k, entry)
        if op == "resconv":
            factory = partial(hytra.resconv, c_in, lay.out(k), stride, cfg.act, cfg.se)
        else:
            factory = partial(hytra.resatt, c_in, lay.out(k), stride, lay.planes[k] // cfg.head_dim, cfg.head_dim,
                              cfg.act)
        return factory, (c_in, s_in, s_in)

    def layer_options(self) -> Iterator[tuple[int, int, str, str]]:
        """Every (layer, scale, entry, op) some arch of the space has, each once."""
        seen = set()
        for to8, to16, to32 in product(*POSITIONS.values()):
            if not to8 < to16 < to32:
                continue
            for i in range(1, LAYERS + 1):
                spec = self._spec(i, to8, to16, to32, "resconv")
                for op in OPS if spec.scale in _ATT_SCALES and i > 1 else OPS[:1]:
                    if (i, spec.scale, spec.entry, op) not in seen:
                        seen.add((i, spec.scale, spec.entry, op))
                        yield i, spec.scale, spec.entry, op

    @property
    def stem_key(self) -> str:
        """Latency key of the stem."""
        lay, cfg = self._layout, self.config
        return f"stem-in{hwc(cfg.resolution, 3)}-out{hwc(lay.sizes[0], lay.stem)}-k7-{cfg.act}"

    @cached_property
    def empty_keys(self) -> dict[int, str]:
        """Key of the conv that stands in for the empty 1/4 stage (stride 1) and 1/32 stage (last stride)."""
        return {k: f"conv3x3-in{hwc(s_in, c_in)}-out{hwc(s_out, c_out)}-s{stride}-{self.config.act}"
                for k, (c_in, s_in, c_out, s_out, stride) in self._empty_shapes.items()}

    @cached_property
    def _empty_shapes(self) -> dict[int, tuple[int, int, int, int, int]]:
        lay = self._layout
        return {0: (lay.stem, lay.sizes[0], lay.out(0), lay.sizes[0], 1),
                3: (lay.out(2), lay.sizes[2], lay.out(3), lay.sizes[3], self.config.last_stride)}

    @property
    def head_key(self) -> str:
        """Latency key of the head."""
        lay = self._layout
        return f"head-in{hwc(lay.sizes[3], lay.out(3))}-out{self.config.num_classes}"

    @cached_property
    def unit_table(self) -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]]:
        """Latency key -> (module factory, input shape (C, H, W)) for every unit of the space at this config."""
        lay, cfg = self._layout, self.config
        units = {
            self.stem_key: (partial(hytra.stem, lay.stem, cfg.act), (3, cfg.resolution, cfg.resolution)),
            self.head_key: (partial(hytra.head, lay.out(3), cfg.num_classes, cfg.dropout),
                             (lay.out(3), lay.sizes[3], lay.sizes[3])),
        }
        for k, (c_in, s_in, c_out, _, stride) in self._empty_shapes.items():
            units[self.empty_keys[k]] = (partial(hytra.empty_stage, c_in, c_out, stride, cfg.act), (c_in, s_in, s_in))
        for i, k, entry, op in self.layer_options():
            units.setdefault(self.block_key(op, i, k, entry), self._block_factory(op, i, k, entry))
        return units

    def latency_terms(self) -> list[LatencyTerm]:
        """Stem; layer 1 (and the empty 1/4 conv) on `down.to8`; each later layer on the positions and its op;
        the empty 1/32 conv on `down.to32`; head."""
        stem_key, head_key = self.stem_key, self.head_key
        terms = [LatencyTerm((), lambda _: (stem_key,)), LatencyTerm((TO8,), self._first_keys)]
        for i in range(2, LAYERS + 1):
            terms.append(LatencyTerm((TO8, TO16, TO32, f"l{i}.op"), partial(self._layer_keys, i)))
        empty = self.empty_keys[3]
        terms.append(LatencyTerm((TO32,), lambda c: (empty,) if c[0] == NEVER else ()))
        return [*terms, LatencyTerm((), lambda _: (head_key,))]

    def _first_keys(self, choices: tuple[Choice, ...]) -> tuple[str, ...]:
        (to8,) = choices
        layer = self._spec(1, to8, NEVER, NEVER, "resconv")  # layer 1 is at 1/4 or 1/8 whatever the others
        return (self.empty_keys[0], layer.key) if layer.entry == "down" else (layer.key,)

    def _layer_keys(self, i: int, choices: tuple[Choice, ...]) -> tuple[str, ...]:
        """The key of layer `i`; none for positions that break the rule (no arch has them)."""
        to8, to16, to32, op = choices
        return (self._spec(i, to8, to16, to32, op).key,) if int(to8) < int(to16) < int(to32) else ()

    def supernet(self):
        """One weight set for every arch: per layer and scale a mixed op over ResConv / ResAtt (`nas.supernets`)."""
        from nas.supernets.bossnas_hytra import BossNASHyTraSupernet

        return BossNASHyTraSupernet(self)


__all__ = ["LAYERS", "NEVER", "OPS", "POSITIONS", "BossNASHyTraConfig", "BossNASHyTraSpace", "LayerSpec", "scales"]
