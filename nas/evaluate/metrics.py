"""Cost metrics counted from a built module: parameters and multiply-accumulates.

MACs come from `torch.utils.flop_counter`, which counts a multiply-accumulate as
two FLOPs, so the count is halved. Batch-norm, activations, pooling and residual
adds are not counted (the convention of the published figures).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: nn.Module) -> int:
    """Number of trainable parameters (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 on an input of shape (C, H, W)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.zeros(1, *input_shape))
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2
