"""The NAS-Bench-201 space: one 4-node cell of 6 edges, each one of 5 operations (5^6 = 15,625 archs).

Follows Dong and Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural
Architecture Search" (ICLR 2020), as implemented in D-X-Y/AutoDL-Projects
(`xautodl/models/cell_infers/tiny_network.py` `TinyNetwork`, `cells.py` `InferCell`,
`cell_operations.py`); blocks live in `nas.ops.nb201`. Decision `edge.i<-j` is the
operation on the edge from node j to node i (the reference's edge names), one of `none`,
`skip_connect`, `nor_conv_1x1`, `nor_conv_3x3`, `avg_pool_3x3`; in the reference's arch
string `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|` the edges read 1<-0, 2<-0, 2<-1, 3<-0, 3<-1,
3<-2. Every cell of the network uses the same cell. Network (`TinyNetwork(C=16, N=5)` by
default): 3x3 conv stem to C channels and BN, then N cells at C, a residual reduction
block (stride 2, width doubled), N cells at 2C, another, N cells at 4C, then BN, ReLU,
global pool and a linear classifier. The defaults are the benchmark's CIFAR networks
(32x32, 10 classes; 100 for CIFAR-100, 16x16 and 120 for ImageNet16-120).

Deviations: `none` edges are not built (the reference computes `x * 0`; the values are
the same, see `nas.ops.nb201`); the network returns the logits only (the reference
returns the pooled features too); latency keys are this package's self-describing
strings, and an identity (`skip_connect`) or `none` edge has no key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial

from pydantic import Field
from torch import nn

from nas.arch import Arch, Choice
from nas.ops.nb201 import EDGES, OPS, NB201Cell, ResNetBasicBlock, edge_name, has_unit, head, make_op, stem
from nas.registry import SPACES
from nas.space import MAX_RESOLUTION, Decision, LatencyTerm, NumClasses, SearchSpace, SpaceConfig, hwc

STAGES = 3
DECISIONS = tuple(f"edge.{edge_name(e)}" for e in EDGES)
"""Decision names in the reference's arch-string order (1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2)."""


class NB201Config(SpaceConfig):
    """Input size, classes, the first stage's width C and the cells per stage N."""

    # Two stride-2 reductions whose pooled shortcut floors and whose conv rounds up: sizes must stay even.
    resolution: int = Field(ge=4, le=MAX_RESOLUTION, multiple_of=4)
    num_classes: NumClasses
    # Upper bounds: 32x and 20x the benchmark's C = 16 and N = 5, still buildable.
    init_channels: int = Field(gt=0, le=512)
    cells_per_stage: int = Field(gt=0, le=100)


@dataclass(frozen=True)
class _Stage:
    """One stage of cells: width and feature-map size."""

    channels: int
    size: int


_Factory = Callable[[], nn.Module]


@dataclass(frozen=True)
class _Keys:
    """Every latency key of a config: fixed units in network order, each stage's op keys, and the units."""

    stem: str
    ops: tuple[dict[str, str], ...]  # per stage: op -> key (ops that compute only)
    reductions: tuple[str, ...]  # the block after each stage but the last
    head: str
    units: dict[str, tuple[_Factory, tuple[int, int, int]]]  # key -> (module factory, input (C, H, W))


