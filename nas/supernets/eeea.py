"""`EEEASupernet`: the weight-sharing network of the EEEA-Net cell space (a DARTS-style search network).

The one-shot network of the DARTS search space (Liu et al., ICLR 2019; quark0/darts
`cnn/model_search.py` `Network`, `MixedOp`) over the EEEA-Net cell space (`nas.spaces.eeea`,
chakkritte/EEEA-Net `EEEA/cifar/eeea/network/model.py`): the network of `build` (stem, L
`DartsCell`s, head) with, per cell position and block branch, a `MixedOp` over the config's
ops, and an `InputChoice` (no weights) over the states the branch can read, as in ENAS
(Pham et al., ICML 2018) and NNI's `InputChoice`, rather than DARTS' every-edge mixing:
- a branch holds one mixed op per stride its op can have (`nas.supernets._cells.OpSlot`): a
  reduction cell strides the ops on its inputs (states 0, 1) and not on block outputs, so a
  branch of block i >= 2 there holds both (separate weights: different units);
- `preprocess0`, `preprocess1` and the head's linear read a concat of loose ends whose width
  depends on the arch; each holds the weight of the widest concat (all B block outputs), and
  the standalone layer's weight is the trailing slice of its arch's concat width
  (`nas.supernets._cells.ConcatLayer`, which says why trailing, and why not ENAS' gather).
The decision of a branch is shared by every cell of its type (each cell has its own weights),
so its choice point is the group of that branch's mixed ops (both strides, all cells).

Module names follow `build`: `stem`, `cells.<k>.{preprocess0,preprocess1}`, `head`; a branch's op
is `cells.<k>.slots.<i>.variants.<s{stride}>.candidates.<op>`, renamed to `cells.<k>.ops.<i>` by
`arch_state_dict`. No deviation from `build`: the supernet runs exactly the arch's network.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from nas.arch import Arch
from nas.ops.darts import FactorizedReduce, ReLUConvBN, make_op
from nas.ops.mixed import MixedOp, MixedOpGroup
from nas.spaces.eeea import CELLS, EEEASpace, _Cell, _loose_ends, _stem
from nas.supernet import Supernet, module_name
from nas.supernets._cells import (
    Concat,
    ConcatConv2d,
    ConcatLinear,
    ConcatModule,
    ConcatSequential,
    InputChoice,
    OpSlot,
    read,
    reader_state_dict,
)

_Plan = dict[str, tuple[tuple[int, ...], Concat]]  # cell type -> (input state per branch, concat)


class _ConcatFactorizedReduce(ConcatModule):
    """`nas.ops.darts.FactorizedReduce` over a concat: its two 1x1 stride-2 convs read the concat's columns."""

    def __init__(self, max_states: int, state_width: int, out: int) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.conv_1 = ConcatConv2d(max_states, state_width, out // 2, stride=2)
        self.conv_2 = ConcatConv2d(max_states, state_width, out // 2, stride=2)
        self.bn = nn.BatchNorm2d(out)

    def forward(self, x: torch.Tensor, concat: Concat) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x, concat), self.conv_2(x[:, :, 1:, 1:], concat)], dim=1))


class _SuperCell(nn.Module):
    """A `DartsCell` over every arch: two preprocessing readers and 2 * B op slots."""

    def __init__(self, preprocess0: nn.Module, preprocess1: nn.Module, slots: list[OpSlot]) -> None:
        super().__init__()
        self.preprocess0, self.preprocess1 = preprocess0, preprocess1
        self.slots = nn.ModuleList(slots)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, concats: tuple[Concat | None, Concat | None],
                inputs: tuple[int, ...], concat: Concat) -> torch.Tensor:
        """As `DartsCell.forward`, with the inputs' concats (None: the stem's) and this cell's plan."""
        states = [read(self.preprocess0, s0, concats[0]), read(self.preprocess1, s1, concats[1])]
        for i in range(0, len(self.slots), 2):
            states.append(self.slots[i](states, inputs[i]) + self.slots[i + 1](states, inputs[i + 1]))
        return torch.cat([states[j] for j in concat], dim=1)


