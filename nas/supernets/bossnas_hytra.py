"""`BossNASHyTraSupernet`: the HyTra fabric with a `MixedOp` over ResConv / ResAtt per layer and scale.

As BossNAS' supernet (changlin31/BossNAS `searching/bossnas/models/supernets/hytra_supernet.py`
`MixOps`, `operations/hytra_ops.py`): every layer holds a candidate per scale it can run at and per
block kind legal there, and a candidate entered from its own scale or from the next finer one
keeps one body with two entries (the reference's `conv1`/`conv1_d`, `proj`/`proj_d`, shortcut /
`shortcut_d`). The candidates are the retrained blocks of `nas.ops.hytra` made by the space's unit
factories, so `extract(arch)` is `build(arch)` with these weights. The stem, the two empty-stage
convs and the head are fixed units, used when the arch needs them.

Deviations: no stem adapters (the reference maps the stem output to each scale of layer 1 with a
strided depthwise conv; here layer 1 is at 1/4, or at 1/8 after the empty 1/4 stage's conv, as
the retrained network has it); ReLU / SE / shortcut forms follow the space config (the reference
searches with ReLU, no SE and conv3x3 shortcuts). Choice points: `l{i}.op` is layer i's module;
the down-sampling positions are carried out by all layers together (`layers`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from nas.arch import Arch
from nas.ops.hytra import BlockEntry, HyTraBlock
from nas.ops.mixed import MixedOp
from nas.spaces.bossnas_hytra import LAYERS, POSITIONS, BossNASHyTraSpace, LayerSpec
from nas.supernet import Supernet


class _SharedBlock(nn.Module):
    """A block with one body and an entry per input it may get (`keep`: its own scale, `down`: the finer one)."""

    def __init__(self, blocks: Mapping[str, HyTraBlock]) -> None:
        super().__init__()
        first = next(iter(blocks.values()))
        self.entries = nn.ModuleDict({name: block.entry for name, block in blocks.items()})
        self.body = first.body
        self.act = first.act
        self.active_entry = next(iter(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        entry: BlockEntry = self.entries[self.active_entry]
        return self.act(self.body(entry.proj(x)) + entry.shortcut(x))


class _Layer(nn.Module):
    """Layer i of the fabric: per scale (`s0`..`s3`) a `MixedOp` over the block kinds legal there."""

    def __init__(self, scales: Mapping[int, Mapping[str, _SharedBlock]]) -> None:
        super().__init__()
        self.scales = nn.ModuleDict({f"s{k}": MixedOp(dict(ops)) for k, ops in sorted(scales.items())})
        self.active: LayerSpec | None = None

    def set_active(self, spec: LayerSpec) -> None:
        op: MixedOp = self.scales[f"s{spec.scale}"]
        op.set_active(spec.op)
        op.candidate(spec.op).active_entry = spec.entry
        self.active = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.active is not None  # set by the supernet's activate before any run
        return self.scales[f"s{self.active.scale}"](x)

    def state_of(self, spec: LayerSpec, prefix: str) -> dict[str, torch.Tensor]:
        """The chosen candidate's weights (views) under `HyTraBlock`'s names: `entry.*`, `body.*`."""
        block = self.scales[f"s{spec.scale}"].candidate(spec.op)
        state = dict(block.entries[spec.entry].state_dict(prefix=f"{prefix}entry."))
        state.update(block.body.state_dict(prefix=f"{prefix}body."))
        return state


class BossNASHyTraSupernet(Supernet):
    """The weights of every HyTra arch: stem, empty-stage convs, 16 layers of per-scale mixed ops, head.

    Args:
        space: the HyTra space (at its config: widths, resolution, classes, act, SE, last stride).
    """

    space: BossNASHyTraSpace

    def __init__(self, space: BossNASHyTraSpace) -> None:
        super().__init__(space)
        units = space.unit_table
        options: dict[int, dict[int, dict[str, dict[str, HyTraBlock]]]] = {}
        for i, k, entry, op in space.layer_options():
            block = units[space.block_key(op, i, k, entry)][0]()
            options.setdefault(i, {}).setdefault(k, {}).setdefault(op, {})[entry] = block
        self.stem = units[space.stem_key][0]()
        self.s1_empty = units[space.empty_keys[0]][0]()
        self.layers = nn.ModuleDict({
            f"l{i}": _Layer({k: {op: _SharedBlock(entries) for op, entries in ops.items()}
                             for k, ops in options[i].items()})
            for i in range(1, LAYERS + 1)
        })
        self.s4_empty = units[space.empty_keys[3]][0]()
        self.head = units[space.head_key][0]()
        rate = space.config.drop_path
        for i, layer in enumerate(self.layers.values(), 1):  # the rate `build` gives each ResConv of layer i
            for op in layer.scales.values():
                if "resconv" in op.choices:
                    op.candidate("resconv").body.drop_path.p = rate * (i - 1) / (LAYERS - 1)
        self._specs: list[LayerSpec] = []

    def _activate(self, arch: Arch) -> None:
        self._specs = self.space.layer_specs(arch)
        for spec, layer in zip(self._specs, self.layers.values(), strict=True):
            layer.set_active(spec)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, [empty 1/4 conv], the 16 layers at their active scale and kind, [empty 1/32 conv], head."""
        x = self.stem(x)
        if self._specs[0].entry == "down":
            x = self.s1_empty(x)
        for layer in self.layers.values():
            x = layer(x)
        if self._specs[-1].scale < 3:
            x = self.s4_empty(x)
        return self.head(x)

    def arch_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """Fixed units and each layer's chosen candidate (its active entry and body), named as `build` names them."""
        specs = self.space.layer_specs(arch)
        state = dict(self.stem.state_dict(prefix="stem."))
        if specs[0].entry == "down":
            state.update(self.s1_empty.state_dict(prefix="s1_empty."))
        for spec, layer in zip(specs, self.layers.values(), strict=True):
            state.update(layer.state_of(spec, f"l{spec.index}."))
        if specs[-1].scale < 3:
            state.update(self.s4_empty.state_dict(prefix="s4_empty."))
        state.update(self.head.state_dict(prefix="head."))
        return state

    def choice_points(self) -> Mapping[str, nn.Module]:
        """`l{i}.op` -> layer i; each `down.*` -> all layers, which take the scale the positions give them."""
        points: dict[str, nn.Module] = dict.fromkeys(POSITIONS, self.layers)
        points.update({f"l{i}.op": self.layers[f"l{i}"] for i in range(2, LAYERS + 1)})
        return points


__all__ = ["BossNASHyTraSupernet"]
