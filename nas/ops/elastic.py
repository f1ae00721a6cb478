"""Elastic ops: one module holds the largest choice's tensors and runs any smaller choice as a slice of them.

Weight sharing by slicing, as Single-Path NAS' superkernel (Stamoulis et al., ECML-PKDD 2019;
dstamoulis/single-path-nas `nas-search/superkernel.py`: a k3 kernel is the inner 3x3 of the
5x5 one, expansion 3 the first half of the expansion-6 channels) and Once-for-All's dynamic
ops (Cai et al., ICLR 2020; mit-han-lab/once-for-all
`ofa/imagenet_classification/elastic_nn/modules/dynamic_op.py`): a smaller kernel is the
centre crop of the largest one, fewer channels or features are the leading ones, a shallower
stage runs its first blocks. Each op has an active setting (`set_active`) and runs only it;
`active_state_dict(prefix)` gives the tensors of the standalone torch module of that setting
(`nn.Conv2d`, `nn.BatchNorm2d`, `nn.Linear`, `nn.LayerNorm`) under that module's names, so a
supernet's `arch_state_dict` is `collect_active_state` over its modules plus a rename. The
slicing is along leading dims only, which is what transformer spaces need as well (embedding
width, MLP width and attention heads of separate q, k, v projections are leading slices).

Deviations from Once-for-All: the active input width is set explicitly (`set_active`) and a
mismatching input is an error, where OFA reads it off the input; OFA's learned kernel
transform matrices (7to5, 5to3, initialised to the identity) are an option of
`ElasticConv2d` (`kernel_transform=True`), off by default, so the default crop is the plain
superkernel of Single-Path NAS. Batch norm in train mode normalises with the active channels'
batch statistics and updates only their running statistics, as OFA's `DynamicBatchNorm2d`
and as a standalone `nn.BatchNorm2d` of that width would; only affine, tracked batch norm.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Elastic(ABC):
    """An op with an active setting that can say which tensors the standalone op of that setting holds."""

    @abstractmethod
    def active_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The standalone module's state dict for the active setting, keys prefixed by `prefix`.

        Tensors are detached and may share storage with this op's (slices); copy before changing them.
        """


