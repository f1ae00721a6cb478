"""The NASNet search space: a normal and a reduction cell of B = 5 blocks, stacked N @ F.

Follows Zoph, Vasudevan, Shlens and Le, "Learning Transferable Architectures for Scalable
Image Recognition" (CVPR 2018) as implemented in TF-slim (tensorflow/models
`research/slim/nets/nasnet/nasnet.py`, `nasnet_utils.py`); ops and cell live in
`nas.ops.nasnet`. Each block of each cell type picks two hidden states (`inputs`, e.g.
`0+3`: 0 = the previous cell's output h_i, 1 = the one before, h_{i-1}, 2 + b = block b,
slim's numbering), one of the paper's 13 ops for each (`op1` on the first, `op2` on the
second), and adds the two results. The cell output concatenates the block outputs no
block reads (the paper's rule; NNI's `loose_end` merge). Network: a
CIFAR stem (3x3 conv, stride 1) or an ImageNet stem (3x3 conv, stride 2, 'VALID', then two
reduction cells at F/4 and F/2 filters, as slim's `stem_cell = reduction_cell`), then N
normal cells, a reduction cell, N normal cells, a reduction cell, N normal cells (filters
F, 2F, 4F; reductions stride the ops on the cell inputs only), ReLU, pool, dropout, linear.

Choices where the paper and slim disagree: slim's hand-set `used_hiddenstates` masks put
states the cells do use into the output as well (h_{i-1} in NASNet-A's normal cell,
block 1's output in its reduction cell), which the 6 @ 768 / 4 @ 1056 / 6 @ 4032 names
and the published counts require. The config keys `normal_concat_extra` and
`reduction_concat_extra` add such states to the unused ones; the presets set them to slim's
masks, the default (empty) is the paper's rule.

Deviations: the two inputs of a block are one decision over unordered pairs (`0+3`, the
lower state first) where the paper's controller picks them one after the other; as the
block adds its branches, (in1, op1, in2, op2) and (in2, op2, in1, op1) are the same network,
so this is the same set of networks without the double encoding, and it keeps the latency
term over the inputs that decide a cell's width at 6*10*15*21 = 18,900 combinations (129,600
with ordered picks). The combination is always addition, not a decision: the paper also
allows concatenation, but every published cell, slim and NNI add, and a concat would make every
later width (and the preprocessing latency keys) depend on five more decisions per cell
type. An arch where a cell type never reads one of its inputs (h_i or h_{i-1}, unless it is
concatenated) is rejected: that input would have no path to the cell output (slim would
build its preprocessing as dead weight). Fixed: 2 reduction cells, filter scaling 2 per
reduction. No auxiliary head and no drop-path (training only). Latency keys are this
package's self-describing strings; a strided or widening identity is timed under its
`conv_1x1` key (the same module); a stride-1 identity has no key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from itertools import combinations

import numpy as np
from torch import nn

from nas.arch import Arch, Choice
from nas.errors import UserError
from nas.ops.nasnet import OPS, FactorizedReduction, Head, NASNet, NASNetCell, Stem, make_op
from nas.registry import SPACES
from nas.space import Decision, LatencyTerm, SearchSpace, hwc
from nas.spaces.nasnet_layout import (
    _BLOCK_STATES,
    _PAIRS,
    BLOCKS,
    CELL_TYPES,
    NORMAL,
    REDUCTION,
    NASNetConfig,
    _Cell,
    _Factory,
    _half,
    _Layout,
    _layout,
    _pair,
)


@SPACES.register("nasnet")
class NASNetSpace(SearchSpace):
    """NASNet: 2 cell types x 5 blocks x (a pair of inputs, 2 of 13 ops); 30 decisions."""

    name = "nasnet"
    max_draws = 100
    config_model = NASNetConfig
    config: NASNetConfig

    def __init__(self, config: NASNetConfig, presets: Mapping | None = None) -> None:
        super().__init__(config, presets)
        self._layout  # noqa: B018 - a config with impossible widths fails when loaded, not when built

    @cached_property
    def _layout(self) -> _Layout:
        return _layout(self.config)

    def decisions(self) -> list[Decision]:
        """`{normal,reduction}.b{0..4}.{inputs,op1,op2}`, in the paper's controller order."""
        ops = tuple(OPS)
        return [Decision(f"{kind}.b{b}.{what}", _PAIRS[b] if what == "inputs" else ops)
                for kind in CELL_TYPES for b in range(BLOCKS) for what in ("inputs", "op1", "op2")]

    def check(self, choices: Mapping[str, Choice]) -> None:
        """Every cell input must reach the cell output (be read by a block, or be concatenated)."""
        problem = self._unread_input(choices)
        if problem is not None:
            raise UserError(f"{self.name}: {problem}")

    def build(self, arch: Arch) -> nn.Module:
        """A `NASNet` whose units are exactly the modules `unit` gives for `latency_keys(arch)`."""
        units, layout, plan = self.unit_table, self._layout, self._plan(arch)

        def make(key: str | None) -> nn.Module | None:
            return None if key is None else units[key][0]()

        cells = []
        for cell_plan, kind in zip(plan.cells, (c.kind for c in layout.cells), strict=True):
            pre0, pre1, ops, project = cell_plan
            cells.append(NASNetCell(make(pre0), make(pre1), [make(k) for k in ops], plan.inputs[kind],
                                    plan.concat[kind], [make(k) for k in project]))
        sources = [(c.src0, c.src1) for c in layout.cells]
        return NASNet(make(self._stem_key), cells, sources, make(plan.head))

    def latency_keys(self, arch: Arch) -> list[str]:
        """Stem; per cell: preprocessing, ops (stride-1 identities have none), output projections; head."""
        plan = self._plan(arch)
        keys = [self._stem_key]
        for pre0, pre1, ops, project in plan.cells:
            keys += [k for k in (pre0, pre1, *ops, *project) if k is not None]
        return [*keys, plan.head]

    def latency_terms(self) -> list[LatencyTerm]:
        """Fixed units; per (cell type, block, side) its op on its input; per cell type the units that
        read its output, whose width depends only on the inputs that decide its unused states."""
        tables = self._tables
        terms = [LatencyTerm((), lambda _, keys=tables.fixed: keys)]
        for kind in CELL_TYPES:
            positions = [k for k, c in enumerate(self._layout.cells) if c.kind == kind]
            for b in range(BLOCKS):
                for side in (0, 1):
                    slots = tuple(tables.ops[k] for k in positions)
                    terms.append(LatencyTerm((f"{kind}.b{b}.inputs", f"{kind}.b{b}.op{side + 1}"),
                                             partial(_op_keys, slots, side)))
        for kind in CELL_TYPES:
            extra = self.config.concat_extra(kind)
            terms.append(LatencyTerm(self._width_decisions(kind), partial(_reader_keys, tables.readers[kind], extra)))
        return terms

    # -- crossover (sample and mutate: the base class's rejection sampling against `check`) ---
    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """Uniform crossover; a cell type whose mixed inputs fail `check` is taken whole from one parent."""
        pick = rng.random(len(self._decisions)) < 0.5
        child = {n: (a if p else b).choices[n] for n, p in zip(self._decisions, pick, strict=True)}
        for kind in CELL_TYPES:
            if self._unread_input(child, kind) is not None:
                parent = a if rng.random() < 0.5 else b
                child.update({n: parent.choices[n] for n in child if n.startswith(f"{kind}.")})
        return self.make_arch(child)

    # -- helpers ------------------------------------------------------------------------
    def _unread_input(self, choices: Mapping[str, Choice], only: str | None = None) -> str | None:
        """Why a cell type has an input with no path to its output, or None."""
        for kind in (only,) if only else CELL_TYPES:
            read = {s for b in range(BLOCKS) for s in _pair(choices[f"{kind}.b{b}.inputs"])}
            for state, label in ((0, "h_i"), (1, "h_{i-1}")):
                if state not in read and state not in self.config.concat_extra(kind):
                    return (f"decisions {kind}.b0.inputs .. {kind}.b{BLOCKS - 1}.inputs: no block reads hidden "
                            f"state {state} ({label}), so it has no path to the {kind} cell's output; at least "
                            f"one of them must include {state}, e.g. {kind}.b0.inputs: 0+1")
        return None

    def _width_decisions(self, kind: str) -> tuple[str, ...]:
        """Inputs that can decide whether a block output is unused (states in the extra list never matter)."""
        extra = set(self.config.concat_extra(kind))
        return tuple(f"{kind}.b{b}.inputs" for b in range(1, BLOCKS) if any(j not in extra for j in range(2, b + 2)))

    def _plan(self, arch: Arch) -> _Plan:
        """Latency key (None: no module) of every unit of `arch`, per cell, plus wiring."""
        self.check_own(arch)
        tables, cells = self._tables, self._layout.cells
        inputs = {kind: tuple(s for b in range(BLOCKS) for s in _pair(arch.choices[f"{kind}.b{b}.inputs"]))
                  for kind in CELL_TYPES}
        ops = {kind: tuple(arch.choices[f"{kind}.b{b}.op{s}"] for b in range(BLOCKS) for s in (1, 2))
               for kind in CELL_TYPES}
        concat = {kind: _concat(self.config.concat_extra(kind), inputs[kind]) for kind in CELL_TYPES}
        counts = {kind: len(concat[kind]) for kind in CELL_TYPES}
        width = [self._layout.stem_width] + [c.filters * counts[c.kind] for c in cells]
        planned = []
        for k, cell in enumerate(cells):
            op_keys = tuple(tables.ops[k][(j, op)] for j, op in zip(inputs[cell.kind], ops[cell.kind], strict=True))
            pre1 = None if cell.src1 is None else tables.pre1[k][width[cell.src1]]
            project = tuple(tables.project[k].get(j) for j in concat[cell.kind])
            planned.append((tables.pre0[k][width[cell.src0]], pre1, op_keys, project))
        return _Plan(tuple(planned), inputs, concat, tables.head[width[-1]])

    @property
    def _stem_key(self) -> str:
        cfg, layout = self.config, self._layout
        r = cfg.resolution
        return f"stem_{cfg.stem}-in{hwc(r, 3)}-out{hwc(layout.stem_size, layout.stem_width)}"

    @cached_property
    def _tables(self) -> _Tables:
        """Every unit of the space, as key tables per cell position."""
        return _build_tables(self.config, self._layout, self._stem_key)

    @cached_property
    def unit_table(self) -> dict[str, tuple[_Factory, tuple[int, int, int]]]:
        return self._tables.units

    def supernet(self):
        """ENAS-style weight sharing over every cell of the space (`nas.supernets.nasnet.NASNetSupernet`)."""
        from nas.supernets.nasnet import NASNetSupernet

        return NASNetSupernet(self)


