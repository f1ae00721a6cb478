"""The arithmetic of ProxylessNAS' binary gates and latency losses, as plain functions (no supernet, no Ray).

Cai, Zhu and Han, "ProxylessNAS" (ICLR 2019); reference mit-han-lab/proxylessnas
`search/modules/mix_op.py` (`MixedEdge.binarize`, `set_arch_param_grad`,
`rescale_updated_arch_param`) and `search/nas_manager.py` (`add_regularization_loss`,
`RLArchSearchConfig`). `nas.oneshot.proxyless` applies them to a supernet's mixed ops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

BinaryMode = Literal["two", "full"]
LossForm = Literal["mul#log", "add#linear"]


@dataclass(frozen=True)
class GateSample:
    """The paths of one decision in one architecture step: `involved[0]` is the active one (gate 1), the
    others are run without a graph (gate 0) so that their gates still get a gradient."""

    involved: tuple[int, ...]

    @property
    def active(self) -> int:
        return self.involved[0]


def sample_gates(probs: np.ndarray, mode: BinaryMode, rng: np.random.Generator) -> GateSample:
    """Binarize one decision [mix_op.py `binarize`].

    `two`: two distinct paths drawn from multinomial(`probs`) without replacement, the active one of
    them drawn from their renormalised probabilities; `full`: the active path drawn from `probs`, every
    other path involved (the reference's `full` and `full_v2` modes, which give the same gradients).
    """
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum()
    n = len(p)
    if mode == "full" or n < 2:
        active = int(rng.choice(n, p=p))
        return GateSample((active, *(i for i in range(n) if i != active)))
    pair = rng.choice(n, size=2, replace=False, p=p)
    pair_p = p[pair] / p[pair].sum()
    first = int(rng.choice(2, p=pair_p))
    return GateSample((int(pair[first]), int(pair[1 - first])))


def sample_path(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One path drawn from multinomial(`probs`): the weight step's and REINFORCE's sampling (mode None)."""
    p = np.asarray(probs, dtype=np.float64)
    return int(rng.choice(len(p), p=p / p.sum()))


def gate_alpha_grad(gate_grads: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i) [mix_op.py `set_arch_param_grad`], in closed form
    p_i (dL/dg_i - sum_j p_j dL/dg_j); `probs` are the softmax over the involved paths' alphas."""
    return probs * (gate_grads - (gate_grads * probs).sum())


def path_probs(alpha: torch.Tensor, sample: GateSample | None) -> torch.Tensor:
    """The probabilities the expected latency uses [mix_op.py `current_prob_over_ops`]: softmax(alpha)
    (full mode, or None), or in two mode the softmax over the two sampled paths' alphas, zero elsewhere."""
    if sample is None or len(sample.involved) == len(alpha):
        return torch.softmax(alpha, 0)
    index = torch.tensor(sample.involved, device=alpha.device)
    return torch.zeros_like(alpha).scatter(0, index, torch.softmax(alpha[index], 0))


def rescale_pair(alpha: torch.Tensor, old: torch.Tensor, involved: Sequence[int]) -> None:
    """Shift the involved alphas (in place) so that their total probability mass relative to the other paths
    is what it was before the update [mix_op.py `rescale_updated_arch_param`]; `old` holds their old values."""
    index = torch.tensor(list(involved), device=alpha.device)
    with torch.no_grad():
        offset = torch.logsumexp(alpha[index], 0) - torch.logsumexp(old, 0)
        alpha[index] -= offset


def latency_loss(ce: torch.Tensor, expected_ms: torch.Tensor, target_ms: float | None, form: LossForm,
                 alpha: float, beta: float, lam: float) -> torch.Tensor:
    """The architecture loss [nas_manager.py `add_regularization_loss`]: CE alone without a target;
    `mul#log`: alpha * CE * (log E[lat] / log T)^beta; `add#linear`: CE + lambda * (E[lat] - T) / T."""
    if target_ms is None:
        return ce
    if form == "mul#log":
        return alpha * ce * (torch.log(expected_ms) / math.log(target_ms)) ** beta
    return ce + lam * (expected_ms - target_ms) / target_ms


def reinforce_reward(accuracy: float, latency_ms: float, target_ms: float | None, tradeoff: float) -> float:
    """acc * (T / LAT)^tau, or acc without a target [nas_manager.py `RLArchSearchConfig.calculate_reward`]."""
    return accuracy if target_ms is None else accuracy * (target_ms / latency_ms) ** tradeoff


def update_baseline(baseline: float | None, mean_reward: float, decay: float) -> float:
    """The moving-average baseline: the first mean reward, then b + decay * (mean - b) [nas_manager.py
    `rl_update_step`: the reference's `rl_baseline_decay_weight` multiplies the difference]."""
    return mean_reward if baseline is None else baseline + decay * (mean_reward - baseline)


def spread_updates(steps_per_epoch: int, updates: int) -> frozenset[int]:
    """In-epoch step indices of `updates` REINFORCE updates spread evenly over an epoch [nas_manager.py
    `RLArchSearchConfig.get_update_schedule` with `utils.get_split_list`]: the last step of each of `updates`
    near-equal segments; fewer when the epoch has fewer steps."""
    sizes = [steps_per_epoch // updates + (1 if i < steps_per_epoch % updates else 0) for i in range(updates)]
    ends = np.cumsum(sizes)
    return frozenset(int(end) - 1 for end in ends if end > 0)


def all_reduce_mean(tensors: Sequence[torch.Tensor]) -> None:
    """Average `tensors` in place over the workers of a data-parallel run (no-op with one worker): each
    worker's architecture gradient comes from its own shard of the batch."""
    import torch.distributed as dist

    if not tensors or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


__all__ = ["BinaryMode", "GateSample", "LossForm", "all_reduce_mean", "gate_alpha_grad", "latency_loss",
           "path_probs", "reinforce_reward", "rescale_pair", "sample_gates", "sample_path", "spread_updates",
           "update_baseline"]
