"""Elastic units of the ViT-ResNAS supernet: each holds the largest child's tensors and runs a leading slice.

The supernet of Liao, Karaman and Sze (yilunliao/vit-search `nets/channel_drop.py`,
`nets/masked_layer_norm.py`, `nets/supernet_blocks.py`) trains every child at full width with
masks: channels >= E zeroed after the stem and each reduction, heads >= h zeroed before the output
projection, hidden units >= H zeroed after the GELU, and a masked layer norm that averages over the
active channels only. Those masks compute exactly what the leading slices compute, which is how the
reference cuts a child's weights for search (`nets/net_utils.py`); these units run the slices
directly, so a step costs the child's compute and gradients reach only its weights. Every unit is
the elastic twin of one in `nas.ops.vit_resnas`, with the same submodule names, so
`collect_active_state` gives the standalone unit's state dict: embedding width E = the first E
channels of every token tensor, h heads = the first h x head_dim rows of each of q, k and v (and the
matching columns of the output projection), H hidden units = the first H of the MLP.

Deviation: the reference's "rewiring" (re-ordering heads and hidden units by weight magnitude during
warm-up) is a training step of the method, not of these units.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas.ops.elastic import Elastic, ElasticConv2d, ElasticLayerNorm, ElasticLinear, collect_active_state
from nas.ops.vit_resnas import (
    LN_EPS,
    STEM_MID,
    Attention,
    ConvStem,
    DropPath,
    Head,
    TransformerBlock,
    init_linear,
    reduce_tokens,
    stem_tokens,
)


def _linear(in_features: int, out_features: int) -> ElasticLinear:
    layer = ElasticLinear(in_features, out_features)
    init_linear(layer.weight, layer.bias)
    return layer


def _check(what: str, value: int, largest: int) -> int:
    if not 1 <= value <= largest:
        raise ValueError(f"{what} {value!r} is not one this op holds; allowed: 1..{largest}")
    return int(value)


class ElasticQKV(Elastic, nn.Module):
    """`nas.ops.vit_resnas.QKV` at its largest width; runs the first `active_width` rows of q, k and v each."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(3, width, dim))
        self.bias = nn.Parameter(torch.empty(3, width))
        init_linear(self.weight, self.bias)
        self.active_dim, self.active_width = dim, width

    def set_active(self, dim: int, width: int) -> None:
        self.active_dim = _check("dim", dim, self.weight.shape[2])
        self.active_width = _check("width", width, self.weight.shape[1])

    def _slices(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight[:, : self.active_width, : self.active_dim], self.bias[:, : self.active_width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., active_dim) -> (..., 3 active_width)."""
        weight, bias = self._slices()
        return F.linear(x, weight.reshape(-1, self.active_dim), bias.reshape(-1))

    def active_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        weight, bias = self._slices()  # views: a (3, w, E) slice of the (3, W, E_max) weight
        return {prefix + "weight": weight.detach(), prefix + "bias": bias.detach()}


class ElasticAttention(Attention):
    """`Attention` with up to `heads` heads of the fixed `head_dim` on tokens of up to `dim` channels."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        nn.Module.__init__(self)
        self.max_heads, self.heads, self.head_dim = heads, heads, head_dim
        self.qkv = ElasticQKV(dim, heads * head_dim)
        self.proj = _linear(heads * head_dim, dim)

    def set_active(self, dim: int, heads: int) -> None:
        self.heads = _check("heads", heads, self.max_heads)
        self.qkv.set_active(dim, heads * self.head_dim)
        self.proj.set_active(in_features=heads * self.head_dim, out_features=dim)


class ElasticMlp(nn.Sequential):
    """`nas.ops.vit_resnas.Mlp` with up to `hidden` hidden units on up to `dim` channels."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = _linear(dim, hidden), nn.GELU(), _linear(hidden, dim)

    def set_active(self, dim: int, hidden: int) -> None:
        self.fc1.set_active(in_features=dim, out_features=hidden)
        self.fc2.set_active(in_features=hidden, out_features=dim)


class ElasticTransformerBlock(TransformerBlock):
    """`TransformerBlock` with elastic width, heads and hidden units (`set_active`)."""

    def __init__(self, dim: int, heads: int, head_dim: int, hidden: int, drop_path_rate: float = 0.0) -> None:
        nn.Module.__init__(self)
        self.norm1 = ElasticLayerNorm(dim, eps=LN_EPS)
        self.attn = ElasticAttention(dim, heads, head_dim)
        self.norm2 = ElasticLayerNorm(dim, eps=LN_EPS)
        self.mlp = ElasticMlp(dim, hidden)
        self.drop_path = DropPath(drop_path_rate)

    def set_active(self, dim: int, heads: int, hidden: int) -> None:
        self.norm1.set_active(dim)
        self.attn.set_active(dim, heads)
        self.norm2.set_active(dim)
        self.mlp.set_active(dim, hidden)


class ElasticConvStem(Elastic, ConvStem):
    """`ConvStem` with up to `dim` output channels: its 3x3 convs are shared whole."""

    def __init__(self, dim: int, grid: int, mid: int = STEM_MID) -> None:
        super().__init__(dim, grid, mid)
        self.active_dim = dim

    def set_active(self, dim: int) -> None:
        self.active_dim = _check("dim", dim, self.conv_proj.out_channels)

    def _slices(self) -> dict[str, torch.Tensor]:
        e = self.active_dim
        return {"conv_proj.weight": self.conv_proj.weight[:e], "conv_proj.bias": self.conv_proj.bias[:e],
                "cls_token": self.cls_token[..., :e], "pos_embed": self.pos_embed[..., :e]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> (B, 1 + (R/14)^2, active_dim)."""
        s = self._slices()
        return stem_tokens(self, x, s["conv_proj.weight"], s["conv_proj.bias"], s["cls_token"], s["pos_embed"])

    def active_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        state = {}
        for name in ("conv1", "conv2", "conv3"):
            state.update(collect_active_state(getattr(self, name), f"{prefix}{name}."))
        state.update({prefix + name: t.detach() for name, t in self._slices().items()})
        return state


class ElasticSpatialReduction(Elastic, nn.Module):
    """`nas.ops.vit_resnas.SpatialReduction` from up to `in_dim` to up to `out_dim` channels."""

    def __init__(self, in_dim: int, out_dim: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.norm = ElasticLayerNorm(in_dim, eps=LN_EPS)
        self.patch_reduce = ElasticConv2d(in_dim, out_dim, 3, 2, bias=True)
        self.token_transform = _linear(in_dim, out_dim)
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, (grid // 2) ** 2, out_dim), std=0.02))

    def set_active(self, in_dim: int, out_dim: int) -> None:
        if out_dim < in_dim:
            raise ValueError(f"ElasticSpatialReduction: out_dim {out_dim} < in_dim {in_dim}")
        self.norm.set_active(in_dim)
        self.patch_reduce.set_active(in_channels=in_dim, out_channels=out_dim)
        self.token_transform.set_active(in_features=in_dim, out_features=out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + s^2, C_in) -> (B, 1 + (s/2)^2, C_out), the active widths."""
        pos = self.pos_embed[..., : self.token_transform.active_out]
        return reduce_tokens(x, self.grid, self.norm, self.patch_reduce, self.token_transform, pos)

    def active_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        state = {}
        for name in ("norm", "patch_reduce", "token_transform"):
            state.update(collect_active_state(getattr(self, name), f"{prefix}{name}."))
        state[prefix + "pos_embed"] = self.pos_embed[..., : self.token_transform.active_out].detach()
        return state


class ElasticHead(Head):
    """`Head` on up to `dim` channels."""

    def __init__(self, dim: int, num_classes: int, patch_head: bool = False) -> None:
        nn.Module.__init__(self)
        self.norm = ElasticLayerNorm(dim, eps=LN_EPS)
        self.cls_head = _linear(dim, num_classes)
        self.patch_head = _linear(dim, num_classes) if patch_head else None

    def set_active(self, dim: int) -> None:
        self.norm.set_active(dim)
        for fc in (self.cls_head, self.patch_head):
            if fc is not None:
                fc.set_active(in_features=dim)


__all__ = [
    "ElasticAttention",
    "ElasticConvStem",
    "ElasticHead",
    "ElasticMlp",
    "ElasticQKV",
    "ElasticSpatialReduction",
    "ElasticTransformerBlock",
]
