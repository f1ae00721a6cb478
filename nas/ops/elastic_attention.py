"""Vision-transformer ops, standalone and elastic: AutoFormer's weight-entangled attention, MLP, patch embedding, head.

AutoFormer (Chen, Peng, Fu and Ling, ICCV 2021; microsoft/Cream `AutoFormer/model/supernet_transformer.py`,
`AutoFormer/model/module/{qkv_super,Linear_super,layernorm_super,embedding_super,multihead_super}.py`) holds
one transformer at its largest embedding width E, heads h, MLP width and depth, and runs a smaller child as
leading slices of its tensors (weight entanglement): the first E channels of the patch embedding, class
token, position embedding, layer norms and every linear layer's input, the first 64 h query/key/value
units (head dim fixed at 64, `--change_qkv`), the first int(E * r) MLP units, the first d layers. Each
standalone op here (`PatchEmbed`, `ViTBlock`, `ViTHead`) has an elastic twin that holds the largest tensors,
runs the active setting with the same function and gives that standalone op's state dict
(`active_state_dict`, via `nas.ops.elastic.collect_active_state`); the slices are views, so gradients
reach only the active weights.

Attention is plain batched matrix products and a softmax (ONNX: MatMul, Softmax, Gather), pre-norm,
exact GELU, qkv bias, scale 64 ** -0.5. The fused qkv weight keeps AutoFormer's `qkv_super` layout, in
which a leading slice of rows is a leading slice of heads: row 3j + i is unit j of q (i = 0), k (1) or
v (2); `sample_weight` regroups the rows to q | k | v, while `sample_bias` takes the leading 3Q bias
entries as they are (blocked q | k | v of width Q): both kept here, so AutoFormer's slicing of the bias
(a unit's k bias in a 3-head child is a q bias in the 4-head one) is reproduced, not repaired. The 2-D
relative-position tables (AutoFormer's `RelativePosition2D_super`, NNI 3.0's `RelativePosition2D`) are
(2L + 2, 64) each, row 0 for the class token: with the head dim fixed they are shared by all heads and
never sliced. Their token-pair indices depend only on the token grid, so they are computed once
(non-persistent buffers) instead of in every forward pass.

Deviations: linear layers run on (B * N, C) matrices and attention on (B * h, N, 64) batches (the same
products, in the shapes the MAC counter counts); no dropout or drop path (training-only, 0 at inference
in AutoFormer); initialisation as AutoFormer's `_init_weights` (truncated normal 0.02 for linear weights
and the embeddings, zero biases).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas.ops.elastic import Elastic, ElasticLayerNorm, ElasticLinear, _check_choice

HEAD_DIM = 64
"""AutoFormer's head width with `--change_qkv` (`sample_q_embed_dim = heads * 64`)."""
_SCALE = HEAD_DIM**-0.5
_STD = 0.02  # AutoFormer `_init_weights` and `trunc_normal_(std=.02)`


def _init_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    nn.init.trunc_normal_(weight, std=_STD)
    if bias is not None:
        nn.init.zeros_(bias)


def _linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    _init_linear(layer.weight, layer.bias)
    return layer


def _elastic_linear(in_features: int, out_features: int) -> ElasticLinear:
    layer = ElasticLinear(in_features, out_features)
    _init_linear(layer.weight, layer.bias)
    return layer


