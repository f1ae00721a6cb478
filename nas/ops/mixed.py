"""`MixedOp`: one decision over separate candidate modules, the weight sharing of ProxylessNAS, DARTS and SPOS.

A mixed op holds one module per choice (ProxylessNAS' `MixedEdge`, mit-han-lab/proxylessnas
`search/modules/mix_op.py`; DARTS' `MixedOp`, quark0/darts `cnn/model_search.py`) and runs in
one of three modes, which a one-shot method sets:
- `active` (the default, what `Supernet.activate` sets): the output of one choice, as the
  standalone network computes it (SPOS, and every supernet's extracted arch);
- `sampled`: the sum of a few choices' outputs, each times its entry of a weights tensor that
  the method supplies, so gradients reach its gates (ProxylessNAS' binary gates g, one-hot in
  value: one path in `full` mode, two in `two` mode); choices named `no_grad` run without a
  graph (to their weights or the input), as the reference detaches its inactive outputs,
  while their gate still gets a gradient;
- `all`: the same over every choice (DARTS' softmax-weighted sum, ProxylessNAS-R probabilities).

A choice with no module (None) is the zero op, which means one of two things, as the space's
`build` does it: `identity` where the block is skipped and the chain drops it (ProxylessNAS'
`zero` on a block with a shortcut: Zero + identity = identity); `zeros` where the op's output
is added to others (NAS-Bench-201's `none` edge, the reference's `x * 0`).

Deviation from ProxylessNAS: its candidates exclude the block's shortcut, which sits outside
the mixed edge (out = sum_k g_k o_k + x), while this package's MBConv holds its shortcut, so
a skippable block's mixed op sums g_k (o_k + x) + g_zero x. When the weights sum to 1 (one-hot
gates, softmax probabilities) the values are the same, and each gate's gradient differs by
the same term <dL/dout, x>, which the softmax Jacobian the method applies to get its
architecture parameters' gradient cancels.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from nas.arch import Choice
from nas.supernet import module_name

ZeroKind = Literal["identity", "zeros"]
Mode = Literal["active", "sampled", "all"]


class MixedOp(nn.Module):
    """One module per choice of a decision; runs the active choice, or a weighted sum of several.

    Args:
        candidates: choice token -> its module, or None for the zero op; in the space's order.
        zero: what the zero op outputs: the input (`identity`, a skipped block) or `zeros`
            (an edge whose output is added to others); its output has the input's shape.
    """

    def __init__(self, candidates: Mapping[Choice, nn.Module | None], zero: ZeroKind = "identity") -> None:
        super().__init__()
        if zero not in ("identity", "zeros"):
            raise ValueError(f"MixedOp: zero must be 'identity' or 'zeros', got {zero!r}")
        self.choices: tuple[str, ...] = tuple(str(c) for c in candidates)
        if not self.choices or len(set(self.choices)) != len(self.choices):
            raise ValueError(f"MixedOp: choices must be non-empty and distinct as strings, got {self.choices}")
        self.zero = zero
        self.candidates = nn.ModuleDict(
            (module_name(str(c)), m) for c, m in candidates.items() if m is not None
        )
        self._zeros = frozenset(str(c) for c, m in candidates.items() if m is None)
        self.mode: Mode = "active"
        self.active: str | None = None
        self._used: tuple[str, ...] = ()
        self._weights: torch.Tensor | None = None
        self._no_grad: frozenset[str] = frozenset()

    # -- modes ----------------------------------------------------------------------
    def set_active(self, choice: Choice) -> None:
        """Run `choice` alone (mode `active`)."""
        self.mode, self.active = "active", self._known(choice)
        self._used, self._weights, self._no_grad = (self.active,), None, frozenset()

    def set_sampled(
        self, choices: Sequence[Choice], weights: torch.Tensor, no_grad: Collection[Choice] = ()
    ) -> None:
        """Output sum_i weights[i] * choices[i](x) (mode `sampled`), e.g. binary gates over one or two paths.

        Args:
            choices: the distinct choices to run.
            weights: one weight per entry of `choices` (1-D); gradients flow into it.
            no_grad: choices among `choices` run without autograd: neither their modules nor the
                input get a gradient through them, their entry of `weights` still does.
        """
        used = tuple(self._known(c) for c in choices)
        if not used or len(set(used)) != len(used):
            raise ValueError(f"MixedOp.set_sampled: choices must be non-empty and distinct, got {used}")
        detached = frozenset(self._known(c) for c in no_grad)
        if not detached <= set(used):
            raise ValueError(f"MixedOp.set_sampled: no_grad {sorted(detached - set(used))} are not sampled")
        if weights.dim() != 1 or weights.numel() != len(used):
            raise ValueError(f"MixedOp.set_sampled: weights need shape ({len(used)},), got {tuple(weights.shape)}")
        self.mode, self.active = "sampled", None
        self._used, self._weights, self._no_grad = used, weights, detached

    def set_all(self, weights: torch.Tensor, no_grad: Collection[Choice] = ()) -> None:
        """Output sum_i weights[i] * choice_i(x) over every choice in order (mode `all`, DARTS)."""
        self.set_sampled(self.choices, weights, no_grad)
        self.mode = "all"

    @property
    def used(self) -> tuple[str, ...]:
        """The choices a forward pass runs in the current mode."""
        return self._used

    @property
    def is_zero(self) -> bool:
        """Whether the output is zeros whatever the input (only zero ops of kind `zeros` are used)."""
        return self.zero == "zeros" and bool(self._used) and set(self._used) <= self._zeros

    # -- modules and weights -------------------------------------------------------------
    def candidate(self, choice: Choice) -> nn.Module | None:
        """The module of `choice`; None for the zero op."""
        token = self._known(choice)
        return None if token in self._zeros else self.candidates[module_name(token)]

    def choice_state_dict(self, choice: Choice, prefix: str = "") -> dict[str, torch.Tensor]:
        """The state of `choice`'s module as the standalone module names it, under `prefix` ({} for zero).

        The tensors share storage with this op's (detached, not copied).
        """
        module = self.candidate(choice)
        return {} if module is None else dict(module.state_dict(prefix=prefix))

    def candidate_parameters(self, choices: Collection[Choice]) -> Iterator[nn.Parameter]:
        """The parameters of the modules of `choices` (e.g. to clear the gradients of unused paths)."""
        for choice in choices:
            module = self.candidate(choice)
            if module is not None:
                yield from module.parameters()

    # -- forward ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The active choice's output, or the weighted sum of the used choices' outputs."""
        if not self._used:
            raise RuntimeError("MixedOp: no choice is set; call set_active, set_sampled or set_all first")
        if self.mode == "active":
            return self._run(self._used[0], x)
        assert self._weights is not None  # set together with the mode
        out: torch.Tensor | None = None
        for token, weight in zip(self._used, self._weights, strict=True):
            if token in self._zeros and self.zero == "zeros":
                continue  # weight * 0 adds nothing, and its gradient <dL/dout, 0> is 0
            if token in self._no_grad:
                with torch.no_grad():
                    path = self._run(token, x)
                term = weight * path.detach()  # outside no_grad: the weight still gets <dL/dout, path>
            else:
                term = weight * self._run(token, x)
            out = term if out is None else out + term
        return torch.zeros_like(x) if out is None else out

    def _run(self, token: str, x: torch.Tensor) -> torch.Tensor:
        if token in self._zeros:
            return x if self.zero == "identity" else torch.zeros_like(x)
        return self.candidates[module_name(token)](x)

    def _known(self, choice: Choice) -> str:
        token = str(choice)
        if token not in self.choices:
            raise ValueError(f"MixedOp: no choice {token!r}; choices: {', '.join(self.choices)}")
        return token

    def extra_repr(self) -> str:
        return f"mode={self.mode}, used={list(self._used)}, zero={self.zero}"


