"""Spaces whose network is a chain of timed units: `NamedUnitsSpace` and `ChainSpace`.

`NamedUnitsSpace` derives `build` and `latency_keys` from one list of (child name, latency key)
per arch (OFA MobileNetV3, ShiftNAS CNN and ViT); `ChainSpace` also derives that list and the
latency terms from a fixed front, one unit (or none) per decision and a fixed back (ProxylessNAS,
Single-Path NAS).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

from nas.arch import Arch, Choice
from nas.space import LatencyTerm, SearchSpace

if TYPE_CHECKING:
    from torch import nn

NamedKey = tuple[str, str]
"""(child module name, latency key) of one unit of a network."""


class NamedUnitsSpace(SearchSpace):
    """A space whose network is a `Sequential` of its timed units: one child per latency key, in order.

    Subclasses give `_named_keys` and `unit_table`; `build` and `latency_keys` follow from them.
    """

    @abstractmethod
    def _named_keys(self, arch: Arch) -> list[NamedKey]:
        """(child name, latency key) of every timed unit of `arch`, in network order (after `check_own`)."""

    def build(self, arch: Arch) -> nn.Module:
        """A `Sequential` with one child per latency key of `arch`, in the same order."""
        from collections import OrderedDict

        from torch import nn

        units = self.unit_table
        return nn.Sequential(OrderedDict((name, units[key][0]()) for name, key in self._named_keys(arch)))

    def latency_keys(self, arch: Arch) -> list[str]:
        """The key of every child of `build(arch)`, in order."""
        return [key for _, key in self._named_keys(arch)]


class ChainSpace(NamedUnitsSpace):
    """A space whose network is a chain of units: a fixed front, one unit (or none) per decision, a fixed back.

    Subclasses give `chain` (the three parts, precomputed per decision and choice) and
    `unit_table`; `build`, `latency_keys` and `latency_terms` follow from them.
    """

    @property
    @abstractmethod
    def chain(self) -> tuple[list[NamedKey], list[tuple[str, dict[Choice, NamedKey | None]]], list[NamedKey]]:
        """(front, [(decision, choice -> unit or None when skipped)], back), in network order."""

    def latency_terms(self) -> list[LatencyTerm]:
        """The fixed front, one term per decision (its unit), the fixed back."""
        front, by_choice, back = self.chain

        def fixed(named: list[NamedKey]) -> LatencyTerm:
            keys = tuple(key for _, key in named)
            return LatencyTerm((), lambda _: keys)

        def one(table: dict[Choice, NamedKey | None]) -> Callable:
            return lambda choices: () if table[choices[0]] is None else (table[choices[0]][1],)

        return [fixed(front), *(LatencyTerm((d,), one(t)) for d, t in by_choice), fixed(back)]

    def _named_keys(self, arch: Arch) -> list[NamedKey]:
        """The fixed front, the unit of every decision that is not a skip, the fixed back."""
        self.check_own(arch)
        front, by_choice, back = self.chain
        chosen = [table[arch.choices[decision]] for decision, table in by_choice]
        return [*front, *(unit for unit in chosen if unit is not None), *back]
