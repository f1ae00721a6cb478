"""Pieces shared by the cell-space supernets (NASNet, EEEA): input choices, op slots and concat readers.

In a cell space a block picks which earlier hidden state each of its branches reads (an input
choice, no weights) and an op per branch (a `MixedOp`); the cell's output concatenates the
states no block reads (its loose ends), so the input width of every layer that reads a cell's
output depends on the arch. Such a reader (a `ConcatLayer`) holds the weight of the widest
concat, and the standalone reader of a concat of n states is the trailing slice of n states'
columns. A concat lists its states in ascending order and ends with the ones that are loose
ends in every arch (the last block's output; in EEEA-Net the last two blocks'), so aligning
the slice to the end gives those states the same weights in every arch, where a leading slice
(`nas.ops.elastic`, Once-for-All) would shift them with the concat's length. ENAS (Pham et al.,
ICML 2018; melodyguan/enas `src/cifar10/micro_child.py` `_enas_layer`, `final_conv`) instead
gathers weight rows by the loose ends' indices, so every state meets its own weights; a gather
is a copy, not a view of the supernet's weight, and `arch_state_dict` gives views (so the
supernet contract can trace which weights an arch uses, and nothing is copied until `extract`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas.arch import Choice
from nas.ops.mixed import MixedOp

Concat = tuple[int, ...]  # hidden states concatenated into a cell's output, in order


class InputChoice(nn.Module):
    """A decision over which hidden states a block's branches read; no weights (NNI's `InputChoice`).

    Args:
        choices: choice token -> the hidden states it selects, e.g. `"0+3"` -> (0, 3) or 2 -> (2,).
    """

    def __init__(self, choices: Mapping[Choice, Sequence[int]]) -> None:
        super().__init__()
        self._states = {str(c): tuple(s) for c, s in choices.items()}
        self.choices = tuple(self._states)
        self.active: str | None = None

    def set_active(self, choice: Choice) -> None:
        """Select the states of `choice`."""
        token = str(choice)
        if token not in self._states:
            raise ValueError(f"InputChoice: no choice {token!r}; choices: {', '.join(self.choices)}")
        self.active = token

    def states(self, choice: Choice | None = None) -> tuple[int, ...]:
        """The hidden states `choice` selects (the active choice's when None)."""
        token = self.active if choice is None else str(choice)
        if token is None:
            raise RuntimeError("InputChoice: no choice is set; activate an arch first")
        return self._states[token]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("InputChoice only selects states; run the supernet instead")

    def extra_repr(self) -> str:
        return f"active={self.active}, choices={len(self.choices)}"


class OpSlot(nn.Module):
    """One branch of a block: a `MixedOp` per variant of the op modules, picked by the state the branch reads.

    A variant is one (input width, stride) an op can have at this position, e.g. the ops of a
    reduction cell stride the cell inputs (states 0, 1) and not the block outputs, so a branch
    that can read either holds both variants, each with its own weights (they are different
    units, with different latency keys). `variant_of[state]` names the variant that reads `state`.
    """

    def __init__(self, variants: Mapping[str, MixedOp], variant_of: Mapping[int, str]) -> None:
        super().__init__()
        assert set(variant_of.values()) == set(variants)
        self.variants = nn.ModuleDict(variants)
        self.variant_of = dict(variant_of)

    def forward(self, states: Sequence[torch.Tensor], state: int) -> torch.Tensor:
        """The op output of hidden state `state` (the variant that reads it, in its mode)."""
        return self.variants[self.variant_of[state]](states[state])

    def choice_state_dict(self, state: int, choice: Choice, prefix: str) -> dict[str, torch.Tensor]:
        """The standalone op module's state when the branch reads `state` with op `choice`."""
        return self.variants[self.variant_of[state]].choice_state_dict(choice, prefix)


class ConcatLayer(nn.Module):
    """A layer reading a concat of up to `max_states` hidden states of `state_width` channels each.

    `weight` (input features on dim 1) is the widest concat's, made by its standalone layer so
    that its default initialisation is theirs; a concat of n states uses the last n states' columns.
    """

    weight: nn.Parameter

    def __init__(self, max_states: int, state_width: int) -> None:
        super().__init__()
        self.max_states = max_states
        self.state_width = state_width

    def active_weight(self, concat: Concat) -> torch.Tensor:
        """The weight of the standalone layer reading `concat`: a view, so gradients reach only its columns."""
        if not 0 < len(concat) <= self.max_states:
            raise ValueError(f"{type(self).__name__}: a concat of {len(concat)} states; this layer reads 1 .. "
                             f"{self.max_states}")
        return self.weight[:, (self.max_states - len(concat)) * self.state_width:]


class ConcatConv2d(ConcatLayer):
    """A bias-free 1x1 conv (any stride) over a concat of hidden states."""

    def __init__(self, max_states: int, state_width: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(max_states, state_width)
        self.stride = stride
        self.weight = nn.Conv2d(max_states * state_width, out_channels, 1, bias=False).weight

    def forward(self, x: torch.Tensor, concat: Concat) -> torch.Tensor:
        """(B, len(concat) * state_width, H, W) -> (B, out, ceil(H / stride), ceil(W / stride))."""
        return F.conv2d(x, self.active_weight(concat), None, self.stride)


class ConcatLinear(ConcatLayer):
    """A linear layer (with bias) over a concat of hidden states' features."""

    def __init__(self, max_states: int, state_width: int, out_features: int) -> None:
        super().__init__(max_states, state_width)
        linear = nn.Linear(max_states * state_width, out_features)
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor, concat: Concat) -> torch.Tensor:
        """(B, len(concat) * state_width) -> (B, out)."""
        return F.linear(x, self.active_weight(concat), self.bias)


class ConcatModule(nn.Module):
    """A module whose forward takes the input's concat too: `forward(x, concat)`."""

    def concat_state_dict(self, concat: Concat, prefix: str) -> dict[str, torch.Tensor]:
        """The state of the standalone module reading `concat`, named as it names it, under `prefix`."""
        state = dict(self.state_dict(prefix=prefix, keep_vars=False))
        for name, layer in self.named_modules(prefix=prefix.rstrip(".")):
            if isinstance(layer, ConcatLayer):
                state[f"{name}.weight"] = layer.active_weight(concat).detach()
        return state


class ConcatSequential(ConcatModule, nn.Sequential):
    """`nn.Sequential` that hands the concat to its `ConcatLayer`s (e.g. ReLU -> ConcatConv2d -> BN)."""

    def forward(self, x: torch.Tensor, concat: Concat) -> torch.Tensor:
        for layer in self:
            x = layer(x, concat) if isinstance(layer, ConcatLayer) else layer(x)
        return x


def read(module: nn.Module, x: torch.Tensor, concat: Concat | None) -> torch.Tensor:
    """`module`'s output of `x`; a `ConcatModule` also gets `concat` (None: `x` is no cell's concat)."""
    if isinstance(module, ConcatModule):
        assert concat is not None, "a concat reader needs the concat of its input"
        return module(x, concat)
    return module(x)


def reader_state_dict(module: nn.Module, concat: Concat | None, prefix: str) -> dict[str, torch.Tensor]:
    """`module`'s standalone state for an input of `concat` (see `read`), under `prefix`."""
    if isinstance(module, ConcatModule):
        assert concat is not None, "a concat reader needs the concat of its input"
        return module.concat_state_dict(concat, prefix)
    return dict(module.state_dict(prefix=prefix))


__all__ = [
    "Concat", "ConcatConv2d", "ConcatLayer", "ConcatLinear", "ConcatModule", "ConcatSequential", "InputChoice",
    "OpSlot", "read", "reader_state_dict",
]