def _stages(config: NB201Config) -> tuple[_Stage, ...]:
    c, r = config.init_channels, config.resolution
    return tuple(_Stage(c * 2**s, r // 2**s) for s in range(STAGES))


def _enumerate_keys(config: NB201Config, stages: tuple[_Stage, ...]) -> _Keys:
    r, c0, units = config.resolution, config.init_channels, {}

    def add(key: str, factory: _Factory, shape: tuple[int, int, int]) -> str:
        units[key] = (factory, shape)
        return key

    stem_key = add(f"stem-in{hwc(r, 3)}-out{hwc(r, c0)}", partial(stem, c0), (3, r, r))
    ops = tuple(
        {op: add(f"{op}-in{hwc(s.size, s.channels)}-out{hwc(s.size, s.channels)}-s1",
                 partial(make_op, op, s.channels), (s.channels, s.size, s.size))
         for op in OPS if has_unit(op)}
        for s in stages
    )
    reductions = tuple(
        add(f"resblock-in{hwc(a.size, a.channels)}-out{hwc(b.size, b.channels)}-s2",
            partial(ResNetBasicBlock, a.channels, b.channels), (a.channels, a.size, a.size))
        for a, b in zip(stages, stages[1:], strict=False)
    )
    last = stages[-1]
    head_key = add(f"head-in{hwc(last.size, last.channels)}-out{config.num_classes}",
                   partial(head, last.channels, config.num_classes), (last.channels, last.size, last.size))
    return _Keys(stem_key, ops, reductions, head_key, units)


@SPACES.register("nasbench201")
class NASBench201Space(SearchSpace):
    """NAS-Bench-201: the operation on each of the cell's 6 edges, shared by every cell (15,625 archs)."""

    name = "nasbench201"
    config_model = NB201Config
    config: NB201Config

    def decisions(self) -> list[Decision]:
        """`edge.1<-0`, `edge.2<-0`, `edge.2<-1`, `edge.3<-0`, `edge.3<-1`, `edge.3<-2`, each over the 5 ops."""
        return [Decision(name, OPS) for name in DECISIONS]

    def build(self, arch: Arch) -> nn.Module:
        """A `Sequential` of stem, cells (with the reduction blocks between stages) and head."""
        self.check_own(arch)
        ops = self.cell_ops(arch)
        keys, n = self._keys, self.config.cells_per_stage
        body: list[nn.Module] = []
        for s, stage in enumerate(self._stages):
            if s:
                body.append(self.unit_table[keys.reductions[s - 1]][0]())
            for _ in range(n):
                built = {edge_name(e): make_op(op, stage.channels) for e, op in zip(EDGES, ops, strict=True)}
                body.append(NB201Cell(stage.channels, {k: m for k, m in built.items() if m is not None}))
        return nn.Sequential(OrderedDict(
            stem=self.unit_table[keys.stem][0](), cells=nn.Sequential(*body), head=self.unit_table[keys.head][0](),
        ))

    def cell_ops(self, arch: Arch) -> tuple[str, ...]:
        """The operation of each edge, in the reference's arch-string order (1<-0, 2<-0, ..., 3<-2)."""
        return tuple(str(arch.choices[name]) for name in DECISIONS)

    def arch_str(self, arch: Arch) -> str:
        """The reference's arch string, e.g. `|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|...|`."""
        ops = dict(zip(EDGES, self.cell_ops(arch), strict=True))
        return "+".join("|" + "|".join(f"{ops[i, j]}~{j}" for j in range(i)) + "|" for i in range(1, 4))

    def latency_keys(self, arch: Arch) -> list[str]:
        """Stem; per cell the key of each edge that computes, edge by edge; the reduction blocks; head."""
        self.check_own(arch)
        ops, keys = self.cell_ops(arch), self._keys
        out = [keys.stem]
        for s, table in enumerate(keys.ops):
            if s:
                out.append(keys.reductions[s - 1])
            cell = [table[op] for op in ops if op in table]
            out += cell * self.config.cells_per_stage
        out.append(keys.head)
        return out

    def latency_terms(self) -> list[LatencyTerm]:
        """The fixed stem, reduction blocks and head; per edge its op's key in every cell (5 choices)."""
        keys = self._keys
        fixed = (keys.stem, *keys.reductions, keys.head)
        terms = [LatencyTerm((), partial(_fixed_keys, fixed))]
        terms += [
            LatencyTerm((name,), partial(_edge_keys, keys.ops, self.config.cells_per_stage)) for name in DECISIONS
        ]
        return terms

    @cached_property
    def _stages(self) -> tuple[_Stage, ...]:
        return _stages(self.config)

    @cached_property
    def _keys(self) -> _Keys:
        return _enumerate_keys(self.config, self._stages)

    @property
    def unit_table(self) -> dict[str, tuple[_Factory, tuple[int, int, int]]]:
        return self._keys.units

    def supernet(self):
        """The NAS-Bench-201 one-shot network: a mixed op over the 5 operations per edge (`NASBench201Supernet`)."""
        from nas.supernets.nasbench201 import NASBench201Supernet

        return NASBench201Supernet(self)


def _fixed_keys(keys: tuple[str, ...], choices: tuple[Choice, ...]) -> tuple[str, ...]:
    return keys


def _edge_keys(tables: tuple[dict[str, str], ...], cells: int, choices: tuple[Choice, ...]) -> tuple[str, ...]:
    """Keys of one edge's op in every cell of every stage (none for `none` and `skip_connect`)."""
    op = str(choices[0])
    return tuple(table[op] for table in tables if op in table for _ in range(cells))


__all__ = ["DECISIONS", "NASBench201Space", "NB201Config"]