@dataclass(frozen=True)
class _Plan:
    cells: tuple[tuple[str, str | None, tuple[str | None, ...], tuple[str | None, ...]], ...]
    inputs: dict[str, tuple[int, ...]]
    concat: dict[str, tuple[int, ...]]
    head: str


@dataclass(frozen=True)
class _Tables:
    """Keys per cell position k: `pre0[k][width]`, `pre1[k][width]`, `ops[k][(state, op)]`,
    `project[k][state]`; `head[width]`; `fixed` keys; per cell type, `readers[kind][count]`: the keys
    of every unit reading an output of that type when it concatenates `count` states."""

    units: dict[str, tuple[_Factory, tuple[int, int, int]]]
    pre0: tuple[dict[int, str], ...]
    pre1: tuple[dict[int, str | None], ...]
    ops: tuple[dict[tuple[int, str], str | None], ...]
    project: tuple[dict[int, str | None], ...]
    head: dict[int, str]
    fixed: tuple[str, ...]
    readers: dict[str, dict[int, tuple[str, ...]]]


class _Keys:
    """Names units and records each key's module factory and input shape (C, H, W)."""

    def __init__(self) -> None:
        self.units: dict[str, tuple[_Factory, tuple[int, int, int]]] = {}

    def add(self, key: str, factory: _Factory, c: int, h: int) -> str:
        self.units.setdefault(key, (factory, (c, h, h)))
        return key

    def op(self, token: str, c_in: int, size: int, c_out: int, stride: int) -> str | None:
        if OPS[token][0] == "identity":
            if stride == 1 and c_in == c_out:
                return None
            token = "conv_1x1"  # the same ReLU-1x1-BN module [nasnet_utils._apply_conv_operation 'none']
        out = _half(size) if stride == 2 else size
        key = f"{token}-in{hwc(size, c_in)}-out{hwc(out, c_out)}-s{stride}"
        return self.add(key, partial(make_op, token, c_in, c_out, stride), c_in, size)

    def reduce(self, c_in: int, size: int, c_out: int, stride: int, relu: bool) -> str:
        name = "factorized_reduce" if relu else "concat_reduce"
        key = f"{name}-in{hwc(size, c_in)}-out{hwc(_half(size) if stride == 2 else size, c_out)}-s{stride}"
        return self.add(key, partial(FactorizedReduction, c_in, c_out, stride, relu), c_in, size)


