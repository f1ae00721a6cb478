"""`NASBench201Supernet`: the NAS-Bench-201 one-shot network, a `MixedOp` over the 5 operations per edge.

The standard weight-sharing network of the benchmark (Dong and Yang, ICLR 2020; D-X-Y/AutoDL-Projects
`xautodl/models/cell_searchs/search_model_darts.py` `TinyNetworkDARTS`, `search_cells.py`
`NAS201SearchCell`, also used for SPOS, GDAS and ENAS there, and NNI's NAS-Bench-201 space): the
space's skeleton (stem, residual reduction blocks, head, from `build`) with every cell a search
cell whose edge `i<-j` holds all five operations in a mixed op. Every cell has its own weights;
the decision of an edge is shared by all cells, as the reference shares its architecture
parameters, so a decision's choice point is the group of that edge's mixed ops.

Deviations: the reference's `none` op computes `x * 0`; here it is the mixed op's zero op of
kind `zeros`, and an edge whose output is zeros is left out of its node's sum (the same values,
as `build` leaves `none` edges out). Module names follow `build`: `stem`, `cells.<k>` (search
cells and the reduction blocks between stages, in order), `head`; a cell's edge holds its
choices under `cells.<k>.edges.<i<-j>.candidates.<op>`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from nas.arch import Arch
from nas.ops.mixed import MixedOp, MixedOpGroup
from nas.ops.nb201 import EDGES, NODES, OPS, NB201Cell, edge_name, make_op
from nas.spaces.nasbench201 import DECISIONS, NASBench201Space
from nas.supernet import Supernet


class _SearchCell(nn.Module):
    """An NB201 cell whose every edge is a `MixedOp` over the 5 operations: node i = sum_j edge[i<-j](node j)."""

    def __init__(self, C: int) -> None:
        super().__init__()
        self.channels = C
        self.edges = nn.ModuleDict(
            (edge_name(e), MixedOp({op: make_op(op, C) for op in OPS}, zero="zeros")) for e in EDGES
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W), summing as `NB201Cell` does: edges that output zeros are left out."""
        nodes = [x]
        for i in range(1, NODES):
            terms = [op(nodes[j]) for j in range(i) if not (op := self.edges[f"{i}<-{j}"]).is_zero]
            node = terms[0] if terms else torch.zeros_like(x)
            for term in terms[1:]:
                node = node + term
            nodes.append(node)
        return nodes[-1]


class NASBench201Supernet(Supernet):
    """The weights of every NAS-Bench-201 arch: the fixed skeleton and a search cell in place of each cell.

    Args:
        space: the NAS-Bench-201 space (at its config: C, N, resolution, classes).
    """

    space: NASBench201Space

    def __init__(self, space: NASBench201Space) -> None:
        super().__init__(space)
        # The skeleton of `build` (stem, reduction blocks, head, all freshly initialised): the all-`none`
        # arch's cells hold no module, and each is replaced by a search cell of its width.
        skeleton = space.build(space.make_arch({d: "none" for d in DECISIONS}))
        self.stem = skeleton.stem
        self.cells = nn.Sequential(
            *(_SearchCell(cell.channels) if isinstance(cell, NB201Cell) else cell for cell in skeleton.cells)
        )
        self.head = skeleton.head
        search_cells = [cell for cell in self.cells if isinstance(cell, _SearchCell)]
        self._points = {
            decision: MixedOpGroup([cell.edges[edge_name(e)] for cell in search_cells])
            for decision, e in zip(DECISIONS, EDGES, strict=True)
        }

    def _activate(self, arch: Arch) -> None:
        for decision, group in self._points.items():
            group.set_active(arch.choices[decision])

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, cells (each edge in its mode) and head: (B, 3, R, R) -> (B, num_classes)."""
        return self.head(self.cells(self.stem(x)))

    def arch_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """The skeleton under its own names; per cell and edge the chosen op's state under `cells.<k>.edges.<e>`."""
        self.space.check_own(arch)
        state = dict(self.stem.state_dict(prefix="stem."))
        for k, cell in enumerate(self.cells):
            if not isinstance(cell, _SearchCell):
                state.update(cell.state_dict(prefix=f"cells.{k}."))
                continue
            for decision, e in zip(DECISIONS, EDGES, strict=True):
                name = edge_name(e)
                state.update(cell.edges[name].choice_state_dict(arch.choices[decision], f"cells.{k}.edges.{name}."))
        state.update(self.head.state_dict(prefix="head."))
        return state

    def choice_points(self) -> Mapping[str, MixedOpGroup]:
        """Decision `edge.i<-j` -> the group of that edge's mixed ops in every cell."""
        return dict(self._points)


__all__ = ["NASBench201Supernet"]
