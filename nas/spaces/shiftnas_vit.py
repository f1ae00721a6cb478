"""The ShiftNAS ViT space (ShiftFormer): AutoFormer's Tiny, Small and Base supernets.

ShiftNAS (Zhang, Yu, Zhao and Ou, "ShiftNAS: Improving One-shot NAS via Probability Shift", ICCV 2023)
searches AutoFormer's three ViT supernets (Chen, Peng, Fu and Ling, "AutoFormer: Searching Transformers
for Visual Recognition", ICCV 2021; microsoft/Cream `AutoFormer/model/supernet_transformer.py`,
`AutoFormer/experiments/{supernet,subnet}/*.yaml`): one embedding width E for the whole network, a depth,
and per layer the heads (of width 64) and the MLP ratio r (hidden width int(E * r)); ShiftNAS released no
code or architectures. The network (`nas.ops.elastic_attention`): a p x p patch embedding with class
token and absolute position embedding, pre-norm encoder layers with 2-D relative-position tables for
keys and values, a final layer norm, the mean of the patch tokens (`--gp`) and a linear classifier.
The config key `supernet` picks the ranges:

| supernet | embed_dim     | depth      | heads    | mlp_ratio     |
|----------|---------------|------------|----------|---------------|
| tiny     | 192, 216, 240 | 12, 13, 14 | 3, 4     | 3.0, 3.5, 4.0 |
| small    | 320, 384, 448 | 12, 13, 14 | 5, 6, 7  | 3.0, 3.5, 4.0 |
| base     | 528, 576, 624 | 14, 15, 16 | 8, 9, 10 | 3.0, 3.5, 4.0 |

These are NNI 3.0's `AutoFormer.preset` ranges (`nni/nas/hub/pytorch/autoformer.py`), in which the
published AutoFormer-T/S/B (the presets `autoformer_t/s/b`, from `experiments/subnet/AutoFormer-*.yaml`)
are children. AutoFormer's own `supernet-T.yaml` lists MLP ratios 3.5, 4 only, although its released
AutoFormer-T uses 3.0 in three layers, and `supernet-B.yaml` lists heads 9, 10 where `AutoFormer-B.yaml`
lists 8, 9, 10; every one of these is a leading slice of the allocated supernet, so the wider sets are taken.
MLP ratios are the string tokens "3.0", "3.5", "4.0" (choices are strings or integers).

Layers past the depth are inactive, as in OFA's slot encoding (`ofa_mbv3`) and AutoFormer's
identity layers: they keep their choices, which change neither the network nor its keys; `mutate`
changes only active decisions (`active_choices`).

Deviations: the supernet holds the largest child (E 240 / 448 / 624 and its MLP width) where AutoFormer
allocates 256 / 448 / 640 channels and MLP ratio 4 of those, of which no child uses more than this;
the relative-position tables span the grid side L = resolution / patch (NNI; AutoFormer's default
`--max_relative_position 14` equals it at 224 px and patch 16); the patch size is a config key (16 in
AutoFormer) so the demo config can keep a grid at 32 px; no dropout or drop path (training only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from nas.arch import Arch, Choice
from nas.chain_space import NamedUnitsSpace
from nas.ops.elastic_attention import HEAD_DIM, PatchEmbed, ViTBlock, ViTHead
from nas.registry import SPACES
from nas.space import MAX_RESOLUTION, Decision, LatencyTerm, NumClasses, SpaceConfig, hwc

MAX_GRID = 64
"""Patches per side at most: 4097 tokens, whose attention maps at batch 1 still fit in memory."""


@dataclass(frozen=True)
class Ranges:
    """The choices of one AutoFormer supernet."""

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    mlp_ratios: tuple[str, ...]


SUPERNETS: Mapping[str, Ranges] = {
    "tiny": Ranges((192, 216, 240), (12, 13, 14), (3, 4), ("3.0", "3.5", "4.0")),
    "small": Ranges((320, 384, 448), (12, 13, 14), (5, 6, 7), ("3.0", "3.5", "4.0")),
    "base": Ranges((528, 576, 624), (14, 15, 16), (8, 9, 10), ("3.0", "3.5", "4.0")),
}


def mlp_width(embed_dim: int, ratio: Choice) -> int:
    """AutoFormer's MLP hidden width int(E * r) [supernet_transformer.py `TransformerEncoderLayer`]."""
    return int(embed_dim * float(ratio))


