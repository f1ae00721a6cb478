"""Units of the multi-stage ViT of ViT-ResNAS: conv stem, transformer block, residual spatial reduction, head.

Liao, Karaman and Sze, "Searching for Efficient Multi-Stage Vision Transformers" (arXiv 2109.00642),
as implemented in yilunliao/vit-search (`nets/patch_conv.py`, `nets/supernet_blocks.py`,
`nets/vit_sr_supernet.py`). A network is a sequence of token tensors (B, 1 + patches, E), the class
token first: `ConvStem` (3x3 s2 conv, two 3x3 convs with a residual add, a 7x7 stride-7 projection:
patch size 14; class token and position embedding), `TransformerBlock`s (pre-norm attention whose width
heads x head_dim is independent of E, and an MLP of absolute hidden width), `SpatialReduction` between
stages (3x3 s2 conv on the normalised patches with a new position embedding, a linear map of the class
token, plus the un-normalised input average-pooled 2x2 and zero-padded to the new width) and `Head`
(layer norm and linear classifier on the class token; optionally the training-only per-patch head).
Layer norms use eps 1e-6, batch norms PyTorch's defaults, linear layers a truncated normal (std 0.02)
as in the reference.

Deviations: the fused q, k, v projection keeps its weight as (3, heads x head_dim, E) and its bias as
(3, heads x head_dim) instead of a (3 heads x head_dim, E) `nn.Linear` (the same numbers, reshaped), so
the first h heads of q, k and v of a wider one are one leading slice (a view, what the supernet
shares); the reference's distillation-token variant is not built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas.ops.mbconv import ConvBNAct

PATCH = 14
"""Total patch size of the stem (a 2x2 stride then a 7x7 one); the reference asserts it."""
STEM_MID = 24
"""Width of the stem's 3x3 convs in every released model (network_def type 4)."""
LN_EPS = 1e-6
BN_EPS = 1e-5  # PyTorch's default, which the reference's stem uses


def init_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """The reference's `_init_weights` for linear layers: weight ~ N(0, 0.02) truncated to [-2, 2], bias 0."""
    nn.init.trunc_normal_(weight, std=0.02)
    if bias is not None:
        nn.init.zeros_(bias)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (timm's `drop_path`): zero a sample's branch with probability p, scale the rest."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep) * mask


class DropPath(nn.Module):
    """`drop_path` as a module; its rate belongs to the block's position, not to its shape."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attend(qkv: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Multi-head softmax attention: (B, N, 3 h d) fused q, k, v -> (B, N, h d), heads concatenated.

    Plain matmul and softmax (no fused kernel), so it exports with the standard ONNX opset.
    """
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
    scores = (q @ k.transpose(-2, -1)) * head_dim**-0.5  # (B, h, N, N)
    return (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, heads * head_dim)


class QKV(nn.Module):
    """The fused q, k, v projection E -> 3 x width: weight (3, width, E), bias (3, width)."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(3, width, dim))
        self.bias = nn.Parameter(torch.empty(3, width))
        init_linear(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., E) -> (..., 3 width): q, then k, then v."""
        return F.linear(x, self.weight.reshape(-1, self.weight.shape[-1]), self.bias.reshape(-1))


class Attention(nn.Module):
    """`heads` heads of width `head_dim` on tokens of width `dim`, with q, k, v and output biases."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = QKV(dim, heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)
        init_linear(self.proj.weight, self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, E) -> (B, N, E)."""
        return self.proj(attend(self.qkv(x), self.heads, self.head_dim))


class Mlp(nn.Sequential):
    """Linear E -> hidden, GELU, linear hidden -> E."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        for fc in (self.fc1, self.fc2):
            init_linear(fc.weight, fc.bias)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + DropPath(Attention(LN(x))), then x + DropPath(Mlp(LN(x))) [supernet_blocks.py]."""

    def __init__(self, dim: int, heads: int, head_dim: int, hidden: int, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, hidden)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, E) -> (B, N, E)."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvStem(nn.Module):
    """(B, 3, R, R) -> (B, 1 + (R/14)^2, E): conv stem [patch_conv.py], class token, position embedding."""

    def __init__(self, dim: int, grid: int, mid: int = STEM_MID) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(3, mid, 3, 2, act=nn.ReLU, bn_eps=BN_EPS)
        self.conv2 = ConvBNAct(mid, mid, 3, act=nn.ReLU, bn_eps=BN_EPS)
        self.conv3 = ConvBNAct(mid, mid, 3, act=nn.ReLU, bn_eps=BN_EPS)
        self.conv_proj = nn.Conv2d(mid, dim, PATCH // 2, PATCH // 2)
        self.cls_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, dim), std=0.02))
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, grid * grid + 1, dim), std=0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stem_tokens(self, x, self.conv_proj.weight, self.conv_proj.bias, self.cls_token, self.pos_embed)


