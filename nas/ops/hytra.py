"""Blocks of the BossNAS HyTra space: ResConv and ResAtt bottlenecks with a PEG, stem, empty-stage conv, head.

Follows the retrained BossNet-T code of changlin31/BossNAS (`retraining_hytra/boss_models.py`,
`boss_candidates/resnet_op.py`, `boss_candidates/bot_op.py`, at bb8b26a). A block is split into
its *entry* (what depends on the input it gets: the projection conv1x1 -> PEG (a depthwise 3x3
conv with bias that carries the block's stride) -> BN, and the shortcut) and its *body* (the
rest, which only sees the projected tensor). `HyTraBlock` is entry + body; the supernet shares one
body between the entries of a block entered from its own scale and from the next finer one, as
BossNAS' supernet ops (`hytra_ops.py`, the `_d` branch) do.

- ResConv (bottleneck, expansion 4): entry conv1x1 in->p, PEG(p, stride), BN; body act, conv3x3
  p->p, BN, act, conv1x1 p->4p, BN (gamma 0 at init), squeeze-excite (optional), drop-path.
- ResAtt (bottleneck self-attention): entry conv1x1 in->a, PEG(a, stride), BN; body act,
  multi-head self-attention (one conv1x1 a->3a gives q | k | v, heads of `head_dim`; softmax of
  q^T k / sqrt(head_dim) over the keys; standard orientation as bb8b26a restored it), BN, act,
  conv1x1 a->out, BN (gamma 0). No position embedding, FFN, LayerNorm, SE or drop-path.
- Shortcut (`avg_down=True`): AvgPool2d(2, stride, ceil_mode, count_include_pad=False) when
  strided, then conv1x1 + BN without activation, where the stride is 2 or the width changes;
  else identity. Output: act(body + shortcut).

Init as BossNet: Kaiming-normal (fan_out, ReLU gain) for every conv, BN gamma 1 / beta 0, the last
BN of each body gamma 0; the classifier keeps PyTorch's default.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

Activation = Callable[[], nn.Module]
ACTIVATIONS: dict[str, Activation] = {"relu": nn.ReLU, "silu": nn.SiLU}


def init_weights(module: nn.Module) -> nn.Module:
    """BossNet's init [boss_models.py]: Kaiming-normal fan_out convs, BN (1, 0), each block's last BN gamma 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, (ResConvBody, ResAttBody)):
            nn.init.zeros_(m.last_bn.weight)
    return module


class SqueezeExcite(nn.Module):
    """timm 0.3.2 `SEModule`: GAP -> conv1x1 c->max(c//16, 8) (bias) -> ReLU -> conv1x1 -> c (bias) -> sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 16, min_channels: int = 8) -> None:
        super().__init__()
        mid = max(channels // reduction, min_channels)
        self.fc1 = nn.Conv2d(channels, mid, 1)
        self.act = nn.ReLU()  # ReLU even in SiLU networks, as timm's create_attn('se') builds it
        self.fc2 = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


class DropPath(nn.Module):
    """Stochastic depth per sample (timm `DropPath`); `p` is set per layer by the network that holds it."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).add_(keep).floor_()
        return x / keep * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MultiHeadSelfAttention(nn.Module):
    """Global self-attention over the H*W positions of a (B, C, H, W) map [bot_op.py `Attention`].

    Plain matmul / softmax, so it exports to ONNX with the standard opset.
    """

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.scale = heads, head_dim, head_dim**-0.5
        self.qkv = nn.Conv2d(dim, 3 * heads * head_dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        qkv = self.qkv(x).flatten(2).unflatten(1, (3 * self.heads, self.head_dim))  # (B, 3h, d, N)
        q, k, v = qkv.chunk(3, dim=1)  # (B, h, d, N) each
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)  # (B, h, N queries, N keys)
        out = v @ attn.transpose(-2, -1)  # (B, h, d, N): each query's weighted sum of the values
        return out.reshape(b, self.heads * self.head_dim, h, w)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}"