class ShiftNASViTConfig(SpaceConfig):
    """Input size, classes, which AutoFormer supernet, and the patch size (AutoFormer: 16)."""

    resolution: int = Field(ge=1, le=MAX_RESOLUTION)
    num_classes: NumClasses
    supernet: Literal["tiny", "small", "base"] = "tiny"
    patch_size: int = 16

    @field_validator("patch_size")
    @classmethod
    def _patches_tile_the_image(cls, p: int, info: ValidationInfo) -> int:
        r = info.data.get("resolution")
        if r is not None and (p < 1 or r % p or r // p > MAX_GRID):
            raise ValueError(f"must divide resolution {r} into at most {MAX_GRID} patches per side; "
                             f"allowed: {', '.join(map(str, _patch_sizes(r)))}")
        return p

    @property
    def grid(self) -> int:
        return self.resolution // self.patch_size

    @property
    def tokens(self) -> int:
        return self.grid**2 + 1


def _patch_sizes(resolution: int) -> list[int]:
    return [p for p in range(1, resolution + 1) if resolution % p == 0 and resolution // p <= MAX_GRID]


@SPACES.register("shiftnas_vit")
class ShiftNASViTSpace(NamedUnitsSpace):
    """AutoFormer-T/S/B supernet spaces: embedding width, depth, per-layer heads and MLP ratio."""

    name = "shiftnas_vit"
    config_model = ShiftNASViTConfig
    config: ShiftNASViTConfig

    @property
    def ranges(self) -> Ranges:
        return SUPERNETS[self.config.supernet]

    @property
    def max_depth(self) -> int:
        return max(self.ranges.depths)

    def decisions(self) -> list[Decision]:
        """`embed_dim`, `depth`, then `l{i}.heads` and `l{i}.mlp_ratio` for every layer up to the largest depth."""
        ranges = self.ranges
        out = [Decision("embed_dim", ranges.embed_dims), Decision("depth", ranges.depths)]
        for i in range(1, self.max_depth + 1):
            out += [Decision(f"l{i}.heads", ranges.heads), Decision(f"l{i}.mlp_ratio", ranges.mlp_ratios)]
        return out

    def latency_terms(self) -> list[LatencyTerm]:
        """Embedding and head on the width; each layer on (width, heads, MLP ratio), and on depth past the least."""
        terms = [LatencyTerm(("embed_dim",), lambda c: (self._embed_key(c[0]),))]
        for i in range(1, self.max_depth + 1):
            layer = (f"l{i}.heads", f"l{i}.mlp_ratio")
            if i <= min(self.ranges.depths):  # always active
                terms.append(LatencyTerm(("embed_dim", *layer), lambda c: (self._block_key(*c),)))
            else:
                terms.append(LatencyTerm(("embed_dim", "depth", *layer), partial(self._optional_block_key, i)))
        return [*terms, LatencyTerm(("embed_dim",), lambda c: (self._head_key(c[0]),))]

    # -- helpers ------------------------------------------------------------------
    def active_decisions(self, choices: Mapping[str, Choice]) -> list[str]:
        """Width, depth, and the heads and MLP ratio of the layers within the depth."""
        names = ["embed_dim", "depth"]
        for i in range(1, int(choices["depth"]) + 1):
            names += [f"l{i}.heads", f"l{i}.mlp_ratio"]
        return names

    def _named_keys(self, arch: Arch) -> list[tuple[str, str]]:
        """`embed`, one unit per active layer `l{i}` (tokens, width, heads x 64, MLP width), `head`."""
        self.check_own(arch)
        c = arch.choices
        e = c["embed_dim"]
        named = [("embed", self._embed_key(e))]
        named += [(f"l{i}", self._block_key(e, c[f"l{i}.heads"], c[f"l{i}.mlp_ratio"]))
                  for i in range(1, c["depth"] + 1)]
        return [*named, ("head", self._head_key(e))]

    def _embed_key(self, embed_dim: Choice) -> str:
        cfg = self.config
        return f"patch_embed-in{hwc(cfg.resolution, 3)}-p{cfg.patch_size}-out{cfg.tokens}x{embed_dim}"

    def _block_key(self, embed_dim: Choice, heads: Choice, ratio: Choice) -> str:
        cfg = self.config
        return (f"vit_block-in{cfg.tokens}x{embed_dim}-h{heads}x{HEAD_DIM}-mlp{mlp_width(int(embed_dim), ratio)}"
                f"-rpe{cfg.grid}")

    def _optional_block_key(self, layer: int, choices: tuple[Choice, ...]) -> tuple[str, ...]:
        """The key of layer `layer` for (width, depth, heads, ratio); none when the depth leaves it inactive."""
        embed_dim, depth, heads, ratio = choices
        return (self._block_key(embed_dim, heads, ratio),) if int(depth) >= layer else ()

    def _head_key(self, embed_dim: Choice) -> str:
        return f"vit_head-in{self.config.tokens}x{embed_dim}-gap-out{self.config.num_classes}"

    @cached_property
    def unit_table(self) -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]]:
        """Latency key -> (module factory, input shape): (3, R, R) for the embedding, (N, E) for the rest."""
        cfg, ranges = self.config, self.ranges
        units: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {}
        for e in ranges.embed_dims:
            tokens = (cfg.tokens, e)
            units[self._embed_key(e)] = (partial(PatchEmbed, e, cfg.patch_size, cfg.grid),
                                         (3, cfg.resolution, cfg.resolution))
            for h in ranges.heads:
                for r in ranges.mlp_ratios:
                    # rpe length = grid side, as NNI's hub model (img_size // patch_size)
                    units[self._block_key(e, h, r)] = (
                        partial(ViTBlock, e, h, mlp_width(e, r), cfg.grid, cfg.grid), tokens)
            units[self._head_key(e)] = (partial(ViTHead, e, cfg.num_classes), tokens)
        return units

    def supernet(self):
        """AutoFormer's weight-entangled supernet of the chosen size (`ShiftNASViTSupernet`)."""
        from nas.supernets.shiftnas_vit import ShiftNASViTSupernet

        return ShiftNASViTSupernet(self)


__all__ = ["SUPERNETS", "Ranges", "ShiftNASViTConfig", "ShiftNASViTSpace", "mlp_width"]
