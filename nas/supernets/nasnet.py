"""`NASNetSupernet`: the weight-sharing network of the NASNet space (ENAS' micro search space, with slim's cells).

ENAS (Pham et al., ICML 2018; melodyguan/enas `src/cifar10/micro_child.py`) shares one
network among every cell of the NASNet space: per cell position and block branch, every op
(here a `MixedOp` over the 13 ops) reading any earlier hidden state (an `InputChoice`, no
weights). This supernet has the network of `nas.spaces.nasnet` (`build`): its stem, cells
wired by output index, preprocessing, projections and head, with every module any arch needs:
- a branch holds one mixed op per (input width, stride) its op can have, as the space's ops
  stride the cell inputs of a reduction cell and not the block outputs, and the first cell
  reads the stem's raw output (3F wide) as h_{i-1} (`nas.supernets._cells.OpSlot`);
- every layer that reads a cell's output (`pre0`, `pre1`, the head's linear) holds the weight
  of the widest concat the cell type can make (its extra states and all five block outputs);
  the standalone layer reads the arch's concat, and its weight is the trailing slice of that
  width (`nas.supernets._cells.ConcatLayer`, which says why trailing, and why not ENAS' gather);
- `pre1` on an equal-size h_{i-1} is slim's identity: nothing when the concat is already F
  wide, else ReLU-1x1-BN (a `_Projection`, identity then, its weights unused).
The decision of a branch is shared by every cell of its type (each cell has its own weights),
so its choice point is the group of that branch's mixed ops (all variants, all cells).

Module names follow `build`: `stem`, `cells.<k>.{pre0,pre1,project.<m>}`, `head`; a branch's op
is `cells.<k>.slots.<i>.variants.<in{C}_s{stride}>.candidates.<op>`, renamed to
`cells.<k>.ops.<i>` by `arch_state_dict`. Deviations from ENAS: separate op weights per stride
(ENAS reduces its cell inputs first, so its ops never stride); readers slice, not gather. The
supernet runs exactly the arch's network; the ENAS controller and training are a method's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping

import torch
from torch import nn

from nas.arch import Arch
from nas.ops.mixed import MixedOp, MixedOpGroup
from nas.ops.nasnet import BN_EPS, BN_MOMENTUM, OPS, FactorizedReduction, Stem, make_op
from nas.spaces.nasnet import _BLOCK_STATES, BLOCKS, CELL_TYPES, NASNetSpace, _Cell, _concat, _pair
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


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)  # as nas.ops.nasnet's


class _Projection(ConcatSequential):
    """slim's identity on h_{i-1} of the cell's size: nothing when the concat is `out` wide, else ReLU-1x1-BN."""

    def __init__(self, max_states: int, state_width: int, out: int) -> None:
        super().__init__(OrderedDict(relu=nn.ReLU(), conv=ConcatConv2d(max_states, state_width, out), bn=_bn(out)))
        self.state_width, self.out = state_width, out

    def is_identity(self, concat: Concat) -> bool:
        return len(concat) * self.state_width == self.out

    def forward(self, x: torch.Tensor, concat: Concat) -> torch.Tensor:
        return x if self.is_identity(concat) else super().forward(x, concat)

    def concat_state_dict(self, concat: Concat, prefix: str) -> dict[str, torch.Tensor]:
        return {} if self.is_identity(concat) else super().concat_state_dict(concat, prefix)


class _ConcatReduction(ConcatModule):
    """`FactorizedReduction` (stride 2, ReLU first) over a concat: its two 1x1 convs read the concat's columns."""

    def __init__(self, max_states: int, state_width: int, out: int) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.path1 = ConcatConv2d(max_states, state_width, out // 2, stride=2)
        self.path2 = ConcatConv2d(max_states, state_width, out // 2, stride=2)
        self.bn = _bn(out)

    def forward(self, x: torch.Tensor, concat: Concat) -> torch.Tensor:
        x = self.relu(x)
        shifted = nn.functional.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]  # as FactorizedReduction.forward
        return self.bn(torch.cat([self.path1(x, concat), self.path2(shifted, concat)], 1))


class _SuperCell(nn.Module):
    """A NASNet cell over every arch: preprocessing readers, 2 * B op slots, the config's projections."""

    def __init__(self, pre0: nn.Module, pre1: nn.Module, slots: list[OpSlot], project: list[nn.Module],
                 projected: tuple[int, ...]) -> None:
        super().__init__()
        self.pre0, self.pre1 = pre0, pre1
        self.slots = nn.ModuleList(slots)
        self.project = nn.ModuleList(project)  # one per state of `projected` (config: the extra states 0, 1)
        self.projected = projected

    def forward(self, prev: torch.Tensor, prev_prev: torch.Tensor, concats: tuple[Concat | None, Concat | None],
                inputs: tuple[int, ...], concat: Concat) -> torch.Tensor:
        """As `NASNetCell.forward`, with the inputs' concats (None: the stem's) and this cell's plan."""
        states = [read(self.pre0, prev, concats[0]), read(self.pre1, prev_prev, concats[1])]
        for b in range(BLOCKS):
            left, right = inputs[2 * b], inputs[2 * b + 1]
            states.append(self.slots[2 * b](states, left) + self.slots[2 * b + 1](states, right))
        parts = [self.project[self.projected.index(j)](states[j]) if j in self.projected else states[j]
                 for j in concat]
        return torch.cat(parts, 1)


class NASNetSupernet(Supernet):
    """The weights of every arch of a NASNet space (see the module docstring).

    Args:
        space: the NASNet space (at its config: stem, N, F, resolution, classes, extra concat states).
    """

    space: NASNetSpace

    def __init__(self, space: NASNetSpace) -> None:
        super().__init__(space)
        cfg = space.config
        self._layout = layout = space._layout  # the space's own wiring, so the two cannot drift apart
        # The most states a cell type concatenates: its extra states and every block output.
        self._max_concat = {kind: len(set(cfg.concat_extra(kind)) | set(_BLOCK_STATES)) for kind in CELL_TYPES}
        self.stem = Stem(layout.stem_width, *((1, 1) if cfg.stem == "cifar" else (2, 0)))
        self.cells = nn.ModuleList(self._cell(k) for k in range(len(layout.cells)))
        last = layout.cells[-1]
        self.head = ConcatSequential(OrderedDict(  # `Head` over the last cell's concat
            relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1), dropout=nn.Dropout(cfg.dropout),
            linear=ConcatLinear(self._max_concat[last.kind], last.filters, cfg.num_classes)))
        choices = {d.name: d.choices for d in space.decisions()}
        inputs = [f"{kind}.b{b}.inputs" for kind in CELL_TYPES for b in range(BLOCKS)]
        self.inputs = nn.ModuleDict((module_name(d), InputChoice({p: _pair(p) for p in choices[d]})) for d in inputs)
        self._points: dict[str, nn.Module] = {}
        for kind in CELL_TYPES:
            cells = [cell for cell, c in zip(self.cells, layout.cells, strict=True) if c.kind == kind]
            for b in range(BLOCKS):
                self._points[f"{kind}.b{b}.inputs"] = self.inputs[module_name(f"{kind}.b{b}.inputs")]
                for side in (0, 1):
                    ops = [op for cell in cells for op in cell.slots[2 * b + side].variants.values()]
                    self._points[f"{kind}.b{b}.op{side + 1}"] = MixedOpGroup(ops)
        assert set(self._points) == set(choices)

    def _reader(self, output: int, build_fixed: Callable[[int], nn.Module],
                build_concat: Callable[[int, int], nn.Module]) -> nn.Module:
        """A module reading network output `output`: fixed for the stem, over the concat for a cell."""
        if output == 0:
            return build_fixed(self._layout.stem_width)
        src = self._layout.cells[output - 1]
        return build_concat(self._max_concat[src.kind], src.filters)

    def _cell(self, k: int) -> _SuperCell:
        """The supernet cell at position k, with every module `build` can put there [nasnet._cell_tables]."""
        cfg, layout = self.space.config, self._layout
        cell = layout.cells[k]
        f, h = cell.filters, cell.in_size
        pre0 = self._reader(cell.src0, lambda w: make_op("conv_1x1", w, f, 1),
                            lambda s, w: ConcatSequential(OrderedDict(
                                relu=nn.ReLU(), conv=ConcatConv2d(s, w, f), bn=_bn(f))))
        if cell.src1 is None:
            pre1: nn.Module = nn.Identity()
        elif layout.size(cell.src1) != h:  # adjust h_{i-1} to this cell [nasnet_utils._reduce_prev_layer]
            pre1 = self._reader(cell.src1, lambda w: FactorizedReduction(w, f, 2, True),
                                lambda s, w: _ConcatReduction(s, w, f))
        else:
            pre1 = self._reader(cell.src1, lambda w: make_op("identity", w, f, 1) or nn.Identity(),
                                lambda s, w: _Projection(s, w, f))
        width = {j: f for j in range(2 + BLOCKS)} | {1: f if cell.src1 is not None else layout.stem_width}
        slots = [self._slot(cell, b, width) for b in range(BLOCKS) for _ in (0, 1)]
        projected = tuple(j for j in cfg.concat_extra(cell.kind) if j < 2)
        project = [FactorizedReduction(width[j], f, 2 if cell.out_size != h else 1, False)
                   if cell.out_size != h or width[j] != f else nn.Identity() for j in projected]
        return _SuperCell(pre0, pre1, slots, project, projected)

    @staticmethod
    def _slot(cell: _Cell, b: int, width: dict[int, int]) -> OpSlot:
        """A branch of block b: a mixed op over the 13 ops per (input width, stride) of the states it can read."""
        variant_of = {j: f"in{width[j]}_s{cell.stride(j)}" for j in range(b + 2)}
        first = {name: j for j, name in reversed(variant_of.items())}  # a state each variant reads
        variants = {name: MixedOp({t: make_op(t, width[j], cell.filters, cell.stride(j)) for t in OPS})
                    for name, j in sorted(first.items())}
        return OpSlot(variants, variant_of)

    # -- the Supernet contract -----------------------------------------------------------
    def _activate(self, arch: Arch) -> None:
        for decision, point in self._points.items():
            point.set_active(arch.choices[decision])

    def _plan(self, arch: Arch | None) -> _Plan:
        """Per cell type: the state each branch reads and the concat, of `arch` (the active choices when None)."""
        plan = {}
        for kind in CELL_TYPES:
            names = [f"{kind}.b{b}.inputs" for b in range(BLOCKS)]
            pairs = [self.inputs[module_name(n)].states() if arch is None else _pair(arch.choices[n]) for n in names]
            inputs = tuple(s for pair in pairs for s in pair)
            plan[kind] = (inputs, _concat(self.space.config.concat_extra(kind), inputs))
        return plan

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, cells wired as `NASNet.forward` (each branch in its mixed op's mode), head."""
        plan = self._plan(None)
        outputs: list[tuple[torch.Tensor, Concat | None]] = [(self.stem(x), None)]
        for cell, spec in zip(self.cells, self._layout.cells, strict=True):
            prev = outputs[spec.src0]
            prev_prev = prev if spec.src1 is None else outputs[spec.src1]
            inputs, concat = plan[spec.kind]
            outputs.append((cell(prev[0], prev_prev[0], (prev[1], prev_prev[1]), inputs, concat), concat))
        return read(self.head, *outputs[-1])

    def arch_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """Stem, each cell's readers at its inputs' concats, chosen ops (renamed `ops.<i>`), projections, head."""
        self.space.check_own(arch)
        plan, cells = self._plan(arch), self._layout.cells
        concat_of = [None] + [plan[c.kind][1] for c in cells]  # the concat of each network output
        state = dict(self.stem.state_dict(prefix="stem."))
        for k, (cell, spec) in enumerate(zip(self.cells, cells, strict=True)):
            p = f"cells.{k}."
            state |= reader_state_dict(cell.pre0, concat_of[spec.src0], p + "pre0.")
            if spec.src1 is not None:
                state |= reader_state_dict(cell.pre1, concat_of[spec.src1], p + "pre1.")
            inputs, concat = plan[spec.kind]
            for i, state_index in enumerate(inputs):
                choice = arch.choices[f"{spec.kind}.b{i // 2}.op{i % 2 + 1}"]
                state |= cell.slots[i].choice_state_dict(state_index, choice, f"{p}ops.{i}.")
            for j, module in zip(cell.projected, cell.project, strict=True):
                state |= module.state_dict(prefix=f"{p}project.{concat.index(j)}.")
        return state | reader_state_dict(self.head, concat_of[-1], "head.")

    def choice_points(self) -> Mapping[str, nn.Module]:
        """`{kind}.b{b}.inputs` -> its `InputChoice`; `{kind}.b{b}.op{1,2}` -> the group of that branch's mixed ops."""
        return dict(self._points)

__all__ = ["NASNetSupernet"]