def _cell_tables(keys: _Keys, cfg: NASNetConfig, layout: _Layout, cell: _Cell, widths: Callable) -> tuple:
    """pre0, pre1, ops and project tables of one cell position (see `_Tables`)."""
    f, h = cell.filters, cell.in_size
    pre0 = {w: keys.op("conv_1x1", w, h, f, 1) for w in widths(cell.src0)}
    pre1: dict[int, str | None] = {}
    if cell.src1 is not None:  # adjust h_{i-1} to this cell [nasnet_utils._reduce_prev_layer]
        size1 = layout.size(cell.src1)
        for w in widths(cell.src1):
            pre1[w] = keys.reduce(w, size1, f, 2, True) if size1 != h else keys.op("identity", w, h, f, 1)
    # Every hidden state is F wide, except state 1 read raw (slim's prev_layer=None: the stem).
    assert cell.src1 is not None or cell.src0 == 0
    width = {j: f for j in range(2 + BLOCKS)} | {1: f if cell.src1 is not None else layout.stem_width}
    ops = {(j, t): keys.op(t, width[j], h if j < 2 else cell.out_size, f, cell.stride(j))
           for j in range(1 + BLOCKS) for t in OPS}
    project: dict[int, str | None] = {}  # cell inputs in the output [nasnet_utils._combine_unused_states]
    for j in (j for j in cfg.concat_extra(cell.kind) if j < 2):
        if cell.out_size != h or width[j] != f:
            project[j] = keys.reduce(width[j], h, f, 2 if cell.out_size != h else 1, False)
    return pre0, pre1, ops, project