def collect_active_state(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of `module`'s standalone counterpart: elastic ops give their active tensors, others all.

    Walks the module tree: an `Elastic` module answers for itself and its children; a subtree
    without elastic ops contributes its whole `state_dict`; in between, own tensors plus the walk.
    """
    if isinstance(module, Elastic):
        return module.active_state_dict(prefix)
    if not any(isinstance(m, Elastic) for m in module.modules()):
        return dict(module.state_dict(prefix=prefix))
    state = {prefix + name: p.detach() for name, p in module.named_parameters(recurse=False)}
    skipped = module._non_persistent_buffers_set  # what `state_dict` leaves out
    state.update({prefix + n: b.detach() for n, b in module.named_buffers(recurse=False) if n not in skipped})
    for name, child in module.named_children():
        state.update(collect_active_state(child, f"{prefix}{name}."))
    return state


def _check_choice(what: str, value: int, allowed: Sequence[int] | range) -> int:
    if value not in allowed:
        shown = f"1..{allowed[-1]}" if isinstance(allowed, range) else ", ".join(map(str, allowed))
        raise ValueError(f"{what} {value!r} is not one this op holds; allowed: {shown}")
    return int(value)


class ElasticConv2d(Elastic, nn.Module):
    """A conv holding the largest kernel and channels; runs the centre crop and leading channel slices.

    Args:
        in_channels: largest input width.
        out_channels: largest output width (equal to `in_channels` when depthwise).
        kernel_sizes: the odd square kernel sizes it can run; it holds the largest.
        stride: conv stride; padding is k // 2 for the active k, so the output is ceil(H / stride).
        depthwise: one group per channel; groups follow the active channel count.
        bias: hold a bias (its leading slice is active).
        kernel_transform: Once-for-All's kernel transform: a smaller kernel is the centre crop of
            the next larger (transformed) one times a learned (k*k, k*k) matrix shared by all
            channels, initialised to the identity; without it a smaller kernel is the plain crop.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_sizes: int | Sequence[int] = 1,
        stride: int = 1,
        *,
        depthwise: bool = False,
        bias: bool = False,
        kernel_transform: bool = False,
    ) -> None:
        super().__init__()
        sizes = sorted({kernel_sizes} if isinstance(kernel_sizes, int) else set(kernel_sizes))
        if not sizes or any(k < 1 or k % 2 == 0 for k in sizes):
            raise ValueError(f"ElasticConv2d: kernel sizes must be odd and positive, got {sizes}")
        if depthwise and in_channels != out_channels:
            raise ValueError(f"ElasticConv2d: a depthwise conv keeps its width, got {in_channels} -> {out_channels}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.kernel_sizes, self.depthwise, self.kernel_transform = tuple(sizes), depthwise, kernel_transform
        k = sizes[-1]
        self.weight = nn.Parameter(torch.empty(out_channels, 1 if depthwise else in_channels, k, k))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        if kernel_transform:  # OFA's names: `7to5_matrix`, `5to3_matrix`
            for small, large in zip(sizes, sizes[1:], strict=False):
                self.register_parameter(f"{large}to{small}_matrix", nn.Parameter(torch.eye(small * small)))
        self.reset_parameters()
        self.active_in, self.active_out, self.active_kernel = in_channels, out_channels, k

    def reset_parameters(self) -> None:
        """`nn.Conv2d`'s initialisation of the largest weight and bias."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def set_active(
        self, *, in_channels: int | None = None, out_channels: int | None = None, kernel_size: int | None = None
    ) -> None:
        """Choose the active widths and kernel; what is not given stays. Depthwise: either width sets both."""
        if self.depthwise and None not in (in_channels, out_channels) and in_channels != out_channels:
            raise ValueError(f"ElasticConv2d: a depthwise conv keeps its width, got {in_channels} -> {out_channels}")
        if self.depthwise:
            in_channels = out_channels = in_channels if in_channels is not None else out_channels
        if in_channels is not None:
            self.active_in = _check_choice("in_channels", in_channels, range(1, self.in_channels + 1))
        if out_channels is not None:
            self.active_out = _check_choice("out_channels", out_channels, range(1, self.out_channels + 1))
        if kernel_size is not None:
            self.active_kernel = _check_choice("kernel_size", kernel_size, self.kernel_sizes)

    def centre_mask(self, kernel_size: int) -> torch.Tensor:
        """(K, K) 0/1 mask of the centre `kernel_size` crop within the largest kernel K (superkernel parts)."""
        k = _check_choice("kernel_size", kernel_size, self.kernel_sizes)
        big = self.kernel_sizes[-1]
        mask = torch.zeros(big, big, dtype=self.weight.dtype, device=self.weight.device)
        start = (big - k) // 2
        mask[start : start + k, start : start + k] = 1
        return mask

    def active_weight(self) -> torch.Tensor:
        """(C_out, C_in or 1, k, k): the leading channels, then the kernel crop (and transform)."""
        w = self.weight[: self.active_out] if self.depthwise else self.weight[: self.active_out, : self.active_in]
        return self._shrink(w, self.active_kernel)

    def _shrink(self, w: torch.Tensor, kernel_size: int) -> torch.Tensor:
        if not self.kernel_transform:
            start = (w.size(-1) - kernel_size) // 2
            return w[..., start : start + kernel_size, start : start + kernel_size]
        sizes = self.kernel_sizes
        for large, small in zip(reversed(sizes), reversed(sizes[:-1]), strict=False):
            if large <= kernel_size:
                break
            start = (large - small) // 2
            crop = w[..., start : start + small, start : start + small].reshape(*w.shape[:2], small * small)
            matrix = getattr(self, f"{large}to{small}_matrix")
            w = (crop @ matrix.T).reshape(*w.shape[:2], small, small)  # OFA: F.linear(crop, matrix)
        return w

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H', W') with the active weight, or `weight` (e.g. a masked superkernel)."""
        w = (self.active_weight() if weight is None else weight).contiguous()  # else a slow conv path
        width = w.size(0) if self.depthwise else w.size(1)
        if x.size(1) != width:
            raise ValueError(f"ElasticConv2d: input has {x.size(1)} channels, the active weight takes {width}")
        bias = None if self.bias is None else self.bias[: w.size(0)]
        groups = w.size(0) if self.depthwise else 1
        return F.conv2d(x, w, bias, self.stride, w.size(-1) // 2, 1, groups)

    def active_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """`weight` (and `bias`) of the `nn.Conv2d` of the active setting."""
        state = {prefix + "weight": self.active_weight().detach()}
        if self.bias is not None:
            state[prefix + "bias"] = self.bias[: self.active_out].detach()
        return state

    def extra_repr(self) -> str:
        kind = "depthwise, " if self.depthwise else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_sizes={self.kernel_sizes}, stride={self.stride}, "
                f"{kind}active=({self.active_in}, {self.active_out}, k{self.active_kernel})")


class ElasticBatchNorm2d(Elastic, nn.BatchNorm2d):
    """Batch norm over the leading `active_features` channels of its affine parameters and running statistics.

    In train mode it normalises with the batch statistics of the active channels and updates
    only their running statistics (and the batch counter), exactly as an `nn.BatchNorm2d` of
    that width loaded with `active_state_dict()` would; in eval mode it uses the sliced running stats.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.active_features = num_features

    def set_active(self, num_features: int) -> None:
        """Choose the active width."""
        self.active_features = _check_choice("num_features", num_features, range(1, self.num_features + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W), C the active width."""
        c = self.active_features
        if x.dim() != 4 or x.size(1) != c:
            raise ValueError(f"ElasticBatchNorm2d: expected (B, {c}, H, W), got {tuple(x.shape)}")
        factor = 0.0
        if self.training:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        # The running-stat slices are views: batch_norm's in-place update reaches only the active channels.
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, factor, self.eps)

    def active_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The five entries of an `nn.BatchNorm2d` of the active width."""
        c = self.active_features
        state = {name: t[:c] for name, t in (("weight", self.weight), ("bias", self.bias),
                                              ("running_mean", self.running_mean), ("running_var", self.running_var))}
        state["num_batches_tracked"] = self.num_batches_tracked
        return {prefix + name: t.detach() for name, t in state.items()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, active={self.active_features}"


class ElasticLinear(Elastic, nn.Module):
    """A linear layer on the last dim running the leading `active_in` inputs and `active_out` outputs.

    Args:
        in_features: largest input width (e.g. a transformer's embedding width).
        out_features: largest output width (classes, MLP width, heads * head width).
        bias: hold a bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Linear
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(in_features), 1 / math.sqrt(in_features))
        self.active_in, self.active_out = in_features, out_features

    def set_active(self, *, in_features: int | None = None, out_features: int | None = None) -> None:
        """Choose the active widths; what is not given stays."""
        if in_features is not None:
            self.active_in = _check_choice("in_features", in_features, range(1, self.in_features + 1))
        if out_features is not None:
            self.active_out = _check_choice("out_features", out_features, range(1, self.out_features + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., active_in) -> (..., active_out)."""
        if x.size(-1) != self.active_in:
            raise ValueError(f"ElasticLinear: input has {x.size(-1)} features, the active layer takes {self.active_in}")
        bias = None if self.bias is None else self.bias[: self.active_out]
        return F.linear(x, self.weight[: self.active_out, : self.active_in], bias)

    def active_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """`weight` (and `bias`) of the `nn.Linear` of the active setting."""
        state = {prefix + "weight": self.weight[: self.active_out, : self.active_in].detach()}
        if self.bias is not None:
            state[prefix + "bias"] = self.bias[: self.active_out].detach()
        return state

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, active=({self.active_in}, {self.active_out})"


class ElasticLayerNorm(Elastic, nn.Module):
    """Layer norm over the last dim of width `active_features`, with the leading slice of its affine parameters."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.active_features = num_features

    def set_active(self, num_features: int) -> None:
        """Choose the active width."""
        self.active_features = _check_choice("num_features", num_features, range(1, self.num_features + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C), C the active width."""
        c = self.active_features
        if x.size(-1) != c:
            raise ValueError(f"ElasticLayerNorm: input has {x.size(-1)} features, the active width is {c}")
        return F.layer_norm(x, (c,), self.weight[:c], self.bias[:c], self.eps)

    def active_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """`weight` and `bias` of the `nn.LayerNorm` of the active width."""
        c = self.active_features
        return {prefix + "weight": self.weight[:c].detach(), prefix + "bias": self.bias[:c].detach()}


class ElasticDepth(Elastic, nn.ModuleDict):
    """A stage of named blocks that runs its first `active_depth` of them (OFA's elastic depth).

    Blocks are named as the standalone network names them (e.g. `s1_b1`), so
    `active_state_dict(prefix)` gives `{prefix}{name}.{...}` for the active blocks only, and
    inactive blocks are neither run nor reached by gradients.
    """

    def __init__(self, blocks: Mapping[str, nn.Module]) -> None:
        super().__init__(blocks)
        if not len(self):
            raise ValueError("ElasticDepth: a stage needs at least one block")
        self.active_depth = len(self)

    def set_active(self, depth: int) -> None:
        """Run the first `depth` blocks."""
        self.active_depth = _check_choice("depth", depth, range(1, len(self) + 1))

    def active_blocks(self) -> list[tuple[str, nn.Module]]:
        """(name, block) of the blocks that run, in order."""
        return list(self.items())[: self.active_depth]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The active blocks in order."""
        for _, block in self.active_blocks():
            x = block(x)
        return x

    def active_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The active blocks' standalone tensors under `{prefix}{block name}.`."""
        state: dict[str, torch.Tensor] = {}
        for name, block in self.active_blocks():
            state.update(collect_active_state(block, f"{prefix}{name}."))
        return state

    def extra_repr(self) -> str:
        return f"active_depth={self.active_depth}"


__all__ = [
    "Elastic",
    "ElasticBatchNorm2d",
    "ElasticConv2d",
    "ElasticDepth",
    "ElasticLayerNorm",
    "ElasticLinear",
    "collect_active_state",
]