class MixedOpGroup(nn.Module):
    """Mixed ops that carry out one decision together (the same edge in every cell), set as one.

    A supernet's `choice_points()` returns a group where a decision is shared by several ops:
    the group has the `MixedOp` mode setters and passes them (with the same weights tensor, so
    gradients from every member reach it) to each member.

    Args:
        ops: the members, all over the same choices.
    """

    def __init__(self, ops: Sequence[MixedOp]) -> None:
        super().__init__()
        if not ops or any(op.choices != ops[0].choices for op in ops):
            raise ValueError("MixedOpGroup: needs at least one op, all over the same choices")
        self.ops = nn.ModuleList(ops)
        self.choices = ops[0].choices

    def set_active(self, choice: Choice) -> None:
        """`MixedOp.set_active` on every member."""
        for op in self.ops:
            op.set_active(choice)

    def set_sampled(
        self, choices: Sequence[Choice], weights: torch.Tensor, no_grad: Collection[Choice] = ()
    ) -> None:
        """`MixedOp.set_sampled` on every member."""
        for op in self.ops:
            op.set_sampled(choices, weights, no_grad)

    def set_all(self, weights: torch.Tensor, no_grad: Collection[Choice] = ()) -> None:
        """`MixedOp.set_all` on every member."""
        for op in self.ops:
            op.set_all(weights, no_grad)

    @property
    def mode(self) -> Mode:
        return self.ops[0].mode

    @property
    def used(self) -> tuple[str, ...]:
        return self.ops[0].used

    def candidate_parameters(self, choices: Collection[Choice]) -> Iterator[nn.Parameter]:
        """The parameters of `choices`' modules in every member."""
        for op in self.ops:
            yield from op.candidate_parameters(choices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("MixedOpGroup only sets its members' modes; run the supernet instead")


__all__ = ["MixedOp", "MixedOpGroup", "Mode", "ZeroKind"]