def _build_tables(cfg: NASNetConfig, layout: _Layout, stem: str) -> _Tables:
    keys, cells = _Keys(), layout.cells
    stride_padding = (1, 1) if cfg.stem == "cifar" else (2, 0)  # 'SAME' stride 1 / 'VALID' stride 2
    keys.add(stem, partial(Stem, layout.stem_width, *stride_padding), 3, cfg.resolution)
    counts = {kind: _possible_counts(cfg.concat_extra(kind)) for kind in CELL_TYPES}

    def widths(output: int) -> tuple[int, ...]:
        src = cells[output - 1] if output else None
        return (layout.stem_width,) if src is None else tuple(src.filters * n for n in counts[src.kind])

    pre0, pre1, ops, project = zip(*(_cell_tables(keys, cfg, layout, c, widths) for c in cells), strict=True)
    last = cells[-1]
    head = {w: keys.add(f"head-in{hwc(last.out_size, w)}-out{cfg.num_classes}",
                        partial(Head, w, cfg.num_classes, cfg.dropout), w, last.out_size) for w in widths(len(cells))}
    fixed = [stem]
    for k, cell in enumerate(cells):
        fixed += [pre0[k][layout.stem_width]] if cell.src0 == 0 else []
        fixed += [pre1[k][layout.stem_width]] if cell.src1 == 0 and pre1[k][layout.stem_width] else []
        fixed += [key for key in project[k].values() if key is not None]
    readers: dict[str, dict[int, tuple[str, ...]]] = {kind: {} for kind in CELL_TYPES}
    for kind in CELL_TYPES:
        for n in counts[kind]:
            found: list[str] = []
            for i, src in ((i, src) for i, src in enumerate(cells, 1) if src.kind == kind):
                w = src.filters * n
                found += [pre0[k][w] for k, c in enumerate(cells) if c.src0 == i]
                found += [pre1[k][w] for k, c in enumerate(cells) if c.src1 == i and pre1[k][w] is not None]
                found += [head[w]] if i == len(cells) else []
            readers[kind][n] = tuple(found)
    return _Tables(keys.units, pre0, pre1, ops, project, head, tuple(fixed), readers)


def _concat(extra: tuple[int, ...], inputs: tuple[int, ...]) -> tuple[int, ...]:
    """States a cell concatenates: the unused block outputs and the configured extra states."""
    return tuple(sorted(set(extra) | (set(_BLOCK_STATES) - set(inputs))))


def _possible_counts(extra: tuple[int, ...]) -> tuple[int, ...]:
    """Every number of concatenated states (any subset of states 2..5 can be used; the last never is)."""
    used_sets = (set(u) for r in range(BLOCKS) for u in combinations(_BLOCK_STATES[:-1], r))
    return tuple(sorted({len(set(extra) | (set(_BLOCK_STATES) - used)) for used in used_sets}))


def _op_keys(slots: tuple[dict[tuple[int, str], str | None], ...], side: int,
             choices: tuple[Choice, ...]) -> tuple[str, ...]:
    """Keys of one block side (its input of the pair, its op) at every cell position of its type."""
    pair, token = choices
    state = _pair(pair)[side]
    return tuple(key for slot in slots if (key := slot[(state, token)]) is not None)


def _reader_keys(readers: dict[int, tuple[str, ...]], extra: tuple[int, ...],
                 pairs: tuple[Choice, ...]) -> tuple[str, ...]:
    """Keys of the units reading a cell type's output, given the inputs that decide its width."""
    return readers[len(_concat(extra, tuple(s for p in pairs for s in _pair(p))))]


__all__ = ["BLOCKS", "CELL_TYPES", "NORMAL", "REDUCTION", "NASNetConfig", "NASNetSpace"]