class BlockEntry(nn.Module):
    """The input side of a block: projection conv1x1 -> PEG (depthwise 3x3, bias, the block's stride) -> BN,
    and the shortcut (`avg_down`)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(in_channels, mid_channels, 1, bias=False),
            peg=nn.Conv2d(mid_channels, mid_channels, 3, stride, 1, groups=mid_channels),
            bn=nn.BatchNorm2d(mid_channels),
        ))
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            pool = (nn.Identity() if stride == 1
                    else nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False))
            self.shortcut = nn.Sequential(OrderedDict(
                pool=pool, conv=nn.Conv2d(in_channels, out_channels, 1, bias=False), bn=nn.BatchNorm2d(out_channels),
            ))


class ResConvBody(nn.Module):
    """ResConv after its entry: act, conv3x3, BN, act, conv1x1 p->4p, BN, SE (optional), drop-path."""

    def __init__(self, planes: int, out_channels: int, act: Activation, has_se: bool) -> None:
        super().__init__()
        self.act1 = act()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = act()
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.se = SqueezeExcite(out_channels) if has_se else nn.Identity()
        self.drop_path = DropPath()

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.bn2(self.conv2(self.act1(x))))
        return self.drop_path(self.se(self.bn3(self.conv3(x))))


class ResAttBody(nn.Module):
    """ResAtt after its entry: act, multi-head self-attention, BN, act, conv1x1 a->out, BN."""

    def __init__(self, dim: int, out_channels: int, heads: int, head_dim: int, act: Activation) -> None:
        super().__init__()
        self.act1 = act()
        self.attn = MultiHeadSelfAttention(dim, heads, head_dim)
        self.bn1 = nn.BatchNorm2d(heads * head_dim)
        self.act2 = act()
        self.conv = nn.Conv2d(heads * head_dim, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.bn1(self.attn(self.act1(x))))
        return self.bn2(self.conv(x))


class HyTraBlock(nn.Module):
    """act(body(entry.proj(x)) + entry.shortcut(x)): a ResConv or ResAtt block."""

    def __init__(self, entry: BlockEntry, body: nn.Module, act: Activation) -> None:
        super().__init__()
        self.entry = entry
        self.body = body
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(self.entry.proj(x)) + self.entry.shortcut(x))


def resconv(in_channels: int, out_channels: int, stride: int, act: str, has_se: bool) -> HyTraBlock:
    """A ResConv block [resnet_op.py], bottleneck width out/4."""
    planes = out_channels // 4
    body = ResConvBody(planes, out_channels, ACTIVATIONS[act], has_se)
    return init_weights(HyTraBlock(BlockEntry(in_channels, planes, out_channels, stride), body, ACTIVATIONS[act]))


def resatt(in_channels: int, out_channels: int, stride: int, heads: int, head_dim: int, act: str) -> HyTraBlock:
    """A ResAtt block [bot_op.py], attention width heads * head_dim (= out/4 in BossNet)."""
    dim = heads * head_dim
    body = ResAttBody(dim, out_channels, heads, head_dim, ACTIVATIONS[act])
    return init_weights(HyTraBlock(BlockEntry(in_channels, dim, out_channels, stride), body, ACTIVATIONS[act]))


def stem(width: int, act: str) -> nn.Sequential:
    """conv7x7 s2 3->width (no bias), BN, act, maxpool3x3 s2: the input at 1/4 [boss_models.py]."""
    return init_weights(nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, width, 7, 2, 3, bias=False), bn=nn.BatchNorm2d(width), act=ACTIVATIONS[act](),
        pool=nn.MaxPool2d(3, 2, 1),
    )))


def empty_stage(in_channels: int, out_channels: int, stride: int, act: str) -> nn.Sequential:
    """What stands in for a stage without blocks: conv3x3 (no bias), BN, act [boss_models.py `make_boss_blocks`]."""
    return init_weights(nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), bn=nn.BatchNorm2d(out_channels),
        act=ACTIVATIONS[act](),
    )))


def head(in_channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Global average pool, dropout, linear (timm `create_classifier`)."""
    return nn.Sequential(OrderedDict(
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1), dropout=nn.Dropout(dropout),
        linear=nn.Linear(in_channels, num_classes),
    ))


__all__ = [
    "ACTIVATIONS",
    "BlockEntry",
    "DropPath",
    "HyTraBlock",
    "MultiHeadSelfAttention",
    "ResAttBody",
    "ResConvBody",
    "SqueezeExcite",
    "empty_stage",
    "head",
    "init_weights",
    "resatt",
    "resconv",
    "stem",
]
