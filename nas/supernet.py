"""`Supernet`: one module that holds the weights of every arch of a space (weight sharing).

A one-shot method trains a supernet once and then reads any arch's network out of it
instead of training that arch alone (ProxylessNAS, Single-Path NAS, SPOS, Once-for-All).
A supernet runs the arch it was last given (`activate`, or `forward(x, arch)`), and
`extract(arch)` returns the standalone network of that arch, built by `space.build(arch)`
from the same units and carrying the supernet's weights. Three outputs therefore agree
(the supernet contract test, `tests/contracts/test_supernet_contract.py`): the supernet
with the arch active, `extract(arch)`, and a fresh `build(arch)` after loading the
extracted state dict.

Weights are shared in one of two ways, which a supernet may mix:
- a mixed op over separate candidates (`nas.ops.mixed.MixedOp`): one module per choice,
  as ProxylessNAS' `MixedEdge`; the method may run one, two (binary gates) or all of them;
- elastic ops (`nas.ops.elastic`): the largest choice's tensors, with each smaller choice a
  leading slice (channels, embedding width, heads), a centre crop (kernels) or a prefix of
  blocks (depth), as Single-Path NAS' superkernel and Once-for-All.

`choice_points()` names the module that carries out each decision, so a method can attach
its architecture parameters (gates, thresholds) by decision name. Decision names contain
dots, which parameter and module names cannot: `module_name` maps them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from nas.arch import Arch
from nas.errors import UserError

if TYPE_CHECKING:
    from nas.space import SearchSpace


def module_name(decision: str) -> str:
    """A decision name as a valid module or parameter name: `s1.b2.op` -> `s1__b2__op` (reversible)."""
    if "__" in decision:
        raise ValueError(f"decision name {decision!r} holds '__', which module_name keeps for its dots")
    return decision.replace(".", "__")


def decision_name(module: str) -> str:
    """The inverse of `module_name`."""
    return module.replace("__", ".")


class Supernet(nn.Module, ABC):
    """The weights of every arch of `space`; runs the active arch.

    Subclasses build their modules in `__init__`, and implement `activate` (set every
    choice point to the arch's choices), `run` (a forward pass of the active arch) and
    `arch_state_dict` (the active weights under the names `space.build(arch)` gives them).
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        self.active: Arch | None = None

    # -- what a supernet must define -----------------------------------------------
    @abstractmethod
    def _activate(self, arch: Arch) -> None:
        """Set every choice point to `arch`'s choices (the arch is checked by `activate`)."""

    @abstractmethod
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """A forward pass of the active arch: (B, 3, R, R) -> (B, num_classes)."""

    @abstractmethod
    def arch_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """The weights (and buffers) of `arch` in this supernet, named as in `space.build(arch).state_dict()`.

        The tensors may share storage with the supernet's (slices); `extract` copies them.
        """

    @abstractmethod
    def choice_points(self) -> Mapping[str, nn.Module]:
        """Decision name -> the module that carries out that decision, for every decision of the space."""

    # -- shared --------------------------------------------------------------------
    def activate(self, arch: Arch) -> None:
        """Make `arch` the active one: the arch `run` and `forward(x)` compute."""
        self.space.check_own(arch)
        self._activate(arch)
        self.active = arch

    @contextmanager
    def activated(self, arch: Arch) -> Iterator[None]:
        """`arch` active while the block runs, and the arch active before (or none) after: for reading one
        arch's slices (`arch_state_dict`) without changing what the supernet runs."""
        previous = self.active
        self.activate(arch)
        try:
            yield
        finally:
            if previous is None:
                self.active = None
            else:
                self.activate(previous)

    def forward(self, x: torch.Tensor, arch: Arch | None = None) -> torch.Tensor:
        """A forward pass of `arch` (made active), or of the active arch when None."""
        if arch is not None:
            self.activate(arch)
        elif self.active is None:
            raise UserError(f"{self.space.name} supernet: no arch is active; call activate(arch) or pass one")
        return self.run(x)

    def extract(self, arch: Arch) -> nn.Module:
        """The standalone network of `arch` (`space.build(arch)`) with this supernet's weights, copied.

        The network is in the supernet's mode (train or eval) and on its device.
        """
        net = self.space.build(arch)
        state = {name: tensor.detach().clone() for name, tensor in self.arch_state_dict(arch).items()}
        net.load_state_dict(state, strict=True)
        device = next(self.parameters()).device
        return net.to(device).train(self.training)


__all__ = ["Supernet", "decision_name", "module_name"]
