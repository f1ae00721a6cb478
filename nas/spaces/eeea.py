"""The EEEA-Net CIFAR cell space: a DARTS-style normal and reduction cell stacked into L cells.

Follows Termritthikun, Jamtsho, Ieamsaard, Muneesawang and Lee, "EEEA-Net: An Early Exit
Evolutionary Neural Architecture Search" (Eng. Appl. AI 104, 2021), as implemented in
chakkritte/EEEA-Net (`EEEA/cifar/eeea/network/{operations,model,genotypes}.py`,
`eeea/utils/nasnet_setup.py`, `search_space.py`). Each cell type has B = 5 blocks; block
i sums two ops, each picking one of the config's `ops` (by default the released search
code's 10 candidates, `search_space.py` since 8f24215) and an input state in
{0, ..., i} (state 0 = the cell before the previous one, 1 = the previous one, 2 + j =
block j; so block i never reads block i - 1, as `setup_NAS` encodes it). The cell output
concatenates the loose-end blocks (read by no other block). Network: 3x3 stem to 3C
channels, L cells with reductions (stride 2, C doubled) at L // 3 and 2L // 3,
global pool and a linear classifier. Operations and the cell live in `nas.ops.darts`.

Choices where the paper and the code disagree (both reproduce the published cells,
whose parameter counts pin the rest): the code's 10 ops (the paper lists 9, without
`conv_7x1_1x7`, which no published cell uses; `ops` in the config can select the 9),
B = 5 blocks of the released genotypes (code default 4, `blocks` in the config), the
inverted residual with expansion 1 (the paper draws a wider one), loose-end concat
(the released `decode_cell` concats every block, but every published genotype lists
exactly its loose ends) and C = 36 for the presets (the paper says 32 for CIFAR-10).

Deviations: the Nonlocal module every reference cell builds but never calls is not
built; the auxiliary head and drop path (training only) are left out; an arch in
which a cell type never reads its previous cell's output is rejected (the reference
would build it with a dead input branch, and cells with no path to the output);
latency keys are this package's self-describing strings; stride-1 `skip_connect`
(an identity) has no latency key.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, partial

from pydantic import Field, field_validator
from torch import Tensor, nn

from nas.arch import Arch, Choice
from nas.errors import UserError
from nas.ops.darts import OP_NAMES, DartsCell, FactorizedReduce, ReLUConvBN, is_identity, make_op
from nas.registry import SPACES
from nas.space import MAX_RESOLUTION, Decision, LatencyTerm, NumClasses, SearchSpace, SpaceConfig, hwc

CELLS = ("normal", "reduce")
STEM_MULTIPLIER = 3  # stem width = 3 C [model.py NetworkCIFAR]


class EEEAConfig(SpaceConfig):
    """Input size, classes, initial channels C, cells L, blocks B per cell and the candidate ops."""

    resolution: int = Field(ge=8, le=MAX_RESOLUTION, multiple_of=4)  # two factorized reductions need even sizes
    num_classes: NumClasses
    # Upper bounds: about ten times DARTS' largest published network (C = 48, L = 20).
    init_channels: int = Field(gt=0, le=512)
    layers: int = Field(ge=3, le=200)
    # B <= 5: a cell type's loose ends depend on the inputs of blocks 2..B-1, one latency term
    # whose choices multiply to 3600 at B = 5 but 129600 at B = 6.
    blocks: int = Field(ge=2, le=5)
    # Any distinct DARTS-family tokens of nas.ops.darts.OP_NAMES.
    ops: tuple[str, ...] = Field(min_length=1, max_length=len(OP_NAMES))

    @field_validator("ops")
    @classmethod
    def _known_ops(cls, ops: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [op for op in ops if op not in OP_NAMES]
        if unknown or len(set(ops)) != len(ops):
            bad = unknown[0] if unknown else "a repeated op"
            raise ValueError(f"{bad!r} is not allowed; give distinct ops from {', '.join(OP_NAMES)}")
        return ops


@dataclass(frozen=True)
class _Source:
    """A tensor that feeds a cell: made by the stem or by a cell of kind `kind`."""

    kind: str  # "stem", "normal" or "reduce"
    channels: int  # the stem's width, or the producing cell's C (its width is multiplier * C)
    size: int


@dataclass(frozen=True)
class _Cell:
    """One cell position: its kind, width C, and where its inputs s0 and s1 come from."""

    index: int
    kind: str
    channels: int
    s0: _Source
    s1: _Source

    @property
    def in_size(self) -> int:
        return self.s1.size

    @property
    def out_size(self) -> int:
        return self.in_size // 2 if self.kind == "reduce" else self.in_size

    def stride(self, index: int) -> int:
        """Stride of an op reading state `index`: 2 on the cell inputs of a reduction cell [model.py]."""
        return 2 if self.kind == "reduce" and index < 2 else 1


def _layout(config: EEEAConfig) -> tuple[_Source, tuple[_Cell, ...]]:
    """The stem output and every cell, with reductions at L // 3 and 2L // 3 [model.py NetworkCIFAR]."""
    c, size = config.init_channels, config.resolution
    stem = _Source("stem", STEM_MULTIPLIER * c, size)
    prev_prev = prev = stem
    cells = []
    for i in range(config.layers):
        reduce = i in (config.layers // 3, 2 * config.layers // 3)
        c = 2 * c if reduce else c
        cell = _Cell(i, "reduce" if reduce else "normal", c, prev_prev, prev)
        cells.append(cell)
        prev_prev, prev = prev, _Source(cell.kind, c, cell.out_size)
    return stem, tuple(cells)


def _loose_ends(indices: Sequence[int], blocks: int) -> tuple[int, ...]:
    """Block states (2 .. blocks + 1) that no block reads: the cell output's concat."""
    return tuple(s for s in range(2, blocks + 2) if s not in indices)


@dataclass(frozen=True)
class _CellKeys:
    """Latency keys of one cell position, precomputed so pricing an arch is dict lookups."""

    pre0: dict[int, str]  # multiplier of the producer of s0 (1 for the stem) -> key of preprocess0
    pre1: dict[int, str]
    ops: dict[tuple[str, int], str | None]  # (op, input index) -> key; None for an identity


_Factory = Callable[[], nn.Module]


@dataclass(frozen=True)
class _Keys:
    """Every latency key of a config: where each sits in the network, and its unit."""

    stem: str
    cells: tuple[_CellKeys, ...]
    head: dict[int, str]  # multiplier of the last cell type -> key
    units: dict[str, tuple[_Factory, tuple[int, int, int]]]  # key -> (module factory, input (C, H, W))


def _enumerate_keys(config: EEEAConfig, stem: _Source, cells: Sequence[_Cell]) -> _Keys:
    """Keys of the stem, of each cell's preprocessing at every multiplier and each (op, input), and of the head."""
    r, units = config.resolution, {}
    mults = range(2, config.blocks + 1)  # blocks B-2 and B-1 are always loose ends: no later block reads them

    def add(key: str, factory: _Factory, shape: tuple[int, int, int]) -> str:
        units[key] = (factory, shape)
        return key

    def pre(cell: _Cell, src: _Source) -> dict[int, str]:
        reduce = src.size != cell.in_size  # the previous cell halved the size
        name = "factorized_reduce" if reduce else "relu_conv1x1_bn"
        out = {}
        for m in range(1, 2) if src.kind == "stem" else mults:
            width = src.channels * m
            factory = partial(FactorizedReduce if reduce else ReLUConvBN, width, cell.channels)
            key = f"{name}-in{hwc(src.size, width)}-out{hwc(cell.in_size, cell.channels)}"
            out[m] = add(key, factory, (width, src.size, src.size))
        return out

    def op(cell: _Cell, name: str, index: int) -> str | None:
        stride, c = cell.stride(index), cell.channels
        if is_identity(name, stride):
            return None
        size = cell.in_size if index < 2 else cell.out_size  # states 0 and 1 are the cell inputs
        key = f"{name}-in{hwc(size, c)}-out{hwc(size // stride, c)}-s{stride}"
        return add(key, partial(make_op, name, c, stride), (c, size, size))

    stem_key = add(f"stem-in{hwc(r, 3)}-out{hwc(r, stem.channels)}", partial(_stem, stem.channels), (3, r, r))
    tables = tuple(
        # Block i reads states 0..i, so input indices run to B - 1.
        _CellKeys(pre(cell, cell.s0), pre(cell, cell.s1),
                  {(name, i): op(cell, name, i) for i in range(config.blocks) for name in config.ops})
        for cell in cells
    )
    last, head = cells[-1], {}
    for m in mults:
        width, size = last.channels * m, last.out_size
        key = f"head-in{hwc(size, width)}-out{config.num_classes}"
        head[m] = add(key, partial(_head, width, config.num_classes), (width, size, size))
    return _Keys(stem_key, tables, head, units)


@SPACES.register("eeea")
class EEEASpace(SearchSpace):
    """EEEA-Net: a normal and a reduction cell of B blocks of two (op, input) pairs (10^10 * 13824 per cell type)."""

    name = "eeea"
    config_model = EEEAConfig
    config: EEEAConfig

    def decisions(self) -> list[Decision]:
        """`{cell}.b{i}.op1`, `.in1`, `.op2`, `.in2` per block, normal cell first (the chromosome's order)."""
        ops = tuple(self.config.ops)
        out = []
        for kind in CELLS:
            for i in range(self.config.blocks):
                inputs = tuple(range(i + 1))  # block i reads states 0..i [nasnet_setup.py setup_NAS]
                for slot in (1, 2):
                    out += [Decision(f"{kind}.b{i}.op{slot}", ops), Decision(f"{kind}.b{i}.in{slot}", inputs)]
        return out

    def check(self, choices: Mapping[str, Choice]) -> None:
        """Each cell type must read state 1 (its previous cell's output) somewhere, else that input is dead."""
        kind = self._cell_ignoring_input1(choices)
        if kind is not None:
            names = self._input1_decisions(kind)
            first, last = names[0], names[-1]
            raise UserError(
                f"{self.name}: decisions {first} .. {last} never choose 1, so {kind} cells ignore the previous "
                f"cell's output (a branch with no path to the output); allowed: 1 in at least one of {first} .. {last}"
            )

    def build(self, arch: Arch) -> nn.Module:
        """Stem, L `DartsCell`s and the pool-linear head; every unit module is one that `unit` gives."""
        self.check_own(arch)
        genotypes, concats = self._cell_types(arch.choices)
        mults = _multipliers(concats)
        stem, cells = self._layout
        built = [
            DartsCell(
                cell.s0.channels * mults[cell.s0.kind], cell.s1.channels * mults[cell.s1.kind], cell.channels,
                genotypes[cell.kind], concats[cell.kind],
                reduction=cell.kind == "reduce", reduction_prev=cell.s0.size != cell.in_size,
            )
            for cell in cells
        ]
        last = cells[-1]
        return _Network(_stem(stem.channels), built, _head(last.channels * mults[last.kind], self.config.num_classes))

    def latency_keys(self, arch: Arch) -> list[str]:
        """Stem; per cell preprocess0, preprocess1 and each non-identity op, block by block; head."""
        self.check_own(arch)
        genotypes, concats = self._cell_types(arch.choices)
        mults = _multipliers(concats)
        keys = [self._keys.stem]
        for cell, table in zip(self._layout[1], self._keys.cells, strict=True):
            keys += [table.pre0[mults[cell.s0.kind]], table.pre1[mults[cell.s1.kind]]]
            keys += [k for k in (table.ops[pair] for pair in genotypes[cell.kind]) if k is not None]
        keys.append(self._keys.head[mults[self._layout[1][-1].kind]])
        return keys

    def latency_terms(self) -> list[LatencyTerm]:
        """Terms: the fixed stem part; per (cell type, block, slot) its op and input (at most 10 x 5
        choices); per cell type the inputs of blocks 2..B-1, which decide its loose ends and so the
        width every later preprocess (and the head) reads (at most 3^2 4^2 5^2 = 3600 choices)."""
        keys, (_, cells) = self._keys, self._layout
        pairs = list(zip(cells, keys.cells, strict=True))
        fixed = (keys.stem, *(t.pre0[1] for c, t in pairs if c.s0.kind == "stem"),
                 *(t.pre1[1] for c, t in pairs if c.s1.kind == "stem"))
        terms = [LatencyTerm((), partial(_fixed_keys, fixed))]
        for kind in CELLS:
            tables = tuple(t for c, t in pairs if c.kind == kind)
            terms += [
                LatencyTerm((f"{kind}.b{i}.op{s}", f"{kind}.b{i}.in{s}"), partial(_op_term_keys, tables))
                for i in range(self.config.blocks)
                for s in (1, 2)
            ]
        for kind in CELLS:
            readers = [t.pre0 for c, t in pairs if c.s0.kind == kind] + [t.pre1 for c, t in pairs if c.s1.kind == kind]
            if cells[-1].kind == kind:
                readers.append(keys.head)
            decisions = tuple(f"{kind}.b{i}.in{s}" for i in range(2, self.config.blocks) for s in (1, 2))
            terms.append(LatencyTerm(decisions, partial(_mult_term_keys, tuple(readers), self.config.blocks)))
        return terms

    # -- counting and sampling under the input-1 constraint -----------------------------
    def size(self) -> int:
        """Number of archs that pass `check`: per cell type, ops^(2B) times the input choices
        ((B!)^2) less those in which no block reads state 1 (((B - 1)!)^2: block 0 can only read 0)."""
        b, ops = self.config.blocks, len(self.config.ops)
        per_cell = ops ** (2 * b) * (math.factorial(b) ** 2 - math.factorial(b - 1) ** 2)
        return per_cell ** len(CELLS)

    # -- helpers ------------------------------------------------------------------------
    def _input1_decisions(self, kind: str) -> list[str]:
        return [f"{kind}.b{i}.in{s}" for i in range(1, self.config.blocks) for s in (1, 2)]

    def _cell_ignoring_input1(self, choices: Mapping[str, Choice]) -> str | None:
        """The first cell type none of whose blocks reads state 1, if any."""
        for kind in CELLS:
            if all(choices.get(name) != 1 for name in self._input1_decisions(kind)):
                return kind
        return None

    def _cell_types(
        self, choices: Mapping[str, Choice]
    ) -> tuple[dict[str, list[tuple[str, int]]], dict[str, tuple[int, ...]]]:
        """Per cell type its DARTS genotype ((op, input index) pairs, two per block) and its concat."""
        slots = [(i, s) for i in range(self.config.blocks) for s in (1, 2)]
        genotypes = {
            kind: [(str(choices[f"{kind}.b{i}.op{s}"]), int(choices[f"{kind}.b{i}.in{s}"])) for i, s in slots]
            for kind in CELLS
        }
        concats = {kind: _loose_ends([i for _, i in g], self.config.blocks) for kind, g in genotypes.items()}
        return genotypes, concats

    @cached_property
    def _layout(self) -> tuple[_Source, tuple[_Cell, ...]]:
        return _layout(self.config)

    @cached_property
    def _keys(self) -> _Keys:
        return _enumerate_keys(self.config, *self._layout)

    @property
    def unit_table(self) -> dict[str, tuple[_Factory, tuple[int, int, int]]]:
        return self._keys.units

    def supernet(self):
        """A DARTS-style one-shot network over every cell of the space (`nas.supernets.eeea.EEEASupernet`)."""
        from nas.supernets.eeea import EEEASupernet

        return EEEASupernet(self)


def _multipliers(concats: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Output width over C of each producer: the stem's width is its own, a cell's is its concat's length."""
    return {"stem": 1, **{kind: len(concat) for kind, concat in concats.items()}}


def _fixed_keys(keys: tuple[str, ...], choices: tuple[Choice, ...]) -> tuple[str, ...]:
    return keys


def _op_term_keys(tables: Sequence[_CellKeys], choices: tuple[Choice, ...]) -> tuple[str, ...]:
    """Keys of one (op, input) slot in every cell of one type."""
    pair = (str(choices[0]), int(choices[1]))
    return tuple(k for k in (t.ops[pair] for t in tables) if k is not None)


def _mult_term_keys(tables: Sequence[dict[int, str]], blocks: int, choices: tuple[Choice, ...]) -> tuple[str, ...]:
    """Keys of every unit whose input width is the cell type's multiplier, given the inputs of blocks 2..B-1."""
    mult = len(_loose_ends([int(c) for c in choices], blocks))
    return tuple(table[mult] for table in tables)


def _stem(width: int) -> nn.Module:
    """3x3 conv (bias-free) from RGB to 3C channels and BN, no activation [model.py NetworkCIFAR]."""
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(3, width, 3, padding=1, bias=False), bn=nn.BatchNorm2d(width)))


def _head(in_channels: int, num_classes: int) -> nn.Module:
    """Global average pool -> linear classifier with bias, no dropout [model.py NetworkCIFAR]."""
    return nn.Sequential(OrderedDict(
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1), linear=nn.Linear(in_channels, num_classes),
    ))


class _Network(nn.Module):
    """Stem, cells each reading the two previous outputs (s0 = s1 = stem output at first), head."""

    def __init__(self, stem: nn.Module, cells: Sequence[DartsCell], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.cells = nn.ModuleList(cells)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, R, R) -> (B, num_classes) logits."""
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.head(s1)


__all__ = ["CELLS", "EEEAConfig", "EEEASpace"]