class RelativePosition2D(nn.Module):
    """AutoFormer's 2-D relative position embedding: (N, N, 64) from a row table and a column table.

    Args:
        length: largest row or column distance L told apart (AutoFormer: 14; NNI: the grid side).
        grid: patches per side, so N = grid ** 2 + 1 tokens (class token first, its index 0).
    """

    def __init__(self, length: int, grid: int, head_dim: int = HEAD_DIM) -> None:
        super().__init__()
        self.length, self.grid = length, grid
        self.embeddings_table_v = nn.Parameter(torch.empty(2 * length + 2, head_dim))
        self.embeddings_table_h = nn.Parameter(torch.empty(2 * length + 2, head_dim))
        nn.init.trunc_normal_(self.embeddings_table_v, std=_STD)
        nn.init.trunc_normal_(self.embeddings_table_h, std=_STD)
        patch = torch.arange(grid * grid)
        for name, coord in (("index_v", patch // grid), ("index_h", patch % grid)):
            # [i, j] = clip(coord(j) - coord(i), -L, L) + L + 1, padded with 0 for pairs with the class token.
            distance = (coord[None, :] - coord[:, None]).clamp(-length, length) + length + 1
            self.register_buffer(name, F.pad(distance, (1, 0, 1, 0)), persistent=False)

    def forward(self) -> torch.Tensor:
        """(N, N, head_dim) embeddings of every token pair."""
        return self.embeddings_table_v[self.index_v] + self.embeddings_table_h[self.index_h]

    def extra_repr(self) -> str:
        return f"length={self.length}, grid={self.grid}"


def _attend(x: torch.Tensor, qkv: torch.Tensor, heads: int, rel_k: RelativePosition2D,
            rel_v: RelativePosition2D) -> torch.Tensor:
    """Multi-head attention with relative positions [multihead_super.py]: qkv (B * N, 3 * 64 h) -> (B * N, 64 h)."""
    b, n = x.shape[0], x.shape[1]
    qkv = qkv.reshape(b, n, 3, heads, HEAD_DIM).permute(2, 0, 3, 1, 4).reshape(3, b * heads, n, HEAD_DIM)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B * h, N, 64) each
    attn = torch.bmm(q, k.transpose(1, 2)) * _SCALE  # (B * h, N, N)
    attn = attn + torch.bmm(q.transpose(0, 1), rel_k().transpose(1, 2)).transpose(0, 1) * _SCALE
    attn = attn.softmax(dim=-1)
    out = torch.bmm(attn, v) + torch.bmm(attn.transpose(0, 1), rel_v()).transpose(0, 1)  # (B * h, N, 64)
    return out.reshape(b, heads, n, HEAD_DIM).transpose(1, 2).reshape(b * n, heads * HEAD_DIM)


def _qkv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(M, E) -> (M, 3Q) as q | k | v from the interleaved (3Q, E) weight and blocked bias [qkv_super.py]."""
    q_dim, e = weight.shape[0] // 3, weight.shape[1]
    grouped = weight.reshape(q_dim, 3, e).transpose(0, 1).reshape(3 * q_dim, e)  # rows i::3 first, i = q, k, v
    return F.linear(x, grouped, bias)


class FusedQKV(nn.Module):
    """The q, k, v projections of `heads` heads in AutoFormer's layout (see the module docstring)."""

    def __init__(self, embed_dim: int, heads: int) -> None:
        super().__init__()
        self.embed_dim, self.heads = embed_dim, heads
        self.weight = nn.Parameter(torch.empty(3 * heads * HEAD_DIM, embed_dim))
        self.bias = nn.Parameter(torch.empty(3 * heads * HEAD_DIM))
        _init_linear(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(M, E) -> (M, 3 * 64 h)."""
        return _qkv(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.embed_dim}, heads={self.heads}"


class ElasticFusedQKV(Elastic, nn.Module):
    """`FusedQKV` of the largest width and heads, running the leading E inputs and 3 * 64 h rows."""

    def __init__(self, embed_dim: int, heads: int) -> None:
        super().__init__()
        self.embed_dim, self.heads = embed_dim, heads
        self.weight = nn.Parameter(torch.empty(3 * heads * HEAD_DIM, embed_dim))
        self.bias = nn.Parameter(torch.empty(3 * heads * HEAD_DIM))
        _init_linear(self.weight, self.bias)
        self.active_in, self.active_heads = embed_dim, heads

    def set_active(self, embed_dim: int, heads: int) -> None:
        """Run the first `embed_dim` inputs and the first `heads` heads of q, k and v."""
        self.active_in = _check_choice("embed_dim", embed_dim, range(1, self.embed_dim + 1))
        self.active_heads = _check_choice("heads", heads, range(1, self.heads + 1))

    def _active(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = 3 * self.active_heads * HEAD_DIM
        return self.weight[:rows, : self.active_in], self.bias[:rows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(M, active E) -> (M, 3 * 64 h)."""
        weight, bias = self._active()
        return _qkv(x, weight, bias)

    def active_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        weight, bias = self._active()
        return {prefix + "weight": weight.detach(), prefix + "bias": bias.detach()}

    def extra_repr(self) -> str:
        return f"{self.embed_dim}, heads={self.heads}, active=({self.active_in}, {self.active_heads} heads)"


def _block_forward(block: ViTBlock | ElasticViTBlock, heads: int, x: torch.Tensor) -> torch.Tensor:
    """Pre-norm attention and MLP, each with a residual [supernet_transformer.py `TransformerEncoderLayer`]."""
    b, n, e = x.shape
    y = block.attn_layer_norm(x).reshape(b * n, e)
    y = block.proj(_attend(x, block.qkv(y), heads, block.rel_pos_embed_k, block.rel_pos_embed_v))
    x = x + y.reshape(b, n, e)
    y = block.fc2(F.gelu(block.fc1(block.ffn_layer_norm(x).reshape(b * n, e))))
    return x + y.reshape(b, n, e)


class ViTBlock(nn.Module):
    """One AutoFormer encoder layer: embedding width E, `heads` heads of 64, MLP width `mlp_width`.

    Args:
        embed_dim: E.
        heads: attention heads (q, k, v widths 64 * heads).
        mlp_width: MLP hidden units (AutoFormer: int(E * mlp_ratio)).
        grid: patches per side (N = grid ** 2 + 1 tokens).
        rpe_length: largest distance of the relative-position tables.
    """

    def __init__(self, embed_dim: int, heads: int, mlp_width: int, grid: int, rpe_length: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_layer_norm = nn.LayerNorm(embed_dim)
        self.qkv = FusedQKV(embed_dim, heads)
        self.rel_pos_embed_k = RelativePosition2D(rpe_length, grid)
        self.rel_pos_embed_v = RelativePosition2D(rpe_length, grid)
        self.proj = _linear(heads * HEAD_DIM, embed_dim)
        self.ffn_layer_norm = nn.LayerNorm(embed_dim)
        self.fc1 = _linear(embed_dim, mlp_width)
        self.fc2 = _linear(mlp_width, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, E) -> (B, N, E)."""
        return _block_forward(self, self.heads, x)


class ElasticViTBlock(nn.Module):
    """`ViTBlock` at the largest E, heads and MLP width; runs leading slices (`set_active`).

    Submodules are named as `ViTBlock`'s, so `collect_active_state(block)` loads into the `ViTBlock` of
    the active setting.
    """

    def __init__(self, embed_dim: int, heads: int, mlp_width: int, grid: int, rpe_length: int) -> None:
        super().__init__()
        self.attn_layer_norm = ElasticLayerNorm(embed_dim)
        self.qkv = ElasticFusedQKV(embed_dim, heads)
        self.rel_pos_embed_k = RelativePosition2D(rpe_length, grid)
        self.rel_pos_embed_v = RelativePosition2D(rpe_length, grid)
        self.proj = _elastic_linear(heads * HEAD_DIM, embed_dim)
        self.ffn_layer_norm = ElasticLayerNorm(embed_dim)
        self.fc1 = _elastic_linear(embed_dim, mlp_width)
        self.fc2 = _elastic_linear(mlp_width, embed_dim)

    @property
    def active_heads(self) -> int:
        return self.qkv.active_heads

    def set_active(self, embed_dim: int, heads: int, mlp_width: int) -> None:
        """Run width `embed_dim`, the first `heads` heads and the first `mlp_width` MLP units."""
        self.qkv.set_active(embed_dim, heads)
        self.proj.set_active(in_features=heads * HEAD_DIM, out_features=embed_dim)
        self.fc1.set_active(in_features=embed_dim, out_features=mlp_width)
        self.fc2.set_active(in_features=mlp_width, out_features=embed_dim)
        self.attn_layer_norm.set_active(embed_dim)
        self.ffn_layer_norm.set_active(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, active E) -> (B, N, active E)."""
        return _block_forward(self, self.active_heads, x)

    def extra_repr(self) -> str:
        return f"active=(E {self.fc1.active_in}, {self.active_heads} heads, mlp {self.fc1.active_out})"


def _embed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, cls_token: torch.Tensor,
           pos_embed: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, 3, R, R) -> (B, N, E): patches by a stride-p conv, class token first, plus the absolute positions."""
    x = F.conv2d(x, weight, bias, stride=patch_size).flatten(2).transpose(1, 2)  # (B, grid ** 2, E)
    return torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1) + pos_embed


class PatchEmbed(nn.Module):
    """Patch embedding [embedding_super.py], class token and absolute position embedding of width E."""

    def __init__(self, embed_dim: int, patch_size: int, grid: int, in_channels: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.empty(1, grid * grid + 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=_STD)
        nn.init.trunc_normal_(self.pos_embed, std=_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, R, R) -> (B, N, E)."""
        return _embed(x, self.proj.weight, self.proj.bias, self.cls_token, self.pos_embed, self.patch_size)


class ElasticPatchEmbed(Elastic, nn.Module):
    """`PatchEmbed` of the largest width, running the leading `active_embed` channels."""

    def __init__(self, embed_dim: int, patch_size: int, grid: int, in_channels: int = 3) -> None:
        super().__init__()
        self.embed_dim, self.patch_size = embed_dim, patch_size
        standalone = PatchEmbed(embed_dim, patch_size, grid, in_channels)  # its initialisation
        self.weight, self.bias = standalone.proj.weight, standalone.proj.bias
        self.cls_token, self.pos_embed = standalone.cls_token, standalone.pos_embed
        self.active_embed = embed_dim

    def set_active(self, embed_dim: int) -> None:
        """Run the first `embed_dim` channels."""
        self.active_embed = _check_choice("embed_dim", embed_dim, range(1, self.embed_dim + 1))

    def _active(self) -> dict[str, torch.Tensor]:
        e = self.active_embed
        return {"proj.weight": self.weight[:e], "proj.bias": self.bias[:e], "cls_token": self.cls_token[..., :e],
                "pos_embed": self.pos_embed[..., :e]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, R, R) -> (B, N, active E)."""
        t = self._active()
        return _embed(x, t["proj.weight"], t["proj.bias"], t["cls_token"], t["pos_embed"], self.patch_size)

    def active_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {prefix + name: t.detach() for name, t in self._active().items()}

    def extra_repr(self) -> str:
        return f"{self.embed_dim}, active={self.active_embed}"


def _head_forward(head: ViTHead | ElasticViTHead, x: torch.Tensor) -> torch.Tensor:
    """Final layer norm, mean of the patch tokens (AutoFormer `--gp`), classifier: (B, N, E) -> (B, classes)."""
    return head.linear(head.norm(x)[:, 1:].mean(dim=1))


class ViTHead(nn.Module):
    """Final layer norm, global average pooling over the patch tokens and the linear classifier."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.linear = _linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, E) -> (B, classes)."""
        return _head_forward(self, x)


class ElasticViTHead(nn.Module):
    """`ViTHead` of the largest width, running the leading `embed_dim` features (`set_active`)."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = ElasticLayerNorm(embed_dim)
        self.linear = _elastic_linear(embed_dim, num_classes)

    def set_active(self, embed_dim: int) -> None:
        self.norm.set_active(embed_dim)
        self.linear.set_active(in_features=embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, active E) -> (B, classes)."""
        return _head_forward(self, x)


__all__ = [
    "HEAD_DIM",
    "ElasticFusedQKV",
    "ElasticPatchEmbed",
    "ElasticViTBlock",
    "ElasticViTHead",
    "FusedQKV",
    "PatchEmbed",
    "RelativePosition2D",
    "ViTBlock",
    "ViTHead",
]
