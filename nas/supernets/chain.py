"""`ChainSupernet`: the supernet of a `ChainSpace`, one `MixedOp` per decision over its choices' units.

The network of a chain space is a fixed front, one unit (or none, a skip) per decision and a
fixed back (`nas.chain_space.ChainSpace.chain`). The supernet keeps the front and back units and,
per decision, a mixed op holding one module per choice, made by the same factories as
`build` (`unit_table`); a skip is the mixed op's zero op of kind `identity`, as the chain
drops the unit. This is ProxylessNAS' supernet (Cai et al., ICLR 2019; mit-han-lab/proxylessnas
`search/models/super_nets/super_proxyless.py`: a `MixedEdge` of separate MBConv candidates per
block, plus the zero op on skippable blocks); see `nas.ops.mixed` for how its shortcut placement
differs from the reference and why the gate gradients agree.

Module names: `units.<child>` for a fixed unit and `units.<decision as module name>.candidates.
<choice>` for a choice's unit; `arch_state_dict` renames them to `build`'s child names.

Deviation (initialisation only): each decision's candidates start as slices of its largest one
(`align_candidates`: leading channels, centred kernel), and a candidate with an identity shortcut
starts with its last batch norm's scale at zero (Goyal et al. 2017: the block starts as the
identity); the references draw every candidate independently, BN scale 1. With independent
candidates this 21-block supernet did not train under uniform single-path sampling (SPOS,
ProxylessNAS' warm-up) on the digits proxy: its training loss stayed at ln 10 for 1,300 steps
at every learning rate tried, while one fixed path learns in 100 steps; neither half of this
initialisation alone left chance in 300 steps, both together did. The candidates stay separate weights; only their
starting values change.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from nas.arch import Arch, Choice
from nas.chain_space import ChainSpace, NamedKey
from nas.ops.mixed import MixedOp
from nas.supernet import Supernet, module_name


class ChainSupernet(Supernet):
    """The weights of every arch of a chain space: fixed units and one `MixedOp` per decision.

    Args:
        space: the chain space (at its config: widths, resolution, classes).
    """

    space: ChainSpace

    def __init__(self, space: ChainSpace) -> None:
        super().__init__(space)
        front, by_choice, back = space.chain
        units = space.unit_table
        missing = {d.name for d in space.decisions()} ^ {d for d, _ in by_choice}
        if missing:
            raise ValueError(f"{space.name}: chain and decisions differ on {sorted(missing)}")
        self.units = nn.ModuleDict()
        self._tables: dict[str, dict[Choice, NamedKey | None]] = {}
        self._plan: list[tuple[str, str | None]] = []  # (key in self.units, decision or None), in network order
        for name, key in front:
            self._add(name, units[key][0](), None)
        for decision, table in by_choice:
            candidates = {c: None if unit is None else units[unit[1]][0]() for c, unit in table.items()}
            align_candidates([m for m in candidates.values() if m is not None])
            self._add(module_name(decision), MixedOp(candidates, zero="identity"), decision)
            self._tables[decision] = table
        for name, key in back:
            self._add(name, units[key][0](), None)

    def _add(self, name: str, module: nn.Module, decision: str | None) -> None:
        if name in self.units:
            raise ValueError(f"{self.space.name}: two units of the supernet are named {name!r}")
        self.units[name] = module
        self._plan.append((name, decision))

    def _activate(self, arch: Arch) -> None:
        for decision in self._tables:
            self.units[module_name(decision)].set_active(arch.choices[decision])

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The units in network order; each mixed op in its mode (the active arch after `activate`)."""
        for unit in self.units.values():
            x = unit(x)
        return x

    def arch_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """Fixed units under their own names, each decision's chosen unit under its child name; skips hold none."""
        self.space.check_own(arch)
        state: dict[str, torch.Tensor] = {}
        for name, decision in self._plan:
            if decision is None:
                state.update(self.units[name].state_dict(prefix=f"{name}."))
                continue
            choice = arch.choices[decision]
            unit = self._tables[decision][choice]
            if unit is not None:
                state.update(self.units[name].choice_state_dict(choice, prefix=f"{unit[0]}."))
        return state

    def choice_points(self) -> Mapping[str, MixedOp]:
        """Decision -> its mixed op, in network order."""
        return {decision: self.units[module_name(decision)] for decision in self._tables}


def align_candidates(candidates: list[nn.Module]) -> None:
    """Start `candidates` (one decision's modules) as slices of the one with the most parameters, in place.

    Every parameter that the largest candidate has under the same name with as many dimensions, each at least
    as large, is copied from it: leading entries of the first two (channel) dimensions, the centre of the
    others (kernels), so a 3x3, expansion-3 candidate starts as the middle of the 7x7, expansion-6 one. Other
    parameters keep their own initialisation. A candidate with `residual` set then has its last batch norm's
    scale zeroed: its block starts as the identity. Draws no random numbers.
    """
    if not candidates:
        return
    largest = max(candidates, key=lambda m: sum(p.numel() for p in m.parameters()))
    source = dict(largest.named_parameters())
    with torch.no_grad():
        for module in candidates:
            if module is not largest:
                for name, param in module.named_parameters():
                    big = source.get(name)
                    if big is not None and big.dim() == param.dim() and all(
                            b >= s for b, s in zip(big.shape, param.shape, strict=True)):
                        param.copy_(big[_slices(big.shape, param.shape)])
        for module in candidates:
            norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
            if getattr(module, "residual", False) and norms:
                norms[-1].weight.zero_()


def _slices(big: torch.Size, small: torch.Size) -> tuple[slice, ...]:
    """Leading entries of dimensions 0 and 1 (output, input channels), the centre of the rest (kernel)."""
    return tuple(slice(0, s) if i < 2 else slice((b - s) // 2, (b - s) // 2 + s)
                 for i, (b, s) in enumerate(zip(big, small, strict=True)))


__all__ = ["ChainSupernet", "align_candidates"]