def stem_tokens(stem: nn.Module, x: torch.Tensor, proj_weight: torch.Tensor, proj_bias: torch.Tensor,
                cls_token: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
    """The stem's forward pass with the given projection and token tensors (a supernet passes slices)."""
    x = stem.conv1(x)  # (B, mid, R/2, R/2)
    x = stem.conv3(stem.conv2(x)) + x  # no activation after the add
    x = F.conv2d(x, proj_weight, proj_bias, PATCH // 2).flatten(2).transpose(1, 2)  # (B, (R/14)^2, E)
    return torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1) + pos_embed


class SpatialReduction(nn.Module):
    """Residual spatial reduction between stages [vit_sr_supernet.py `SpatialReductionPatchEmbedding`].

    (B, 1 + s^2, C_in) -> (B, 1 + (s/2)^2, C_out), C_out >= C_in, s even: the normalised patches go
    through a 3x3 stride-2 conv and get a new position embedding, the normalised class token a linear
    map; the un-normalised input, its patches average-pooled 2x2, is zero-padded to C_out and added.
    """

    def __init__(self, in_dim: int, out_dim: int, grid: int) -> None:
        super().__init__()
        if out_dim < in_dim or grid % 2:
            raise ValueError(f"SpatialReduction: needs out_dim >= in_dim and an even grid, got {in_dim}->{out_dim}, "
                             f"grid {grid}")
        self.grid = grid
        self.norm = nn.LayerNorm(in_dim, eps=LN_EPS)
        self.patch_reduce = nn.Conv2d(in_dim, out_dim, 3, 2, 1)
        self.token_transform = nn.Linear(in_dim, out_dim)
        init_linear(self.token_transform.weight, self.token_transform.bias)
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, (grid // 2) ** 2, out_dim), std=0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reduce_tokens(x, self.grid, self.norm, self.patch_reduce, self.token_transform, self.pos_embed)


def reduce_tokens(x: torch.Tensor, grid: int, norm: nn.Module, patch_reduce: nn.Module, token_transform: nn.Module,
                  pos_embed: torch.Tensor) -> torch.Tensor:
    """`SpatialReduction`'s forward pass with the given parts (a supernet passes elastic ones and a slice)."""
    b, _, c = x.shape
    y = norm(x)
    patches = y[:, 1:].transpose(1, 2).reshape(b, c, grid, grid)
    patches = patch_reduce(patches).flatten(2).transpose(1, 2) + pos_embed  # (B, (s/2)^2, C_out)
    main = torch.cat((token_transform(y[:, :1]), patches), dim=1)
    pooled = F.avg_pool2d(x[:, 1:].transpose(1, 2).reshape(b, c, grid, grid), 2).flatten(2).transpose(1, 2)
    skip = torch.cat((x[:, :1], pooled), dim=1)  # (B, 1 + (s/2)^2, C_in)
    return main + F.pad(skip, (0, main.shape[-1] - c))


class Head(nn.Module):
    """Final layer norm and the class-token classifier; with `patch_head`, also the per-patch classifier.

    `forward` gives the class logits only (inference, and what every evaluator trains); the reference
    trains the released models with token labelling on the patch logits too (`with_patches`).
    """

    def __init__(self, dim: int, num_classes: int, patch_head: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.cls_head = nn.Linear(dim, num_classes)
        self.patch_head = nn.Linear(dim, num_classes) if patch_head else None
        for fc in (self.cls_head, self.patch_head):
            if fc is not None:
                init_linear(fc.weight, fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, E) -> (B, classes) from the class token (a layer norm is per token: only it is normalised)."""
        return self.cls_head(self.norm(x[:, 0]))

    def with_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, E) -> class logits (B, classes) and patch logits (B, N - 1, classes)."""
        if self.patch_head is None:
            raise ValueError("Head: built without a patch head (space config patch_head: false)")
        y = self.norm(x)
        return self.cls_head(y[:, 0]), self.patch_head(y[:, 1:])


class ViTResNet(nn.Sequential):
    """A built ViT-Res network: stem, blocks and reductions in order, head last (children named as latency units)."""

    def forward_with_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class and per-patch logits (needs the space config `patch_head: true`)."""
        *body, head = self
        for module in body:
            x = module(x)
        return head.with_patches(x)


__all__ = [
    "Attention",
    "ConvStem",
    "DropPath",
    "Head",
    "Mlp",
    "PATCH",
    "QKV",
    "STEM_MID",
    "SpatialReduction",
    "TransformerBlock",
    "ViTResNet",
    "attend",
    "drop_path",
    "init_linear",
    "reduce_tokens",
    "stem_tokens",
]
