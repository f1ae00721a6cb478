"""`Deduplicated`: a wrapper that makes any strategy propose each arch at most once per search.

Strategies draw archs at random, so they repeat themselves: evolution mutates the same parent
into the same child, and a random sampler meets an arch again in a small space. Evaluating a
repeat costs a trial and tells the strategy nothing new, and a best table full of one arch
hides the others. The wrapper asks the wrapped strategy again until it proposes an arch the
search has not seen:
- a repeat of an arch already scored is told its known metrics at once, so the strategy
  learns from it as it would from a new evaluation, at no cost;
- a repeat of an arch still in flight (or one that failed) is forgotten (`Strategy.forget`):
  its result comes once, from the first copy.
So the budget (`--trials`) counts distinct archs. After `max_draws` repeats in a row the
space is taken to be exhausted (`SpaceExhausted`): a small space whose every arch has been
evaluated ends the search early instead of looping.
The wrapper holds no state of its own worth saving: what it has seen is the trial log plus
the archs in flight, which the runner hands back with `remember` on resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nas.arch import Arch
from nas.errors import NasError
from nas.strategies.base import Strategy

_UNSCORED = None
"""What the wrapper knows of an arch in flight or failed: a repeat of it is forgotten."""


class SpaceExhausted(NasError):
    """The wrapped strategy proposed only archs already seen, `max_draws` times in a row.

    `archs` holds the new archs the same `ask` found before, which the caller still runs.
    """

    def __init__(self, message: str, archs: list[Arch] | None = None) -> None:
        super().__init__(message)
        self.archs = archs or []


class Deduplicated:
    """Any strategy, asking for archs the search has not seen yet (see the module docstring).

    Args:
        strategy: the wrapped strategy; the wrapper forwards `state_dict`, `pending` and the rest.
        max_draws: repeats in a row after which `ask` raises `SpaceExhausted`.
    """

    def __init__(self, strategy: Strategy, max_draws: int = 1000) -> None:
        self.strategy = strategy
        self.max_draws = max_draws
        self._seen: dict[str, Any] = {}  # hash -> metrics, or _UNSCORED
        self.repeats = 0

    def ask(self, n: int = 1) -> list[Arch]:
        """`n` new archs that no earlier ask of this search returned.

        Raises:
            SpaceExhausted: `max_draws` repeats in a row; its `archs` holds the new archs found before.
        """
        archs: list[Arch] = []
        repeats_in_row = 0
        while len(archs) < n:
            fresh = 0
            for arch in self.strategy.ask(n - len(archs)):
                known = self._seen.get(arch.hash, arch)
                if known is arch:
                    self._seen[arch.hash] = _UNSCORED
                    archs.append(arch)
                    fresh += 1
                    continue
                self.repeats += 1
                if isinstance(known, Mapping):
                    self.strategy.tell(arch, known)
                else:
                    self.strategy.forget(arch)
            repeats_in_row = 0 if fresh else repeats_in_row + n - len(archs)
            if repeats_in_row >= self.max_draws:
                raise SpaceExhausted(
                    f"strategy {type(self.strategy).__name__} proposed {self.max_draws} archs in a row that this "
                    f"search has already seen ({len(self._seen)} distinct archs so far); the space looks exhausted",
                    archs)
        return archs

    def tell(self, arch: Arch, metrics: Mapping[str, float]) -> float:
        """Tell the wrapped strategy, and remember the metrics for its repeats."""
        value = self.strategy.tell(arch, metrics)
        self._seen[arch.hash] = dict(metrics)
        return value

    def forget(self, arch: Arch) -> None:
        """Drop an arch that failed; its repeats are dropped too."""
        self.strategy.forget(arch)
        self._seen[arch.hash] = _UNSCORED

    def remember(self, arch_hash: str, metrics: Mapping[str, float] | None) -> None:
        """Mark an arch as seen on resume: scored (`metrics`), or failed or in flight (None)."""
        self._seen[arch_hash] = dict(metrics) if metrics is not None else _UNSCORED

    def pending(self) -> list[Arch]:
        return self.strategy.pending()

    def state_dict(self) -> dict[str, Any]:
        return self.strategy.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.strategy.load_state_dict(state)
