"""The ShiftNAS ViT supernet: AutoFormer's weight-entangled transformer, every child a leading slice.

Chen, Peng, Fu and Ling, "AutoFormer" (ICCV 2021), reference microsoft/Cream
`AutoFormer/model/supernet_transformer.py` (`Vision_TransformerSuper.set_sample_config`): one patch
embedding, `max depth` encoder layers and one head at the largest child's width E, heads and MLP width
(`nas.ops.elastic_attention`). A child runs the first E channels everywhere, in layer i the first
64 * heads_i query/key/value units and the first int(E * r_i) MLP units, and the first `depth` layers;
the layers past the depth do not run (AutoFormer: identity layers). Module names mirror `build(arch)`'s:
`embed`, layers `l{i}` (inside the `ElasticDepth` `layers`), `head`, so `arch_state_dict` is the walk of
the active modules with the `layers` level dropped. ShiftNAS' probability-shifted sampling and
AutoFormer's training recipe are methods, not the supernet.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from nas.arch import Arch
from nas.ops.elastic import ElasticDepth, collect_active_state
from nas.ops.elastic_attention import ElasticPatchEmbed, ElasticViTBlock, ElasticViTHead
from nas.spaces.shiftnas_vit import ShiftNASViTSpace, mlp_width
from nas.supernet import Supernet


class ShiftNASViTSupernet(Supernet):
    """Patch embedding, `ElasticDepth` of elastic encoder layers, head; all at the largest child's sizes."""

    space: ShiftNASViTSpace

    def __init__(self, space: ShiftNASViTSpace) -> None:
        super().__init__(space)
        cfg, ranges = space.config, space.ranges
        width, heads = max(ranges.embed_dims), max(ranges.heads)
        hidden = max(mlp_width(width, r) for r in ranges.mlp_ratios)
        self.embed = ElasticPatchEmbed(width, cfg.patch_size, cfg.grid)
        self.layers = ElasticDepth({f"l{i}": ElasticViTBlock(width, heads, hidden, cfg.grid, cfg.grid)
                                    for i in range(1, space.max_depth + 1)})
        self.head = ElasticViTHead(width, cfg.num_classes)

    def _activate(self, arch: Arch) -> None:
        c = arch.choices
        width = c["embed_dim"]
        self.embed.set_active(width)
        self.layers.set_active(c["depth"])
        for i, (_, block) in enumerate(self.layers.active_blocks(), 1):
            block.set_active(width, c[f"l{i}.heads"], mlp_width(width, c[f"l{i}.mlp_ratio"]))
        self.head.set_active(width)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding, the active layers (the others do not run), head: (B, 3, R, R) -> (B, classes)."""
        return self.head(self.layers(self.embed(x)))

    def arch_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """The active slices, named as in `build(arch)` (layers are children of its `Sequential`)."""
        with self.activated(arch):
            return {**collect_active_state(self.embed, "embed."), **collect_active_state(self.layers),
                    **collect_active_state(self.head, "head.")}

    def choice_points(self) -> Mapping[str, nn.Module]:
        """`embed_dim` -> the embedding, `depth` -> the layers, `l{i}.heads` -> its qkv, `.mlp_ratio` -> its fc1."""
        points: dict[str, nn.Module] = {"embed_dim": self.embed, "depth": self.layers}
        for i, block in enumerate(self.layers.values(), 1):
            points[f"l{i}.heads"] = block.qkv
            points[f"l{i}.mlp_ratio"] = block.fc1
        return points


__all__ = ["ShiftNASViTSupernet"]