class EEEASupernet(Supernet):
    """The weights of every arch of an EEEA-Net space (see the module docstring).

    Args:
        space: the EEEA space (at its config: C, L, B, ops, resolution, classes).
    """

    space: EEEASpace

    def __init__(self, space: EEEASpace) -> None:
        super().__init__(space)
        cfg = space.config
        self._stem_source, self._cells = space._layout  # the space's own layout, so the two cannot drift apart
        self.stem = _stem(self._stem_source.channels)
        self.cells = nn.ModuleList(self._cell(cell) for cell in self._cells)
        last = self._cells[-1]
        self.head = ConcatSequential(OrderedDict(  # `nas.spaces.eeea._head` over the last cell's concat
            pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1),
            linear=ConcatLinear(cfg.blocks, last.channels, cfg.num_classes)))
        choices = {d.name: d.choices for d in space.decisions()}
        names = [f"{kind}.b{i}.in{s}" for kind in CELLS for i in range(cfg.blocks) for s in (1, 2)]
        self.inputs = nn.ModuleDict((module_name(n), InputChoice({j: (j,) for j in choices[n]})) for n in names)
        self._points: dict[str, nn.Module] = {n: self.inputs[module_name(n)] for n in names}
        for kind in CELLS:
            cells = [cell for cell, spec in zip(self.cells, self._cells, strict=True) if spec.kind == kind]
            for i, slot in ((i, s) for i in range(cfg.blocks) for s in (1, 2)):
                ops = [op for cell in cells for op in cell.slots[2 * i + slot - 1].variants.values()]
                self._points[f"{kind}.b{i}.op{slot}"] = MixedOpGroup(ops)
        assert set(self._points) == set(choices)

    def _reader(self, cell: _Cell, src: int) -> nn.Module:
        """preprocess0 (src 0) or preprocess1 (src 1) of `cell`, as `DartsCell` makes them, over the concat."""
        source = (cell.s0, cell.s1)[src]
        reduce = src == 0 and source.size != cell.in_size  # the previous cell halved the size
        c_in, c = source.channels, cell.channels
        if source.kind == "stem":  # a fixed width
            return FactorizedReduce(c_in, c) if reduce else ReLUConvBN(c_in, c, 1)
        if reduce:
            return _ConcatFactorizedReduce(self.space.config.blocks, c_in, c)
        return ConcatSequential(OrderedDict(relu=nn.ReLU(), conv=ConcatConv2d(self.space.config.blocks, c_in, c),
                                            bn=nn.BatchNorm2d(c)))

    def _cell(self, cell: _Cell) -> _SuperCell:
        """The supernet cell at `cell`'s position: readers and, per branch, a mixed op per stride."""
        slots = []
        for i in range(self.space.config.blocks):
            variant_of = {j: f"s{cell.stride(j)}" for j in range(i + 1)}  # block i reads states 0..i
            strides = sorted({cell.stride(j) for j in variant_of})
            for _ in (1, 2):
                variants = {f"s{s}": MixedOp({op: make_op(op, cell.channels, s) for op in self.space.config.ops})
                            for s in strides}
                slots.append(OpSlot(variants, variant_of))
        return _SuperCell(self._reader(cell, 0), self._reader(cell, 1), slots)

    # -- the Supernet contract -----------------------------------------------------------
    def _activate(self, arch: Arch) -> None:
        for decision, point in self._points.items():
            point.set_active(arch.choices[decision])

    def _plan(self, arch: Arch | None) -> _Plan:
        """Per cell type: the state each branch reads and the concat, of `arch` (the active choices when None)."""
        plan, blocks = {}, self.space.config.blocks
        for kind in CELLS:
            names = [f"{kind}.b{i}.in{s}" for i in range(blocks) for s in (1, 2)]
            inputs = tuple(self.inputs[module_name(n)].states()[0] if arch is None else int(arch.choices[n])
                           for n in names)
            plan[kind] = (inputs, _loose_ends(inputs, blocks))
        return plan

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, cells each reading the two previous outputs (each branch in its mixed op's mode), head."""
        plan = self._plan(None)
        s0 = s1 = (self.stem(x), None)
        for cell, spec in zip(self.cells, self._cells, strict=True):
            inputs, concat = plan[spec.kind]
            s0, s1 = s1, (cell(s0[0], s1[0], (s0[1], s1[1]), inputs, concat), concat)
        return read(self.head, *s1)

    def arch_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """Stem, each cell's preprocessing at its inputs' concats and chosen ops (renamed `ops.<i>`), head."""
        self.space.check_own(arch)
        plan = self._plan(arch)
        concat_of = {"stem": None} | {kind: concat for kind, (_, concat) in plan.items()}
        state = dict(self.stem.state_dict(prefix="stem."))
        for k, (cell, spec) in enumerate(zip(self.cells, self._cells, strict=True)):
            p = f"cells.{k}."
            state |= reader_state_dict(cell.preprocess0, concat_of[spec.s0.kind], p + "preprocess0.")
            state |= reader_state_dict(cell.preprocess1, concat_of[spec.s1.kind], p + "preprocess1.")
            for i, j in enumerate(plan[spec.kind][0]):
                op = arch.choices[f"{spec.kind}.b{i // 2}.op{i % 2 + 1}"]
                state |= cell.slots[i].choice_state_dict(j, op, f"{p}ops.{i}.")
        return state | reader_state_dict(self.head, concat_of[self._cells[-1].kind], "head.")

    def choice_points(self) -> Mapping[str, nn.Module]:
        """`{kind}.b{i}.in{s}` -> its `InputChoice`; `{kind}.b{i}.op{s}` -> the group of that branch's mixed ops."""
        return dict(self._points)

__all__ = ["EEEASupernet"]
