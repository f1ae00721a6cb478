"""Cost metrics counted from a built module: parameters and multiply-accumulates.

MACs follow `torch.utils.flop_counter` (a multiply-accumulate is two FLOPs, so its count is halved):
convolutions and matrix products count, batch-norm, activations, pooling and residual adds do not
(the convention of the published figures). `FlopCounterMode` is a dispatch mode, and entering the
first one in a process costs over a second (it imports some 800 modules: torch's compiler stack, sympy),
more than counting every unit of a space. So a forward pass is first watched at the level of torch functions
(`_count_fast`): a convolution or a linear layer is counted with the formula `FlopCounterMode` applies
to the aten op it becomes, and any function outside a short list of ones with no matrix product
under them (`_FREE`) hands the module to `FlopCounterMode` instead. The two agree exactly on every
registered space (tests/evaluate/test_macs_counter.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["count_macs", "count_params"]

_CONVS = frozenset({"conv1d", "conv2d", "conv3d"})
_MATMULS = frozenset({"bmm", "matmul", "__matmul__"})
_FREE = frozenset({
    # reading a tensor's attributes and shape (`x.shape`, `x.T` arrive as a property's `__get__`)
    "__get__", "dim", "size", "numel", "__len__", "__getitem__", "contiguous",
    # reshaping, joining, padding and making tensors
    "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "permute", "transpose", "expand", "narrow",
    "chunk", "split", "cat", "stack", "pad", "zeros", "zeros_like", "ones", "ones_like", "empty", "clone",
    # elementwise arithmetic and reductions, as functions, methods and operators
    "add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "__sub__", "__rsub__", "mul", "mul_",
    "__mul__", "__imul__", "__rmul__", "div", "div_", "__truediv__", "__itruediv__", "neg", "clamp", "clamp_",
    "mean", "sum", "unbind", "__iter__",
    # activations, normalisation, pooling and dropout
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "hardswish", "hardsigmoid", "sigmoid", "sigmoid_", "tanh",
    "silu", "gelu", "leaky_relu", "elu", "softmax", "batch_norm", "layer_norm", "group_norm", "instance_norm",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool2d", "dropout", "dropout2d",
})
"""Torch functions (by name) under which `FlopCounterMode` counts nothing: no convolution, matrix product or
attention. A name outside this list and the counted ones sends the module to `FlopCounterMode`."""


def count_params(module: nn.Module) -> int:
    """Number of trainable parameters (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 on an input of shape (C, H, W)."""
    macs = _count_fast(module, input_shape)
    return _count_with_flop_counter(module, input_shape) if macs is None else macs


def _forward(module: nn.Module, input_shape: tuple[int, ...], mode: Any) -> None:
    """One forward pass of `module` at batch 1 in eval mode under `mode`, its training flag restored."""
    was_training = module.training
    module.eval()
    try:
        x = torch.zeros(1, *input_shape)
        with torch.no_grad(), mode:
            module(x)
    finally:
        module.train(was_training)


def _count_fast(module: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """`count_macs` from the torch functions of a forward pass, or None when one of them is not known to
    be counted here exactly as `FlopCounterMode` counts it."""
    counter = _MacCounter()
    _forward(module, input_shape, counter)
    return None if counter.unknown else counter.macs


def _count_with_flop_counter(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """`count_macs` by torch's `FlopCounterMode` (every aten op it has a formula for)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    _forward(module, input_shape, counter)
    return counter.get_total_flops() // 2


class _MacCounter(TorchFunctionMode):
    """Sums the MACs of the convolutions and linear layers of a forward pass; notes the first function it
    cannot count exactly (`unknown`), after which the pass only runs to its end."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0
        self.unknown: str | None = None

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.unknown is not None:
            return out
        name = getattr(func, "__name__", None)
        if name in _FREE:
            return out
        macs = _macs_of(name, args, kwargs or {}, out)
        if macs is None:
            self.unknown = repr(func)
        else:
            self.macs += macs
        return out


def _macs_of(name: str | None, args: tuple, kwargs: dict, out: Any) -> int | None:
    """MACs of a batched convolution, of a linear layer on a matrix or of a matrix product, as `FlopCounterMode`
    counts the aten op it becomes (`convolution`: out spatial x kernel x batch x c_out x c_in/groups; `addmm`/`mm`:
    m x n x k, a linear layer on more dims as one `mm`; `bmm`, and `matmul` of operands with 2+ dims, which
    becomes `bmm` or `mm`: out elements x k);
    None for any other call."""
    x = args[0] if args else kwargs.get("input")
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and isinstance(out, torch.Tensor)):
        return None
    if name in _CONVS and x.dim() == weight.dim() == int(name[-2]) + 2:
        return out.numel() * math.prod(weight.shape[1:])  # (B, C_out, *spatial) x (C_in/groups, *kernel)
    if name == "linear" and x.dim() >= 2 and weight.dim() == 2:
        return x.numel() // x.shape[-1] * weight.shape[0] * weight.shape[1]  # (..., m, k) @ (k, n): one mm
    if name in _MATMULS and x.dim() >= 2 and weight.dim() >= 2:
        return out.numel() * x.shape[-1]  # (..., m, k) @ (..., k, n): attention's scores and weighted values
    return None
