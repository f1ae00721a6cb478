"""The ViT-ResNAS supernet: one multi-stage ViT at the largest child, every child a leading slice of it.

Liao, Karaman and Sze (arXiv 2109.00642), reference yilunliao/vit-search
(`nets/vit_sr_supernet.py` with `supernet=True`, `nets/channel_drop.py`, `nets/net_utils.py`). The
stem, every block slot of the three stages, the two reductions and the head are elastic units
(`nas.ops.elastic_vit_resnas`) at the supernet's largest width, heads and MLP width. A child runs
the first E channels of its stage width everywhere (stem projection, class token and position
embeddings, layer norms, reductions, classifier columns), the first h heads of q, k and v and the
first H hidden units of each block, and only the blocks whose slot exists. Module names are those of
`space.build(arch)` (`stem`, `s1_b1`, ..., `sr1`, ..., `head`), so `arch_state_dict` is the walk of
the active units.

Deviations: the reference trains the supernet with masks at full width and several children per
batch (multi-architectural sampling, `example_per_arch`); here one child runs per forward pass, as a
slice, with the same outputs as the masked run of that child. Sampling several children per batch,
the progressive warm-up of the choice lists and the rewiring of heads and hidden units are the
method's (a later issue).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from nas.arch import Arch
from nas.ops.elastic import collect_active_state
from nas.ops.elastic_vit_resnas import ElasticConvStem, ElasticHead, ElasticSpatialReduction, ElasticTransformerBlock
from nas.spaces.vit_resnas import OPTIONAL_SLOTS, ViTResNASSpace
from nas.supernet import Supernet


class ViTResNASSupernet(Supernet):
    """Elastic stem, every block slot of the three stages, two elastic reductions and the head."""

    space: ViTResNASSpace

    def __init__(self, space: ViTResNASSpace) -> None:
        super().__init__(space)
        cfg, stages = space.config, space.stages
        self.stem = ElasticConvStem(max(stages[0].widths), stages[0].grid)
        for stage in stages:
            s = stage.index
            if s > 1:
                before = stages[s - 2]
                self.add_module(f"sr{s - 1}",
                                ElasticSpatialReduction(max(before.widths), max(stage.widths), before.grid))
            for j in range(1, stage.slots + 1):
                name = f"s{s}_b{j}"
                self.add_module(name, ElasticTransformerBlock(max(stage.widths), max(stage.heads), stage.head_dim,
                                                              max(stage.mlps), space.drop_path_rate(name)))
        self.head = ElasticHead(max(stages[-1].widths), cfg.num_classes, cfg.patch_head)
        self._running: list[str] = []

    def _activate(self, arch: Arch) -> None:
        c = arch.choices
        self.stem.set_active(c["s1.width"])
        for stage in self.space.stages:
            s, width = stage.index, c[f"s{stage.index}.width"]
            if s > 1:
                self.get_submodule(f"sr{s - 1}").set_active(c[f"s{s - 1}.width"], width)
            for j in range(1, stage.slots + 1):
                self.get_submodule(f"s{s}_b{j}").set_active(width, c[f"s{s}.b{j}.heads"], c[f"s{s}.b{j}.mlp"])
        self.head.set_active(c["s3.width"])
        self._running = [name for name, _ in self.space._named_keys(arch)]  # removed slots do not run

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._running[:-1]:
            x = self.get_submodule(name)(x)
        return x

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The active child: stem, its blocks and the reductions in order, head."""
        return self.head(self._body(x))

    def forward_with_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class and per-patch logits of the active child (space config `patch_head: true`)."""
        return self.head.with_patches(self._body(x))

    def arch_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """The active units' sliced tensors, named as in `build(arch)`."""
        with self.activated(arch):
            state: dict[str, torch.Tensor] = {}
            for name in self._running:
                state.update(collect_active_state(self.get_submodule(name), f"{name}."))
            return state

    def choice_points(self) -> Mapping[str, nn.Module]:
        """`s1.width` -> the stem, `s{2,3}.width` -> the reduction before the stage; a slot's decisions -> its block."""
        points: dict[str, nn.Module] = {"s1.width": self.stem}
        for stage in self.space.stages:
            s = stage.index
            if s > 1:
                points[f"s{s}.width"] = self.get_submodule(f"sr{s - 1}")
            for j in range(1, stage.slots + 1):
                block = self.get_submodule(f"s{s}_b{j}")
                points.update({f"s{s}.b{j}.heads": block, f"s{s}.b{j}.mlp": block})
                if j in OPTIONAL_SLOTS:
                    points[f"s{s}.b{j}.exists"] = block
        return points


__all__ = ["ViTResNASSupernet"]
